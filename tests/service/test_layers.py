"""Multi-layer endpoints end to end: the real Serve application on loopback, real HiPS.

Surveys: three epochs of MAGPIS 20 cm built as HiPS with a known injected source and a
known faded one (`tests.epoch_fields`, local directories configured as one survey
``magpis`` with epochs 1, 2, 3), and CDS's Spitzer IRAC 8 um, DSS2 red and Planck
143 GHz served by the loopback upstream.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from skyrender.fieldstats import icrs_to_pixel, robust_noise
from skyrender.geometry import make_geometry
from tests.core.test_layers import fit_source
from tests.epoch_fields import FADE, INJECTED_PEAK, build_epochs

from .serve_harness import SLOW_MACHINE_DEADLINES, ServeApp, ingress_log_record

MAX_AGE_S = 600  # render.cache_max_age_s of this module's app (the default is 3600)


@pytest.fixture(scope="module")
def epochs(fits_dir, tmp_path_factory):
    return build_epochs(fits_dir, tmp_path_factory.mktemp("epochs"))


@pytest.fixture(scope="module")
def gaia_rv(hips_dir, tmp_path_factory):
    """Gaia DR2's radial-velocity map as a local single-band survey of 32-pixel FITS tiles of
    which only the order-3 Allsky mosaic exists (its JPEG tiles are colour-mapped)."""
    source = hips_dir / "cds-gaia-dr2-rv"
    root = tmp_path_factory.mktemp("gaia-rv")
    (root / "Norder3").mkdir()
    shutil.copy(source / "Norder3" / "Allsky.fits", root / "Norder3" / "Allsky.fits")
    props = (source / "properties").read_text()
    fits_only = re.sub(r"(?m)^hips_tile_format\s*=.*$", "hips_tile_format = fits", props)
    (root / "properties").write_text(fits_only)
    return root


@pytest.fixture(scope="module")
def app(upstream, epochs, gaia_rv):
    surveys = [
        {"name": f"magpis-e{label}", "url": str(path), "epoch": label, "aliases": ["magpis"]}
        for label, path in epochs.dirs.items()
    ]
    surveys += [
        {"name": "irac4", "url": f"{upstream.url}/cds-spitzer-irac4"},
        {"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"},
        {"name": "planck143", "url": f"{upstream.url}/cds-planck-hfi143"},
        {"name": "dss2-color", "url": f"{upstream.url}/cds-dss2-color"},
        {"name": "gaia-rv", "url": str(gaia_rv)},
    ]
    # Correctness, not deadlines, is tested here: a busy machine's cold first renders get 30 s.
    # A max-age other than the default: every rendered image's Cache-Control must come from here.
    args = {"surveys": surveys, "build_sample_survey": False, "limits": {"max_layers": 4},
            "render": {"cache_max_age_s": MAX_AGE_S}}  # fmt: skip
    one = {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2}
    served = ServeApp(
        {**args, "upstream": {"request_deadline_s": 30.0}, "overload": SLOW_MACHINE_DEADLINES},
        # One Compose replica: its render counter (in /healthz) is then the whole count.
        deployments={"Compose": {"autoscaling_config": one}},
    )
    yield served
    served.close()


@pytest.fixture(scope="module")
def field(epochs):
    """The MAGPIS field: TAN, 0.15 deg, 256x256 (2.1" pixels)."""
    ra, dec = epochs.centre_radec
    return {"ra": ra, "dec": dec, "fovDeg": 0.15, "width": 256, "height": 256}


def _geometry(f):
    return make_geometry(f["ra"], f["dec"], f["fovDeg"], f["width"], f["height"])


def _ok(r):
    assert r.status_code == 200, r.text[:800]
    return r


def _fits(r) -> tuple[np.ndarray, fits.Header]:
    with fits.open(io.BytesIO(_ok(r).content)) as hdul:
        return np.array(hdul[0].data, dtype=np.float64), hdul[0].header.copy()


def _rgb(r) -> np.ndarray:
    """An image answer as (H, W, 3) uint8 in FITS row order (row 0 = bottom)."""
    return _rgba(r)[..., :3]


def _rgba(r) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(_ok(r).content)).convert("RGBA"))[::-1]


