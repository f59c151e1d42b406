"""Write the served OpenAPI document to docs/openapi.json (a test keeps the two equal).

.venv/bin/python scripts/export_openapi.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.service.serve_harness import ServeApp  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as empty:
        app = ServeApp({"surveys": [{"name": "sample", "url": empty}], "build_sample_survey": False})
        try:
            spec = app.client.get("/openapi.json").json()
        finally:
            app.close()
    out = ROOT / "docs" / "openapi.json"
    out.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(spec['paths'])} paths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
