"""Epochs of one survey compared on one grid: difference image, its display and FITS header.

A difference is ``later - earlier`` pixel by pixel on the same output grid (both epochs
rendered with the same geometry, order and interpolation), so a brightening source is
positive and a fading one negative. It is shown with a diverging colormap centred on
zero and symmetric cuts, so zero is always the colormap's middle colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from .display import (
    Cut,
    DisplayImage,
    apply_stretch,
    cut_sample,
    display_lut,
    parse_cut,
    percentiles,
    to_index,
)
from .errors import DisplayError, GeometryError
from .fieldstats import FieldStats, Region, field_stats
from .geometry import OutputGeometry

#: Diverging matplotlib colormap of a difference (blue fading, white unchanged, red brightening).
DIFFERENCE_COLORMAP = "RdBu_r"

#: Default symmetric cut of a difference: this percentile of |difference| [%].
DEFAULT_DIFFERENCE_PERCENT = 99.5


@dataclass(frozen=True)
class EpochImage:
    """One epoch's render.

    Attributes
    ----------
    epoch : str
        The epoch's label, e.g. VLASS ``"2.1"``.
    image : ndarray
        Grey float (height, width), FITS order, NaN for no data.
    """

    epoch: str
    image: np.ndarray


@dataclass(frozen=True)
class DifferenceStats:
    """Per-epoch numbers and those of their difference.

    Attributes
    ----------
    epochs : tuple of (str, FieldStats)
        Each epoch's numbers, in the order given.
    later, earlier : str
        The epochs of the difference ``later - earlier``.
    difference : FieldStats
        The difference's numbers (two-sided peak); its ``significance`` is the peak
        change over the difference's robust noise.
    """

    epochs: tuple[tuple[str, FieldStats], ...]
    later: str
    earlier: str
    difference: FieldStats


def difference(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """``later - earlier`` as float32 (NaN where either has no data).

    Raises
    ------
    GeometryError
        The images are not on the same grid (different shapes) or are not grey.
    """
    a, b = np.asarray(later), np.asarray(earlier)
    if a.ndim != 2 or b.ndim != 2:
        raise GeometryError("epochs are compared on grey (single-band) renders only")
    if a.shape != b.shape:
        raise GeometryError(f"epochs on different grids: {a.shape} and {b.shape}")
    return np.subtract(a, b, dtype=np.float32)


def symmetric_cuts(
    diff: np.ndarray, min_cut: float | str | Cut | None = None, max_cut: float | str | Cut | None = None
) -> tuple[float, float]:
    """Cuts (-m, +m) centred on zero, in data units.

    ``m`` is the larger magnitude of the explicit cuts given (a percentile applies to
    ``|diff|``), or by default the 99.5th percentile of ``|diff|``. Both cuts given
    keep their own values (a caller who sets both asked for them).
    """
    lo, hi = parse_cut(min_cut), parse_cut(max_cut)
    sample = np.abs(cut_sample(diff))

    if lo is not None and hi is not None:
        vmin, vmax = lo.resolve(sample), hi.resolve(sample)
        if vmin > vmax:
            raise DisplayError(f"min cut {min_cut!r} ({vmin:g}) is above max cut {max_cut!r} ({vmax:g})")
        return vmin, vmax
    if lo is not None or hi is not None:
        m = abs((lo if lo is not None else hi).resolve(sample))
    elif sample.size:
        m = float(percentiles(sample, DEFAULT_DIFFERENCE_PERCENT))
    else:
        m = 1.0
    if not m > 0:  # identical epochs: any symmetric interval shows the flat zero
        m = 1.0
    return -m, m


def difference_display(
    diff: np.ndarray,
    *,
    min_cut: float | str | None = None,
    max_cut: float | str | None = None,
    stretch: str = "linear",
    cmap: str | None = None,
) -> DisplayImage:
    """A difference as an indexed picture: diverging colormap, cuts symmetric about zero.

    ``stretch`` applies to the signed values: with symmetric cuts only ``linear`` keeps
    zero at the middle colour, so the others are applied to ``|diff|`` and the sign put
    back (the same stretch on both sides of zero).
    """
    vmin, vmax = symmetric_cuts(diff, min_cut, max_cut)
    lut = display_lut(cmap or DIFFERENCE_COLORMAP)
    if stretch == "linear" or vmin != -vmax:
        normalised = apply_stretch(diff, vmin, vmax, stretch)
    else:
        magnitude = apply_stretch(np.abs(diff), 0.0, vmax, stretch)
        normalised = 0.5 + 0.5 * np.sign(diff) * magnitude
    index, mask = to_index(normalised)
    return DisplayImage(mask=mask, index=index, lut=lut)


def difference_header(
    geom: OutputGeometry, survey: str, later: str, earlier: str, *, unit: str | None = None
) -> fits.Header:
    """FITS header of a difference: the output WCS and both epochs."""
    hdr = geom.header()
    hdr["SURVEY"] = (survey[:68], "survey of both epochs")
    # Not EPOCH: that reserved keyword is the (deprecated) equinox of the WCS.
    hdr["EPOCHNEW"] = (str(later)[:68], "later epoch (minuend)")
    hdr["EPOCHREF"] = (str(earlier)[:68], "earlier epoch (subtrahend)")
    if unit:
        hdr["BUNIT"] = (unit[:68], "unit of both epochs and the difference")
    hdr.add_comment(f"difference image: {survey} epoch {later} minus epoch {earlier}")
    return hdr


def compare_epochs(
    epochs: list[EpochImage], geom: OutputGeometry, region: Region | None = None
) -> DifferenceStats:
    """Per-epoch numbers and those of ``epochs[-1] - epochs[0]`` (later minus earlier).

    Parameters
    ----------
    epochs : list of EpochImage
        At least two, in time order (the first is the reference).
    geom : OutputGeometry
        Their common grid.
    region : Region, optional
        An aperture for the peaks and medians (noise is the whole field's).
    """
    if len(epochs) < 2:
        raise GeometryError("a comparison needs at least two epochs")
    per_epoch = tuple((e.epoch, field_stats(e.image, geom, region)) for e in epochs)
    diff = difference(epochs[-1].image, epochs[0].image)
    return DifferenceStats(
        epochs=per_epoch,
        later=epochs[-1].epoch,
        earlier=epochs[0].epoch,
        difference=field_stats(diff, geom, region, two_sided=True),
    )


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: such numbers travel as null."""
    return value if math.isfinite(value) else None