def _hips2fits(app, hips: str, f, fmt: str = "fits"):
    q = {
        "hips": hips,
        "ra": f["ra"],
        "dec": f["dec"],
        "fov": f["fovDeg"],
        "width": f["width"],
        "height": f["height"],
        "projection": "TAN",
        "format": fmt,
    }
    return app.client.get("/hips2fits", params=q)


# -- epochs ------------------------------------------------------------------------------


def test_difference_fits_shows_the_injected_source(app, epochs, field):
    r = app.client.post(
        "/v1/epochs/difference", json={**field, "survey": "magpis", "epochs": ["1", "2"], "format": "fits"}
    )
    diff, hdr = _fits(r)
    assert r.headers["content-type"] == "application/fits"
    assert hdr["EPOCHNEW"] == "2" and hdr["EPOCHREF"] == "1" and hdr["BITPIX"] == -32
    geom = _geometry(field)
    assert np.allclose(WCS(hdr).wcs.crval, geom.wcs.wcs.crval) and hdr["NAXIS1"] == 256
    x, y = icrs_to_pixel(geom, *epochs.injected_radec)
    peak, fx, fy = fit_source(diff, float(x), float(y))
    assert np.hypot(fx - x, fy - y) <= 0.5
    assert abs(peak - INJECTED_PEAK) <= 0.05 * INJECTED_PEAK
    # Elsewhere nothing.
    yy, xx = np.mgrid[0:256, 0:256]
    far = (np.hypot(xx - x, yy - y) > 20) & np.isfinite(diff)
    assert np.median(np.abs(diff[far])) <= 1e-3 * epochs.data_range
    assert json.loads(r.headers["x-wcs"])["NAXIS1"] == 256


def test_difference_shows_the_faded_source_negative(app, epochs, field):
    geom = _geometry(field)
    diff, _ = _fits(app.client.post(
        "/v1/epochs/difference", json={**field, "survey": "magpis", "epochs": ["1", "3"], "format": "fits"}
    ))  # fmt: skip
    before, _ = _fits(_hips2fits(app, "magpis-e1", field))
    x, y = icrs_to_pixel(geom, *epochs.faded_radec)
    was, _, _ = fit_source(before, float(x), float(y), box=4)
    change, _, _ = fit_source(diff, float(x), float(y), box=4)
    assert change < 0 and abs(change / was + FADE) <= 0.05 * FADE


def test_difference_png_is_diverging_about_zero(app, field):
    r = _ok(app.client.post("/v1/epochs/difference", json={**field, "survey": "magpis"}))
    assert r.headers["content-type"] == "image/png" and "x-wcs" in r.headers
    # Default: the two latest epochs (3 - 2); the picture's middle colour is RdBu_r's white.
    diff, _ = _fits(
        app.client.post("/v1/epochs/difference", json={**field, "survey": "magpis", "format": "fits"})
    )
    picture = _rgb(r)
    quiet = np.abs(diff) < 0.02 * np.nanmax(np.abs(diff))
    assert np.median(picture[quiet].astype(int).min(axis=1)) > 200


