"""From float sky data to a displayable picture: cuts, stretches and colormaps.

The maths is astropy.visualization's (intervals, stretches) and the colours are
matplotlib's colormaps; this module only chooses, validates and glues them, and keeps
the float → 8-bit step vectorised so a 1024×768 image takes a few milliseconds.

A single-band picture is kept *indexed* (a uint8 index per pixel and a 256-entry colour
table) because an indexed PNG is ~6x faster to encode and half the size of an RGBA one.
Index :data:`NO_DATA_INDEX` (255) is reserved for no-data pixels, so data use the 255
indices 0..254 and the colour table holds the colormap sampled at 255 evenly spaced
points (its first and last colours are kept exactly).

Arrays are in FITS order (``image[y, x]``, row 0 = bottom of the picture).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from .errors import DisplayError

__all__ = [
    "CUT_METHODS",
    "Cut",
    "DEFAULT_MAX_PERCENT",
    "DEFAULT_MIN_PERCENT",
    "DisplayImage",
    "MAX_CUT_SAMPLES",
    "NO_DATA_COLOUR",
    "NO_DATA_INDEX",
    "N_DATA_COLOURS",
    "STRETCHES",
    "apply_stretch",
    "as_rgb",
    "check_stretch",
    "colormap_lut",
    "colour_to_rgb",
    "compute_cuts",
    "cut_sample",
    "display_lut",
    "parse_cut",
    "parse_survey_cut",
    "percentiles",
    "to_display",
    "to_index",
]

#: Stretch names accepted by :func:`apply_stretch`.
STRETCHES = ("linear", "sqrt", "log", "asinh", "power")

#: Cut methods accepted by :func:`compute_cuts`.
CUT_METHODS = ("percentile", "zscale", "minmax", "survey")

#: Default percentile cuts [%].
DEFAULT_MIN_PERCENT = 0.5
DEFAULT_MAX_PERCENT = 99.5

#: At most this many values are used for percentiles and zscale (deterministic stride).
#: Measured on a 1024×768 float32 image: numpy's percentiles of all finite values 11 ms, of
#: the strided sample ~2.5 ms (`percentiles`: 0.3 ms); on a heavy-tailed (lognormal) image
#: the 99.5 % cut moved by ~1 %.
MAX_CUT_SAMPLES = 250_000

#: Palette index reserved for no-data pixels; data use 0..254.
NO_DATA_INDEX = 255

#: Number of colours available to data in an indexed picture.
N_DATA_COLOURS = 255

#: Colour of the reserved no-data entry of the colour table (encoders make it
#: transparent, or the background colour for JPEG).
NO_DATA_COLOUR = (0, 0, 0)


#: Below this many values `percentiles` is numpy's own: selecting the tails would not pay.
_TAIL_SELECT_MIN = 16_384

#: Share of the values a tail bound keeps beyond the wanted rank, as estimated on a pre-sample
#: of ~4096 values: wide enough that the bound almost never falls short (numpy then decides).
_TAIL_MARGIN = 0.01


def percentiles(sample: np.ndarray, percents: float | Sequence[float]) -> np.ndarray:
    """``np.percentile(sample, percents)`` (its default, linear interpolation), for a 1-D
    finite sample; percentiles near 0 or 100 much faster.

    Display cuts sit in the tails (0.5 and 99.5 % by default), so the two order
    statistics around each lie among the few values beyond a bound estimated on a strided
    pre-sample: only those are partitioned (measured, 196 608 values: 0.3 ms against
    2.8 ms). Every bound is checked by counting; one that holds too few values falls back
    to numpy. The interpolation is numpy's own formula, so values agree with it to a
    rounding (a few ulp of the data).

    Parameters
    ----------
    sample : ndarray
        1-D array of finite values.
    percents : float or sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    ndarray
        float64, one value per percentile (0-d for a scalar ``percents``).
    """
    q = np.true_divide(np.asarray(percents, dtype=np.float64), 100.0)
    n = sample.size
    if n < _TAIL_SELECT_MIN or q.size == 0:
        return np.asarray(np.percentile(sample, percents), dtype=np.float64)
    pre = sample[:: max(1, n // 4096)]
    out = np.empty(q.shape, dtype=np.float64)
    for i, quantile in np.ndenumerate(q):
        pair = _order_pair(sample, pre, float(quantile))
        if pair is None:
            return np.asarray(np.percentile(sample, percents), dtype=np.float64)
        a, b, gamma = pair
        diff = b - a  # numpy's _lerp: from the nearer end, so that gamma 0 and 1 are exact
        out[i] = b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma
    return out


def _order_pair(sample: np.ndarray, pre: np.ndarray, quantile: float) -> tuple[float, float, float] | None:
    """The two order statistics around ``quantile`` of ``sample`` and the weight between them,
    from the tail beyond a bound set on ``pre``; None when the bound holds too few values."""
    n = sample.size
    virtual = quantile * (n - 1)
    below = min(int(math.floor(virtual)), n - 1)
    above = min(below + 1, n - 1)
    gamma = virtual - below
    if quantile <= 0.5:
        bound = np.quantile(pre, min(1.0, quantile + _TAIL_MARGIN))
        tail = sample[sample <= bound]
        if tail.size <= above:
            return None
        first = 0
    else:
        bound = np.quantile(pre, max(0.0, quantile - _TAIL_MARGIN))
        tail = sample[sample >= bound]
        first = n - tail.size  # rank of the tail's smallest value in the whole sample
        if first > below:
            return None
    part = np.partition(tail, [below - first, above - first])
    return float(part[below - first]), float(part[above - first]), gamma


@dataclass(frozen=True)
class Cut:
    """One side of a display interval.

    Attributes
    ----------
    value : float
        A value in data units, or a percentile in [0, 100] when ``percent`` is true.
    percent : bool
        True for a percentile of the finite data.
    """

    value: float
    percent: bool = False

    def resolve(self, sample: np.ndarray) -> float:
        """The cut in data units, given a sample of the finite data."""
        if not self.percent:
            return self.value
        return float(percentiles(sample, self.value))


def parse_cut(value: float | str | Cut | None) -> Cut | None:
    """Parse a cut: a number in data units, or a percentile string such as ``"99.5%"``.

    Parameters
    ----------
    value : float, str, Cut or None
        ``None`` means "use the method's default"; numbers and numeric strings are
        absolute values in data units; a string ending in ``%`` is a percentile.

    Returns
    -------
    Cut or None

    Raises
    ------
    DisplayError
        Non-finite values, percentiles outside [0, 100], anything unparseable.
    """
    if value is None or isinstance(value, Cut):
        return value
    if isinstance(value, bool):
        raise DisplayError(f"a cut must be a number or a percentile such as '99.5%', got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        body = text[:-1].strip() if percent else text
        try:
            number = float(body)
        except ValueError:
            raise DisplayError(
                f"a cut must be a number in data units or a percentile such as '99.5%', got {value!r}"
            ) from None
    elif isinstance(value, (int, float, np.integer, np.floating)):
        percent, number = False, float(value)
    else:
        raise DisplayError(f"a cut must be a number or a percentile such as '99.5%', got {value!r}")
    if not math.isfinite(number):
        raise DisplayError(f"a cut must be finite, got {value!r}")
    if percent and not 0.0 <= number <= 100.0:
        raise DisplayError(f"a percentile cut must be within 0%..100%, got {value!r}")
    return Cut(number, percent)


def parse_survey_cut(survey_cut: tuple[float, float] | list[float] | str | None) -> tuple[float, float]:
    """The HiPS ``hips_pixel_cut`` as (vmin, vmax) in data units.

    Accepts the properties-file string (``"-4 2000"``) or a pair of numbers.
    """
    if survey_cut is None:
        raise DisplayError("cut method 'survey' needs the survey's hips_pixel_cut")
    parts = survey_cut.replace(",", " ").split() if isinstance(survey_cut, str) else list(survey_cut)
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise DisplayError(f"hips_pixel_cut must be two numbers, got {survey_cut!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DisplayError(f"hips_pixel_cut must be finite, got {survey_cut!r}")
    return lo, hi


def cut_sample(data: np.ndarray, max_samples: int = MAX_CUT_SAMPLES) -> np.ndarray:
    """Finite values of ``data`` (flattened), thinned to about ``max_samples`` by a fixed stride.

    The stride is applied before the finite test (cheaper than filtering the whole image);
    an image that is mostly NaN thus gives fewer, but still uniformly spread, values.
    Deterministic: the same image always gives the same cuts.
    """
    flat = np.asarray(data).ravel()
    if flat.size > max_samples:
        flat = flat[:: -(-flat.size // max_samples)]
    return flat[np.isfinite(flat)]


def compute_cuts(
    data: np.ndarray,
    min_cut: float | str | Cut | None = None,
    max_cut: float | str | Cut | None = None,
    *,
    method: Literal["percentile", "zscale", "minmax", "survey"] = "percentile",
    survey_cut: tuple[float, float] | str | None = None,
) -> tuple[float, float]:
    """Display interval (vmin, vmax) in data units.

    Parameters
    ----------
    data : ndarray
        Grey image (any shape); NaN/inf are ignored.
    min_cut, max_cut : float, str, Cut or None
        Explicit cuts (see :func:`parse_cut`); each overrides its side of ``method``.
    method : {"percentile", "zscale", "minmax", "survey"}
        Default interval: 0.5 %/99.5 % percentiles, IRAF zscale
        (`astropy.visualization.ZScaleInterval`), the finite min/max, or the survey's
        ``hips_pixel_cut`` (``survey_cut``).
    survey_cut : (float, float) or str, optional
        The HiPS ``hips_pixel_cut``; required by ``method="survey"``.

    Returns
    -------
    (float, float)
        ``vmin <= vmax`` unless both cuts are given with ``min_cut`` above ``max_cut`` (a
        reversed display). Data without any finite value give (0, 1). A constant image gives
        ``vmin == vmax``, which :func:`apply_stretch` handles.

    Raises
    ------
    DisplayError
        Unknown method or cut, or explicit ``min_cut`` above explicit ``max_cut``.
    """
    if method not in CUT_METHODS:
        raise DisplayError(f"unknown cut method {method!r}; expected one of {', '.join(CUT_METHODS)}")
    lo_cut, hi_cut = parse_cut(min_cut), parse_cut(max_cut)
    sample = cut_sample(data)
    if method == "survey":
        survey_lo, survey_hi = parse_survey_cut(survey_cut)
    if sample.size == 0:
        return 0.0, 1.0
    if lo_cut is None or hi_cut is None:
        if method == "percentile":
            default = tuple(percentiles(sample, [DEFAULT_MIN_PERCENT, DEFAULT_MAX_PERCENT]))
        elif method == "zscale":
            from astropy.visualization import ZScaleInterval

            default = ZScaleInterval().get_limits(sample)
        elif method == "minmax":
            # Extremes must come from every pixel, not the thinned sample.
            flat = np.asarray(data).ravel()
            finite = flat[np.isfinite(flat)]
            default = (finite.min(), finite.max())
        else:
            default = (survey_lo, survey_hi)
        default_lo, default_hi = float(default[0]), float(default[1])
    vmin = lo_cut.resolve(sample) if lo_cut is not None else default_lo
    vmax = hi_cut.resolve(sample) if hi_cut is not None else default_hi
    if vmin > vmax:
        if lo_cut is not None and hi_cut is not None:
            # Both given, min above max: a reversed display (DS9 does the same), not an error.
            return vmin, vmax
        # One explicit side beyond the default other side: honour the explicit one.
        if lo_cut is not None:
            vmax = vmin
        else:
            vmin = vmax
    return vmin, vmax


@lru_cache(maxsize=16)
def _stretch_object(stretch: str, power: float):
    from astropy.visualization import AsinhStretch, LinearStretch, LogStretch, PowerStretch, SqrtStretch

    if stretch == "linear":
        return LinearStretch()
    if stretch == "sqrt":
        return SqrtStretch()
    if stretch == "log":
        return LogStretch()
    if stretch == "asinh":
        return AsinhStretch()
    return PowerStretch(power)


def check_stretch(stretch: str) -> str:
    """Return ``stretch`` if it is one of :data:`STRETCHES`, else raise `DisplayError`."""
    if stretch not in STRETCHES:
        raise DisplayError(f"unknown stretch {stretch!r}; expected one of {', '.join(STRETCHES)}")
    return stretch


def apply_stretch(
    data: np.ndarray,
    vmin: float,
    vmax: float,
    stretch: str = "linear",
    *,
    power: float = 2.0,
) -> np.ndarray:
    """Normalise to [0, 1] with ``vmin``/``vmax``, clip, then stretch.

    Parameters
    ----------
    data : ndarray
        Grey data in data units; NaN marks no data.
    vmin, vmax : float
        Display interval in data units (`astropy.visualization.ManualInterval`). With
        ``vmin == vmax`` the result is a step: 0 at or below, 1 above. ``vmin > vmax``
        reverses the scale (data at ``vmin`` still map to 0 and at ``vmax`` to 1, so brighter
        data get lower values).
    stretch : {"linear", "sqrt", "log", "asinh", "power"}
        astropy.visualization stretch with its default parameters (log: a=1000,
        asinh: a=0.1); ``power`` is the exponent of ``PowerStretch``.
    power : float
        Exponent of the ``power`` stretch, > 0.

    Returns
    -------
    ndarray
        float32, same shape, values in [0, 1], NaN where the input was not finite.
    """
    return _normalise(data, *_interval_and_stretch(vmin, vmax, stretch, power))


def _interval_and_stretch(vmin: float, vmax: float, stretch: str, power: float) -> tuple:
    """The astropy ``ManualInterval`` and stretch objects of `apply_stretch`, checked."""
    from astropy.visualization import ManualInterval

    check_stretch(stretch)
    if not (math.isfinite(vmin) and math.isfinite(vmax)):
        raise DisplayError(f"cuts must be finite, got ({vmin!r}, {vmax!r})")
    if stretch == "power" and not (math.isfinite(power) and power > 0):
        raise DisplayError(f"power stretch exponent must be > 0, got {power!r}")
    return ManualInterval(vmin, vmax), _stretch_object(stretch, float(power))


def _normalise(data: np.ndarray, interval, stretch) -> np.ndarray:
    """`apply_stretch` with its astropy ``interval`` and ``stretch`` objects made."""
    # Work in one float32 buffer: astropy's interval and stretch both run in place.
    out = np.array(data, dtype=np.float32, copy=True)
    out[np.isinf(out)] = np.nan
    interval(out, clip=True, out=out)
    with np.errstate(invalid="ignore"):
        stretch(out, clip=True, out=out)
    return out


@lru_cache(maxsize=64)
def colormap_lut(name: str = "viridis") -> np.ndarray:
    """The matplotlib colormap ``name`` as a (256, 3) uint8 RGB table.

    Any registered name works, including matplotlib's reversed ``<name>_r``. The
    returned array is read-only (it is cached and shared).

    Raises
    ------
    DisplayError
        Unknown colormap.
    """
    import matplotlib

    if not isinstance(name, str):
        raise DisplayError(f"colormap name must be a string, got {name!r}")
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise DisplayError(
            f"unknown colormap {name!r}; use a matplotlib name such as viridis, gray, inferno, "
            "magma, plasma, cubehelix (add _r to reverse)"
        ) from None
    rgba = cmap(np.linspace(0.0, 1.0, 256))
    lut = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    lut.flags.writeable = False
    return lut


@lru_cache(maxsize=64)
def display_lut(name: str = "viridis") -> np.ndarray:
    """Colour table of an indexed picture: 255 data colours and the no-data entry.

    Entries 0..254 sample the colormap's 256 colours at 255 evenly spaced points (one
    middle colour is dropped; the ends are exact); entry 255 is :data:`NO_DATA_COLOUR`.
    """
    full = colormap_lut(name)
    lut = np.empty((256, 3), dtype=np.uint8)
    lut[:N_DATA_COLOURS] = full[np.rint(np.linspace(0, 255, N_DATA_COLOURS)).astype(np.intp)]
    lut[NO_DATA_INDEX] = NO_DATA_COLOUR
    lut.flags.writeable = False
    return lut


@dataclass(frozen=True)
class DisplayImage:
    """An 8-bit picture ready for encoding, in FITS row order (row 0 = bottom).

    Exactly one of ``index`` (single band) and ``rgb`` (colour) is set.

    Attributes
    ----------
    mask : ndarray of bool, (H, W)
        True where there is no data.
    index : ndarray of uint8, (H, W), optional
        Colour-table index per pixel: data use 0..254, no-data pixels are
        :data:`NO_DATA_INDEX` (255).
    lut : ndarray of uint8, (256, 3), optional
        Colour table for ``index`` (see :func:`display_lut`).
    rgb : ndarray of uint8, (H, W, 3), optional
        Colour picture; the values of masked pixels are unspecified.
    """

    mask: np.ndarray
    index: np.ndarray | None = None
    lut: np.ndarray | None = None
    rgb: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.index is None) == (self.rgb is None):
            raise DisplayError("a DisplayImage holds either an index image or an RGB image")
        if self.index is not None and (self.lut is None or self.lut.shape != (256, 3)):
            raise DisplayError("an index image needs a (256, 3) colour table")

    @property
    def is_colour(self) -> bool:
        return self.rgb is not None

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


def to_index(normalised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values in [0, 1] (NaN = no data) → (uint8 index in 0..254 / 255 for NaN, mask)."""
    mask = np.isnan(normalised)
    scaled = np.multiply(normalised, N_DATA_COLOURS - 1, dtype=np.float32)
    scaled += 0.5  # round half up; values are already clipped to [0, 254.5]
    scaled[mask] = NO_DATA_INDEX
    return scaled.astype(np.uint8), mask


