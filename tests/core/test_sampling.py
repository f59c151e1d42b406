"""In-tile layout, cells and the blend."""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import ICRS
from astropy.wcs import WCS
from cdshealpix import nested

from skyrender.sampling import (
    Cells,
    TileSet,
    blend,
    needed_tiles,
    sample_cells,
    subpixel_offsets,
    tile_cells_xy,
)


@pytest.mark.parametrize("npix", [0, 100, 300, 767])
def test_in_tile_layout_matches_reproject_tile_wcs(npix):
    """Each sub-cell's centre lands on its pixel in the tile WCS reproject writes (HPX)."""
    from reproject.hips._utils import tile_header_2d

    order, depth = 3, 4
    w = 1 << depth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(tile_header_2d(level=order, index=npix, frame=ICRS(), tile_size=w))
    s = np.arange(w * w, dtype=np.uint64)
    lon, lat = nested.healpix_to_lonlat(np.uint64(npix) * np.uint64(4**depth) + s, order + depth)
    x, y = tile_cells_xy(depth)
    ra, dec = wcs.wcs_pix2world(x, y, 0)
    dra = (ra - lon.to_value(u.deg) + 180) % 360 - 180
    assert np.abs(dra * np.cos(np.radians(dec))).max() < 1e-9
    assert np.abs(dec - lat.to_value(u.deg)).max() < 1e-9


def test_offsets_are_a_permutation():
    for depth in (0, 1, 5, 9):
        off = subpixel_offsets(depth)
        assert np.array_equal(np.sort(off), np.arange(4**depth))


def _tileset_constant(order, depth, values):
    w = 1 << depth
    return TileSet.from_tiles(order, {n: np.full((w, w), v, np.float32) for n, v in values.items()})


def test_blend_renormalises_over_cells_with_data():
    tiles = _tileset_constant(0, 1, {0: 5.0})
    ipix = np.array([[0, 1, 4 * 5, 4 * 5 + 1]], dtype=np.uint64)  # two cells in tile 0, two in a missing tile
    weights = np.array([[0.4, 0.1, 0.3, 0.2]])
    out = blend(Cells(1, ipix, weights), tiles)
    assert out.shape == (1, 1) and out[0, 0] == pytest.approx(5.0)


def test_blend_is_nan_when_the_nearest_cell_has_no_data():
    tiles = _tileset_constant(0, 1, {0: 5.0})
    ipix = np.array([[0, 4 * 5, 4 * 5 + 1, 4 * 5 + 2]], dtype=np.uint64)
    weights = np.array([[0.1, 0.6, 0.2, 0.1]])  # the heaviest cell is in a missing tile
    assert np.isnan(blend(Cells(1, ipix, weights), tiles)[0, 0])


def test_blend_skips_nan_values_and_off_sky_rows():
    w = 2
    tile = np.array([[np.nan, 2.0], [4.0, 6.0]], np.float32)
    tiles = TileSet.from_tiles(0, {7: tile})
    off = subpixel_offsets(1)
    flat = tile.ravel()
    base = np.uint64(7 * 4)
    ipix = np.array([[base + s for s in range(4)], [0, 0, 0, 0]], dtype=np.uint64)
    weights = np.array([[0.25, 0.25, 0.25, 0.25], [0, 0, 0, 0]], dtype=float)
    values = flat[off]
    finite = np.isfinite(values)
    expected = values[finite].mean()
    out = blend(Cells(1, ipix, weights), tiles)[0]
    assert out[0] == pytest.approx(expected)
    assert np.isnan(out[1])
    assert w == tiles.tile_width


def test_bilinear_is_continuous_across_tile_and_face_edges():
    """A smooth sky function sampled into tiles comes back smooth along a path crossing
    tile and base-face boundaries (no seams): bilinear error ≪ the function's variation."""
    order, depth = 1, 5
    w = 1 << depth
    npix_all = np.arange(12 * 4**order)
    x, y = tile_cells_xy(depth)

    def sky(lon, lat):
        return np.cos(lat) * np.cos(lon - 0.3) + 0.5 * np.sin(lat)

    tiles = {}
    for n in npix_all:
        ipix = np.uint64(n) * np.uint64(4**depth) + np.arange(w * w, dtype=np.uint64)
        lon, lat = nested.healpix_to_lonlat(ipix, order + depth)
        img = np.empty((w, w), np.float32)
        img[y, x] = sky(lon.rad, lat.rad)
        tiles[int(n)] = img
    ts = TileSet.from_tiles(order, tiles)
    # A great circle at an angle: crosses many tiles, equatorial/polar faces, RA 0.
    t = np.linspace(0, 2 * np.pi, 20000)
    lon = np.mod(t, 2 * np.pi)
    lat = np.arcsin(np.sin(t) * np.sin(np.radians(70)))
    valid = np.ones_like(lon, bool)
    cells = sample_cells(lon, lat, valid, order + depth, "bilinear")
    got = blend(cells, ts)[0]
    err = np.abs(got - sky(lon, lat))
    cell_deg = np.degrees(np.sqrt(4 * np.pi / (12 * 4 ** (order + depth))))
    assert np.isfinite(got).all()
    assert err.max() < 0.01, f"max error {err.max():.4f} for cells of {cell_deg:.2f} deg"
    nearest = blend(sample_cells(lon, lat, valid, order + depth, "nearest"), ts)[0]
    assert np.abs(nearest - sky(lon, lat)).max() > err.max()  # bilinear beats nearest


def test_needed_tiles_ignores_zero_weights():
    ipix = np.array([[4 * 3, 4 * 9, 0, 0]], dtype=np.uint64)
    cells = Cells(1, ipix, np.array([[1.0, 0.0, 0.0, 0.0]]))
    assert needed_tiles(cells, 1).tolist() == [3]