def test_stats_significance(app, epochs, field):
    body = {**field, "survey": "magpis", "epochs": ["1", "2"]}
    stats = _ok(app.client.post("/v1/epochs/stats", json=body)).json()
    assert [e["epoch"] for e in stats["epochs"]] == ["1", "2"]
    d = stats["difference"]
    assert d["later"] == "2" and d["earlier"] == "1" and d["significance"] > 50
    assert (
        abs(d["peakRa"] - epochs.injected_radec[0]) < 3e-4
        and abs(d["peakDec"] - epochs.injected_radec[1]) < 3e-4
    )
    fits_1, _ = _fits(_hips2fits(app, "magpis-e1", field))
    e1 = stats["epochs"][0]
    assert e1["peak"] == pytest.approx(np.nanmax(fits_1), rel=1e-6)
    assert e1["noise"] == pytest.approx(robust_noise(fits_1), rel=1e-5)
    # An aperture on an unchanged part of the field.
    quiet = {**body, "position": {"ra": field["ra"], "dec": field["dec"] + 0.03, "radiusArcsec": 70}}
    q = _ok(app.client.post("/v1/epochs/stats", json=quiet)).json()
    assert q["difference"]["significance"] < 6 and q["epochs"][0]["pixels"] < 0.1 * 256 * 256


def test_blink_apng_and_gif(app, field):
    for fmt, media in (("apng", "image/apng"), ("gif", "image/gif")):
        r = _ok(
            app.client.post(
                "/v1/epochs/blink", json={**field, "survey": "magpis", "format": fmt, "frameMs": 400}
            )
        )
        assert r.headers["content-type"] == media
        im = Image.open(io.BytesIO(r.content))
        assert im.n_frames == 3 and im.info["loop"] == 0 and im.size == (256, 256)
        assert r.headers["cache-control"] == f"public, max-age={MAX_AGE_S}"


def test_every_rendered_image_takes_its_max_age_from_the_config(app, field):
    expected = f"public, max-age={MAX_AGE_S}"
    answers = {
        "difference": app.client.post("/v1/epochs/difference", json={**field, "survey": "magpis"}),
        "preview": app.client.post("/v1/preview", json={**field, "survey": "magpis", "epoch": "1"}),
        "hips2fits": _hips2fits(app, "magpis-e1", field, fmt="png"),
    }
    for name, r in answers.items():
        assert _ok(r).headers["cache-control"] == expected, (name, r.headers)


# -- contours ----------------------------------------------------------------------------


def _contour_body(field, base: str, levels, unit="sigma", fmt="png"):
    return {
        **field,
        "mode": "contours",
        "format": fmt,
        "layers": [{"survey": base, "colormap": "gray"}, {"survey": "magpis", "epoch": "1"}],
        "contours": {"levels": levels, "levelUnit": unit, "color": "#00ff00", "lineWidth": 1.5},
    }


@pytest.mark.parametrize("base", ["irac4", "dss2-red"])
def test_geojson_contours_equal_contourpy_on_the_hips2fits_render(app, field, base):
    import contourpy
    from scipy.spatial import cKDTree

    gj = _ok(app.client.post("/v1/composite", json=_contour_body(field, base, [5, 20], fmt="geojson"))).json()
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2
    data, hdr = _fits(_hips2fits(app, "magpis-e1", field))
    wcs = WCS(hdr)
    sigma = robust_noise(data)
    gen = contourpy.contour_generator(z=np.ma.masked_invalid(data), line_type="Separate")
    for feature, k in zip(gj["features"], (5, 20), strict=True):
        assert feature["properties"]["level"] == pytest.approx(k * sigma, rel=1e-5)
        theirs = np.concatenate(gen.lines(k * sigma))
        ours = np.concatenate([np.array(line) for line in feature["geometry"]["coordinates"]])
        x, y = wcs.wcs_world2pix(ours[:, 0], ours[:, 1], 0)
        d_ours, _ = cKDTree(theirs).query(np.c_[x, y])
        d_theirs, _ = cKDTree(np.c_[x, y]).query(theirs)
        assert d_ours.max() <= 0.5 and d_theirs.max() <= 0.5


