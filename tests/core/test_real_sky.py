"""Renders of real CDS tiles: against astropy reproject, across frames, over the whole sky."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.ndimage import gaussian_filter

from skyrender.geometry import OutputGeometry, make_geometry
from skyrender.render import reproject

from .tiles_on_disk import tileset


@pytest.fixture(scope="module")
def surveys(hips_dir):
    return {
        name: tileset(hips_dir / name, 3)
        for name in ("cds-planck-hfi143", "cds-spitzer-irac4", "cds-dss2-red", "cds-gaia-dr2-rv")
    }


FRAMES = {
    "cds-planck-hfi143": "galactic",
    "cds-spitzer-irac4": "galactic",
    "cds-dss2-red": "icrs",
    "cds-gaia-dr2-rv": "icrs",
}


def _reference(hips_path, geom: OutputGeometry) -> np.ndarray:
    from reproject import reproject_interp
    from reproject.hips import hips_as_dask_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array, wcs = hips_as_dask_array(str(hips_path), level=3)
        out, _ = reproject_interp(
            (array, wcs), geom.wcs, shape_out=(geom.height, geom.width), order="bilinear"
        )
    return out


@pytest.mark.parametrize(
    "name,ra,dec,fov,proj",
    [
        ("cds-planck-hfi143", 266.4, -28.9, 20.0, "TAN"),
        ("cds-planck-hfi143", 270.0, -20.0, 12.0, "SIN"),
        ("cds-spitzer-irac4", 266.4, -28.9, 3.0, "TAN"),
        ("cds-gaia-dr2-rv", 120.0, 30.0, 60.0, "ZEA"),
    ],
)
def test_agrees_with_astropy_reproject(hips_dir, surveys, name, ra, dec, fov, proj):
    """Bilinear renders equal reproject's (hips_as_dask_array + reproject_interp) to 1e-4 of the
    data range, on float surveys, away from the poles; coverage agrees to a few edge pixels."""
    geom = make_geometry(ra, dec, fov, 256, 192, proj)
    ours = reproject(geom, surveys[name], FRAMES[name])
    ref = _reference(hips_dir / name, geom)
    both = np.isfinite(ours) & np.isfinite(ref)
    assert both.mean() > 0.5
    data_range = np.nanmax(ref) - np.nanmin(ref)
    diff = np.abs(ours - ref)[both] / data_range
    assert diff.max() <= 1e-4, f"max |diff| = {diff.max():.2e} of the range"
    assert np.median(diff) <= 1e-6
    # Coverage: NaN masks differ only along coverage edges (our nearest-cell rule).
    assert (np.isfinite(ours) != np.isfinite(ref)).mean() < 0.01


# -- frames ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bolocam_field(fits_dir):
    """Bolocam 1.1 mm (GLON-CAR) resampled onto a galactic CAR grid of 30" pixels."""
    from reproject import reproject_interp

    hdu = fits.open(fits_dir / "gc_bolocam_gps.fits")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(hdu.header).celestial
        geom = make_geometry(
            hdu.header["CRVAL1"], hdu.header["CRVAL2"], 1.0, 120, 120, "CAR", frame="galactic"
        )
        image, _ = reproject_interp((np.squeeze(hdu.data), wcs), geom.wcs, shape_out=(120, 120))
    return geom, image


def _smooth(a, sigma=2.0):
    a = np.where(np.isfinite(a), a, np.nanmedian(a))
    a = gaussian_filter(a, sigma)
    return (a - a.mean()) / a.std()


def _xcorr_peak(a, b, max_shift=6):
    """(correlation at zero shift, (dy, dx) of the correlation peak) of two smoothed maps."""
    a, b = _smooth(a), _smooth(b)
    m = max_shift
    best, shift = -2.0, (0, 0)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            c = np.mean(np.roll(a, (dy, dx), axis=(0, 1))[m:-m, m:-m] * b[m:-m, m:-m])
            if c > best:
                best, shift = c, (dy, dx)
    return float(np.mean(a[m:-m, m:-m] * b[m:-m, m:-m])), shift


