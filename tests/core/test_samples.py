"""The bundled HI4PI sample survey: the HiPS holds the map's cells exactly."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import Latitude, Longitude
from cdshealpix import nested

from skyrender.decode import decode_tile
from skyrender.properties import load_survey
from skyrender.samples import build_sample_hips, hi4pi_map
from skyrender.sampling import TileSet, blend, sample_cells
from skyrender.tiles import tile_path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_sample_hips(tmp_path_factory.mktemp("hips") / "hi4pi")


def test_properties_describe_the_survey(built):
    s = load_survey(str(built))
    assert (s.order, s.order_min, s.tile_width, s.frame) == (2, 0, 16, "galactic")
    assert s.tile_formats == ("fits", "png") and s.pixel_cut is not None
    assert (built / "Moc.fits").is_file()


def test_deepest_order_is_the_map_exactly(built):
    values, map_order = hi4pi_map()
    s = load_survey(str(built))
    tiles = {
        n: decode_tile((built / tile_path(s.order, n, "fits")).read_bytes()) for n in range(12 * 4**s.order)
    }
    ts = TileSet.from_tiles(s.order, tiles, tile_width=s.tile_width)
    rng = np.random.default_rng(0)
    lon = rng.uniform(0, 2 * np.pi, 5000)
    lat = np.arcsin(rng.uniform(-1, 1, 5000))
    got = blend(sample_cells(lon, lat, np.ones(5000, bool), map_order, "nearest"), ts)[0]
    ipix = nested.lonlat_to_healpix(Longitude(lon, u.rad), Latitude(lat, u.rad), map_order)
    assert np.array_equal(got, values[ipix.astype(np.int64)])


def test_png_tiles_are_the_fits_tiles_flipped(built):
    fits_tile = decode_tile((built / tile_path(2, 100, "fits")).read_bytes())
    png_tile = decode_tile((built / tile_path(2, 100, "png")).read_bytes())
    assert fits_tile.shape == png_tile.shape == (16, 16)
    assert np.corrcoef(np.log10(fits_tile).ravel(), png_tile.ravel())[0, 1] > 0.95


def test_build_is_idempotent(built):
    before = (built / "properties").stat().st_mtime
    build_sample_hips(built)
    assert (built / "properties").stat().st_mtime == before
