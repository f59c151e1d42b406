"""Cuts, stretches, colormaps and the float → indexed picture step."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest
from astropy.io import fits
from astropy.visualization import AsinhStretch, LogStretch, ZScaleInterval

from skyrender.display import (
    NO_DATA_INDEX,
    STRETCHES,
    Cut,
    DisplayImage,
    apply_stretch,
    colormap_lut,
    compute_cuts,
    cut_sample,
    display_lut,
    parse_cut,
    percentiles,
    to_display,
)
from skyrender.errors import DisplayError, SkyRenderError


@pytest.fixture(scope="module")
def bolocam(fits_dir) -> np.ndarray:
    """Real 1.1 mm map with NaN edges, float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fits.getdata(fits_dir / "gc_bolocam_gps.fits").astype(np.float32)


# -- parse_cut -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (3, Cut(3.0)),
        (-2.5, Cut(-2.5)),
        ("1e-3", Cut(0.001)),
        (" 42 ", Cut(42.0)),
        ("0.5%", Cut(0.5, percent=True)),
        ("99.5%", Cut(99.5, percent=True)),
        ("100%", Cut(100.0, percent=True)),
        ("0 %", Cut(0.0, percent=True)),
        (np.float32(1.5), Cut(1.5)),
    ],
)
def test_parse_cut_accepts(value, expected):
    assert parse_cut(value) == expected


@pytest.mark.parametrize(
    "value", ["abc", "", "%", "101%", "-1%", "nan", "inf", "-inf%", float("nan"), float("inf"), True, [1], {}]
)
def test_parse_cut_rejects(value):
    with pytest.raises(DisplayError):
        parse_cut(value)


def test_display_error_is_a_skyrender_value_error():
    with pytest.raises(ValueError):
        parse_cut("garbage")
    assert issubclass(DisplayError, SkyRenderError)


# -- compute_cuts ------------------------------------------------------------------------------


def test_default_cuts_are_half_percent_percentiles(bolocam):
    finite = bolocam[np.isfinite(bolocam)]
    vmin, vmax = compute_cuts(bolocam)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    span = float(finite.max() - finite.min())
    # 640×638 is above the sampling threshold only for the finite test; cuts agree closely.
    assert abs(vmin - lo) < 0.01 * span
    assert abs(vmax - hi) < 0.01 * span
    assert vmin < vmax


_RNG = np.random.default_rng(11)


@pytest.mark.parametrize(
    "sample",
    [
        _RNG.normal(size=200_000),
        _RNG.lognormal(size=300_000).astype(np.float32),  # heavy tail, float32
        np.round(_RNG.normal(size=100_000) * 3),  # many ties
        np.r_[np.zeros(150_000), _RNG.normal(size=1000)],  # mostly one value
        np.ones(50_000),
        np.sort(_RNG.normal(size=100_000))[::-1].copy(),  # ordered: the pre-sample is a stride
        np.arange(20_000, dtype=np.float64),
    ],
    ids=["normal", "lognormal32", "ties", "mostly-zero", "constant", "reversed", "ramp"],
)
def test_percentiles_are_numpys(sample):
    percents = [0, 0.01, 0.5, 1, 5, 25, 50, 75, 95, 99, 99.5, 99.99, 100]
    np.testing.assert_allclose(percentiles(sample, percents), np.percentile(sample, percents), rtol=1e-12)
    assert percentiles(sample, 99.5).shape == ()
    assert float(percentiles(sample, 99.5)) == pytest.approx(np.percentile(sample, 99.5), rel=1e-12)


def test_percentiles_fall_back_to_numpy_when_the_pre_sample_misleads():
    # The pre-sampled values (every 24th) are spread far out, all others 0: the bounds set on
    # them hold fewer values than the ranks wanted, on each side.
    from skyrender.display import _order_pair

    sample = np.zeros(100_000)
    stride = sample.size // 4096
    spread = np.arange(1, sample[::stride].size + 1, dtype=np.float64)
    for sign in (1.0, -1.0):
        sample[::stride] = sign * spread
        quantile = 0.995 if sign > 0 else 0.005
        assert _order_pair(sample, sample[::stride], quantile) is None  # the bound falls short
        percents = [0.5, 99.5, 50]
        np.testing.assert_array_equal(percentiles(sample, percents), np.percentile(sample, percents))


