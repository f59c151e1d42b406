"""The HTTP contract on the real Serve application: schemathesis against the served OpenAPI
document (no input gives a 5xx; ``st run --checks all``, the conformance test CI runs, finds
no disagreement between document and service), caching (ETag, Cache-Control, 304 without
rendering), method handling (Allow, OPTIONS, HEAD) and error texts for people."""

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
            "surveys": [
                {"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"},
                # A local survey: its files are served under /hips/dss2-local/.
                {"name": "dss2-local", "url": str(hips_dir / "cds-dss2-red")},
            ],
            "build_sample_survey": False,
            # Small limits keep generated renders quick; the limits themselves are under test too.
            "limits": {"max_width": 256, "max_height": 256, "max_pixels": 256 * 256, "max_tiles": 12},
        }
    )
    served.upstream = upstream
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
    # In the report's directory: schemathesis keeps a crash cache in its working directory, which
    # would replay earlier runs' failures first (and land in the repository).
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=report.parent)
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


# -- caching -------------------------------------------------------------------------------------

CUTOUT = {
    "hips": "dss2-red", "width": 64, "height": 48, "projection": "TAN", "ra": 266.4, "dec": -28.9,
    "fov": 0.5, "format": "png", "cmap": "magma",
}  # fmt: skip
PREVIEW = {"ra": 266.4, "dec": -28.9, "fovDeg": 0.5, "width": 64, "height": 48, "colormap": "gray"}


def _timings(response) -> set[str]:
    return {part.split(";")[0].strip() for part in response.headers.get("server-timing", "").split(",")}


def test_hips2fits_answers_304_without_rendering(app):
    first = app.client.get("/hips2fits", params=CUTOUT)
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")  # strong
    assert first.headers["cache-control"] == "public, max-age=3600"
    assert {"fetch", "compose", "encode"} <= _timings(first)
    again = app.client.get("/hips2fits", params=CUTOUT)
    assert again.headers["etag"] == etag and again.content == first.content  # same bytes, same tag
    tiles_before = app.upstream.tile_requests()
    cached = app.client.get("/hips2fits", params=CUTOUT, headers={"If-None-Match": f'"x", {etag}'})
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == etag and "cache-control" in cached.headers
    # No stage ran: Server-Timing has only the ingress's own entry, no tile was fetched.
    assert _timings(cached) == {"app"}, cached.headers["server-timing"]
    assert app.upstream.tile_requests() == tiles_before
    # A weak comparison also matches (RFC 9110: If-None-Match compares weakly); "*" too.
    assert (
        app.client.get("/hips2fits", params=CUTOUT, headers={"If-None-Match": f"W/{etag}"}).status_code == 304
    )
    assert app.client.get("/hips2fits", params=CUTOUT, headers={"If-None-Match": "*"}).status_code == 304
    # Anything that changes the bytes changes the tag.
    other = app.client.get("/hips2fits", params={**CUTOUT, "cmap": "viridis"})
    assert other.status_code == 200 and other.headers["etag"] != etag
    stale = app.client.get(
        "/hips2fits", params={**CUTOUT, "cmap": "viridis"}, headers={"If-None-Match": etag}
    )
    assert stale.status_code == 200 and stale.content == other.content


def test_head_is_get_without_the_body(app):
    get = app.client.get("/hips2fits", params=CUTOUT)
    head = app.client.head("/hips2fits", params=CUTOUT)
    assert head.status_code == 200 and head.content == b""
    for name in ("etag", "content-type", "content-length", "cache-control", "x-wcs"):
        assert head.headers[name] == get.headers[name], name
    conditional = app.client.head("/hips2fits", params=CUTOUT, headers={"If-None-Match": get.headers["etag"]})
    assert conditional.status_code == 304
    health = app.client.head("/healthz")
    assert health.status_code in (200, 503) and health.content == b""


def test_post_renders_carry_etag_and_cache_control(app):
    first = app.client.post("/v1/preview", json=PREVIEW)
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "public, max-age=3600"
    # The same request normalised the same way (defaults spelled out) has the same tag and bytes.
    spelled = app.client.post(
        "/v1/preview", json={**PREVIEW, "format": "png", "rotation": 0, "projection": "TAN"}
    )
    assert spelled.headers["etag"] == etag and spelled.content == first.content
    # A POST's answer is not a representation of its URL: no conditional request, a render.
    posted = app.client.post("/v1/preview", json=PREVIEW, headers={"If-None-Match": etag})
    assert posted.status_code == 200 and posted.content == first.content
    assert app.client.post("/v1/preview", json={**PREVIEW, "maxCut": "99%"}).headers["etag"] != etag


