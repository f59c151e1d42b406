"""Round trip through a third-party HiPS writer, and FITS-vs-JPEG orientation.

Real images become a HiPS with ``reproject.hips.reproject_to_hips``; rendering that HiPS
back onto each image's own WCS must give the image again, up to interpolation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.ndimage import gaussian_filter, maximum_filter

from skyrender.decode import decode_tile
from skyrender.geometry import OutputGeometry, make_geometry
from skyrender.projection import pixel_lonlat
from skyrender.properties import load_survey
from skyrender.render import render_field

IMAGES = [
    "HorseHead.fits",
    "magpis_20cm_G10.5+0.0.fits",
    "first_cutout_J105007+304037.fits",
    "gc_bolocam_gps.fits",
]


def _load_local(tile):
    path = Path(tile.url)
    return decode_tile(path.read_bytes()) if path.is_file() else None


@pytest.fixture(scope="module")
def round_trips(fits_dir, tmp_path_factory):
    """{name: (original image, our render of its HiPS on its own WCS)}."""
    from reproject import reproject_interp
    from reproject.hips import reproject_to_hips

    out = {}
    for name in IMAGES:
        hdu = fits.open(fits_dir / name)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(hdu.header).celestial
            data = np.squeeze(hdu.data).astype(float)
            hips = tmp_path_factory.mktemp("hips") / name.replace(".fits", "")
            reproject_to_hips(
                (data, wcs),
                coord_system_out="equatorial",
                reproject_function=reproject_interp,
                output_directory=str(hips),
                tile_size=64,
            )
        survey = load_survey(str(hips))
        h, w = data.shape
        geom = OutputGeometry(
            wcs=wcs, width=w, height=h, frame="icrs" if "RA" in wcs.wcs.ctype[0] else "galactic"
        )
        # Render at the HiPS's deepest order: the round trip, not the order rule, is tested.
        image = render_field(geom, survey, _load_local, order=survey.order)
        out[name] = (data, image)
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_round_trip_values(round_trips, name):
    original, image = round_trips[name]
    both = np.isfinite(original) & np.isfinite(image)
    assert both.mean() > 0.8, f"only {both.mean():.2f} of the pixels covered"
    data_range = np.nanpercentile(original, 99.9) - np.nanpercentile(original, 0.1)
    median = np.median(np.abs(image - original)[both]) / data_range
    assert median <= 0.01, f"median |diff| = {median:.4f} of the range"


def _bright_sources(image, n=5, box=5):
    """Positions of the n brightest isolated local maxima (smoothed), away from edges."""
    a = np.where(np.isfinite(image), image, np.nanmedian(image))
    smooth = gaussian_filter(a, 1.0)
    peaks = (smooth == maximum_filter(smooth, size=2 * box + 1)) & (smooth > np.percentile(smooth, 99))
    peaks[: box * 2, :] = peaks[-box * 2 :, :] = peaks[:, : box * 2] = peaks[:, -box * 2 :] = False
    ys, xs = np.nonzero(peaks)
    order = np.argsort(smooth[ys, xs])[::-1][:n]
    return list(zip(ys[order], xs[order], strict=True))


def _centroid(image, y, x, box=3):
    cut = image[y - box : y + box + 1, x - box : x + box + 1]
    cut = cut - np.nanmin(cut)
    yy, xx = np.mgrid[-box : box + 1, -box : box + 1]
    total = np.nansum(cut)
    return y + np.nansum(yy * cut) / total, x + np.nansum(xx * cut) / total


@pytest.mark.parametrize("name", IMAGES)
def test_round_trip_astrometry(round_trips, name):
    """Centroids of bright compact sources land within 0.1 px of where they were."""
    original, image = round_trips[name]
    sources = _bright_sources(original)
    assert sources
    offsets = []
    for y, x in sources:
        cy0, cx0 = _centroid(original, y, x)
        cy1, cx1 = _centroid(image, y, x)
        offsets.append(np.hypot(cy1 - cy0, cx1 - cx0))
    assert max(offsets) < 0.1, f"centroid offsets {np.round(offsets, 3)} px"


def test_fits_and_jpeg_tiles_give_the_same_picture(hips_dir):
    """DSS2 red from its FITS tiles and from its JPEG tiles: same orientation (corr ≥ 0.95)."""
    survey = load_survey(str(hips_dir / "cds-dss2-red"))
    # At the tiles' native scale (order 3, 512 px: 51"), not upsampled into noise.
    geom = make_geometry(266.4, -28.9, 6.0, 384, 384)
    from skyrender.render import plan_render, reproject
    from skyrender.sampling import TileSet

    plan = plan_render(geom, survey, order=3)

    def tiles(ext):
        out = {}
        for t in plan.tiles:
            p = hips_dir / "cds-dss2-red" / f"Norder3/Dir0/Npix{t.npix}.{ext}"
            if p.is_file():
                out[t.npix] = decode_tile(p.read_bytes())
        return TileSet.from_tiles(3, out, tile_width=512)

    from_fits = reproject(geom, tiles("fits"), "icrs")
    from_jpeg = reproject(geom, tiles("jpg"), "icrs")

    # The JPEG tiles carry the survey's own (unknown) stretch: compare after a rank
    # transform, the stretch that makes any two monotonic stretches equal (Spearman).
    from scipy.stats import spearmanr

    both = np.isfinite(from_fits) & np.isfinite(from_jpeg)
    corr = spearmanr(from_fits[both], from_jpeg[both]).statistic
    assert corr >= 0.95
    flipped = spearmanr(from_fits[both], from_jpeg[::-1][both]).statistic
    assert flipped < 0.5 * corr  # the test can tell a flip


def test_tan_render_has_north_up_and_east_left():
    geom = make_geometry(150.0, 2.0, 1.0, 101, 101)
    lon, lat, _ = pixel_lonlat(geom.wcs, 101, 101, wcs_frame="icrs", target_frame="icrs")
    lon, lat = np.degrees(lon).reshape(101, 101), np.degrees(lat).reshape(101, 101)
    assert lat[-1, 50] > lat[50, 50] > lat[0, 50]  # last row (top of the picture) is north
    assert lon[50, 0] > lon[50, 50] > lon[50, -1]  # first column (left) is east
