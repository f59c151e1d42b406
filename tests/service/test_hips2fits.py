"""hips2fits compatibility: astroquery's own client, pointed at the running service."""

from __future__ import annotations

import json

import astropy.units as u
import httpx
import numpy as np
import pytest
from astropy.coordinates import Angle, Latitude, Longitude, SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from .serve_harness import ServeApp


@pytest.fixture(scope="module")
def app(upstream):
    args = {
        "surveys": [
            {"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"},
            {"name": "planck143", "url": f"{upstream.url}/cds-planck-hfi143"},
            {"name": "gaia-rv", "url": f"{upstream.url}/cds-gaia-dr2-rv"},
        ],
        "build_sample_survey": False,
    }
    served = ServeApp(args)
    yield served
    served.close()


@pytest.fixture(scope="module")
def hips2fits(app):
    from astroquery.hips2fits import hips2fitsClass

    # The client's server is a plain attribute (its astropy config only lists CDS mirrors).
    client = hips2fitsClass()
    client.server = f"{app.url}/hips2fits"
    return client


def _query(client, **kw):
    args = {
        "hips": "dss2-red",
        "width": 200,
        "height": 150,
        "projection": "TAN",
        "ra": Longitude(266.4 * u.deg),
        "dec": Latitude(-28.9 * u.deg),
        "fov": Angle(4 * u.deg),
    }
    args.update(kw)
    return client.query(**args)


def test_query_fits_wcs_and_pixels_equal_our_preview(app, hips2fits):
    hdul = _query(hips2fits, format="fits")
    data = hdul[0].data
    assert data.shape == (150, 200)
    w = WCS(hdul[0].header)
    assert np.allclose(w.wcs.crval, [266.4, -28.9]) and w.wcs.ctype[0] == "RA---TAN"
    assert np.allclose(w.wcs_pix2world([[99.5, 74.5]], 0), [[266.4, -28.9]])
    # The same field through /v1/preview (palette PNG) must show the same picture.
    r = app.client.post(
        "/v1/preview",
        json={
            "ra": 266.4,
            "dec": -28.9,
            "fovDeg": 4,
            "width": 200,
            "height": 150,
            "survey": "dss2-red",
            "minCut": float(np.nanmin(data)),
            "maxCut": float(np.nanmax(data)),
        },
    )
    assert r.status_code == 200
    from io import BytesIO

    from PIL import Image

    index = np.asarray(Image.open(BytesIO(r.content)))[::-1].astype(float)
    lo, hi = np.nanmin(data), np.nanmax(data)
    expected = np.clip(np.floor((data - lo) / (hi - lo) * 255), 0, 254)  # 255 is the no-data index
    assert np.abs(index - expected).max() <= 1


def test_query_with_wcs(hips2fits):
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    w.wcs.crval = [0.0, 0.0]
    w.wcs.crpix = [64.5, 32.5]
    w.wcs.cdelt = [-0.02, 0.02]  # 72": order 3 tiles, the only ones in the test data
    w.pixel_shape = (128, 64)
    hdul = hips2fits.query_with_wcs(hips="planck143", wcs=w, format="fits")
    got = WCS(hdul[0].header)
    assert hdul[0].data.shape == (64, 128)
    assert list(got.wcs.ctype) == ["GLON-CAR", "GLAT-CAR"]
    assert np.allclose(got.wcs.crval, [0, 0]) and np.allclose(got.wcs.cdelt, [-0.02, 0.02])
    assert np.allclose(got.wcs.crpix, [64.5, 32.5])
    assert np.isfinite(hdul[0].data).mean() > 0.9


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_png_and_jpeg_decode_to_rgb(hips2fits, fmt):
    image = _query(hips2fits, format=fmt, cmap="viridis", min_cut=1.0, max_cut=99.0, stretch="asinh")
    assert image.ndim == 3 and image.shape[:2] == (150, 200) and image.shape[2] in (3, 4)