def colour_to_rgb(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour planes (C, H, W), C = 3 or 4, in 0..255 → (uint8 (H, W, 3), no-data mask).

    A pixel is no data when any of its colour planes is NaN, or its alpha (C = 4) is 0
    or NaN. Values are clipped to 0..255 and rounded.
    """
    planes = np.asarray(image, dtype=np.float32)
    mask = np.isnan(planes[:3]).any(axis=0)
    if planes.shape[0] == 4:
        alpha = planes[3]
        mask |= ~(alpha > 0)
    rgb = np.clip(np.moveaxis(planes[:3], 0, -1), 0.0, 255.0)
    rgb += 0.5
    rgb[mask] = 0.0
    return rgb.astype(np.uint8), mask


def to_display(
    image: np.ndarray,
    *,
    min_cut: float | str | None = None,
    max_cut: float | str | None = None,
    stretch: str = "linear",
    cmap: str = "viridis",
    cut_method: str | None = None,
    survey_cut: tuple[float, float] | str | None = None,
    power: float = 2.0,
) -> DisplayImage:
    """Turn a rendered image into an 8-bit picture.

    Parameters
    ----------
    image : ndarray
        Grey float (H, W) with NaN for no data, or colour float (3, H, W) / (4, H, W) in
        0..255, FITS order.
    min_cut, max_cut : float or str, optional
        Cuts (data units or ``"NN%"`` percentiles), see :func:`compute_cuts`.
    stretch : str
        One of :data:`STRETCHES`.
    cmap : str
        matplotlib colormap name.
    cut_method : str, optional
        See :func:`compute_cuts`. ``None`` means ``"survey"`` when ``survey_cut`` is
        given and ``"percentile"`` otherwise (the service passes the survey's
        ``hips_pixel_cut`` only when the request has no cuts of its own).
    survey_cut : (float, float) or str, optional
        The survey's ``hips_pixel_cut``.
    power : float
        Exponent of the ``power`` stretch.

    Returns
    -------
    DisplayImage
        Indexed for grey input, RGB for colour input.

    Notes
    -----
    Colour input already is a picture (0..255 per plane): it passes through unchanged,
    without cuts, stretch or colormap (those are still validated).
    """
    check_stretch(stretch)
    lut = display_lut(cmap)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (3, 4):
        rgb, mask = colour_to_rgb(arr)
        return DisplayImage(mask=mask, rgb=rgb)
    if arr.ndim != 2:
        raise DisplayError(f"expected a (H, W) grey or (3, H, W) colour image, got shape {arr.shape}")
    if cut_method is None:
        cut_method = "survey" if survey_cut is not None else "percentile"
    vmin, vmax = compute_cuts(arr, min_cut, max_cut, method=cut_method, survey_cut=survey_cut)
    index, mask = _index_in_bands(arr, *_interval_and_stretch(vmin, vmax, stretch, power))
    return DisplayImage(mask=mask, index=index, lut=lut)


#: Pixels per band of `to_display`'s stretch and indexing. A band's float temporaries
#: (256 KiB) stay in the CPU's cache and in memory the process already has; the whole
#: image's (~8 MiB at 1024x768) cost a page fault per 4 KiB in a busy replica (~1 us each
#: here), which took longer than the arithmetic.
DISPLAY_BAND_PIXELS = 65536


def _index_in_bands(arr: np.ndarray, interval, stretch) -> tuple[np.ndarray, np.ndarray]:
    """`to_index` of `apply_stretch` of the grey image ``arr``, computed band by band of rows."""
    height, width = arr.shape
    index = np.empty((height, width), dtype=np.uint8)
    mask = np.empty((height, width), dtype=bool)
    rows = max(1, DISPLAY_BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = slice(top, top + rows)
        index[band], mask[band] = to_index(_normalise(arr[band], interval, stretch))
    return index, mask


def as_rgb(img: DisplayImage) -> DisplayImage:
    """The same picture as RGB (the colour table applied), for clients that want a 3-D array."""
    if img.is_colour:
        return img
    return DisplayImage(mask=img.mask, rgb=img.lut[img.index])
