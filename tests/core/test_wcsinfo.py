"""WCS validation and description on real headers and a zoo of broken ones."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from skyrender.errors import InvalidWCSError, SkyRenderError
from skyrender.geometry import make_geometry
from skyrender.wcsinfo import WcsDescription, describe_header, normalize_header, wcs_from_header

REAL = {
    # file: (projection, frame, width, height, pixel scale [deg])
    "HorseHead.fits": ("TAN", "icrs", 891, 893, 2.8e-4),
    "first_cutout_J105007+304037.fits": ("SIN", "fk5", 33, 33, 5.0e-4),
    "gc_bolocam_gps.fits": ("CAR", "galactic", 640, 638, 2.0e-3),
    "magpis_20cm_G10.5+0.0.fits": ("SIN", "galactic", 300, 300, 5.55556e-4),
}

BASE = {
    "NAXIS": 2,
    "NAXIS1": 100,
    "NAXIS2": 80,
    "CTYPE1": "RA---TAN",
    "CTYPE2": "DEC--TAN",
    "CRPIX1": 50.5,
    "CRPIX2": 40.5,
    "CRVAL1": 10.0,
    "CRVAL2": 20.0,
    "CDELT1": -0.01,
    "CDELT2": 0.01,
}


def _header(fits_dir, name: str) -> fits.Header:
    return fits.getheader(fits_dir / name)


def _without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# -- real headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_headers_are_described(fits_dir, name):
    projection, frame, width, height, scale = REAL[name]
    header = _header(fits_dir, name)
    desc = describe_header(header)
    assert isinstance(desc, WcsDescription)
    assert (desc.projection, desc.frame, desc.width, desc.height) == (projection, frame, width, height)
    assert desc.pixel_scale_deg == pytest.approx((scale, scale), rel=0.01)
    assert desc.fov_deg == pytest.approx((width * scale, height * scale), rel=0.01)
    assert abs(desc.rotation_deg) < 0.2  # all four are north up (FIRST: meridian convergence)

    # The centre agrees with astropy's own full WCS of the file, taken to ICRS.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = WCS(header).celestial
    centre = ref.pixel_to_world((width - 1) / 2, (height - 1) / 2)
    assert centre.icrs.ra.deg == pytest.approx(desc.center_ra, abs=1e-9)
    assert centre.icrs.dec.deg == pytest.approx(desc.center_dec, abs=1e-9)
    own = centre.spherical
    assert (own.lon.deg % 360, own.lat.deg) == pytest.approx((desc.center_lon, desc.center_lat), abs=1e-9)

    # Corners: outer pixel edges, bottom-left, bottom-right, top-right, top-left.
    edges = [(-0.5, -0.5), (width - 0.5, -0.5), (width - 0.5, height - 0.5), (-0.5, height - 0.5)]
    for (x, y), corner in zip(edges, desc.corners, strict=True):
        expected = ref.pixel_to_world(x, y).icrs
        got = SkyCoord(*corner, unit="deg")
        assert expected.separation(got).deg < 1e-9


def test_stray_third_axis_is_dropped(fits_dir):
    header = _header(fits_dir, "magpis_20cm_G10.5+0.0.fits")
    assert header["NAXIS"] == 2 and "CTYPE3" in header
    wcs, width, height = wcs_from_header(header)
    assert wcs.naxis == 2 and list(wcs.wcs.ctype) == ["GLON-SIN", "GLAT-SIN"]
    assert (width, height) == (300, 300)
    # FIRST has CTYPE3 and CTYPE4.
    wcs, _, _ = wcs_from_header(_header(fits_dir, "first_cutout_J105007+304037.fits"))
    assert wcs.naxis == 2 and wcs.wcs.ctype[0] == "RA---SIN"


def test_magpis_centre_is_the_named_object(fits_dir):
    desc = describe_header(_header(fits_dir, "magpis_20cm_G10.5+0.0.fits"))
    assert (desc.center_lon, desc.center_lat) == pytest.approx((10.5, 0.0), abs=3e-4)


@pytest.mark.parametrize("name", sorted(REAL))
def test_to_dict_is_json_and_its_header_round_trips(fits_dir, name):
    desc = describe_header(_header(fits_dir, name))
    data = json.loads(json.dumps(desc.to_dict(), allow_nan=False))
    assert set(data) >= {
        "projection", "frame", "center_ra", "center_dec", "center_lon", "center_lat", "pixel_scale_deg",
        "width", "height", "rotation_deg", "corners", "fov_deg", "header",
    }  # fmt: skip
    assert len(data["corners"]) == 4 and all(len(c) == 2 for c in data["corners"])
    assert data["header"]["NAXIS1"] == desc.width and "CTYPE3" not in data["header"]
    again = describe_header(data["header"])  # the normalised header describes the same image
    assert again.center_ra == pytest.approx(desc.center_ra, abs=1e-9)
    assert again.center_dec == pytest.approx(desc.center_dec, abs=1e-9)
    np.testing.assert_allclose(np.array(again.corners), np.array(desc.corners), atol=1e-9)


@pytest.mark.parametrize("name", sorted(REAL))
def test_json_dict_of_a_real_header(fits_dir, name):
    header = _header(fits_dir, name)
    as_json = json.loads(json.dumps({k: v for k, v in header.items() if k not in ("COMMENT", "HISTORY", "")}))
    assert describe_header(as_json).to_dict() == describe_header(header).to_dict()


# -- synthetic geometry ------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [0.0, 30.0, -120.0, 180.0, 90.0])
@pytest.mark.parametrize("projection", ["TAN", "SIN", "CAR", "AIT"])
def test_rotation_matches_make_geometry(projection, rotation):
    geom = make_geometry(83.8, -5.4, 1.0, 300, 200, projection, rotation)
    desc = describe_header(geom.header())
    assert desc.rotation_deg == pytest.approx(rotation, abs=1e-6)
    assert (desc.center_ra, desc.center_dec) == pytest.approx((83.8, -5.4), abs=1e-9)
    assert desc.pixel_scale_deg == pytest.approx((1 / 300, 1 / 300))
    assert desc.fov_deg == pytest.approx((1.0, 200 / 300))


def test_rotation_in_galactic_frame_is_galactic_north():
    desc = describe_header(make_geometry(10, 20, 1.0, 64, 64, "SIN", 45, frame="galactic").header())
    assert desc.frame == "galactic" and desc.rotation_deg == pytest.approx(45, abs=1e-6)
    assert (desc.center_lon, desc.center_lat) == pytest.approx((10, 20))
    icrs = SkyCoord(10, 20, unit="deg", frame="galactic").icrs
    assert (desc.center_ra, desc.center_dec) == pytest.approx((icrs.ra.deg, icrs.dec.deg))


def test_latitude_first_header_keeps_pixel_axes():
    header = {**BASE, "CTYPE1": "DEC--TAN", "CTYPE2": "RA---TAN"}
    wcs, _, _ = wcs_from_header(header)
    assert list(wcs.wcs.ctype) == ["DEC--TAN", "RA---TAN"]
    desc = describe_header(header)
    # CRVAL1 is now the declination; dec falls along +x, so north points to −x.
    assert (desc.center_ra, desc.center_dec) == pytest.approx((20.0, 10.0))
    assert desc.rotation_deg == pytest.approx(90.0, abs=1e-6)


def test_rotation_near_the_pole():
    desc = describe_header(make_geometry(10, 89.99, 1.0, 100, 100, "TAN", 20).header())
    assert desc.rotation_deg == pytest.approx(20, abs=1e-6)


def test_allsky_corners_outside_the_projection_are_none():
    header = {**BASE, "CTYPE1": "RA---AIT", "CTYPE2": "DEC--AIT", "CDELT1": -2.0, "CDELT2": 2.0}
    desc = describe_header(header)
    assert desc.corners == [None, None, None, None]
    json.dumps(desc.to_dict(), allow_nan=False)


def test_json_values_are_coerced():
    header = {k.lower(): (str(v) if isinstance(v, (int, float)) else v) for k, v in BASE.items()}
    desc = describe_header(header)
    assert (desc.width, desc.height) == (100, 80)
    assert (desc.center_ra, desc.center_dec) == pytest.approx((10.0, 20.0))


def test_crota_and_cd_matrix_and_units():
    assert describe_header({**BASE, "CROTA2": 30}).rotation_deg == pytest.approx(30)
    cd = {**_without(BASE, "CDELT1", "CDELT2"), "CD1_1": -0.01, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.01}
    assert describe_header(cd).pixel_scale_deg == pytest.approx((0.01, 0.01))
    arcsec = {**BASE, "CUNIT1": "arcsec", "CUNIT2": "arcsec", "CDELT1": -36.0, "CDELT2": 36.0}
    assert describe_header(arcsec).pixel_scale_deg == pytest.approx((0.01, 0.01))


def test_normalize_header_keeps_comments_and_upper_cases():
    hdr = normalize_header({"object": "M1", "COMMENT": ["a", "b"], "HISTORY": "c"})
    assert hdr["OBJECT"] == "M1" and list(hdr["COMMENT"]) == ["a", "b"] and list(hdr["HISTORY"]) == ["c"]


# -- broken headers ----------------------------------------------------------------------------

BROKEN = {
    "unknown projection": (
        {**BASE, "CTYPE1": "RA---XYZ", "CTYPE2": "DEC--XYZ"},
        "Unrecognized projection code",
    ),
    "mismatched frames": ({**BASE, "CTYPE2": "GLAT-TAN"}, "Inconsistent projection types"),
    "mismatched projections": ({**BASE, "CTYPE2": "DEC--SIN"}, "Inconsistent projection types"),
    "longitude only": ({**BASE, "CTYPE2": "LINEAR"}, "Unmatched celestial axes"),
    "no celestial axes": ({**BASE, "CTYPE1": "LINEAR", "CTYPE2": "LINEAR"}, "no celestial axes"),
    "no CTYPE": (_without(BASE, "CTYPE1", "CTYPE2"), "no celestial axes"),
    "celestial on axes 2-3": (
        {**BASE, "CTYPE1": "FREQ", "CTYPE2": "RA---TAN", "CTYPE3": "DEC--TAN", "CDELT3": 0.01},
        "Unmatched celestial axes",
    ),
    "zero CDELT": ({**BASE, "CDELT1": 0.0}, "CDELT1 is zero"),
    "zero CDELT string": ({**BASE, "CDELT2": "0"}, "CDELT2 is zero"),
    "missing CDELT": (_without(BASE, "CDELT1"), "CDELT1"),
    "singular CD": (
        {**_without(BASE, "CDELT1", "CDELT2"), "CD1_1": 0.01, "CD1_2": 0.01, "CD2_1": 0.01, "CD2_2": 0.01},
        "singular",
    ),
    "zero CD": ({**_without(BASE, "CDELT1", "CDELT2"), "CD1_1": 0.0, "CD2_2": 0.0}, "singular"),
    "missing NAXIS1": (_without(BASE, "NAXIS1"), "NAXIS1"),
    "missing NAXIS2": (_without(BASE, "NAXIS2"), "NAXIS2"),
    "zero NAXIS1": ({**BASE, "NAXIS1": 0}, "NAXIS1 must be between"),
    "negative NAXIS2": ({**BASE, "NAXIS2": -5}, "NAXIS2 must be between"),
    "huge NAXIS1": ({**BASE, "NAXIS1": 10**9}, "NAXIS1 must be between"),
    "fractional NAXIS1": ({**BASE, "NAXIS1": 10.5}, "whole number"),
    "text NAXIS2": ({**BASE, "NAXIS2": "wide"}, "NAXIS2 must be a number"),
    "text CRVAL": ({**BASE, "CRVAL1": "abc"}, "CRVAL1 must be a number"),
    "NaN CRVAL": ({**BASE, "CRVAL1": "nan"}, "finite"),
    "infinite CRPIX": ({**BASE, "CRPIX1": float("inf")}, "finite"),
    "bool CRVAL": ({**BASE, "CRVAL1": True}, "CRVAL1 must be a number"),
    "nested CRVAL": ({**BASE, "CRVAL1": {"value": 1}}, "CRVAL1 must be a number"),
    "list CRVAL": ({**BASE, "CRVAL1": [1, 2]}, "CRVAL1 must be a number"),
    "nested other keyword": ({**BASE, "OBJECT": {"a": 1}}, "OBJECT"),
    "null keyword": ({**BASE, "OBJECT": None}, "OBJECT has no value"),
    "numeric CTYPE": ({**BASE, "CTYPE1": 5}, "CTYPE1 must be a string"),
    "bad PV": ({**BASE, "CTYPE1": "RA---ZPN", "CTYPE2": "DEC--ZPN", "PV2_1": "x"}, "PV2_1"),
    "latitude out of range": ({**BASE, "CRVAL2": 100.0}, "Ill-conditioned"),
    "unknown unit": ({**BASE, "CUNIT1": "furlong"}, "furlong"),
    "unknown RADESYS": ({**BASE, "RADESYS": "FOO"}, "celestial frame"),
    "non-ASCII value": ({**BASE, "OBJECT": "café"}, "ASCII"),
    "non-text comment": ({**BASE, "COMMENT": [1]}, "COMMENT"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_headers(name):
    header, reason = BROKEN[name]
    with pytest.raises(InvalidWCSError) as info:
        describe_header(header)
    # The sentence for people, then wcslib's own words kept apart in `reason`.
    text = f"{info.value} {info.value.reason or ''}"
    assert re.search(reason, text), text
    for part in (str(info.value), info.value.reason or ""):
        assert "cextern" not in part and "ERROR" not in part and ".c:" not in part  # wcslib's location noise
    assert isinstance(info.value, SkyRenderError)


#: The keyword each broken header is blamed on.
BLAMED = {
    "unknown projection": "CTYPE1",
    "mismatched frames": "CTYPE2",
    "mismatched projections": "CTYPE2",
    "zero CDELT": "CDELT1",
    "missing CDELT": "CDELT1",
    "singular CD": "CDELT1",
    "missing NAXIS2": "NAXIS2",
    "text CRVAL": "CRVAL1",
    "bad PV": "PV2_1",
    "latitude out of range": "CRVAL2",
    "unknown unit": "CUNIT1",
    "nested other keyword": "OBJECT",
}


@pytest.mark.parametrize("name", sorted(BLAMED))
def test_broken_headers_name_the_keyword(name):
    with pytest.raises(InvalidWCSError) as info:
        describe_header(BROKEN[name][0])
    assert info.value.field == BLAMED[name]
    assert BLAMED[name] in str(info.value) or name in ("singular CD",)


def test_parametric_projection_without_parameters_says_what_to_do():
    header = {**BASE, "CTYPE1": "RA---ZPN", "CTYPE2": "DEC--ZPN"}
    with pytest.raises(InvalidWCSError) as info:
        describe_header(header)
    assert "ZPN" in str(info.value) and "PV2_1" in str(info.value)
    assert "zenithal/azimuthal polynomial" in info.value.reason  # wcslib's words, kept apart


@pytest.mark.parametrize("name", ["unknown projection", "zero CDELT", "missing NAXIS1", "singular CD"])
def test_broken_headers_also_fail_as_astropy_headers(name):
    header = fits.Header()
    for key, value in BROKEN[name][0].items():
        header[key] = value
    with pytest.raises(InvalidWCSError) as info:
        wcs_from_header(header)
    assert re.search(BROKEN[name][1], f"{info.value} {info.value.reason or ''}")


@pytest.mark.parametrize("header", [None, "CTYPE1 = 'RA---TAN'", ["CTYPE1"], 3])
def test_not_a_header(header):
    with pytest.raises(InvalidWCSError):
        describe_header(header)


def test_max_side_is_a_parameter():
    with pytest.raises(InvalidWCSError, match="between 1 and 50"):
        wcs_from_header(BASE, max_side=50)
    assert wcs_from_header(BASE, max_side=100)[1:] == (100, 80)


def test_no_warnings_escape(fits_dir, recwarn):
    for name in REAL:
        describe_header(_header(fits_dir, name))
    with pytest.raises(InvalidWCSError):
        describe_header({**BASE, "CTYPE1": "RA---XYZ"})
    assert not [w for w in recwarn if "FITSFixed" in type(w.message).__name__]