def test_galactic_coordsys_and_rotation(hips2fits):
    hdul = _query(hips2fits, coordsys="galactic", rotation_angle=Angle(30 * u.deg), format="fits")
    w = WCS(hdul[0].header)
    assert w.wcs.ctype[0].startswith("GLON")
    centre = SkyCoord(ra=266.4, dec=-28.9, unit="deg").galactic
    assert np.allclose(w.wcs.crval, [centre.l.deg, centre.b.deg], atol=1e-9)
    # 30 degrees of rotation: galactic north points 30 deg from +y towards -x (CROTA2).
    x0, y0 = 99.5, 74.5
    lon, lat = w.wcs_pix2world([[x0, y0]], 0)[0]
    xn, yn = w.wcs_world2pix([[lon, lat + 0.1]], 0)[0]
    angle = np.degrees(np.arctan2(-(xn - x0), yn - y0))
    assert angle == pytest.approx(30.0, abs=0.1)


def test_all_sky_ait(hips2fits):
    hdul = _query(
        hips2fits,
        hips="gaia-rv",
        projection="AIT",
        width=360,
        height=180,
        ra=Longitude(0 * u.deg),
        dec=Latitude(0 * u.deg),
        fov=Angle(360 * u.deg),
        format="fits",
    )
    data = hdul[0].data  # Gaia's HiPS offers colour JPEG tiles only: a 3-plane cube
    assert data.shape[-2:] == (180, 360)
    covered = np.isfinite(data).reshape(-1, 180, 360).all(axis=0).mean()
    assert 0.6 < covered < 0.67  # the AIT ellipse (324 x 162 deg) covers 0.636 of a 360 x 180 frame


def test_query_by_hips_id(hips2fits):
    hdul = _query(hips2fits, hips="CDS/P/DSS2/red", format="fits")
    assert hdul[0].data.shape == (150, 200)


def test_errors_are_title_and_description(app, hips2fits):
    with pytest.raises(AttributeError, match="Unknown HiPS"):
        _query(hips2fits, hips="no-such-survey", format="fits")
    r = app.client.get(
        "/hips2fits",
        params={
            "hips": "dss2-red",
            "width": 10,
            "height": 10,
            "projection": "XYZ",
            "ra": 0,
            "dec": 0,
            "fov": 1,
        },
    )
    assert r.status_code == 400 and set(r.json()) == {"title", "description"}
    r = app.client.get("/hips2fits", params={"hips": "dss2-red", "wcs": "{not json"})
    assert r.status_code == 400 and r.json()["title"] == "Invalid WCS"
    r = app.client.get("/hips2fits", params={"width": 10, "height": 10, "fov": 1, "ra": 0, "dec": 0})
    assert r.status_code == 400 and r.json()["title"] == "Missing parameter", r.text
    big_form = {"hips": "dss2-red", "wcs": "x" * (2 * 1024 * 1024)}
    sized = app.client.post("/hips2fits", data=big_form)
    body = httpx.Request("POST", "http://x", data=big_form).read()  # the same form, sent chunked
    chunked = app.client.post(
        "/hips2fits",
        content=(body[i : i + 65536] for i in range(0, len(body), 65536)),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    for r in (sized, chunked):
        assert r.status_code == 413 and set(r.json()) == {"title", "description"}, r.text[:200]


def test_post_form(app):
    form = {
        "hips": "dss2-red",
        "width": "64",
        "height": "64",
        "projection": "TAN",
        "ra": "266.4",
        "dec": "-28.9",
        "fov": "1",
        "format": "fits",
    }
    r = app.client.post("/hips2fits", data=form)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/fits"
    hdul = fits.HDUList.fromstring(r.content)
    assert hdul[0].data.shape == (64, 64)
    wcs_param = json.dumps(
        {
            "NAXIS1": 32,
            "NAXIS2": 16,
            "CTYPE1": "RA---SIN",
            "CTYPE2": "DEC--SIN",
            "CRVAL1": 266.4,
            "CRVAL2": -28.9,
            "CRPIX1": 16.5,
            "CRPIX2": 8.5,
            "CDELT1": -0.01,
            "CDELT2": 0.01,
        }
    )
    r = app.client.post("/hips2fits", data={"hips": "dss2-red", "wcs": wcs_param, "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