def test_explicit_cuts_override_each_side(bolocam):
    default_lo, default_hi = compute_cuts(bolocam)
    assert compute_cuts(bolocam, min_cut=-0.1) == (-0.1, default_hi)
    assert compute_cuts(bolocam, max_cut="2.5") == (default_lo, 2.5)
    assert compute_cuts(bolocam, min_cut=-1, max_cut=3) == (-1.0, 3.0)


def test_percent_cuts_match_numpy_on_small_data():
    data = np.arange(1000, dtype=np.float32).reshape(25, 40)
    data[0, :5] = np.nan
    finite = data[np.isfinite(data)]
    vmin, vmax = compute_cuts(data, "10%", "90%")
    assert vmin == pytest.approx(np.percentile(finite, 10))
    assert vmax == pytest.approx(np.percentile(finite, 90))


def test_minmax_zscale_and_survey_methods(bolocam):
    finite = bolocam[np.isfinite(bolocam)]
    assert compute_cuts(bolocam, method="minmax") == (float(finite.min()), float(finite.max()))
    z = ZScaleInterval().get_limits(cut_sample(bolocam))
    assert compute_cuts(bolocam, method="zscale") == pytest.approx(z)
    assert compute_cuts(bolocam, method="survey", survey_cut="-0.5 4") == (-0.5, 4.0)
    assert compute_cuts(bolocam, method="survey", survey_cut=(1, 2)) == (1.0, 2.0)
    # An explicit side still wins over the survey's cut.
    assert compute_cuts(bolocam, max_cut=9, method="survey", survey_cut=(1, 2)) == (1.0, 9.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "median"}, "unknown cut method"),
        ({"method": "survey"}, "hips_pixel_cut"),
        ({"method": "survey", "survey_cut": "1 two"}, "two numbers"),
        ({"method": "survey", "survey_cut": "1 2 3"}, "two numbers"),
        ({"min_cut": "x"}, "percentile"),
    ],
)
def test_compute_cuts_errors(bolocam, kwargs, match):
    with pytest.raises(DisplayError, match=match):
        compute_cuts(bolocam, **kwargs)


def test_one_sided_cut_beyond_the_other_collapses_to_it():
    data = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    assert compute_cuts(data, min_cut=5) == (5.0, 5.0)
    assert compute_cuts(data, max_cut=-5) == (-5.0, -5.0)


def test_all_nan_and_empty_data_give_unit_interval():
    assert compute_cuts(np.full((4, 5), np.nan, dtype=np.float32)) == (0.0, 1.0)
    assert compute_cuts(np.full((4, 5), np.inf)) == (0.0, 1.0)
    assert compute_cuts(np.zeros((0, 3))) == (0.0, 1.0)


def test_constant_image_gives_equal_cuts_and_a_clean_picture():
    data = np.full((8, 9), 7.0, dtype=np.float32)
    vmin, vmax = compute_cuts(data)
    assert vmin == vmax == 7.0
    with np.errstate(all="raise"):  # no division by zero anywhere
        out = apply_stretch(data, vmin, vmax)
    assert np.all(out == 0.0)
    img = to_display(data)
    assert not img.mask.any() and np.all(img.index == 0)


def test_cut_sample_is_bounded_and_deterministic():
    data = np.random.default_rng(1).normal(size=(1000, 1000)).astype(np.float32)
    data[::7] = np.nan
    a, b = cut_sample(data, 250_000), cut_sample(data, 250_000)
    assert a.size <= 250_000 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # Thinning keeps the distribution: the percentile cuts stay close to the full ones.
    full = np.nanpercentile(data, [0.5, 99.5])
    assert compute_cuts(data) == pytest.approx(tuple(full), abs=0.05)


# -- apply_stretch -----------------------------------------------------------------------------


@pytest.mark.parametrize("stretch", STRETCHES)
def test_stretch_range_monotonic_and_nan_kept(stretch):
    data = np.linspace(-1, 11, 200, dtype=np.float32).reshape(10, 20)
    data[3, 4] = np.nan
    data[5, 6] = np.inf  # treated as no data too
    out = apply_stretch(data, 0.0, 10.0, stretch)
    assert out.dtype == np.float32 and out.shape == data.shape
    assert np.isnan(out[3, 4]) and np.isnan(out[5, 6])
    finite = out[np.isfinite(out)]
    assert finite.min() == 0.0 and finite.max() == pytest.approx(1.0)
    flat = out.ravel()
    flat = flat[np.isfinite(flat)]
    assert np.all(np.diff(flat) >= 0)


