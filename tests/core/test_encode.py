"""PNG (palette / RGB / RGBA), JPEG and FITS encoding, decoded back with Pillow and astropy."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from skyrender.display import NO_DATA_INDEX, DisplayImage, display_lut, to_display
from skyrender.encode import encode_fits, encode_image, encode_jpeg, encode_png
from skyrender.errors import EncodeError


def _ramp(height: int = 6, width: int = 5) -> np.ndarray:
    """Grey data whose value grows with the row, so a flip is visible; one NaN pixel."""
    data = np.repeat(np.arange(height, dtype=np.float32)[:, None], width, axis=1)
    data[0, 0] = np.nan
    return data


def _open(body: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(body))
    im.load()
    return im


@pytest.fixture(scope="module")
def horsehead(fits_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(fits_dir / "HorseHead.fits") as hdul:
            return hdul[0].data.astype(np.float32), hdul[0].header.copy()


# -- PNG ---------------------------------------------------------------------------------------


def test_palette_png_layout_palette_and_transparency():
    data = _ramp()
    img = to_display(data, min_cut=0, max_cut=5, cmap="viridis")
    body = encode_png(img)
    assert body.startswith(b"\x89PNG")
    im = _open(body)
    assert im.mode == "P" and im.size == (5, 6)
    assert im.info["transparency"] == NO_DATA_INDEX
    pixels = np.asarray(im)
    # The picture's top row is the array's last row (highest y).
    np.testing.assert_array_equal(pixels[0], img.index[-1])
    np.testing.assert_array_equal(pixels[::-1], img.index)
    # NaN pixel (bottom-left in FITS order) is the transparent entry, at the bottom-left of the PNG.
    assert pixels[-1, 0] == NO_DATA_INDEX
    rgba = np.asarray(im.convert("RGBA"))
    assert rgba[-1, 0, 3] == 0
    assert np.all(rgba[..., 3][pixels != NO_DATA_INDEX] == 255)
    # A pixel's colour is the colour table's colour for its index.
    palette = np.array(im.getpalette("RGB"), np.uint8).reshape(-1, 3)
    lut = display_lut("viridis")
    np.testing.assert_array_equal(palette[:256], lut)
    for y, x in [(0, 3), (2, 1), (5, 4)]:
        value = pixels[y, x]
        np.testing.assert_array_equal(rgba[y, x, :3], lut[value])
    # Top row = highest data value = last colour of the colormap.
    np.testing.assert_array_equal(rgba[0, 0, :3], lut[254])


def test_palette_png_without_no_data_is_opaque():
    data = np.arange(20, dtype=np.float32).reshape(4, 5)
    im = _open(encode_png(to_display(data)))
    assert im.mode == "P" and "transparency" not in im.info


def test_palette_png_masked_pixels_are_transparent_whatever_their_index():
    # A hand-made picture whose masked pixel has a data index still comes out transparent.
    index = np.array([[3, 4], [5, 6]], np.uint8)
    mask = np.array([[False, True], [False, False]])
    im = _open(encode_png(DisplayImage(mask=mask, index=index, lut=display_lut("gray"))))
    np.testing.assert_array_equal(np.asarray(im), [[5, 6], [3, NO_DATA_INDEX]])


def _pillows_png(img: DisplayImage) -> Image.Image:
    """The reference: Pillow's own palette PNG of ``img`` (zlib), decoded."""
    pil = Image.fromarray(np.ascontiguousarray(img.index[::-1]), mode="L")
    pil.putpalette(np.ascontiguousarray(img.lut, dtype=np.uint8).tobytes(), rawmode="RGB")
    params = {"transparency": NO_DATA_INDEX} if img.mask.any() else {}
    buf = io.BytesIO()
    pil.save(buf, format="PNG", **params)
    return _open(buf.getvalue())


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(
    ("deflate", "level", "huffman_only"),
    [("isal", 2, False), ("isal", 0, False), ("isal", 3, False), ("zlib", 1, False), ("zlib", 6, False),
     ("zlib", 1, True)],
)  # fmt: skip
def test_a_palette_png_is_pillows_picture_whatever_the_deflater_and_threads(
    horsehead, masked, deflate, level, huffman_only
):
    """The file is written here, deflated by ISA-L or zlib, in row bands at PARALLEL_PNG_PIXELS
    and above: it decodes to the picture of Pillow's own file, palette and transparency included."""
    from skyrender.encode import PARALLEL_PNG_PIXELS

    data, _ = horsehead
    big = np.tile(data, (4, 3))[:768, :1024].copy()  # 1024x768, noisy real sky
    assert big.size >= PARALLEL_PNG_PIXELS
    if masked:
        big[100:300, 50:90] = np.nan
    img = to_display(big, stretch="asinh", cmap="viridis")
    reference = _pillows_png(img)
    opts = {"compress_level": level, "deflate": deflate, "huffman_only": huffman_only}
    for n in (3, 1):
        im = _open(encode_png(img, num_threads=n, **opts))
        assert im.mode == reference.mode == "P" and im.size == reference.size == (1024, 768)
        assert im.getpalette() == reference.getpalette()
        assert im.info == reference.info == ({"transparency": NO_DATA_INDEX} if masked else {})
        np.testing.assert_array_equal(np.asarray(im), np.asarray(reference))
        np.testing.assert_array_equal(np.asarray(im)[::-1], img.index)


