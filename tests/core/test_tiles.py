"""Tile addressing: NorderK/DirD/NpixN.ext both ways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skyrender.errors import TilePathError
from skyrender.tiles import TileId, allsky_path, parse_tile_url, tile_path, tile_url


def test_paths_follow_the_standard():
    assert tile_path(3, 300, "fits") == "Norder3/Dir0/Npix300.fits"
    assert tile_path(9, 123456, "jpeg") == "Norder9/Dir120000/Npix123456.jpg"
    assert tile_url("http://h/x/", 0, 5, "png") == "http://h/x/Norder0/Dir0/Npix5.png"
    assert allsky_path("jpeg") == "Norder3/Allsky.jpg"


def test_parse_urls():
    assert parse_tile_url("https://alasky.cds.unistra.fr/DSS/DSS2Merged/Norder3/Dir0/Npix300.fits") == TileId(
        3, 300, "fits"
    )
    assert parse_tile_url("/data/hips/Norder9/Dir120000/Npix123456.JPEG?v=2") == TileId(9, 123456, "jpeg")


@pytest.mark.parametrize(
    "bad",
    [
        "http://h/x/Norder3/Dir10000/Npix300.fits",  # wrong Dir
        "http://h/x/Norder3/Dir0/Npix768.fits",  # npix past 12*4**3
        "http://h/x/Norder30/Dir0/Npix1.fits",  # order past 29
        "http://h/x/Norder3/Dir0/Npix1.gif",
        "http://h/x/Norder3/Npix1.fits",
        "http://h/x/Norder3/Dir0/Npix-1.fits",
        "http://h/x/properties",
        "",
    ],
)
def test_rejects_what_is_not_a_tile(bad):
    with pytest.raises(TilePathError):
        parse_tile_url(bad)


@given(
    order=st.integers(0, 29),
    frac=st.floats(0, 1, exclude_max=True),
    fmt=st.sampled_from(["fits", "jpeg", "png"]),
)
def test_round_trip(order, frac, fmt):
    npix = int(frac * 12 * 4**order)
    path = tile_path(order, npix, fmt)
    assert parse_tile_url(f"https://example.org/hips/{path}") == TileId(order, npix, fmt)


@given(st.text(max_size=200))
def test_junk_only_raises_tile_path_error(text):
    try:
        parse_tile_url(text)
    except TilePathError:
        pass
