"""The compiled pixel → sky kernel against astropy (wcslib), to 1e-9 degrees."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from skyrender.frames import rotation_matrix
from skyrender.geometry import make_geometry
from skyrender.projection import FAST_PROJECTIONS, fast_path_supported, lonlat_reference, pixel_lonlat

TOL_DEG = 1e-9

CASES = [
    # projection, fov, ra, dec, rotation, wcs frame, survey frame
    ("TAN", 2.0, 266.4, -28.9, 0.0, "icrs", "icrs"),
    ("TAN", 2.0, 266.4, -28.9, 30.0, "icrs", "galactic"),
    ("TAN", 0.05, 0.001, 89.999, 0.0, "icrs", "icrs"),  # at the pole, across RA 0
    ("SIN", 10.0, 10.0, 89.9, -45.0, "icrs", "icrs"),
    ("ARC", 100.0, 0.0, 0.0, 15.0, "galactic", "icrs"),
    ("ZEA", 120.0, 180.0, -60.0, 0.0, "icrs", "galactic"),
    ("STG", 90.0, 359.9, 0.0, 0.0, "icrs", "icrs"),
    ("CAR", 360.0, 0.0, 0.0, 0.0, "icrs", "icrs"),
    ("CAR", 100.0, 180.0, 60.0, 0.0, "icrs", "ecliptic"),
    ("AIT", 360.0, 0.0, 0.0, 0.0, "galactic", "icrs"),
    ("MOL", 360.0, 266.4, -29.0, 0.0, "icrs", "galactic"),
    ("AIT", 360.0, 83.8, -5.4, 20.0, "icrs", "icrs"),
]


def _sep_deg(lon1, lat1, lon2, lat2):
    c1, c2 = np.cos(lat1), np.cos(lat2)
    v1 = np.stack([c1 * np.cos(lon1), c1 * np.sin(lon1), np.sin(lat1)])
    v2 = np.stack([c2 * np.cos(lon2), c2 * np.sin(lon2), np.sin(lat2)])
    cross = np.linalg.norm(np.cross(v1, v2, axis=0), axis=0)
    return np.degrees(np.arctan2(cross, (v1 * v2).sum(axis=0)))


@pytest.mark.parametrize("proj,fov,ra,dec,rot,frame,target", CASES)
def test_fast_path_matches_astropy(proj, fov, ra, dec, rot, frame, target):
    geom = make_geometry(ra, dec, fov, 301, 203, proj, rot, frame)
    assert fast_path_supported(geom.wcs)
    lon, lat, valid = pixel_lonlat(geom.wcs, 301, 203, wcs_frame=frame, target_frame=target)
    rlon, rlat, rvalid = lonlat_reference(geom.wcs, 301, 203, wcs_frame=frame, target_frame=target)
    # Same pixels on and off the sky, and the same positions to 1e-9 deg.
    assert np.array_equal(valid, rvalid)
    assert valid.sum() > 0
    sep = _sep_deg(lon[valid], lat[valid], rlon[valid], rlat[valid])
    assert sep.max() < TOL_DEG, f"max separation {sep.max():.3e} deg"
    assert np.all((lon >= 0) & (lon < 2 * np.pi))


def test_all_sky_projections_have_off_sky_corners():
    geom = make_geometry(0, 0, 360, 200, 100, "AIT")
    _, _, valid = pixel_lonlat(geom.wcs, 200, 100, wcs_frame="icrs", target_frame="icrs")
    valid = valid.reshape(100, 200)
    assert not valid[0, 0] and not valid[-1, -1] and valid[50, 100]


def test_frame_matrix_agrees_with_skycoord():
    rot = rotation_matrix("icrs", "galactic")
    c = SkyCoord(ra=[266.40499, 10.0], dec=[-28.93617, 41.0], unit="deg", frame="icrs")
    g = c.galactic
    v = rot @ c.cartesian.xyz.value
    lon = np.degrees(np.arctan2(v[1], v[0])) % 360
    assert np.allclose(lon, g.l.deg, atol=1e-10)
    assert np.allclose(np.degrees(np.arcsin(v[2])), g.b.deg, atol=1e-10)


def test_other_projections_fall_back_to_astropy():
    geom = make_geometry(10, 20, 30, 64, 48, "AZP")
    assert not fast_path_supported(geom.wcs)
    lon, lat, valid = pixel_lonlat(geom.wcs, 64, 48, wcs_frame="icrs", target_frame="icrs")
    rlon, rlat, _ = lonlat_reference(geom.wcs, 64, 48, wcs_frame="icrs", target_frame="icrs")
    assert np.allclose(lon[valid], rlon[valid]) and np.allclose(lat[valid], rlat[valid])


def test_wcslib_distortions_fall_back_to_astropy():
    """A TPD distortion (wcslib's own, as in DSS plate solutions) only shows in the header."""
    from astropy.io import fits
    from astropy.wcs import WCS

    header = make_geometry(10, 20, 2, 64, 48, "TAN").header()
    header["CQDIS1"] = header["CQDIS2"] = "TPD"
    for axis in (1, 2):
        for record in ("NAXES: 2", "AXIS.1: 1", "AXIS.2: 2", "TPD.FWD.0: 0.0", "TPD.FWD.1: 1.0"):
            header.append((f"DQ{axis}", record))
        header.append((f"DQ{axis}", f"TPD.FWD.{axis + 1}: 2.0e-3"))  # a small non-linear term
    wcs = WCS(fits.Header(header))
    assert not fast_path_supported(wcs)
    lon, lat, valid = pixel_lonlat(wcs, 64, 48, wcs_frame="icrs", target_frame="icrs")
    rlon, rlat, _ = lonlat_reference(wcs, 64, 48, wcs_frame="icrs", target_frame="icrs")
    assert valid.all() and np.allclose(lon, rlon) and np.allclose(lat, rlat)
    plain = make_geometry(10, 20, 2, 64, 48, "TAN").wcs
    assert fast_path_supported(plain)
    plon, plat, _ = pixel_lonlat(plain, 64, 48, wcs_frame="icrs", target_frame="icrs")
    assert np.abs(np.degrees(lat - plat)).max() > 1e-4  # the distortion moves pixels: the check matters


def test_fast_projection_list_is_what_the_kernel_knows():
    assert set(FAST_PROJECTIONS) == {"TAN", "SIN", "ARC", "ZEA", "STG", "CAR", "AIT", "MOL"}
