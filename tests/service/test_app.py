"""The HTTP contract end to end: the real Serve application (from serve_config.yaml) on
loopback, with a real HTTP server on loopback serving CDS HiPS tiles as the upstream."""

from __future__ import annotations

import concurrent.futures
import io
import json
import time

import httpx
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from skyrender.display import to_display
from skyrender.geometry import make_geometry
from skyrender.properties import load_survey
from skyrender.render import render_field

from .serve_harness import REPO_ROOT, ServeApp, ingress_log_record, load_config

CACHE_BYTES = 8 * 1024 * 1024  # 8 DSS2 tiles (512² float32): small enough to evict


@pytest.fixture(scope="module")
def app(upstream):
    args = {
        "surveys": [
            {"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red", "epoch": "1.1", "aliases": ["dss"]},
            {"name": "irac4", "url": f"{upstream.url}/cds-spitzer-irac4"},
            {"name": "gaia-rv", "url": f"{upstream.url}/cds-gaia-dr2-rv"},
            {"name": "dss2-color", "url": f"{upstream.url}/cds-dss2-color"},
            {
                "name": "dss2-red-e2",
                "url": f"{upstream.url}/cds-dss2-red",
                "epoch": "2.1",
                "aliases": ["dss"],
            },
        ],
        "build_sample_survey": False,
        "cache": {"max_bytes": CACHE_BYTES},
        "render": {"backend": "wgpu"},  # the shader path, on lavapipe here
        "limits": {"max_width": 2048, "max_height": 2048, "max_pixels": 2048 * 1536, "max_tiles": 64},
    }
    served = ServeApp(args)
    yield served
    served.close()


def _png(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    return np.asarray(Image.open(io.BytesIO(response.content)))


FIELD = {"ra": 266.4, "dec": -28.9, "fovDeg": 4.0, "width": 320, "height": 240}


def _core_render(survey_url: str, geom) -> np.ndarray:
    """The field rendered by the core alone, tiles read over HTTP (a missing tile is uncovered)."""
    from skyrender.decode import decode_tile

    def load(tile):
        resp = httpx.get(tile.url)
        return decode_tile(resp.content) if resp.status_code == 200 else None

    return render_field(geom, load_survey(survey_url), load)


def _document(limits: dict) -> dict:
    """The OpenAPI document the code gives under these limits (what an ingress serves)."""
    from deployments.app import create_app
    from deployments.config import LimitsConfig

    return json.loads(json.dumps(create_app(limits=LimitsConfig.model_validate(limits)).openapi()))


def test_openapi_is_served_and_checked_in(app):
    served = app.client.get("/openapi.json").json()
    # The document states the configured limits: this app's (the test's small ones) ...
    assert served == _document(app.config["applications"][0]["args"].get("limits", {}))
    assert served["components"]["schemas"]["RenderTilesRequest"]["properties"]["tiles"]["maxItems"] == 64
    # ... and with serve_config.yaml's, it is the checked-in one.
    shipped = load_config()["applications"][0]["args"].get("limits", {})
    checked_in = json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())
    assert _document(shipped) == checked_in, (
        "docs/openapi.json is stale: regenerate with scripts/export_openapi.py"
    )
    for path in (
        "/render/preview",
        "/render/snapshot",
        "/v1/tile-manifest",
        "/v1/preview",
        "/v1/wcs-validate",
        "/healthz",
    ):
        assert path in served["paths"]