def test_isal_deflates_a_sky_picture_nearly_as_small_as_zlib(horsehead):
    """ISA-L at its level 2 (the default) against zlib at 1: files within 10 % (measured 2-4 %)."""
    data, _ = horsehead
    img = to_display(np.tile(data, (2, 2)), stretch="log", cmap="magma")
    isal_bytes = len(encode_png(img))
    zlib_bytes = len(encode_png(img, deflate="zlib", compress_level=1))
    assert isal_bytes < 1.1 * zlib_bytes
    stored = len(encode_png(img, compress_level=0))
    assert isal_bytes < 0.95 * stored  # it does compress


def test_png_num_threads_is_checked():
    with pytest.raises(EncodeError, match="num_threads"):
        encode_png(to_display(_ramp()), num_threads=-1)


def test_png_on_real_data_round_trips_the_index(horsehead):
    data, _ = horsehead
    img = to_display(data, stretch="sqrt", cmap="gray")
    im = _open(encode_png(img, deflate="zlib", compress_level=6))
    assert im.size == (data.shape[1], data.shape[0])
    np.testing.assert_array_equal(np.asarray(im)[::-1], img.index)


def test_colour_png_rgb_and_rgba():
    colour = np.zeros((3, 4, 6), np.float32)
    colour[0] = np.arange(4)[:, None] * 60  # red grows with y
    colour[2] = 200
    im = _open(encode_png(to_display(colour)))
    assert im.mode == "RGB" and im.size == (6, 4)
    px = np.asarray(im)
    assert px[0, 0].tolist() == [180, 0, 200]  # top row = last array row
    assert px[-1, 0].tolist() == [0, 0, 200]
    colour[1, 3, 5] = np.nan  # top-right of the picture
    im = _open(encode_png(to_display(colour)))
    assert im.mode == "RGBA"
    alpha = np.asarray(im)[..., 3]
    assert alpha[0, 5] == 0 and alpha.sum() == 255 * (alpha.size - 1)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("deflate", "level"), [("isal", 0), ("isal", 2), ("isal", 3), ("zlib", 1)])
def test_a_colour_png_decodes_to_the_picture_whatever_the_deflater_and_threads(
    horsehead, masked, deflate, level
):
    """RGB (RGBA when any pixel has no data) written here with Up-filtered rows deflated by
    ISA-L in row bands, or Pillow's with zlib: Pillow reads back the picture, top row first."""
    from skyrender.encode import PARALLEL_PNG_PIXELS

    data, _ = horsehead
    big = np.tile(data, (4, 3))[:768, :1024].copy()  # 1024x768, noisy real sky
    colour = np.stack([big, np.roll(big, 37, axis=1), big[::-1]]).astype(np.float32)
    if masked:
        colour[1, 100:300, 50:90] = np.nan
    img = to_display(colour, stretch="asinh")
    assert img.is_colour and img.mask.size >= PARALLEL_PNG_PIXELS and bool(img.mask.any()) == masked
    for n in (3, 1):
        data_png = encode_png(img, compress_level=level, deflate=deflate, num_threads=n)
        im = _open(data_png)
        assert im.mode == ("RGBA" if masked else "RGB") and im.size == (1024, 768)
        px = np.asarray(im)
        np.testing.assert_array_equal(px[..., :3][::-1], img.rgb)
        if masked:
            np.testing.assert_array_equal(px[..., 3][::-1] == 0, img.mask)
        assert len(data_png) < 0.8 * img.rgb.nbytes  # it does compress