def test_galactic_planck_lands_on_bolocam(surveys, bolocam_field):
    geom, bolocam = bolocam_field
    planck = reproject(geom, surveys["cds-planck-hfi143"], "galactic")
    corr, (dy, dx) = _xcorr_peak(planck, bolocam)
    assert corr > 0.5
    assert abs(dy) <= 2 and abs(dx) <= 3, f"peak shifted by ({dy}, {dx}) px of 30 arcsec"


def test_galactic_irac4_lands_on_the_plane(surveys, bolocam_field):
    geom, bolocam = bolocam_field
    irac = reproject(geom, surveys["cds-spitzer-irac4"], "galactic")
    assert np.isfinite(irac).mean() > 0.95
    corr, (dy, _) = _xcorr_peak(irac, bolocam)
    # The plane lands on the plane. At 8 um the densest mm clumps are infrared-dark clouds
    # (absorption), which pulls the match a few arcmin off the mm ridge: hence 3'.
    assert corr > 0.2 and abs(dy) <= 6
    # Read in the wrong frame, the same tiles land far away (here: off the tile set).
    wrong = reproject(geom, surveys["cds-spitzer-irac4"], "icrs")
    assert np.isfinite(wrong).mean() < 0.05


def test_equatorial_and_galactic_outputs_agree(surveys):
    """DSS2 (equatorial tiles) rendered on a galactic grid = rendered on an equatorial grid
    then moved: the frame change is consistent both ways."""
    from reproject import reproject_interp

    gal = make_geometry(0.0, 0.0, 2.0, 200, 200, "TAN", frame="galactic")
    icrs = make_geometry(266.40499, -28.93617, 3.0, 300, 300, "TAN")  # l, b = 0, 0
    direct = reproject(gal, surveys["cds-dss2-red"], "icrs")
    via, _ = reproject_interp(
        (reproject(icrs, surveys["cds-dss2-red"], "icrs"), icrs.wcs), gal.wcs, shape_out=(200, 200)
    )
    both = np.isfinite(direct) & np.isfinite(via)
    assert both.mean() > 0.95
    assert np.corrcoef(direct[both], via[both])[0, 1] > 0.9


# -- whole sky ------------------------------------------------------------------------------


@pytest.mark.parametrize("dec", [90.0, -90.0, 89.5, -89.5])
def test_gaia_renders_at_the_poles(surveys, dec):
    geom = make_geometry(0.0, dec, 30.0, 256, 256, "TAN")
    image = reproject(geom, surveys["cds-gaia-dr2-rv"], "icrs")
    assert np.isfinite(image).all()


def test_gaia_across_ra_zero(surveys):
    a = reproject(make_geometry(0.0, 10.0, 20.0, 256, 128), surveys["cds-gaia-dr2-rv"], "icrs")
    b = reproject(make_geometry(360.0, 10.0, 20.0, 256, 128), surveys["cds-gaia-dr2-rv"], "icrs")
    assert np.isfinite(a).all() and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("proj", ["AIT", "MOL"])
def test_gaia_all_sky_has_no_seams(surveys, proj):
    """No NaN lines inside the all-sky ellipse, and no jumps along HEALPix face edges larger
    than the data's own pixel-to-pixel variation."""
    geom = make_geometry(0.0, 0.0, 360.0, 720, 360, proj)
    image = reproject(geom, surveys["cds-gaia-dr2-rv"], "icrs")
    from skyrender.projection import pixel_lonlat

    _, _, on_sky = pixel_lonlat(geom.wcs, 720, 360, wcs_frame="icrs", target_frame="icrs")
    on_sky = on_sky.reshape(360, 720)
    assert np.isfinite(image[on_sky]).all(), "NaN inside the sky"
    assert not np.isfinite(image[~on_sky]).any()
    # Seams would show as columns/rows of outlying differences: compare the worst row of
    # vertical differences with the typical one.
    inner = on_sky[1:, :] & on_sky[:-1, :]
    dv = np.where(inner, np.abs(np.diff(image, axis=0)), np.nan)
    rows = inner.sum(axis=1) > 20
    per_row = np.nanmedian(dv[rows], axis=1)
    assert np.nanmax(per_row) < 10 * np.nanmedian(per_row)
