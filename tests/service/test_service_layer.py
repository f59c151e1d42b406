"""The service layer's promises, against the real application on loopback: readiness from the
first second (the catalogue loads while a survey's upstream is held back), strict tile URLs,
wide fields degrading to Allsky, MOCs whose COORDSYS disagrees, empty strings, offline /docs,
and the cache actor following the application's lifetime (tiles lost between stages: test_lost_tiles.py)."""

from __future__ import annotations

import io
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from .serve_harness import ServeApp

GAIA = "cds-gaia-dr2-rv"  # 32-pixel tiles, jpeg, Norder3 + Allsky
FIELD = {"ra": 83.8, "dec": -5.4, "fovDeg": 4.0, "width": 160, "height": 120}
MOC_CELLS = (300, 301, 302, 303)  # order 3


class GatedHips:
    """Serves a HiPS folder; ``properties`` requests wait until `release` (a slow upstream at start)."""

    def __init__(self, root: Path):
        self.released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rel = self.path.split("?", 1)[0].lstrip("/")
                if rel.endswith("properties"):
                    outer.released.wait(120)
                file = root / rel
                body = file.read_bytes() if ".." not in rel and file.is_file() else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def _moc_in_galactic_letters(cells: tuple[int, ...]) -> bytes:
    """A HipsGen-style Moc.fits of order-3 ``cells`` whose COORDSYS says 'G'."""
    column = fits.Column(name="UNIQ", format="K", array=4 * 4**3 + np.array(cells, dtype=np.int64))
    hdu = fits.BinTableHDU.from_columns([column])
    hdu.header.update(PIXTYPE="HEALPIX", ORDERING="NUNIQ", COORDSYS="G", MOCORDER=3, MOCTOOL="HipsGen")
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def local_survey(hips_dir, tmp_path_factory):
    """The Gaia tiles as a local survey (equatorial) with a partial MOC whose COORDSYS is 'G'."""
    root = tmp_path_factory.mktemp("gaia-local")
    shutil.copy(hips_dir / GAIA / "properties", root / "properties")
    shutil.copytree(hips_dir / GAIA / "Norder3", root / "Norder3")  # symlinks out of a root are refused
    (root / "Moc.fits").write_bytes(_moc_in_galactic_letters(MOC_CELLS))
    return root