def test_contour_png_draws_lines_over_the_base(app, field):
    r = app.client.post("/v1/composite", json=_contour_body(field, "irac4", [0.01], unit="data"))
    picture = _rgb(r)
    base = _rgb(app.client.post("/v1/preview", json={**field, "survey": "irac4", "colormap": "gray"}))
    data, _ = _fits(_hips2fits(app, "magpis-e1", field))
    import contourpy
    from scipy.ndimage import distance_transform_edt

    lines = np.concatenate(contourpy.contour_generator(z=data, line_type="Separate").lines(0.01))
    xs, ys = np.rint(lines[:, 0]).astype(int), np.rint(lines[:, 1]).astype(int)
    on = picture[ys, xs]
    assert np.mean((on[:, 1] > 200) & (on[:, 0] < 90) & (on[:, 2] < 90)) > 0.9
    near = np.zeros((256, 256), bool)
    near[ys, xs] = True
    off = distance_transform_edt(~near) > 4
    assert np.array_equal(picture[off], base[off])


# -- colour composites -------------------------------------------------------------------

GC = {"ra": 266.4, "dec": -28.9, "fovDeg": 2.0, "width": 200, "height": 150}
BANDS = [
    {"survey": "irac4", "minCut": "1%", "maxCut": "99%", "scale": "asinh"},
    {"survey": "dss2-red", "minCut": 4000, "maxCut": 12000},
    {"survey": "planck143", "scale": "sqrt"},
]


def test_rgb_channels_equal_the_grey_previews(app):
    r = app.client.post("/v1/composite", json={**GC, "mode": "rgb", "layers": BANDS})
    picture = _rgb(r)
    assert json.loads(r.headers["x-wcs"])["NAXIS2"] == 150
    for k, band in enumerate(BANDS):
        grey = _rgb(app.client.post("/v1/preview", json={**GC, **band, "colormap": "gray"}))
        assert np.array_equal(picture[..., k], grey[..., 0]), f"channel {k} ({band['survey']})"


def test_a_wide_composite_renders_from_the_allsky_mosaic_as_the_preview_does(app):
    """Half the sky in 32-pixel tiles: over the tile limit at order 3, so the order-3 Allsky
    mosaic is read (one fetch), as /v1/preview does, not the coarser order 2 (which this
    survey does not even have)."""
    wide = {"ra": 0.0, "dec": 0.0, "fovDeg": 180.0, "width": 512, "height": 256, "projection": "AIT"}
    layers = [{"survey": "gaia-rv", "scale": scale} for scale in ("linear", "sqrt", "asinh")]
    r = app.client.post("/v1/composite", json={**wide, "mode": "rgb", "layers": layers})
    picture = _rgb(r)
    assert r.headers["x-hips-order"] == "3,3,3" and r.headers["x-layers"] == "gaia-rv,gaia-rv,gaia-rv"
    for k, layer in enumerate(layers):
        preview = _ok(app.client.post("/v1/preview", json={**wide, **layer, "colormap": "gray"}))
        assert preview.headers["x-hips-order"] == "3"
        grey = _rgba(preview)
        sky = grey[..., 3] > 0
        assert sky.mean() > 0.7  # the AIT ellipse
        assert np.array_equal(picture[..., k][sky], grey[..., 0][sky]), f"channel {k} ({layer['scale']})"


def test_lupton_equals_make_lupton_rgb(app):
    from astropy.visualization import make_lupton_rgb

    layers = [{"survey": b["survey"]} for b in BANDS]
    minimum, stretch, q = [100.0, 4000.0, 0.0], 2000.0, 6.0
    body = {
        **GC,
        "mode": "lupton",
        "layers": layers,
        "lupton": {"minimum": minimum, "stretch": stretch, "q": q},
    }
    picture = _rgb(app.client.post("/v1/composite", json=body))
    renders = [_fits(_hips2fits(app, b["survey"], GC))[0] for b in BANDS]
    covered = np.isfinite(np.stack(renders)).all(axis=0)
    assert covered.mean() > 0.5
    filled = [np.where(np.isfinite(r), r, lo) for r, lo in zip(renders, minimum, strict=True)]
    want = make_lupton_rgb(*filled, minimum=minimum, stretch=stretch, Q=q)
    assert np.array_equal(picture[covered], want[covered])


