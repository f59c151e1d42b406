"""The TypeScript client (clients/typescript): installed with npm, types regenerated from
docs/openapi.json and compared with the committed ones, compiled with ``tsc --strict``, and
its example run with node against the real Serve application, calling every endpoint."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time

import pytest

from .serve_harness import REPO_ROOT, SLOW_MACHINE_DEADLINES, ServeApp

CLIENT = REPO_ROOT / "clients" / "typescript"
NPM = shutil.which("npm")
NODE = shutil.which("node")


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=CLIENT, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"{shlex.join(args)}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def installed():
    """``npm ci``: exactly the committed package-lock.json (from the npm registry, or its cache)."""
    if NPM is None or NODE is None:
        pytest.fail("node and npm are needed (Node 20)")
    lock = CLIENT / "package-lock.json"
    stamp = CLIENT / "node_modules" / ".package-lock.json"
    if not stamp.is_file() or stamp.stat().st_mtime < lock.stat().st_mtime:
        run([NPM, "ci", "--no-audit", "--no-fund"])
    return CLIENT


@pytest.fixture(scope="module")
def app(upstream):
    args = {
        "surveys": [
            {"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red", "epoch": "1.1", "aliases": ["dss"]},
            # A second "epoch" with other pixels (the shared data has one epoch per survey): a blink
            # of identical frames is one frame (Pillow merges equal frames).
            {"name": "e2", "url": f"{upstream.url}/cds-spitzer-irac4", "epoch": "2.1", "aliases": ["dss"]},
            {"name": "irac4", "url": f"{upstream.url}/cds-spitzer-irac4"},
            {"name": "planck143", "url": f"{upstream.url}/cds-planck-hfi143"},
        ],
        "build_sample_survey": False,
        # The first renders of a fresh application on a busy shared machine can take seconds.
        "upstream": {"request_deadline_s": 30.0},
        "overload": SLOW_MACHINE_DEADLINES,
    }
    served = ServeApp(args)
    # RUNNING is not ready: the survey catalogue loads in the background after the replicas
    # start, and the example checks that /readyz says 200 first.
    until = time.monotonic() + 120
    while served.client.get("/readyz").status_code != 200 and time.monotonic() < until:
        time.sleep(0.5)
    yield served
    served.close()


def test_generated_types_match_the_openapi_document(installed, tmp_path):
    script = json.loads((CLIENT / "package.json").read_text())["scripts"]["generate"]
    args = shlex.split(script)
    assert args[0] == "openapi-typescript" and "src/schema.ts" in args
    fresh = tmp_path / "schema.ts"
    args = [str(CLIENT / "node_modules" / ".bin" / args[0])] + [
        str(fresh) if a == "src/schema.ts" else a for a in args[1:]
    ]
    run(args)
    committed = (CLIENT / "src" / "schema.ts").read_text()
    assert fresh.read_text() == committed, (
        "clients/typescript/src/schema.ts is stale against docs/openapi.json: "
        "run clients/typescript/generate.sh and commit it"
    )


def test_compiles_with_tsc_strict(installed):
    config = json.loads((CLIENT / "tsconfig.json").read_text())
    assert config["compilerOptions"]["strict"] is True
    run([str(CLIENT / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json", "--strict"])
    assert (CLIENT / "dist" / "examples" / "every-endpoint.js").is_file()


def test_example_calls_every_endpoint(installed, app):
    if not (CLIENT / "dist" / "examples" / "every-endpoint.js").is_file():
        run([str(CLIENT / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"])
    out = subprocess.run(
        [
            NODE, "dist/examples/every-endpoint.js", app.url, "dss2-red", "266.4", "-28.9", "4",
            "dss", "dss2-red,irac4,planck143",
        ],  # fmt: skip
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    checks = json.loads(out.stdout.strip().splitlines()[-1])["checks"] if out.stdout.strip() else []
    failed = [c for c in checks if not c["ok"]]
    assert out.returncode == 0 and not failed, f"{failed}\n{out.stderr[-2000:]}"
    called = {c["endpoint"].split(" (")[0] for c in checks}
    document = json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())
    design = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    assert design <= called, (
        f"endpoints the TypeScript example does not call: {sorted(design - called)}; "
        "add them to clients/typescript/examples/every-endpoint.ts"
    )
    by_name = {c["endpoint"]: c["detail"] for c in checks}
    assert by_name["POST /v1/preview"].startswith("PNG 320x240")
    assert by_name["POST /render/snapshot"].startswith("PNG 512x512")
    refused = by_name["POST /v1/wcs-validate (header wcslib refuses: valid false)"]
    assert refused.startswith("valid: false, field CTYPE1")
    assert by_name["POST /v1/wcs-validate (required keyword missing: 422)"].startswith("422 {error:")
