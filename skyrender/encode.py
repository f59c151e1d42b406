"""Pictures and data to bytes: PNG (palette / RGB / RGBA), JPEG and FITS.

PNG and JPEG rows are written top-down, so the encoders flip the FITS-order arrays: the
first row of the file is the last row of the array (the highest y; north up for a
standard WCS). FITS keeps FITS order.

A single-band picture becomes an indexed (mode "P") PNG whose palette is the picture's
colour table; no-data pixels use the reserved palette index
:data:`skyrender.display.NO_DATA_INDEX` (255), made transparent with a ``tRNS`` entry.
Indexed PNG at zlib level 1 is ~6x faster and half the size of RGBA (measured on a
1024×768 render: 12 ms / 501 kB against 71 ms / 1053 kB), and sky images are too noisy
for higher zlib levels to pay.

Pictures are deflated by ISA-L (`isal`, Intel's Intelligent Storage Acceleration
Library) by default: its level 2 deflates a 1024×768 sky picture in ~2.8 ms against
zlib's ~14 ms at level 1, for files 2-4 % larger (`PNG_DEFLATERS`); a colour picture's
rows are written with PNG's Up filter (5x faster than Pillow's zlib file, ~25 % larger).
Both write the same standard deflate stream; any PNG reader decodes either.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from isal import isal_zlib

from .display import NO_DATA_INDEX, DisplayImage, to_display
from .errors import EncodeError, TilePathError
from .threads import row_chunks, run_row_chunks
from .tiles import format_of

__all__ = [
    "MEDIA_TYPES",
    "PARALLEL_PNG_PIXELS",
    "PNG_DEFLATERS",
    "encode_fits",
    "encode_image",
    "encode_jpeg",
    "encode_png",
]

#: Media type of each output format (canonical names: `skyrender.tiles.format_of`).
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "fits": "application/fits"}

#: Keywords describing the data layout: written by astropy from the array, never copied
#: from a caller's header.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "BSCALE", "BZERO", "BLANK", "PCOUNT", "GCOUNT", "END"}

#: Deflate libraries for indexed PNGs, each with its highest level (0 = stored, no compression).
#: ``isal``: ISA-L, levels 0-3, 4-5x faster than zlib at level 1 on sky pictures (1024×768:
#: ~2.8 ms at level 2 against ~14 ms) for files 2-4 % larger; ``zlib``: levels 0-9.
PNG_DEFLATERS = {"isal": 3, "zlib": 9}

_DISPLAY_OPTS = ("min_cut", "max_cut", "stretch", "cmap", "cut_method", "survey_cut", "power")


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise EncodeError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    if not lo <= int(value) <= hi:
        raise EncodeError(f"{name} must be within {lo}..{hi}, got {value!r}")
    return int(value)


def _check_colour(value: Any) -> tuple[int, int, int]:
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise EncodeError(f"background must be an (r, g, b) triple of 0..255, got {value!r}") from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise EncodeError(f"background must be an (r, g, b) triple of 0..255, got {value!r}")
    return rgb  # type: ignore[return-value]


def _check_display(img: Any) -> DisplayImage:
    if not isinstance(img, DisplayImage):
        raise EncodeError(f"expected a DisplayImage, got {type(img).__name__}")
    return img


def _top_down_index(img: DisplayImage) -> np.ndarray:
    """Index image flipped to top-down, no-data pixels forced to the reserved index."""
    index = img.index[::-1]
    if img.mask.any():
        return np.where(img.mask[::-1], np.uint8(NO_DATA_INDEX), index)
    return np.ascontiguousarray(index)


#: Indexed pictures of at least this many pixels are deflated in row bands on several
#: threads (both deflaters release the GIL): one core deflates a 1024×768 picture in ~14 ms
#: with zlib at level 1, ~2.8 ms with ISA-L at level 2.
PARALLEL_PNG_PIXELS = 1 << 19


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    # ISA-L's CRC-32 is zlib's, ~15x faster on a picture's data.
    crc = isal_zlib.crc32(data, isal_zlib.crc32(tag))
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _compressor(deflate: str, level: int, strategy: int):
    """A raw-deflate (no zlib header) compressor object of ``deflate`` at ``level``."""
    if deflate == "isal":
        return isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    return zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)


def _zlib_header(level: int) -> bytes:
    """RFC 1950 header: deflate, 32 KiB window, the level class as zlib states it (informative)."""
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    cmf = 0x78
    flg = flevel << 6
    flg += 31 - (cmf * 256 + flg) % 31  # CMF * 256 + FLG must be a multiple of 31
    return bytes((cmf, flg))


def _idat(raw: np.ndarray, deflate: str, level: int, strategy: int, threads: int) -> bytes:
    """The zlib stream of PNG's filtered rows ``raw`` (height, 1 + row bytes), deflated in row bands.

    With ``threads`` > 1 the bands are deflated at once: each band a raw deflate stream ended by
    a sync flush (the last one finished), so that the bands concatenate into one zlib stream
    (pigz's method).
    """
    height = raw.shape[0]
    bands = row_chunks(height, threads)
    parts: dict[int, bytes] = {}

    def compress(start: int, stop: int) -> None:
        z = _compressor(deflate, level, strategy)
        end = zlib.Z_FINISH if stop == height else zlib.Z_SYNC_FLUSH
        parts[start] = z.compress(raw[start:stop].data) + z.flush(end)

    run_row_chunks(compress, height, threads)  # the bands of `bands`; one runs inline
    trailer = struct.pack(">I", isal_zlib.adler32(raw.data))
    return _zlib_header(level) + b"".join(parts[a] for a, _ in bands) + trailer


def _indexed_png(
    img: DisplayImage, masked: bool, deflate: str, level: int, strategy: int, num_threads: int
) -> bytes:
    """A palette PNG of ``img`` (rows top-down), deflated by ``deflate`` at ``level``.

    A picture of `PARALLEL_PNG_PIXELS` or more is deflated in row bands at once (`_idat`).
    The file is PNG's chunk layout (RFC 2083) as Pillow writes it for mode "P", filter type
    None on every row: IHDR, PLTE, tRNS (index 255 transparent), IDAT, IEND.
    """
    height, width = img.index.shape
    raw = np.empty((height, width + 1), dtype=np.uint8)
    raw[:, 0] = 0  # filter type None on every row, as Pillow does for palette images
    raw[:, 1:] = img.index[::-1]
    if masked:  # no-data pixels take the reserved (transparent) index, whatever theirs
        np.copyto(raw[:, 1:], np.uint8(NO_DATA_INDEX), where=img.mask[::-1])
    threads = num_threads if img.index.size >= PARALLEL_PNG_PIXELS else 1
    out = [
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)),
        _png_chunk(b"PLTE", np.ascontiguousarray(img.lut, dtype=np.uint8).tobytes()),
    ]
    if masked:
        out.append(_png_chunk(b"tRNS", b"\xff" * NO_DATA_INDEX + b"\x00"))
    out += [_png_chunk(b"IDAT", _idat(raw, deflate, level, strategy, threads)), _png_chunk(b"IEND", b"")]
    return b"".join(out)


def _colour_png(img: DisplayImage, masked: bool, level: int, num_threads: int) -> bytes:
    """An RGB PNG of ``img`` (RGBA, alpha 0 where no data, when ``masked``), deflated by ISA-L.

    Every row but the first is written with PNG's Up filter (the byte above subtracted),
    which lets a fast deflater find the smooth sky's redundancy: on a 1024×768 three-survey
    composite, 7.7 ms and 842 kB against Pillow's 42.5 ms and 679 kB (adaptive filters,
    Huffman-only zlib); unfiltered rows deflated to 1.7 MB.
    """
    height, width = img.mask.shape
    pixels = img.rgb[::-1]
    if masked:
        alpha = np.where(img.mask[::-1], np.uint8(0), np.uint8(255))
        pixels = np.dstack([pixels, alpha])
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, -1)
    raw = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    raw[0, 0] = 0  # None: nothing above the first row
    raw[0, 1:] = rows[0]
    raw[1:, 0] = 2  # Up
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # modulo 256, as PNG's filters are
    threads = num_threads if img.mask.size >= PARALLEL_PNG_PIXELS else 1
    colour_type = 6 if masked else 2
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)),
            _png_chunk(b"IDAT", _idat(raw, "isal", level, zlib.Z_DEFAULT_STRATEGY, threads)),
            _png_chunk(b"IEND", b""),
        ]
    )


def encode_png(
    img: DisplayImage,
    *,
    compress_level: int = 2,
    deflate: str = "isal",
    huffman_only: bool = False,
    num_threads: int = 0,
) -> bytes:
    """Encode a picture as PNG.

    Parameters
    ----------
    img : DisplayImage
        Picture in FITS row order.
    compress_level : int
        Deflate level, on ``deflate``'s own scale (`PNG_DEFLATERS`): ISA-L 0..3, zlib
        0..9. Low levels are the right choice for noisy sky images.
    deflate : {"isal", "zlib"}
        Library deflating the picture. ``isal`` writes the file here (palette, or RGB(A)
        rows with PNG's Up filter: `_colour_png`); a colour picture with ``zlib`` is
        Pillow's file (its adaptive row filters), at ``compress_level``.
    huffman_only : bool
        zlib's Z_HUFFMAN_ONLY strategy (no string matching after PNG's row filters).
        On a 1024×768 RGB sky composite: ~30 % faster and 25 % smaller than the
        default strategy (651 against 873 kB); lossless either way. ISA-L has no such
        strategy: ignored for a picture deflated by it.
    num_threads : int
        Threads deflating a picture of at least `PARALLEL_PNG_PIXELS` pixels deflated by
        ISA-L or a single-band one by zlib, in row bands (0: every core). The picture is
        the same; the file is ~0.1 % larger.

    Returns
    -------
    bytes
        Single band: mode "P" (palette = ``img.lut``), with palette index 255 transparent
        when any pixel has no data. Colour: RGB, or RGBA (alpha 0 = no data) when any
        pixel has no data. Top row = last row of the array.

    Raises
    ------
    EncodeError
        Unknown ``deflate``, a level outside its scale, a bad ``num_threads``.
    """
    from PIL import Image

    img = _check_display(img)
    if deflate not in PNG_DEFLATERS:
        known = ", ".join(PNG_DEFLATERS)
        raise EncodeError(f"unknown PNG deflate library {deflate!r}; expected one of {known}")
    level = _check_int(f"compress_level (deflate {deflate!r})", compress_level, 0, PNG_DEFLATERS[deflate])
    num_threads = _check_int("num_threads", num_threads, 0, 1024)
    masked = bool(img.mask.any())
    if not img.is_colour:
        strategy = zlib.Z_HUFFMAN_ONLY if huffman_only else zlib.Z_DEFAULT_STRATEGY
        return _indexed_png(img, masked, deflate, level, strategy, num_threads)
    if deflate == "isal":
        return _colour_png(img, masked, level, num_threads)
    params: dict[str, Any] = {"format": "PNG", "compress_level": level, "optimize": False}
    if huffman_only:
        params["compress_type"] = zlib.Z_HUFFMAN_ONLY
    rgb = img.rgb[::-1]
    if masked:
        alpha = np.where(img.mask[::-1], np.uint8(0), np.uint8(255))
        pil = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")
    else:
        pil = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    buf = io.BytesIO()
    pil.save(buf, **params)
    return buf.getvalue()


def encode_jpeg(img: DisplayImage, *, quality: int = 90, background: Sequence[int] = (0, 0, 0)) -> bytes:
    """Encode a picture as an RGB JPEG.

    Parameters
    ----------
    img : DisplayImage
        Picture in FITS row order.
    quality : int
        JPEG quality 1..100.
    background : (int, int, int)
        RGB colour of no-data pixels (JPEG has no transparency).

    Returns
    -------
    bytes
        Baseline RGB JPEG, top row = last row of the array.
    """
    from PIL import Image

    img = _check_display(img)
    quality = _check_int("quality", quality, 1, 100)
    bg = np.array(_check_colour(background), dtype=np.uint8)
    if img.is_colour:
        rgb = np.array(img.rgb[::-1])
        if img.mask.any():
            rgb[img.mask[::-1]] = bg
    else:
        # One fancy-indexing pass: the reserved no-data entry of the table becomes the background.
        lut = np.array(img.lut, dtype=np.uint8)
        lut[NO_DATA_INDEX] = bg
        rgb = lut[_top_down_index(img)]
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _header_cards(header: Any) -> list[tuple[str, Any]]:
    from astropy.io import fits

    if header is None:
        return []
    if isinstance(header, fits.Header):
        return [(card.keyword, card.value) for card in header.cards]
    if isinstance(header, Mapping):
        return [(str(k).strip().upper(), v) for k, v in header.items()]
    raise EncodeError(
        f"FITS header must be an astropy Header or a dict of keywords, got {type(header).__name__}"
    )


def encode_fits(image: np.ndarray, header: Any = None) -> bytes:
    """Encode data as a single-HDU FITS file.

    Parameters
    ----------
    image : ndarray
        Grey (H, W) or colour (C, H, W), C = 3 or 4, data in FITS order (not flipped); written as
        float32 (BITPIX = -32) with NaN kept for no data. Colour becomes a cube with
        NAXIS3 = C (planes R, G, B[, A]).
    header : astropy.io.fits.Header or Mapping, optional
        WCS (and any other) keywords. Structural keywords (SIMPLE, BITPIX, NAXISn,
        EXTEND, BSCALE, BZERO, BLANK) are taken from the data, not from here.

    Returns
    -------
    bytes
        A padded FITS file (a multiple of 2880 bytes) with a PrimaryHDU.
    """
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    data = np.asarray(image)
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[0] in (3, 4))):
        raise EncodeError(f"FITS output needs (H, W) or (3, H, W) data, got shape {data.shape}")
    if data.dtype.kind not in "fiub":
        raise EncodeError(f"FITS output needs numeric data, got dtype {data.dtype}")
    hdr = fits.Header()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            for key, value in _header_cards(header):
                if key in _STRUCTURAL or (key.startswith("NAXIS") and key[5:].isdigit()) or not key:
                    continue
                if key in ("COMMENT", "HISTORY"):
                    add = hdr.add_comment if key == "COMMENT" else hdr.add_history
                    for line in [value] if isinstance(value, str) else list(value):
                        add(str(line))
                    continue
                if isinstance(value, np.generic):
                    value = value.item()
                if isinstance(value, float) and not math.isfinite(value):
                    raise EncodeError(f"FITS keyword {key} is not finite: {value!r}")
                hdr[key] = value
            hdu = fits.PrimaryHDU(data=np.ascontiguousarray(data, dtype=np.float32), header=hdr)
            buf = io.BytesIO()
            hdu.writeto(buf, output_verify="fix")
    except EncodeError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise EncodeError(f"cannot write FITS header: {exc}") from None
    return buf.getvalue()


def encode_image(img_or_array: DisplayImage | np.ndarray, fmt: str, **opts: Any) -> tuple[bytes, str]:
    """Encode to ``fmt`` and return ``(bytes, media type)``.

    Parameters
    ----------
    img_or_array : DisplayImage or ndarray
        A picture for PNG/JPEG (a float array is first turned into one by
        :func:`skyrender.display.to_display`), or float data for FITS.
    fmt : {"png", "jpeg", "jpg", "fits"}
        Output format (case-insensitive).
    **opts
        Encoder options (``compress_level``; ``quality``, ``background``; ``header``) and,
        for an array given to PNG/JPEG, the display options of ``to_display``.

    Raises
    ------
    EncodeError
        Unknown format, unknown option, bad option value.
    """
    try:
        key = format_of(fmt)
    except TilePathError:
        raise EncodeError(f"unknown output format {fmt!r}; expected one of png, jpeg, fits") from None
    if key == "fits":
        if isinstance(img_or_array, DisplayImage):
            raise EncodeError("FITS output needs the float data, not an 8-bit display image")
        _check_opts(opts, ("header",))
        return encode_fits(img_or_array, opts.get("header")), MEDIA_TYPES[key]
    encoder_opts = ("compress_level", "deflate", "num_threads") if key == "png" else ("quality", "background")
    if isinstance(img_or_array, DisplayImage):
        _check_opts(opts, encoder_opts)
        img = img_or_array
    else:
        _check_opts(opts, encoder_opts + _DISPLAY_OPTS)
        img = to_display(np.asarray(img_or_array), **{k: v for k, v in opts.items() if k in _DISPLAY_OPTS})
    enc = {k: v for k, v in opts.items() if k in encoder_opts}
    body = encode_png(img, **enc) if key == "png" else encode_jpeg(img, **enc)
    return body, MEDIA_TYPES[key]


def _check_opts(opts: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise EncodeError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