def test_manifest_tiles_exist_upstream(app):
    r = app.client.post("/v1/tile-manifest", json={**FIELD, "epoch": "1.1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["survey"] == "dss2-red" and body["order"] == 3 and body["tiles"]
    for tile in body["tiles"]:
        assert set(tile) >= {"id", "url", "healpixNside", "order", "npix"}
        assert tile["healpixNside"] == 8
        assert httpx.get(tile["url"]).status_code == 200


def test_epoch_selects_among_surveys(app):
    a = app.client.post("/v1/tile-manifest", json={**FIELD, "survey": "dss", "epoch": "2.1"}).json()
    assert a["survey"] == "dss2-red-e2" and a["epoch"] == "2.1"
    missing = app.client.post("/v1/tile-manifest", json={**FIELD, "epoch": "9.9"})
    assert missing.status_code == 404 and missing.json()["error"] == "unknown survey"


def test_preview_png_equals_the_core_render(app, upstream):
    body = {**FIELD, "format": "png", "colormap": "magma", "minCut": 4000, "maxCut": 12000, "scale": "sqrt"}
    r = app.client.post("/v1/preview", json=body)
    assert r.headers["content-type"] == "image/png"
    picture = _png(r)
    assert picture.shape[:2] == (240, 320)
    # The same field through the core alone.
    image = _core_render(f"{upstream.url}/cds-dss2-red", make_geometry(266.4, -28.9, 4.0, 320, 240))
    expected = to_display(image, min_cut=4000, max_cut=12000, stretch="sqrt", cmap="magma")
    got_index = np.asarray(Image.open(io.BytesIO(r.content)))  # palette PNG: the index image
    want = expected.index[::-1]
    differ = got_index != want
    # wgpu (f32 blend) and numpy may round a level apart at a few pixels; nothing more.
    assert differ.mean() < 0.002
    assert np.abs(got_index.astype(int) - want.astype(int)).max() <= 1
    wcs = json.loads(r.headers["x-wcs"])
    assert wcs["NAXIS1"] == 320 and wcs["NAXIS2"] == 240 and wcs["CTYPE1"] == "RA---TAN"
    header = fits.Header()
    for key, value in wcs.items():
        header[key] = value
    assert np.allclose(WCS(header).wcs_pix2world([[159.5, 119.5]], 0), [[266.4, -28.9]])
    timing = dict(e.strip().split(";dur=") for e in r.headers["server-timing"].split(","))
    hops = {"hop-fetch", "hop-compose", "hop-encode", "hop-back"}
    assert set(timing) == {"fetch", "compose", "encode", "chain", "app"} | hops
    assert float(timing["compose"]) > 0 and float(timing["chain"]) >= float(timing["compose"])
    assert float(timing["app"]) >= float(timing["chain"])
    # The stages and the hand-offs between them make up the chain (wall clocks of one host).
    parts = sum(float(timing[k]) for k in ("fetch", "compose", "encode", *hops))
    assert abs(parts - float(timing["chain"])) <= 0.1 * float(timing["chain"]) + 2.0


def test_preview_jpeg(app):
    r = app.client.post("/v1/preview", json={**FIELD, "format": "jpeg", "width": 200, "height": 100})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and im.size == (200, 100)


def test_colour_survey_is_rgb_per_channel_and_equals_the_core_render(app, upstream):
    # The Horsehead and Flame nebulae from CDS's colour JPEG tiles (order 5 in the shared data).
    field = {"ra": 85.30251, "dec": -2.25468, "fovDeg": 2.0, "width": 400, "height": 300}
    r = app.client.post("/v1/preview", json={**field, "survey": "dss2-color", "colormap": "magma"})
    assert r.headers["x-tiles-used"] == "5"
    got = _png(r)
    assert got.shape == (300, 400, 3)  # RGB: the colormap does not apply to a colour survey
    image = _core_render(f"{upstream.url}/cds-dss2-color", make_geometry(85.30251, -2.25468, 2.0, 400, 300))
    assert image.shape == (3, 300, 400)  # reprojected per channel
    want = to_display(image).rgb[::-1]
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # wgpu f32 vs numpy f64
    red, blue = got[..., 0].astype(float), got[..., 2].astype(float)
    assert np.abs(red - blue).mean() > 2  # a colour picture, not three copies of one band
    jpeg = app.client.post("/v1/preview", json={**field, "survey": "dss2-color", "format": "jpeg"})
    im = Image.open(io.BytesIO(jpeg.content))
    assert jpeg.status_code == 200 and im.mode == "RGB" and im.size == (400, 300)


def test_galactic_survey_preview(app):
    r = app.client.post("/v1/preview", json={**FIELD, "survey": "irac4", "projection": "SIN"})
    picture = _png(r)
    assert picture.shape[:2] == (240, 320)


def test_render_preview_and_snapshot_from_tile_urls(app):
    manifest = app.client.post("/v1/tile-manifest", json=FIELD).json()
    urls = [t["url"] for t in manifest["tiles"]]
    r = app.client.post(
        "/render/preview",
        json={"tiles": urls, "width": 300, "height": 200, "colormap": "gray", "scale": "asinh"},
    )
    assert _png(r).shape[:2] == (200, 300)
    assert "x-wcs" in r.headers
    snap = app.client.post("/render/snapshot", json={"tiles": urls[:2], "colormap": "viridis"})
    assert _png(snap).shape[:2] == (512, 512)


def test_wcs_validate(app, fits_dir):
    header = dict(fits.getheader(fits_dir / "magpis_20cm_G10.5+0.0.fits"))
    header = {k: v for k, v in header.items() if k not in ("COMMENT", "HISTORY", "")}
    r = app.client.post("/v1/wcs-validate", json={"fitsHeader": header})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True and body["reprojected"]["projection"] == "SIN"
    # A header the schema allows but wcslib refuses: answered, not an error, and said for people.
    bad = app.client.post("/v1/wcs-validate", json={"fitsHeader": {**header, "CTYPE1": "GLON-XYZ"}})
    assert bad.status_code == 200, bad.text
    verdict = bad.json()
    assert verdict["valid"] is False and verdict["reprojected"] is None and verdict["field"] == "CTYPE1"
    assert "XYZ" in verdict["error"] and "cextern" not in bad.text and ".c:" not in bad.text
    assert "Unrecognized projection code" in verdict["reason"]  # wcslib's words, kept apart
    # One the schema forbids (a required keyword missing) is a 422 naming the keyword.
    missing = app.client.post(
        "/v1/wcs-validate", json={"fitsHeader": {k: v for k, v in header.items() if k != "NAXIS2"}}
    )
    assert missing.status_code == 422 and missing.json()["field"] == "fitsHeader.NAXIS2", missing.text


@pytest.mark.parametrize(
    "path,body,status",
    [
        ("/v1/preview", {**FIELD, "projection": "XYZ"}, 422),
        ("/v1/preview", {**FIELD, "projection": "ZPN"}, 422),  # needs PV parameters: not for a field
        ("/v1/preview", {**FIELD, "fovDeg": 1e-6}, 400),  # below limits.min_fov_deg
        ("/v1/preview", {**FIELD, "width": "512"}, 422),  # a number as text: the document says integer
        ("/v1/preview", {**FIELD, "maxCut": "high"}, 422),
        ("/v1/preview", {**FIELD, "fovDeg": 0}, 422),
        ("/v1/preview", {**FIELD, "fovDeg": 400}, 422),
        ("/v1/preview", {**FIELD, "width": 100000}, 400),
        ("/v1/preview", {**FIELD, "dec": 91}, 422),
        ("/v1/preview", {**FIELD, "colormap": "no-such-map"}, 422),
        ("/v1/preview", {**FIELD, "scale": "cubic"}, 422),
        ("/v1/preview", {**FIELD, "maxCut": "150%"}, 422),
        ("/v1/preview", {**FIELD, "survey": "nope"}, 404),
        ("/v1/preview", {"ra": 1}, 422),
        ("/render/preview", {"tiles": ["http://evil.example/Norder3/Dir0/Npix1.fits"]}, 403),
        ("/render/preview", {"tiles": ["file:///etc/passwd"]}, 422),
        ("/render/preview", {"tiles": []}, 422),
        ("/v1/wcs-validate", {"fitsHeader": {"NAXIS1": "x"}}, 422),
    ],
)
def test_bad_input_is_a_json_4xx(app, path, body, status):
    r = app.client.post(path, json=body)
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["error"] and "detail" in payload
    # The answer names the field at fault: `field`, or pydantic's `loc` of each error.
    if status == 400:
        assert payload.get("field"), payload
    if status == 422:
        assert payload.get("field") or all(len(d["loc"]) > 1 for d in payload["detail"]), payload


def test_non_finite_numbers_are_refused(app):
    r = app.client.post(
        "/v1/preview",
        content=b'{"ra": NaN, "dec": 0, "fovDeg": 1}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422


def test_request_size_limits(app, upstream):
    """Bodies over ``max_body_bytes`` (with a length or chunked), FITS headers with thousands
    of keywords, tile lists over ``max_tiles``, requests with hundreds of header fields."""
    big = json.dumps({"fitsHeader": {f"K{i}": "x" * 100 for i in range(20_000)}}).encode()
    assert len(big) > 1024 * 1024
    as_json = {"content-type": "application/json"}
    sized = app.client.post("/v1/wcs-validate", content=big, headers=as_json)

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    chunked = app.client.post("/v1/wcs-validate", content=chunks(), headers=as_json)
    for r in (sized, chunked):
        assert r.status_code == 413 and r.json()["error"] == "request body too large", r.text[:300]
    many_keys = app.client.post("/v1/wcs-validate", json={"fitsHeader": {f"K{i}": 1 for i in range(5000)}})
    assert many_keys.status_code == 422 and many_keys.json()["field"] == "fitsHeader", many_keys.text[:300]
    assert "limit is 500" in many_keys.json()["detail"][0]["msg"]
    url = f"{upstream.url}/cds-dss2-red/Norder3/Dir0/Npix{{}}.fits"
    many_tiles = app.client.post("/render/preview", json={"tiles": [url.format(i) for i in range(65)]})
    assert many_tiles.status_code == 400 and many_tiles.json()["error"] == "too many tiles"
    manifest = {"ra": 0, "dec": 0, "fovDeg": 1}
    headers = {f"x-extra-{i}": "v" for i in range(70)}
    r = app.client.post("/v1/tile-manifest", json=manifest, headers=headers)
    assert r.status_code == 431 and r.json()["error"] == "too many header fields"
    # Past HAProxy's own limit (101 fields) the front refuses it before any replica: still a 4xx.
    r = app.client.post("/v1/tile-manifest", json=manifest, headers={f"x-extra-{i}": "v" for i in range(300)})
    assert r.status_code == 400, r.text[:300]


def test_routing_errors_are_json_too(app):
    missing = app.client.get("/no-such-path")
    assert missing.status_code == 404 and missing.json() == {"error": "not found", "detail": "Not Found"}
    wrong = app.client.get("/v1/preview")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method not allowed"


def test_tile_urls_off_root_are_refused(app, upstream):
    port = int(upstream.url.rsplit(":", 1)[1])
    other = port + 1 if port < 65535 else port - 1  # a real port, but not the survey root's
    other_port = f"http://127.0.0.1:{other}/cds-dss2-red/Norder3/Dir0/Npix300.fits"
    r = app.client.post("/render/preview", json={"tiles": [other_port]})
    assert r.status_code == 403
    bad_port = f"http://127.0.0.1:{port}0/cds-dss2-red/Norder3/Dir0/Npix300.fits"  # past 65535 or foreign
    assert app.client.post("/render/preview", json={"tiles": [bad_port]}).status_code in (400, 403, 422)


def test_second_request_is_served_from_the_cache(app, upstream):
    body = {**FIELD, "ra": 268.0, "dec": -30.0, "fovDeg": 3.0}
    assert app.client.post("/v1/preview", json=body).status_code == 200
    before = upstream.tile_requests()
    r = app.client.post("/v1/preview", json={**body, "colormap": "gray"})
    assert r.status_code == 200
    assert upstream.tile_requests() == before, "tiles were fetched again"


def test_concurrent_identical_requests_fetch_each_tile_once(app, upstream):
    body = {**FIELD, "ra": 263.0, "dec": -27.0, "fovDeg": 3.0}
    manifest = app.client.post("/v1/tile-manifest", json=body).json()
    paths = {httpx.URL(t["url"]).path for t in manifest["tiles"]}
    before = {p: upstream.counts.get(p, 0) for p in paths}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: app.client.post("/v1/preview", json=body).status_code, range(8)))
    assert codes == [200] * 8
    fetched = {p: upstream.counts.get(p, 0) - before[p] for p in paths}
    assert all(n <= 1 for n in fetched.values()), fetched


def test_cache_holds_its_byte_budget(app, upstream, hips_dir):
    names = sorted(p.name for p in (hips_dir / "cds-dss2-red" / "Norder3" / "Dir0").glob("*.fits"))
    urls = [f"{upstream.url}/cds-dss2-red/Norder3/Dir0/{name}" for name in names]
    assert len(urls) > 8
    r = app.client.post("/render/snapshot", json={"tiles": urls, "width": 256, "height": 256})
    assert r.status_code == 200, r.text
    stats = app.client.get("/v1/stats").json()["cache"]
    assert stats["bytes_held"] <= CACHE_BYTES
    assert stats["evictions"] > 0


def test_autoscaling_comes_from_serve_config(app):
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployments = details["applications"]["skyrender"]["deployments"]
    yaml_deps = {d["name"]: d for d in app.config["applications"][0]["deployments"]}
    for name, dep in yaml_deps.items():
        live = deployments[name]["deployment_config"]
        want = dep["autoscaling_config"]
        for key in ("min_replicas", "max_replicas", "target_ongoing_requests"):
            assert live["autoscaling_config"][key] == want[key], (name, key)
        assert live["max_ongoing_requests"] == dep["max_ongoing_requests"]
        assert live["ray_actor_options"]["num_cpus"] == dep["ray_actor_options"]["num_cpus"]


def test_healthz_then_503_when_upstream_stops(app, upstream):
    r = app.client.get("/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["compose"]["backend"] == "wgpu", body["compose"]
    assert body["compose"]["sampling"] == "grid"  # render.sampling reaches the compose stage
    assert body["compose"]["adapter"]["backend_type"]
    upstream.stop()
    try:
        import time

        deadline = time.monotonic() + 20
        while True:
            r = app.client.get("/healthz")
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert r.status_code == 503
        assert r.json()["error"] == "upstream unavailable"
    finally:
        upstream.start()


def test_request_id_is_echoed_and_logged_as_json(app):
    r = app.client.post("/v1/preview", json={**FIELD, "ra": 265.0}, headers={"X-Request-ID": "nestjs-req-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "nestjs-req-42"
    assert app.client.get("/healthz").headers["x-request-id"]  # generated when absent
    record = ingress_log_record("nestjs-req-42")
    assert record is not None, "no JSON request line in the ingress log"
    assert record["request_id"] == "nestjs-req-42" and record["status"] == 200 and record["outcome"] == "ok"
    assert record["endpoint"] == "/v1/preview" and record["tiles_requested"] >= 1
    assert {"fetch_ms", "compose_ms", "encode_ms", "tiles_fetched", "tiles_from_cache"} <= set(record)


def test_tiles_the_cache_holds_are_read_by_the_ingress_without_the_fetch_stage(app):
    """A render whose tiles are all cached takes them from the cache actor directly (one call,
    no fetch-stage hop), and the next one within `cache.ingress_recent_s` from the references
    the ingress kept (no call); the picture is the one rendered through the fetch stage."""
    import ray

    field = {**FIELD, "ra": 263.2, "dec": -27.5, "fovDeg": 1.5}
    # Empty the cache, so that the first render's tiles are not all held.
    ray.get(ray.get_actor("skyrender-tile-cache", namespace="skyrender").clear.remote())
    # and let the ingress's references from earlier renders lapse (cache.ingress_recent_s)
    time.sleep(app.config["applications"][0]["args"]["cache"].get("ingress_recent_s", 1.0) + 0.1)
    hits_before = app.client.get("/v1/stats").json()["cache"]["hits"]
    first = app.client.post("/v1/preview", json=field, headers={"X-Request-ID": "via-first"})
    again = app.client.post("/v1/preview", json=field, headers={"X-Request-ID": "via-again"})
    # and at once a third: the ingress kept the references the second one's lookup gave
    kept = app.client.post("/v1/preview", json=field, headers={"X-Request-ID": "via-kept"})
    assert first.status_code == again.status_code == kept.status_code == 200
    assert again.content == first.content and kept.content == first.content
    records = [ingress_log_record(f"via-{name}") for name in ("first", "again", "kept")]
    assert None not in records, "no JSON request line in the ingress log"
    assert [r["tiles_via"] for r in records] == ["fetch", "cache", "kept"]
    tiles = records[1]["tiles_requested"]
    assert records[1]["tiles_from_cache"] == tiles and records[1]["tiles_fetched"] == 0
    # The cache counted the second render's tiles as hits.
    assert app.client.get("/v1/stats").json()["cache"]["hits"] >= hits_before + tiles
    # The hand-off to the fetch stage is gone: the lookup starts as the chain does.
    timing = dict(e.strip().split(";dur=") for e in again.headers["server-timing"].split(","))
    assert float(timing["hop-fetch"]) < 2.0


def test_render_sampling_is_configured_grid_or_exact():
    """`render.sampling` defaults to the grid path; the exact path stays a configured choice."""
    from pydantic import ValidationError

    from deployments.config import RenderConfig

    assert RenderConfig().sampling == "grid"
    assert RenderConfig(sampling="exact").sampling == "exact"
    with pytest.raises(ValidationError, match="sampling"):
        RenderConfig(sampling="mesh")


def test_png_deflate_is_configured_with_levels_on_its_own_scale():
    """`render.png_deflate` (ISA-L by default) and a level its library has; the encode stage passes both."""
    import io
    from types import SimpleNamespace

    from PIL import Image
    from pydantic import ValidationError

    from deployments.config import AppConfig, RenderConfig
    from deployments.encode_stage import Encode
    from skyrender.display import to_display
    from skyrender.encode import encode_image

    assert (RenderConfig().png_deflate, RenderConfig().png_compress_level) == ("isal", 2)
    assert RenderConfig(png_deflate="zlib", png_compress_level=9).png_compress_level == 9
    with pytest.raises(ValidationError, match="above isal's highest level 3"):
        RenderConfig(png_compress_level=4)
    with pytest.raises(ValidationError, match="png_deflate"):
        RenderConfig(png_deflate="gzip")
    config = AppConfig.model_validate({"render": {"png_deflate": "zlib", "png_compress_level": 6}})
    opts = Encode.func_or_class._png_opts(SimpleNamespace(config=config))
    assert (opts["deflate"], opts["compress_level"]) == ("zlib", 6)
    data = np.arange(64 * 48, dtype=np.float32).reshape(48, 64)
    body, media_type = encode_image(to_display(data), "png", **opts)
    assert media_type == "image/png" and Image.open(io.BytesIO(body)).size == (64, 48)


def test_stage_contracts_cross_lean():
    """What the stages hand each other stays small: the geometry travels as header text
    (not astropy's pickled WCS), and a float image goes out of band (Ray's object store
    maps it, no copy through pickle)."""
    import ray.cloudpickle as cloudpickle

    from deployments.contracts import Composed, RenderSpec
    from skyrender.geometry import make_geometry

    spec = RenderSpec(make_geometry(266.4, -28.9, 2.0, 1024, 768), "icrs", 3, 512)
    assert len(cloudpickle.dumps(spec)) < 8192
    buffers: list = []
    composed = Composed(np.zeros((768, 1024), np.float32), "numpy", 0.01, 4, stamps=(1.0, 2.0, 3.0, 4.0))
    inline = cloudpickle.dumps(composed, protocol=5, buffer_callback=buffers.append)
    assert len(inline) < 2048
    assert [b.raw().nbytes for b in buffers] == [768 * 1024 * 4]
