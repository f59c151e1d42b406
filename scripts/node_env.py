"""Print ``export NAME=value`` lines for the node-level settings serve_config.yaml gives its replicas.

``serve run`` starts the local Ray node itself: Serve's proxy and controller only see the
environment of that command, not the application's ``runtime_env``. scripts/serve.sh evaluates
this output so that the proxy runs as the replicas do (as k8s/templates sets it on the pods, and
tests/service/serve_harness.py for the tests).

    eval "$(python scripts/node_env.py [serve_config.yaml])"
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def node_env(config_path: Path) -> dict[str, str]:
    """The Serve (``RAY_SERVE_*``) and worker-niceness variables of every application's runtime_env."""
    config = yaml.safe_load(config_path.read_text())
    out: dict[str, str] = {}
    for app in config.get("applications", []):
        for name, value in ((app.get("runtime_env") or {}).get("env_vars") or {}).items():
            if name.startswith("RAY_SERVE_") or name == "RAY_worker_niceness":
                out[name] = str(value)
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else ROOT / "serve_config.yaml"
    for name, value in node_env(path).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