def test_survey_files_answer_304(app):
    url = "/hips/dss2-local/Norder3/Dir0/Npix304.fits"
    first = app.client.get(url)
    assert first.status_code == 200 and first.content[:6] == b"SIMPLE"
    etag = first.headers["etag"]
    assert etag.startswith('"') and first.headers["cache-control"].startswith("public, max-age=")
    cached = app.client.get(url, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    head = app.client.head(url)
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
    assert head.headers["content-length"] == str(len(first.content))
    props = app.client.get("/hips/dss2-local/properties")
    assert props.status_code == 200 and props.headers["etag"] != etag


def test_the_etag_follows_the_survey_release():
    """A new release (the survey's properties: hips_release_date) changes the tag of the same render."""
    from astropy.wcs import WCS  # noqa: F401  (geometry needs astropy)

    from deployments.config import AppConfig
    from deployments.contracts import DisplaySpec
    from deployments.render_chain import RenderChain
    from skyrender.geometry import make_geometry
    from skyrender.properties import survey_from_properties
    from skyrender.tiles import TileId

    config = AppConfig.model_validate({"surveys": [{"name": "s", "url": "http://upstream.example/s"}]})
    chain = RenderChain(config, None, None, None)
    text = "hips_order = 3\nhips_tile_format = fits\nhips_release_date = 2019-05-07T08:44Z\n"
    old = survey_from_properties(text, "http://upstream.example/s")
    new = survey_from_properties(text.replace("2019-05-07", "2026-11-29"), "http://upstream.example/s")
    geom = make_geometry(10.0, 20.0, 1.0, 64, 64)
    args = (geom, 3, [TileId(3, 300, "fits")], DisplaySpec())
    cfg = config.surveys[0]
    assert chain.etag(cfg, old, *args) == chain.etag(cfg, old, *args)
    assert chain.etag(cfg, old, *args) != chain.etag(cfg, new, *args)


# -- methods -------------------------------------------------------------------------------------


def test_allow_lists_every_method_of_a_path(app):
    options = app.client.options("/hips2fits")
    assert options.status_code == 204 and options.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    wrong = app.client.put("/hips2fits")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    assert set(wrong.json()) == {"title", "description"}  # hips2fits' error shape under /hips2fits
    assert app.client.options("/v1/preview").headers["allow"] == "POST, OPTIONS"
    delete = app.client.delete("/v1/preview")
    assert delete.status_code == 405 and delete.headers["allow"] == "POST, OPTIONS"
    assert delete.json()["error"] == "method not allowed" and "DELETE" in delete.json()["detail"]
    assert app.client.options("/hips/dss2-local/properties").headers["allow"] == "GET, HEAD, OPTIONS"
    assert app.client.options("/no/such/path").status_code == 404


# -- error texts -------------------------------------------------------------------------------


def test_errors_name_the_field_and_hide_c_sources(app):
    tiny = app.client.post("/v1/preview", json={**PREVIEW, "fovDeg": 1e-7})
    assert tiny.status_code == 400 and tiny.json()["field"] == "fovDeg", tiny.text
    narrow = app.client.get("/hips2fits", params={**CUTOUT, "fov": "1e-7"})
    assert narrow.status_code == 400 and "fov" in narrow.json()["description"], narrow.text
    header = {
        "NAXIS1": 100, "NAXIS2": 100, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
        "CD1_1": 0.01, "CD1_2": 0.01, "CD2_1": 0.01, "CD2_2": 0.01,
    }  # fmt: skip
    singular = app.client.post("/v1/wcs-validate", json={"fitsHeader": header})
    verdict = singular.json()
    assert singular.status_code == 200 and verdict["valid"] is False and "singular" in verdict["error"]
    zpn = app.client.post(
        "/v1/wcs-validate",
        json={"fitsHeader": {**header, "CTYPE1": "RA---ZPN", "CTYPE2": "DEC--ZPN", "CD1_2": 0, "CD2_1": 0}},
    )
    verdict = zpn.json()
    assert verdict["valid"] is False and verdict["field"] == "PV2_1" and "ZPN" in verdict["error"]
    assert "zenithal/azimuthal polynomial" in verdict["reason"]
    for response in (tiny, narrow, singular, zpn):
        assert "cextern" not in response.text and ".c:" not in response.text and "ERROR" not in response.text
    bad_wcs = dict(header, CTYPE2="DEC--SIN")
    mixed = app.client.get("/hips2fits", params={"hips": "dss2-red", "wcs": json.dumps(bad_wcs)})
    assert mixed.status_code == 400 and mixed.json()["title"] == "Invalid WCS", mixed.text