def test_stretch_values_are_astropys():
    data = np.array([[0.0, 2.5, 5.0, 10.0]], dtype=np.float32)
    x = data / 10.0
    np.testing.assert_allclose(apply_stretch(data, 0, 10, "linear"), x, rtol=1e-6)
    np.testing.assert_allclose(apply_stretch(data, 0, 10, "sqrt"), np.sqrt(x), rtol=1e-6)
    np.testing.assert_allclose(apply_stretch(data, 0, 10, "log"), LogStretch()(x), rtol=1e-5)
    np.testing.assert_allclose(apply_stretch(data, 0, 10, "asinh"), AsinhStretch()(x), rtol=1e-5)
    np.testing.assert_allclose(apply_stretch(data, 0, 10, "power"), x**2, rtol=1e-6)
    np.testing.assert_allclose(apply_stretch(data, 0, 10, "power", power=3), x**3, rtol=1e-5)


def test_stretch_does_not_modify_its_input():
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    before = data.copy()
    apply_stretch(data, 2, 8, "log")
    np.testing.assert_array_equal(data, before)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, 1, "gamma"), {}, "linear, sqrt, log, asinh, power"),
        ((0, 1, "power"), {"power": 0}, "> 0"),
        ((0, float("nan")), {}, "finite"),
    ],
)
def test_stretch_errors(args, kwargs, match):
    with pytest.raises(DisplayError, match=match):
        apply_stretch(np.zeros((2, 2), dtype=np.float32), *args, **kwargs)


def test_min_cut_above_max_cut_reverses_the_display(bolocam):
    # Any two cuts the document allows are accepted: min above max is DS9's reversed scale.
    assert compute_cuts(bolocam, min_cut=5, max_cut=1) == (5.0, 1.0)
    lo, hi = compute_cuts(bolocam, min_cut="90%", max_cut="10%")
    assert lo > hi
    data = np.linspace(0.0, 10.0, 11, dtype=np.float32)
    reversed_ = apply_stretch(data, 8.0, 2.0)
    np.testing.assert_allclose(reversed_, 1.0 - apply_stretch(data, 2.0, 8.0), atol=1e-6)


# -- colormaps ---------------------------------------------------------------------------------


def test_colormap_lut_matches_matplotlib():
    for name in ("viridis", "gray", "inferno_r", "cubehelix"):
        lut = colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        expected = np.rint(matplotlib.colormaps[name](np.arange(256) / 255.0)[:, :3] * 255)
        np.testing.assert_array_equal(lut, expected)
    np.testing.assert_array_equal(colormap_lut("viridis_r"), colormap_lut("viridis")[::-1])
    np.testing.assert_array_equal(colormap_lut("gray")[:, 0], np.arange(256))


def test_colormap_lut_is_cached_and_read_only():
    assert colormap_lut("magma") is colormap_lut("magma")
    with pytest.raises(ValueError):
        colormap_lut("magma")[0, 0] = 1


@pytest.mark.parametrize("name", ["nope", "viridis_rr", "", None, 3])
def test_unknown_colormap(name):
    with pytest.raises(DisplayError):
        colormap_lut(name)


def test_display_lut_reserves_no_data_entry_and_keeps_the_ends():
    full, lut = colormap_lut("inferno"), display_lut("inferno")
    assert lut.shape == (256, 3)
    np.testing.assert_array_equal(lut[0], full[0])
    np.testing.assert_array_equal(lut[254], full[255])
    # Every data colour is one of the colormap's own colours, in order.
    positions = [int(np.flatnonzero((full == c).all(axis=1))[0]) for c in lut[:255]]
    assert positions == sorted(positions)


# -- to_display --------------------------------------------------------------------------------


