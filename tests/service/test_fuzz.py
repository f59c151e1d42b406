"""Schemathesis against the served OpenAPI document: no input gives a 5xx, and the service
does what the document says (``st run --checks all``: the conformance test CI runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .loopback import StaticHips
from .serve_harness import ServeApp

EXAMPLES_PER_OPERATION = 25

#: The conformance run: every check, every phase, every operation, a fixed seed.
CONFORMANCE_SEED = 1
CONFORMANCE_EXAMPLES = 40


@pytest.fixture(scope="module")
def app(hips_dir):
    upstream = StaticHips(hips_dir)
    served = ServeApp(
        {
            "surveys": [{"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"}],
            "build_sample_survey": False,
            # Small limits keep generated renders quick; the limits themselves are under test too.
            "limits": {"max_width": 256, "max_height": 256, "max_pixels": 256 * 256, "max_tiles": 12},
        }
    )
    yield served
    served.close()
    upstream.stop()


def _acceptable(response) -> bool:
    if response.status_code < 500:
        return True
    # An upstream failure is not the service's fault, but it must still be JSON that says so.
    content_type = response.headers.get("content-type", "")
    if isinstance(content_type, list):
        content_type = content_type[0]
    return response.status_code in (502, 503, 504) and "json" in content_type and "upstream" in response.text


def test_no_server_errors_on_any_operation(app):
    schema = schemathesis.openapi.from_url(f"{app.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert {"/render/preview", "/render/snapshot", "/v1/tile-manifest", "/v1/preview", "/v1/wcs-validate",
            "/healthz", "/hips2fits"} <= paths  # fmt: skip
    failures: list[str] = []
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
        def run(case):
            nonlocal calls
            response = case.call(base_url=app.url, timeout=60)
            calls += 1
            if not _acceptable(response):
                failures.append(
                    f"{response.status_code} {case.method} {case.path} body={case.body!r} "
                    f"query={case.query!r} -> {response.text[:300]}"
                )

        run()
    assert calls >= 5 * len(operations)
    assert not failures, "\n".join(failures[:10])


def run_schemathesis(url: str, report: Path, *extra: str) -> dict:
    """``st run --checks all`` over the served document; returns its JSON report."""
    st = Path(sys.executable).with_name("st")
    command = [
        str(st), "run", f"{url}/openapi.json", "--checks", "all",
        "--seed", str(CONFORMANCE_SEED), "--max-examples", str(CONFORMANCE_EXAMPLES),
        "--workers", "2", "--request-timeout", "60", "--max-response-time", "60", "--continue-on-failure",
        "--report", "json", "--report-json-path", str(report), *extra,
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if not report.is_file():
        raise AssertionError(f"schemathesis did not run: {run.stdout[-3000:]}{run.stderr[-3000:]}")
    result = json.loads(report.read_text())
    result["output"] = run.stdout
    return result


def test_the_document_and_the_service_agree(app, tmp_path):
    """Every check (status codes, content types, response schemas and headers, schema-valid requests
    accepted, invalid ones refused, Allow headers, unsupported methods) over every operation."""
    result = run_schemathesis(app.url, tmp_path / "report.json")
    operations, cases = result["operations"], result["test_cases"]
    assert operations["selected"] == operations["total"] == operations["tested"]  # nothing excluded
    assert operations["errored"] == 0 and cases["errored"] == 0, result["output"][-6000:]
    assert cases["generated"] >= 10 * operations["total"]
    summary = "\n".join(
        f"{f['code']} {f['title']}: {f['count']} {f['operations']}" for f in result["failures"]
    )
    assert cases["with_failures"] == 0, f"{summary}\n{result['output'][-8000:]}"