def test_overlay_with_opacity(app):
    layers = [
        {"survey": "dss2-red", "colormap": "gray"},
        {"survey": "irac4", "colormap": "inferno", "opacity": 0.3},
    ]
    picture = _rgb(app.client.post("/v1/composite", json={**GC, "mode": "overlay", "layers": layers}))
    base = _rgba(app.client.post("/v1/preview", json={**GC, "survey": "dss2-red", "colormap": "gray"}))
    top = _rgba(app.client.post("/v1/preview", json={**GC, "survey": "irac4", "colormap": "inferno"}))
    both = (base[..., 3] == 255) & (top[..., 3] == 255)
    only_base = (base[..., 3] == 255) & (top[..., 3] == 0)
    assert both.mean() > 0.3
    want = base[..., :3] * 0.7 + top[..., :3] * 0.3
    assert np.abs(picture[both] - want[both]).max() <= 0.5 + 1e-6
    assert np.array_equal(picture[only_base], base[..., :3][only_base])


# -- bad input ---------------------------------------------------------------------------


def _bad(field):
    m = {"survey": "magpis"}
    return [
        (
            "/v1/composite",
            {**field, "mode": "overlay", "layers": [{"survey": "nope"}, {"survey": "irac4"}]},
            404,
        ),
        ("/v1/epochs/difference", {**field, **m, "epochs": ["1", "9"]}, 404),
        ("/v1/epochs/stats", {**field, **m, "epochs": ["1", "2", "3", "1", "2"]}, 400),
        ("/v1/composite", {**field, "mode": "overlay", "layers": [{"survey": "irac4"}] * 5}, 400),
        ("/v1/epochs/difference", {**field, **m, "epochs": ["2", "2"]}, 400),
        ("/v1/epochs/blink", {**field, **m, "epochs": ["1", "3", "1"]}, 400),
        ("/v1/composite", _contour_body(field, "irac4", ["three", 5]), 422),
        ("/v1/composite", _contour_body(field, "irac4", ["3"]), 422),
        ("/v1/composite", _contour_body(field, "irac4", []), 422),
        ("/v1/epochs/difference", {**field, **m, "ra": 10.0, "dec": 10.0}, 404),  # no data there
        ("/v1/composite", {**field, "mode": "rgb", "layers": [{"survey": "irac4"}] * 2}, 400),
        (
            "/v1/composite",
            {**field, "mode": "overlay", "format": "geojson", "layers": [{"survey": "irac4"}] * 2},
            400,
        ),
        ("/v1/composite", {**field, "mode": "contours", "layers": [{"survey": "irac4"}] * 2}, 400),
        (
            "/v1/composite",
            {**field, "mode": "overlay", "layers": [{"survey": "dss2-color"}, {"survey": "irac4"}]},
            400,
        ),
        (
            "/v1/composite",
            {**field, "mode": "overlay", "layers": [{"survey": "irac4", "colormap": "nope"}] * 2},
            422,  # the document lists the colormaps
        ),
        ("/v1/epochs/difference", {**field, "survey": "irac4"}, 404),  # a survey without epochs
        ("/v1/epochs/stats", {**field, **m, "position": {"ra": 10, "dec": 10, "radiusArcsec": 5}}, 400),
        (
            "/v1/composite",
            {**field, "width": 100000, "mode": "overlay", "layers": [{"survey": "irac4"}] * 2},
            400,
        ),
    ]


def test_every_bad_input_is_a_4xx_with_a_reason(app, field):
    for path, body, status in _bad(field):
        r = app.client.post(path, json=body)
        assert r.status_code == status, (path, body, r.status_code, r.text[:300])
        reply = r.json()
        assert reply["error"] and reply["detail"], reply