def test_to_display_grey(bolocam):
    img = to_display(bolocam, cmap="magma", stretch="asinh")
    assert isinstance(img, DisplayImage) and not img.is_colour
    assert img.index.shape == bolocam.shape and img.index.dtype == np.uint8
    np.testing.assert_array_equal(img.mask, np.isnan(bolocam))
    assert np.all(img.index[img.mask] == NO_DATA_INDEX)
    assert img.index[~img.mask].max() <= 254
    assert img.index[~img.mask].min() == 0 and img.index[~img.mask].max() == 254  # clipped ends
    np.testing.assert_array_equal(img.lut, display_lut("magma"))
    assert (img.width, img.height) == (bolocam.shape[1], bolocam.shape[0])


def test_to_display_index_is_the_rounded_stretch():
    data = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, np.nan]], dtype=np.float32)
    img = to_display(data, min_cut=0, max_cut=4)
    np.testing.assert_array_equal(img.index, [[0, 64, 127, 191, 254, NO_DATA_INDEX]])


def test_to_display_survey_cut_is_used_when_given(bolocam):
    auto = to_display(bolocam, survey_cut="0 1")
    explicit = to_display(bolocam, min_cut=0, max_cut=1)
    np.testing.assert_array_equal(auto.index, explicit.index)
    assert not np.array_equal(to_display(bolocam).index, auto.index)


def test_to_display_colour_passes_through():
    rng = np.random.default_rng(2)
    colour = rng.uniform(0, 255, size=(3, 5, 7)).astype(np.float32)
    colour[1, 2, 3] = np.nan
    colour[0, 0, 0] = 300.0  # clipped
    img = to_display(colour, min_cut=10, max_cut=20, stretch="log")  # cuts ignored for colour
    assert img.is_colour and img.rgb.shape == (5, 7, 3) and img.rgb.dtype == np.uint8
    expected = np.rint(np.clip(np.moveaxis(colour, 0, -1), 0, 255))
    keep = ~img.mask
    np.testing.assert_array_equal(img.rgb[keep], expected[keep])
    assert img.mask[2, 3] and img.mask.sum() == 1
    assert img.rgb[0, 0, 0] == 255


def test_to_display_rgba_alpha_zero_is_no_data():
    colour = np.full((4, 2, 2), 100.0, dtype=np.float32)
    colour[3, 0, 1] = 0.0
    img = to_display(colour)
    np.testing.assert_array_equal(img.mask, [[False, True], [False, False]])


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"stretch": "cubic"}, (4, 4)),
        ({"cmap": "nope"}, (4, 4)),
        ({"cmap": "nope"}, (3, 4, 4)),
        ({}, (2, 4, 4)),
        ({}, (16,)),
        ({"min_cut": "200%"}, (4, 4)),
    ],
)
def test_to_display_errors(kwargs, shape):
    with pytest.raises(DisplayError):
        to_display(np.zeros(shape, dtype=np.float32), **kwargs)


def test_display_image_needs_exactly_one_picture():
    mask = np.zeros((2, 2), bool)
    with pytest.raises(DisplayError):
        DisplayImage(mask=mask)
    with pytest.raises(DisplayError):
        DisplayImage(mask=mask, index=np.zeros((2, 2), np.uint8))  # no colour table


@pytest.mark.parametrize("shape", [(768, 1024), (7, 70_001), (200, 333), (1, 5)])
@pytest.mark.parametrize("stretch", ["linear", "log", "power"])
def test_to_display_in_bands_is_the_whole_image_stretched_and_indexed(shape, stretch):
    """`to_display` stretches and indexes band by band of rows (its temporaries stay small):
    the picture is the one the whole image gives, at every band boundary, for images of one
    band, of many, and wider than a band (one row each)."""
    from skyrender.display import to_index

    rng = np.random.default_rng(3)
    data = rng.lognormal(4.0, 1.0, shape).astype(np.float32)
    data.ravel()[::89] = np.nan
    data.ravel()[3::1009] = np.inf
    data.ravel()[7::1013] = -np.inf
    vmin, vmax = compute_cuts(data, "2%", "99%")
    whole_index, whole_mask = to_index(apply_stretch(data, vmin, vmax, stretch))
    picture = to_display(data, min_cut=vmin, max_cut=vmax, stretch=stretch)
    assert picture.index.dtype == np.uint8 and picture.index.shape == shape
    np.testing.assert_array_equal(picture.index, whole_index)
    np.testing.assert_array_equal(picture.mask, whole_mask)