@pytest.fixture(scope="module")
def gated(hips_dir):
    server = GatedHips(hips_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(upstream, gated, local_survey):
    args = {
        "surveys": [
            {"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red", "epoch": "1.1"},
            {"name": "gaia", "url": f"{upstream.url}/{GAIA}"},
            {"name": "gated", "url": f"{gated.url}/cds-dss2-red"},
            {"name": "gaia-local", "url": str(local_survey)},
        ],
        "build_sample_survey": False,
        # The gated survey's properties are held while the application starts.
        "upstream": {
            "read_timeout_s": 60.0,
            "request_deadline_s": 90.0,
            "catalogue_wait_s": 1.0,
            "retries": 0,
        },
        "cache": {"disk_enabled": False, "max_bytes": 64 * 1024 * 1024},
    }
    served = ServeApp(args)
    yield served
    served.close()


def _poll(condition, timeout_s: float = 60.0, every_s: float = 0.25):
    """The first truthy value of ``condition()`` within ``timeout_s``; fails otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every_s)


# -- readiness (runs first: the gated survey is still loading) --------------------------------------


def test_a_survey_still_loading_is_503_with_retry_after_never_404(app, gated):
    assert app.client.get("/livez").status_code == 200
    ready = app.client.get("/readyz")
    if not gated.released.is_set() and ready.status_code == 503:
        # Not ready: the catalogue is loading, or (just after the start) the probe application
        # has no answer from the ingress yet.
        detail = ready.json()["detail"]
        assert "catalogue" in detail or "no answer from the ingress" in detail
        assert ready.headers["retry-after"]
    for r in (
        app.client.get("/hips2fits", params={"hips": "gated", "width": 64, "height": 64, "fov": 1,
                                              "ra": 83.8, "dec": -5.4, "projection": "TAN", "format": "png"}),
        app.client.post("/v1/preview", json={**FIELD, "survey": "gated"}),
    ):  # fmt: skip
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after"), r.headers
    # A survey that is loaded already is served meanwhile.
    assert app.client.post("/v1/preview", json={**FIELD, "survey": "dss2-red"}).status_code == 200
    gated.release()
    body = _poll(lambda: (r := app.client.get("/readyz")).status_code == 200 and r.json(), timeout_s=120)
    assert body["status"] == "ready"
    assert {"fetch_ready", "catalogue_loaded", "ready"} <= set(body["timeline_s"])
    assert all(states.get("RUNNING", 0) >= 1 for states in body["replicas"].values()), body
    _poll(lambda: app.client.post("/v1/preview", json={**FIELD, "survey": "gated"}).status_code == 200)


def test_readiness_ignores_an_upstream_outage_health_reports_it(app, gated):
    gated.stop()
    # The probe application reports the ingress's answer once it has one: the ingress's first
    # probe of the stopped upstream may take up to its read timeout.
    def outage_reported():
        r = app.client.get("/healthz")
        return r.status_code == 503 and "gated" in r.json()["detail"] and r.json()

    health = _poll(outage_reported, timeout_s=150)
    assert "gated" in health["detail"]
    assert app.client.get("/readyz").status_code == 200
    assert app.client.get("/livez").status_code == 200


# -- strict tile URLs ---------------------------------------------------------------------------------


def test_tile_urls_are_parsed_not_matched(app, upstream):
    dss = f"{upstream.url}/cds-dss2-red"
    local = f"{app.url}/hips/gaia-local"
    assert (
        app.client.post("/render/preview", json={"tiles": [f"{dss}/Norder3/Dir0/Npix300.jpg"]}).status_code
        == 200
    )
    assert (
        app.client.post("/render/preview", json={"tiles": [f"{local}/Norder3/Dir0/Npix300.jpg"]}).status_code
        == 200
    )
    before = dict(upstream.counts)
    host, port = upstream.url.removeprefix("http://").split(":")
    # 400: malformed; 403: outside every root; 422: refused by the request schema's tile-URL pattern.
    bad, foreign, userinfo = {400, 422}, {403}, {403, 422}
    cases = {
        "http://169.254.169.254/hips/gaia-local/Norder0/Dir0/Npix6.jpg": foreign,
        f"http://user@{app.url.removeprefix('http://')}/hips/gaia-local/Norder3/Dir0/Npix300.jpg": userinfo,
        f"http://user:pw@{host}:{port}/cds-dss2-red/Norder3/Dir0/Npix300.jpg": userinfo,
        f"{dss}/../{GAIA}/Norder3/Dir0/Npix304.jpg": bad,
        f"{dss}/%2e%2e/{GAIA}/Norder3/Dir0/Npix304.jpg": bad,
        f"{dss}/./Norder3/Dir0/Npix300.jpg": bad,
        f"{dss}/Norder3/Dir10000/Npix300.jpg": bad,
        f"{dss}/extra/Norder3/Dir0/Npix300.jpg": bad,
        f"{dss}x/Norder3/Dir0/Npix300.jpg": foreign,
        f"https://{host}:{port}/cds-dss2-red/Norder3/Dir0/Npix300.jpg": foreign,
        f"{local.replace('gaia-local', 'nope')}/Norder3/Dir0/Npix300.jpg": foreign,
        "Norder3/Dir0/Npix300.jpg": bad,
    }
    for url, statuses in cases.items():
        r = app.client.post("/render/preview", json={"tiles": [url]})
        assert r.status_code in statuses, (url, r.text)
        assert set(r.json()) == {"error", "detail"} and r.json()["detail"]
    assert upstream.counts == before, "a refused URL reached the upstream"


# -- wide fields, MOCs, empty strings --------------------------------------------------------------


def _core_render_from_tiles(root: Path, body: dict) -> np.ndarray:
    from skyrender.decode import decode_tile
    from skyrender.geometry import make_geometry
    from skyrender.properties import load_survey
    from skyrender.render import render_field

    geom = make_geometry(
        body["ra"], body["dec"], body["fovDeg"], body["width"], body["height"], body["projection"]
    )
    survey = load_survey(str(root))

    def load(tile):
        path = Path(tile.url.replace(".fits", ".jpg"))
        return decode_tile(path.read_bytes()) if path.is_file() else None

    return render_field(geom, survey, load, order=3)


def test_an_all_sky_field_of_small_tiles_renders_from_allsky(app, hips_dir):
    body = {"ra": 0.0, "dec": 0.0, "fovDeg": 360.0, "width": 1024, "height": 512, "projection": "AIT",
            "survey": "gaia"}  # fmt: skip
    r = app.client.post("/v1/preview", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-hips-order"] == "3"
    alpha = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3]
    # The same sky as the core renders from the order-3 tiles themselves (Gaia's Allsky is full width).
    expected = np.isfinite(_core_render_from_tiles(hips_dir / GAIA, body))
    assert abs((alpha > 0).mean() - expected.mean()) < 0.01, ((alpha > 0).mean(), expected.mean())
    query = {"hips": "gaia", "width": 1024, "height": 512, "fov": 360, "ra": 0, "dec": 0, "projection": "AIT"}
    fits_r = app.client.get("/hips2fits", params={**query, "format": "fits"})
    assert fits_r.status_code == 200, fits_r.text
    header = fits.getheader(io.BytesIO(fits_r.content))
    assert header["HIPS_ORD"] == 3


def test_a_moc_whose_coordsys_disagrees_still_filters_the_manifest(app):
    from cdshealpix import nested

    lon, lat = nested.healpix_to_lonlat(np.array([MOC_CELLS[0]], dtype=np.uint64), 3)
    field = {"ra": float(lon.deg[0]), "dec": float(lat.deg[0]), "fovDeg": 25.0, "width": 256, "height": 256}
    listed = app.client.post("/v1/tile-manifest", json={**field, "survey": "gaia-local"}).json()
    assert listed["order"] == 3
    npix = {t["npix"] for t in listed["tiles"]}
    assert npix and npix <= set(MOC_CELLS), npix
    everything = app.client.post("/v1/tile-manifest", json={**field, "survey": "gaia"}).json()
    assert len(everything["tiles"]) > len(npix)


def test_empty_strings_mean_not_given(app):
    r = app.client.post("/v1/preview", json={**FIELD, "survey": "", "epoch": ""})
    assert r.status_code == 200, r.text
    r = app.client.post("/v1/tile-manifest", json={**FIELD, "survey": "", "epoch": " "})
    assert r.status_code == 200 and r.json()["survey"] == "dss2-red"
    # A field whose documented pattern excludes "" (a cut) is refused, as the OpenAPI document says.
    assert app.client.post("/v1/preview", json={**FIELD, "minCut": ""}).status_code == 422


# -- offline docs ---------------------------------------------------------------------------------


def test_docs_and_redoc_load_their_assets_from_this_service(app):
    for page in ("/docs", "/redoc"):
        html = app.client.get(page)
        assert html.status_code == 200
        assert "cdn.jsdelivr.net" not in html.text and "unpkg.com" not in html.text
        import re

        assets = re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', html.text)
        assert assets, html.text[:500]
        for asset in assets:
            r = app.client.get(asset)
            assert r.status_code == 200 and len(r.content) > 1000, asset


# -- the cache actor lives and dies with the application (last: it redeploys and shuts down) ---------


def test_the_cache_actor_follows_the_application(app):
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    # (The lost-tile tests killed the actor: the fetch stage starts a new one on the next render.)
    def max_bytes() -> int | None:
        try:
            app.client.post("/v1/preview", json={**FIELD, "survey": "dss2-red"})
            r = app.client.get("/v1/stats")
            return r.json()["cache"].get("max_bytes") if r.status_code == 200 else None
        except Exception:  # the proxy's plain-text timeout while replicas are replaced
            return None

    _poll(lambda: max_bytes() == 64 * 1024 * 1024, every_s=1.0)
    config = app.config
    config["applications"][0]["args"]["cache"]["max_bytes"] = 32 * 1024 * 1024
    serve_api.serve_start(http_options=config["http_options"]).deploy_apps(
        ServeDeploySchema.model_validate(config), _blocking=False
    )
    _poll(lambda: max_bytes() == 32 * 1024 * 1024, timeout_s=180, every_s=1.0)
    serve.shutdown()

    def gone() -> bool:
        try:
            ray.get_actor("skyrender-tile-cache", namespace="skyrender")
        except ValueError:
            return True
        return False

    _poll(gone, timeout_s=60)