def test_outside_coverage_names_the_layer(app, field):
    r = app.client.post("/v1/epochs/difference", json={**field, "survey": "magpis", "ra": 10.0, "dec": 10.0})
    assert r.status_code == 404 and "coverage" in r.text and "magpis@" in r.text


def test_layered_pictures_carry_a_strong_etag(app):
    layers = [
        {"survey": "dss2-red", "colormap": "gray"},
        {"survey": "irac4", "colormap": "inferno", "opacity": 0.3},
    ]
    body = {**GC, "mode": "overlay", "layers": layers}
    first, again = (app.client.post("/v1/composite", json=body) for _ in range(2))
    assert first.status_code == 200 and again.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag == again.headers["etag"] and first.content == again.content
    assert first.headers["cache-control"] == f"public, max-age={MAX_AGE_S}"
    other = {**body, "layers": [layers[0], {**layers[1], "opacity": 0.4}]}
    assert app.client.post("/v1/composite", json=other).headers["etag"] != etag


def test_layers_whose_tiles_are_cached_are_read_by_the_ingress(app):
    """Each layer's tiles come from the cache through the ingress when it holds them all, and
    the picture is the one made through the fetch stage."""
    import ray

    body = {**GC, "mode": "rgb", "layers": BANDS}
    ray.get(ray.get_actor("skyrender-tile-cache", namespace="skyrender").clear.remote())
    # and let the ingress's references from earlier renders lapse (cache.ingress_recent_s)
    time.sleep(app.config["applications"][0]["args"]["cache"].get("ingress_recent_s", 1.0) + 0.1)
    first = app.client.post("/v1/composite", json=body, headers={"X-Request-ID": "layers-via-first"})
    again = app.client.post("/v1/composite", json=body, headers={"X-Request-ID": "layers-via-again"})
    assert _rgb(first).tobytes() == _rgb(again).tobytes()
    records = [ingress_log_record("layers-via-first"), ingress_log_record("layers-via-again")]
    assert None not in records, "no JSON request line in the ingress log"
    assert records[0]["tiles_via"] == ",".join(["fetch"] * len(BANDS))
    assert records[1]["tiles_via"] == ",".join(["cache"] * len(BANDS))


# -- admission ---------------------------------------------------------------------------


def test_layered_requests_past_their_deadline_are_refused_uncomputed(app, field):
    layers = [{"survey": "dss2-red"}, {"survey": "irac4", "opacity": 0.5}]
    overlay = {**GC, "mode": "overlay", "layers": layers}
    requests = [
        ("/v1/composite", overlay),
        ("/v1/epochs/difference", {**field, "survey": "magpis"}),
        ("/v1/epochs/blink", {**field, "survey": "magpis"}),
        ("/v1/epochs/stats", {**field, "survey": "magpis"}),
    ]
    before = app.compose_renders()
    for path, body in requests:
        for headers in ({"X-Request-Deadline": f"{time.time() - 1.0:.3f}"}, {"Request-Timeout": "0"}):
            r = app.client.post(path, json=body, headers=headers)
            assert r.status_code == 503, (path, headers, r.text[:300])
            assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
            reply = r.json()
            assert reply["error"] == "deadline exceeded", reply
            # Refused from its headers once the gate knows a typical render, else by the route's
            # admission: before any work either way.
            assert reply["detail"]["stage"] in ("arrival", "ingress"), reply
            assert reply["detail"]["reason"] == "deadline_passed", reply
        # An unreadable deadline passes arrival; the route's admission answers it.
        r = app.client.post(path, json=body, headers={"Request-Timeout": "soon"})
        assert r.status_code == 400 and r.json()["error"] == "invalid deadline", (path, r.text[:300])
    assert app.compose_renders() == before  # nothing was computed
    # The same request with time to spare is rendered: both its layers composed.
    _ok(app.client.post("/v1/composite", json=overlay, headers={"Request-Timeout": "30"}))
    assert app.compose_renders() == before + 2
