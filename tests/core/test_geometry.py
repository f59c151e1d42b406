"""Output geometry: conventions and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from skyrender.errors import GeometryError, SkyRenderError
from skyrender.geometry import geometry_from_header, keywords_of_cards, make_geometry


def test_tan_field_is_centred_north_up_east_left():
    g = make_geometry(83.8, -5.4, 1.0, 400, 200)
    assert g.wcs.wcs.crpix.tolist() == [200.5, 100.5]
    lon, lat = g.center_world()
    assert lon == pytest.approx(83.8) and lat == pytest.approx(-5.4)
    assert g.pixel_scale_deg == pytest.approx(1.0 / 400)
    # Moving up (+y) increases dec; moving right (+x) decreases RA (east is left).
    (ra0, dec0), (ra_up, dec_up), (ra_right, _) = g.wcs.wcs_pix2world(
        [[199.5, 99.5], [199.5, 150], [300, 99.5]], 0
    )
    assert dec_up > dec0 and ra_right < ra0


def test_rotation_matches_crota2():
    g = make_geometry(10, 20, 2, 100, 100, rotation_deg=30)
    ref = WCS(naxis=2)
    ref.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    ref.wcs.crval = [10, 20]
    ref.wcs.crpix = [50.5, 50.5]
    ref.wcs.cdelt = [-0.02, 0.02]
    ref.wcs.crota = [0, 30]
    pix = np.array([[0, 0], [99, 0], [0, 99], [30, 70]], float)
    assert np.allclose(g.wcs.wcs_pix2world(pix, 0), ref.wcs_pix2world(pix, 0), atol=1e-10)


def test_galactic_frame_header():
    g = make_geometry(0, 0, 10, 64, 64, "CAR", frame="galactic")
    h = g.header()
    assert h["CTYPE1"] == "GLON-CAR" and h["CTYPE2"] == "GLAT-CAR"
    assert h["NAXIS1"] == 64 and g.frame == "galactic"
    kw = g.wcs_keywords()
    assert kw["CRVAL1"] == 0 and isinstance(kw["CDELT1"], float)


@pytest.mark.parametrize(
    "args",
    [
        (266.4, -28.9, 2.0, 512, 512, "TAN"),
        (10.0, 89.9, 1.0, 300, 200, "SIN", 30.0),
        (0.0, 0.0, 360.0, 1024, 512, "AIT", 0.0, "galactic"),
        (83.8, -5.4, 0.5, 1024, 768, "TAN", 0.0, "icrs"),
        (123.456789, -12.3456789, 7.77, 333, 222, "STG", -45.0, "fk5"),
        (0.0, -90.0, 180.0, 800, 400, "MOL", 0.0, "ecliptic"),
        (359.999, 0.001, 60.0, 640, 480, "CAR", 90.0, "galactic"),
    ],
)
def test_wcs_keywords_read_from_the_cards_equal_astropys_header(args):
    """The keywords read from wcslib's cards are astropy's WCS.to_header(), value, type and order."""
    g = make_geometry(*args)
    fast, ref = g.wcs_keywords(), g._wcs_keywords_by_astropy()
    assert fast == ref and list(fast) == list(ref)
    assert [type(v) for v in fast.values()] == [type(v) for v in ref.values()]


def test_keywords_of_cards_reads_each_kind_of_value():
    cards = "".join(
        f"{c:80}"
        for c in (
            "CTYPE1  = 'RA---TAN'           / Right ascension",
            "OBJECT  = 'O''Brien  '         / a quote inside, blanks after",
            "LOGIC   =                    T / logical",
            "NAXIS1  =                  512",
            "CDELT1  =     -0.0033333333333 / [deg]",
            "BIG     =           1.5D+03",
            "COMMENT no value here",
            "",
        )
    )
    assert keywords_of_cards(cards) == {
        "CTYPE1": "RA---TAN",
        "OBJECT": "O'Brien",
        "LOGIC": True,
        "NAXIS1": 512,
        "CDELT1": -0.0033333333333,
        "BIG": 1500.0,
    }


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"projection": "XYZ"}, "projection"),
        ({"fov_deg": 0}, "fov"),
        ({"fov_deg": -1}, "fov"),
        ({"fov_deg": 361}, "fov"),
        ({"width": 0}, "width"),
        ({"height": -5}, "height"),
        ({"width": 10**6}, "width"),
        ({"width": 2.5}, "width"),
        ({"ra": math.nan}, "ra"),
        ({"dec": math.inf}, "dec"),
        ({"dec": 91}, "dec"),
        ({"ra": "abc"}, "ra"),
        ({"rotation_deg": math.nan}, "rotation"),
        ({"frame": "fk4x"}, "frame"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, match):
    args = {"ra": 10.0, "dec": 20.0, "fov_deg": 1.0, "width": 100, "height": 100}
    args.update(kwargs)
    with pytest.raises(GeometryError, match=match) as info:
        make_geometry(**args)
    assert isinstance(info.value, SkyRenderError) and isinstance(info.value, ValueError)


def test_pixel_cap_is_configurable():
    with pytest.raises(GeometryError, match="limit"):
        make_geometry(0, 0, 1, 2000, 2000, max_pixels=1000 * 1000)
    assert make_geometry(0, 0, 1, 2000, 2000, max_pixels=2000 * 2000).n_pixels == 4_000_000


@pytest.mark.parametrize(
    "geom",
    [
        make_geometry(266.4, -28.9, 2.0, 1024, 768),
        make_geometry(10.0, 89.5, 3.0, 300, 200, "SIN", rotation_deg=33.0),
        make_geometry(0.0, 0.0, 360.0, 1024, 512, "AIT", frame="galactic"),
        make_geometry(359.99, -45.0, 20.0, 64, 48, "ZEA", rotation_deg=-120.0, frame="ecliptic"),
        geometry_from_header(make_geometry(10.0, 89.5, 3.0, 300, 200, "SIN", rotation_deg=33.0).header()),
    ],
    ids=["tan", "sin-pole-rotated", "ait-galactic", "zea-ecliptic", "header-sin"],
)
def test_geometry_pickles_to_the_same_sky(geom):
    import pickle

    # A field is rebuilt from its arguments; a header's geometry from the header's text.
    way = "_geometry_from_field" if geom.field_args is not None else "_geometry_from_header_text"
    assert geom.__reduce_ex__(5)[0].__name__ == way
    back = pickle.loads(pickle.dumps(geom))
    assert (back.width, back.height, back.frame) == (geom.width, geom.height, geom.frame)
    xs, ys = np.meshgrid(np.linspace(0, geom.width - 1, 7), np.linspace(0, geom.height - 1, 5))
    want = np.array(geom.wcs.wcs_pix2world(xs.ravel(), ys.ravel(), 0))
    got = np.array(back.wcs.wcs_pix2world(xs.ravel(), ys.ravel(), 0))
    ok = np.isfinite(want)
    assert np.array_equal(ok, np.isfinite(got))
    assert np.abs(got[ok] - want[ok]).max() < 1e-10  # degrees


def test_geometry_with_distortions_pickles_the_astropy_way():
    import pickle

    from skyrender.geometry import geometry_from_header

    header = {"NAXIS1": 100, "NAXIS2": 100, "CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP",
              "CRVAL1": 10.0, "CRVAL2": 20.0, "CRPIX1": 50.5, "CRPIX2": 50.5, "CDELT1": -1e-3,
              "CDELT2": 1e-3, "A_ORDER": 2, "B_ORDER": 2, "A_2_0": 1e-5, "B_0_2": -2e-5}  # fmt: skip
    geom = geometry_from_header(header)
    assert geom.wcs.sip is not None
    back = pickle.loads(pickle.dumps(geom))
    assert back.wcs.sip is not None
    pix = [[0.0, 0.0], [99.0, 99.0], [10.0, 80.0]]
    assert np.allclose(back.wcs.all_pix2world(pix, 0), geom.wcs.all_pix2world(pix, 0), rtol=0, atol=1e-12)