@pytest.mark.parametrize("level", [-1, 10, 1.0, "1", None, True])
def test_png_bad_compress_level(level):
    for deflate in ("isal", "zlib"):
        with pytest.raises(EncodeError):
            encode_png(to_display(_ramp()), compress_level=level, deflate=deflate)


def test_png_levels_are_on_the_deflaters_own_scale():
    img = to_display(_ramp())
    with pytest.raises(EncodeError, match=r"deflate 'isal'.*0\.\.3"):
        encode_png(img, compress_level=4)
    assert _open(encode_png(img, compress_level=9, deflate="zlib")).size == (5, 6)
    with pytest.raises(EncodeError, match="unknown PNG deflate library 'gzip'"):
        encode_png(img, deflate="gzip")


def test_png_needs_a_display_image():
    with pytest.raises(EncodeError):
        encode_png(_ramp())


# -- JPEG --------------------------------------------------------------------------------------


def test_jpeg_grey_flip_size_and_background():
    data = np.zeros((32, 48), np.float32)
    data[16:] = 1.0  # upper half bright
    data[:8, :8] = np.nan  # bottom-left block of no data
    img = to_display(data, min_cut=0, max_cut=1, cmap="gray")
    im = _open(encode_jpeg(img, quality=95, background=(255, 0, 0)))
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (48, 32)
    px = np.asarray(im).astype(int)
    assert np.all(np.abs(px[2, 20] - 255) <= 6)  # top = bright rows
    assert np.all(np.abs(px[28, 20] - 0) <= 6)  # bottom = dark rows
    assert np.all(np.abs(px[28, 2] - [255, 0, 0]) <= 12)  # no data = background


def test_jpeg_colour_background():
    # 16-pixel blocks, so JPEG's 16×16 chroma blocks do not mix the two colours.
    colour = np.full((3, 32, 32), 128.0, np.float32)
    colour[:, :16, :16] = np.nan  # bottom-left in FITS order
    im = _open(encode_jpeg(to_display(colour), background=(0, 0, 255)))
    px = np.asarray(im).astype(int)
    assert np.all(np.abs(px[28, 4] - [0, 0, 255]) <= 12)
    assert np.all(np.abs(px[4, 28] - 128) <= 6)


@pytest.mark.parametrize("quality", [0, 101, 90.5, "90", None])
def test_jpeg_bad_quality(quality):
    with pytest.raises(EncodeError):
        encode_jpeg(to_display(_ramp()), quality=quality)


@pytest.mark.parametrize("background", [(0, 0), (0, 0, 256), "red", None])
def test_jpeg_bad_background(background):
    with pytest.raises(EncodeError):
        encode_jpeg(to_display(_ramp()), background=background)


# -- FITS --------------------------------------------------------------------------------------


def test_fits_round_trip_keeps_data_and_wcs(horsehead):
    data, header = horsehead
    body = encode_fits(data, header)
    assert len(body) % 2880 == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(body)) as hdul:
            assert len(hdul) == 1 and isinstance(hdul[0], fits.PrimaryHDU)
            out, out_header = hdul[0].data, hdul[0].header
            assert out.dtype == np.dtype(">f4") and out_header["BITPIX"] == -32
            np.testing.assert_array_equal(out, data)  # FITS order, not flipped
            w_in, w_out = WCS(header), WCS(out_header)
    np.testing.assert_allclose(w_out.wcs.crval, w_in.wcs.crval)
    np.testing.assert_allclose(w_out.wcs.crpix, w_in.wcs.crpix)
    np.testing.assert_allclose(w_out.pixel_scale_matrix, w_in.pixel_scale_matrix)
    assert list(w_out.wcs.ctype) == list(w_in.wcs.ctype)


