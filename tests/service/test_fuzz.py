"""Schemathesis against the served OpenAPI document: no input gives a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .loopback import StaticHips
from .serve_harness import ServeApp

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def app(hips_dir):
    upstream = StaticHips(hips_dir)
    served = ServeApp(
        {
            "surveys": [{"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"}],
            "build_sample_survey": False,
            # Small limits keep generated renders quick; the limits themselves are under test too.
            "limits": {"max_width": 256, "max_height": 256, "max_pixels": 256 * 256, "max_tiles": 8},
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
