"""Tile bytes → arrays: FITS, PNG and JPEG tiles, and the Allsky mosaics.

Every decoded array is in FITS row order (row 0 = bottom), the layout FITS tiles are
stored in: PNG/JPEG rows run top-down, so they are flipped here, and a FITS tile and
a JPEG tile of the same cell give the same picture. Grey data are float32 (H, W) with
NaN for blanks; colour data float32 (3, H, W) in 0..255 with NaN where alpha is 0.

Sizes are checked from the header before any pixel is allocated (decompression bombs),
and every failure is a `TileDecodeError`.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np

from .errors import TileDecodeError, TilePathError
from .tiles import format_of

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "decode_allsky",
    "decode_tile",
    "sniff_format",
]

#: Default cap on the pixels a single tile may claim.
DEFAULT_MAX_PIXELS = 4096 * 4096

_FITS_BLOCK = 2880


def sniff_format(data: bytes) -> str:
    """``fits`` | ``png`` | ``jpeg`` from the magic bytes; `TileDecodeError` otherwise."""
    if data[:9] == b"SIMPLE  =":
        return "fits"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    raise TileDecodeError("not a FITS, PNG or JPEG tile (unrecognised leading bytes)")


def decode_tile(data: bytes, fmt: str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one tile.

    Parameters
    ----------
    data : bytes
        The tile file's bytes.
    fmt : {"fits", "jpeg", "png"}, optional
        Expected format; the bytes must agree (a wrong type is an error).
    max_pixels : int
        Largest width × height accepted, checked before decoding.

    Returns
    -------
    ndarray
        float32 (H, W) grey or (3, H, W) colour, FITS row order, NaN = no data.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise TileDecodeError("empty tile")
    data = bytes(data)
    found = sniff_format(data)
    if fmt is not None:
        try:
            wanted = format_of(fmt)
        except TilePathError as exc:
            raise TileDecodeError(str(exc)) from None
        if wanted != found:
            raise TileDecodeError(f"wrong tile type: expected {wanted}, the bytes are {found}")
    if found == "fits":
        return _decode_fits(data, max_pixels)
    return _decode_image(data, max_pixels)


def _fits_header_cards(data: bytes) -> dict[str, str]:
    """Raw header cards of the primary HDU (up to END), without parsing any data."""
    cards: dict[str, str] = {}
    for start in range(0, min(len(data), 2880 * 36), 80):
        card = data[start : start + 80].decode("ascii", errors="replace")
        key = card[:8].strip()
        if key == "END":
            return cards
        if card[8:10] == "= ":
            value = card[10:].split("/", 1)[0].strip()
            cards.setdefault(key, value)
    raise TileDecodeError("FITS header has no END card (truncated or corrupt)")


def _decode_fits(data: bytes, max_pixels: int) -> np.ndarray:
    from astropy.io import fits

    cards = _fits_header_cards(data)
    try:
        bitpix = int(cards.get("BITPIX", ""))
        naxis = int(cards.get("NAXIS", ""))
        shape = [int(float(cards.get(f"NAXIS{i}", ""))) for i in range(1, naxis + 1)]
    except ValueError:
        raise TileDecodeError("FITS header lacks valid BITPIX/NAXIS keywords") from None
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise TileDecodeError(f"unsupported BITPIX {bitpix}")
    if naxis not in (2, 3) or any(n <= 0 for n in shape):
        raise TileDecodeError(f"expected a 2-D (or 3-plane colour) FITS image, got NAXIS={naxis} {shape}")
    if naxis == 3 and shape[2] not in (1, 3):
        raise TileDecodeError(f"a 3-D FITS tile must have 1 or 3 planes, got {shape[2]}")
    if shape[0] * shape[1] > max_pixels:
        raise TileDecodeError(
            f"FITS tile claims {shape[0]}x{shape[1]} pixels, over the limit of {max_pixels}"
        )
    # HipsGen writes files not padded to 2880 bytes: pad so astropy reads them silently,
    # after checking that the data themselves are complete.
    header_len = _header_length(data)
    need = header_len + math.prod(shape) * abs(bitpix) // 8
    if len(data) < need:
        raise TileDecodeError(f"truncated FITS tile: {len(data)} bytes, {need} needed")
    if len(data) % _FITS_BLOCK:
        data = data + b"\0" * (_FITS_BLOCK - len(data) % _FITS_BLOCK)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
                hdu = hdul[0]
                blank = hdu.header.get("BLANK")
                raw = hdu.data
                if raw is None:
                    raise TileDecodeError("FITS tile has no data")
                if bitpix > 0 and blank is not None:
                    # Blanks are defined on the stored integers: find them before scaling
                    # (BLANK may be written as a float, e.g. -32768.0).
                    stored = np.frombuffer(
                        data,
                        dtype=f">i{abs(bitpix) // 8}" if bitpix != 8 else "u1",
                        count=math.prod(shape),
                        offset=header_len,
                    ).reshape(raw.shape)
                    out = np.asarray(raw, dtype=np.float32)
                    out[stored == int(float(blank))] = np.nan
                else:
                    out = np.asarray(raw, dtype=np.float32)
    except TileDecodeError:
        raise
    except Exception as exc:
        raise TileDecodeError(f"corrupt FITS tile: {exc}") from None
    if out.ndim == 3:
        out = out[0] if out.shape[0] == 1 else out
    return np.ascontiguousarray(out)


def _header_length(data: bytes) -> int:
    """Bytes of the primary header (whole 2880-byte blocks up to the END card)."""
    for start in range(0, min(len(data), 2880 * 36), 80):
        if data[start : start + 8] == b"END     ":
            return (start // _FITS_BLOCK + 1) * _FITS_BLOCK
    raise TileDecodeError("FITS header has no END card (truncated or corrupt)")


def _decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise TileDecodeError(
                    f"image tile claims {width}x{height} pixels, over the limit of {max_pixels}"
                )
            im.load()
    except TileDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TileDecodeError(f"image tile refused as a decompression bomb: {exc}") from None
    except Exception as exc:
        raise TileDecodeError(f"corrupt or truncated image tile: {exc}") from None
    mode = im.mode
    try:
        if mode in ("L", "I;16", "I;16B", "I", "F"):
            grey = np.asarray(im, dtype=np.float32)
            return np.ascontiguousarray(grey[::-1])
        if mode == "LA":
            arr = np.asarray(im, dtype=np.float32)
            grey = np.where(arr[..., 1] == 0, np.nan, arr[..., 0])
            return np.ascontiguousarray(grey[::-1])
        if mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "RGB", "1"):
            rgba = np.asarray(im.convert("RGBA"))
            transparent = rgba[..., 3] == 0 if mode in ("P", "PA", "RGBA") else None
            r, g, b = rgba[..., 0], rgba[..., 1], rgba[..., 2]
            if np.array_equal(r, g) and np.array_equal(g, b):
                # HipsGen writes grey surveys as RGB JPEGs with equal channels: keep them grey,
                # so the colormap and cuts apply as to FITS tiles.
                grey = r.astype(np.float32)
                if transparent is not None:
                    grey[transparent] = np.nan
                return np.ascontiguousarray(grey[::-1])
            rgb = np.moveaxis(rgba[..., :3], -1, 0).astype(np.float32)
            if transparent is not None:
                rgb[:, transparent] = np.nan
            return np.ascontiguousarray(rgb[:, ::-1])
    except Exception as exc:
        raise TileDecodeError(f"cannot convert image tile of mode {mode}: {exc}") from None
    raise TileDecodeError(f"unsupported image mode {mode}")


def decode_allsky(
    data: bytes, fmt: str | None = None, *, order: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray]:
    """Split an ``Allsky`` mosaic into its tiles.

    The mosaic holds the 12·4**order tiles of ``order`` at reduced width w, in rows of
    ``nbcol = int(sqrt(ntiles))`` tiles, tile n at column ``n % nbcol`` and row
    ``n // nbcol`` counted from the top of the picture.

    Returns
    -------
    npix : ndarray
        int64 (ntiles,).
    stack : ndarray
        float32 (ntiles, w, w) grey or (ntiles, 3, w, w) colour, each tile in FITS row order.
    """
    mosaic = decode_tile(data, fmt, max_pixels=max_pixels)
    ntiles = 12 * 4**order
    nbcol = int(math.isqrt(ntiles))
    width = mosaic.shape[-1]
    w = width // nbcol
    nbrow = math.ceil(ntiles / nbcol)
    if w == 0 or mosaic.shape[-2] < nbrow * w:
        raise TileDecodeError(
            f"Allsky mosaic {mosaic.shape[-1]}x{mosaic.shape[-2]} is too small for order {order}"
        )
    top_down = mosaic[..., ::-1, :]  # back to picture order to index rows from the top
    npix = np.arange(ntiles, dtype=np.int64)
    rows, cols = npix // nbcol, npix % nbcol
    if mosaic.ndim == 2:
        stack = np.empty((ntiles, w, w), dtype=np.float32)
        for n in range(ntiles):
            stack[n] = top_down[rows[n] * w : (rows[n] + 1) * w, cols[n] * w : (cols[n] + 1) * w][::-1]
    else:
        stack = np.empty((ntiles, mosaic.shape[0], w, w), dtype=np.float32)
        for n in range(ntiles):
            stack[n] = top_down[:, rows[n] * w : (rows[n] + 1) * w, cols[n] * w : (cols[n] + 1) * w][:, ::-1]
    return npix, stack