def test_fits_from_dict_header_with_nan_and_json_values():
    data = _ramp()
    header = {
        "naxis": 99,  # structural keywords come from the data
        "NAXIS1": 1,
        "BITPIX": 8,
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CRPIX1": 3.0,
        "CRPIX2": 3.5,
        "CRVAL1": 150.0,
        "CRVAL2": 2.0,
        "CDELT1": -0.001,
        "CDELT2": 0.001,
        "RADESYS": "ICRS",
        "COMMENT": ["rendered by skyrender"],
    }
    with fits.open(io.BytesIO(encode_fits(data, header))) as hdul:
        hdr, out = hdul[0].header, hdul[0].data
        assert (hdr["NAXIS"], hdr["NAXIS1"], hdr["NAXIS2"]) == (2, 5, 6)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(data))
        np.testing.assert_array_equal(out[1:], data[1:])
        w = WCS(hdr)
        assert w.wcs.crval.tolist() == [150.0, 2.0]
        assert "rendered by skyrender" in str(hdr["COMMENT"])


def test_fits_colour_cube():
    colour = np.random.default_rng(3).uniform(0, 255, (3, 4, 5)).astype(np.float32)
    with fits.open(io.BytesIO(encode_fits(colour, {"CTYPE1": "GLON-CAR", "CTYPE2": "GLAT-CAR"}))) as hdul:
        hdr = hdul[0].header
        assert (hdr["NAXIS"], hdr["NAXIS1"], hdr["NAXIS2"], hdr["NAXIS3"]) == (3, 5, 4, 3)
        np.testing.assert_array_equal(hdul[0].data, colour)
        assert WCS(hdr).celestial.wcs.ctype[0] == "GLON-CAR"


@pytest.mark.parametrize(
    ("data", "header"),
    [
        (np.zeros((2, 3, 4)), None),
        (np.zeros(5), None),
        (np.array([["a"]]), None),
        (np.zeros((2, 2)), {"CRVAL1": float("nan")}),
        (np.zeros((2, 2)), {"CRVAL1": {"nested": 1}}),
        (np.zeros((2, 2)), "CRVAL1 = 1"),
    ],
)
def test_fits_errors(data, header):
    with pytest.raises(EncodeError):
        encode_fits(data, header)


# -- encode_image ------------------------------------------------------------------------------


def test_encode_image_formats_and_media_types():
    img = to_display(_ramp())
    body, media = encode_image(img, "png", compress_level=3)
    assert media == "image/png" and _open(body).mode == "P"
    for fmt in ("jpeg", "JPG"):
        body, media = encode_image(img, fmt, quality=80)
        assert media == "image/jpeg" and _open(body).format == "JPEG"
    body, media = encode_image(_ramp(), "fits", header={"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"})
    assert media == "application/fits" and body.startswith(b"SIMPLE  =")


def test_encode_image_turns_an_array_into_a_picture():
    data = _ramp()
    body, _ = encode_image(data, "png", cmap="gray", min_cut=0, max_cut=5)
    expected = to_display(data, cmap="gray", min_cut=0, max_cut=5)
    np.testing.assert_array_equal(np.asarray(_open(body))[::-1], expected.index)


@pytest.mark.parametrize(
    ("fmt", "opts", "match"),
    [
        ("gif", {}, "unknown output format"),
        ("", {}, "unknown output format"),
        ("jpeg", {"quality": 0}, "quality"),
        ("jpeg", {"quality": "high"}, "quality"),
        ("png", {"quality": 90}, "unknown option"),
        ("jpeg", {"compress_level": 1}, "unknown option"),
        ("fits", {}, "float data"),
    ],
)
def test_encode_image_errors(fmt, opts, match):
    with pytest.raises(EncodeError, match=match):
        encode_image(to_display(_ramp()), fmt, **opts)
