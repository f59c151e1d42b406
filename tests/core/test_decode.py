"""Tile decoding on real CDS tiles, plus corrupt input and decompression bombs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from skyrender.decode import decode_allsky, decode_tile
from skyrender.errors import TileDecodeError


def _read(hips_dir, survey, name):
    return (hips_dir / survey / "Norder3" / "Dir0" / name).read_bytes()


def test_fits_and_jpeg_tiles_share_the_row_order(hips_dir):
    fits_tile = decode_tile(_read(hips_dir, "cds-dss2-red", "Npix304.fits"), "fits")
    jpeg_tile = decode_tile(_read(hips_dir, "cds-dss2-red", "Npix304.jpg"), "jpeg")
    assert fits_tile.shape == jpeg_tile.shape == (512, 512)  # grey RGB JPEG stays grey
    m = np.isfinite(fits_tile)
    assert np.corrcoef(fits_tile[m], jpeg_tile[m])[0, 1] > 0.85
    assert np.corrcoef(fits_tile[m], jpeg_tile[::-1][m])[0, 1] < 0.3


def test_blank_written_as_float_becomes_nan(hips_dir):
    found_blank = False
    for path in sorted((hips_dir / "cds-dss2-red" / "Norder3" / "Dir0").glob("*.fits")):
        data = path.read_bytes()
        assert len(data) % 2880  # HipsGen leaves them unpadded
        tile = decode_tile(data)
        assert tile.dtype == np.float32 and tile.shape == (512, 512)
        found_blank |= bool(np.isnan(tile).any())
        assert np.nanmin(tile) > -32768
    assert found_blank


def test_float_tiles_keep_nan_and_other_widths(hips_dir):
    irac = decode_tile(_read(hips_dir, "cds-spitzer-irac4", "Npix300.fits"))
    assert irac.dtype == np.float32 and np.isnan(irac).mean() > 0.05
    planck = decode_tile(_read(hips_dir, "cds-planck-hfi143", "Npix300.fits"))
    assert planck.shape == (256, 256)


def test_colour_jpeg(hips_dir):
    tile = decode_tile(_read(hips_dir, "cds-dss2-color", "Npix357.jpg"))
    assert tile.shape == (3, 512, 512) and np.nanmax(tile) <= 255


@pytest.mark.parametrize("ext", ["fits", "jpg"])
def test_allsky_matches_the_tiles(hips_dir, ext):
    data = (hips_dir / "cds-gaia-dr2-rv" / "Norder3" / f"Allsky.{ext}").read_bytes()
    npix, stack = decode_allsky(data, order=3)
    assert npix.tolist() == list(range(768))
    for n in (0, 100, 383, 767):
        tile = decode_tile(_read(hips_dir, "cds-gaia-dr2-rv", f"Npix{n}.{ext}"))
        a, b = stack[n], tile
        if a.ndim == 3:
            a, b = a.mean(axis=0), b.mean(axis=0)
        w = a.shape[-1]
        k = b.shape[-1] // w
        b = np.nanmean(b.reshape(w, k, w, k), axis=(1, 3))
        m = np.isfinite(a) & np.isfinite(b)
        assert np.corrcoef(a[m], b[m])[0, 1] > 0.99


def test_png_modes():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    rgba = np.dstack([grey, grey // 2, grey, np.where(grey > 128, 255, 0).astype(np.uint8)])
    for img, check in [
        (Image.fromarray(grey, "L"), lambda a: np.array_equal(a, grey[::-1].astype(np.float32))),
        (
            Image.fromarray(rgba, "RGBA"),
            lambda a: a.shape == (3, 8, 8) and np.isnan(a[0][::-1][grey <= 128]).all(),
        ),
        (Image.fromarray(grey.astype(np.uint16) * 200), lambda a: a.max() > 255),
    ]:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        assert check(decode_tile(buf.getvalue(), "png"))


def _png_claiming(width, height):
    def chunk(kind, body):
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_bombs_are_refused_before_allocation():
    with pytest.raises(TileDecodeError, match="over the limit|decompression bomb"):
        decode_tile(_png_claiming(50000, 50000))
    with pytest.raises(TileDecodeError, match="over the limit"):
        decode_tile(_png_claiming(5000, 5000))  # under Pillow's own limit, over ours
    header = "".join(
        f"{card:<80}"
        for card in [
            "SIMPLE  = T",
            "BITPIX  = -32",
            "NAXIS   = 2",
            "NAXIS1  = 100000",
            "NAXIS2  = 100000",
            "END",
        ]
    ).encode()
    with pytest.raises(TileDecodeError, match="over the limit"):
        decode_tile(header + b"\0" * 100)


def test_wrong_type_and_truncation(hips_dir):
    data = _read(hips_dir, "cds-dss2-red", "Npix304.fits")
    with pytest.raises(TileDecodeError, match="wrong tile type"):
        decode_tile(data, "png")
    with pytest.raises(TileDecodeError, match="truncated"):
        decode_tile(data[: len(data) // 2])
    jpeg = _read(hips_dir, "cds-dss2-red", "Npix304.jpg")
    with pytest.raises(TileDecodeError):
        decode_tile(jpeg[:2000])


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"SIMPLE  =", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]),
    body=st.binary(max_size=3000),
)
def test_garbage_only_raises_tile_decode_error(prefix, body):
    try:
        decode_tile(prefix + body)
    except TileDecodeError:
        pass
