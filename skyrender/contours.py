"""Contours of one rendered layer: levels, lines (contourpy), GeoJSON, and drawing them.

Lines are traced by contourpy on the grey render of the contour layer, in output pixel
coordinates (0-based, FITS order: x right, y up from the bottom row). Levels are data
values, or multiples of the layer's robust noise σ (MAD × 1.4826 over the field), the
radio astronomer's ``[3, 5, 10, 20] σ``, meaning ``k × σ`` above zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .display import DisplayImage, as_rgb
from .errors import DisplayError
from .fieldstats import pixel_to_icrs, robust_noise
from .geometry import OutputGeometry

#: Most levels one request may ask for (each costs a contourpy pass).
MAX_LEVELS = 32


@dataclass(frozen=True)
class ContourLevel:
    """The lines of one level.

    Attributes
    ----------
    level : float
        Data value of the contour.
    sigma : float or None
        The multiple of the robust noise it was asked as, if so.
    lines : tuple of ndarray
        Each an (N, 2) float array of (x, y) pixel positions along one line (closed
        lines repeat their first point at the end).
    """

    level: float
    sigma: float | None
    lines: tuple[np.ndarray, ...]


def contour_levels(image: np.ndarray, levels: Sequence[float], *, in_sigma: bool = False) -> list[float]:
    """Levels in data units: ``levels`` as they are, or ``k × σ`` (robust noise of ``image``).

    Raises
    ------
    DisplayError
        No level, too many, or a non-finite one. σ-levels on a field without noise give no
        level (an empty list).
    """
    values = list(levels)
    if not values:
        raise DisplayError("contours need at least one level")
    if len(values) > MAX_LEVELS:
        raise DisplayError(f"{len(values)} contour levels; at most {MAX_LEVELS}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise DisplayError(f"contour levels must be numbers, got {v!r}")
        if not math.isfinite(v):
            raise DisplayError(f"contour levels must be finite, got {v!r}")
    if not in_sigma:
        return [float(v) for v in values]
    sigma = robust_noise(image)
    if not sigma > 0:
        # A field without noise (constant, or no data) has nothing to contour at k x sigma:
        # no levels, so the picture comes without lines rather than as an error.
        return []
    return [float(v) * sigma for v in values]


def trace_contours(
    image: np.ndarray, levels: Sequence[float], sigmas: Sequence[float | None] | None = None
) -> list[ContourLevel]:
    """Contour lines of ``image`` at ``levels`` (data units), traced by contourpy.

    NaN pixels are masked: no line crosses or borders them.
    """
    import contourpy

    if min(np.shape(image)) < 2:
        raise DisplayError(f"contours need an image of at least 2x2 pixels, got {np.shape(image)}")
    z = np.ma.masked_invalid(np.asarray(image, dtype=np.float64))
    gen = contourpy.contour_generator(
        z=z, line_type=contourpy.LineType.Separate, name="serial", corner_mask=True
    )
    sigmas = list(sigmas) if sigmas is not None else [None] * len(levels)
    out = []
    for level, sigma in zip(levels, sigmas, strict=True):
        lines = tuple(np.asarray(line, dtype=np.float64) for line in gen.lines(float(level)) if len(line) > 1)
        out.append(ContourLevel(level=float(level), sigma=sigma, lines=lines))
    return out


def contours_geojson(contours: Sequence[ContourLevel], geom: OutputGeometry) -> dict[str, Any]:
    """A GeoJSON FeatureCollection: one MultiLineString per level in ICRS (ra, dec) [deg].

    Coordinates are ``[ra, dec]`` with ra in [0, 360); each feature's properties give
    its ``level`` (data units) and ``sigma`` (the noise multiple, or null).
    """
    features = []
    for c in contours:
        coords = []
        for line in c.lines:
            ra, dec = pixel_to_icrs(geom, line[:, 0], line[:, 1])
            ok = np.isfinite(ra) & np.isfinite(dec)
            if ok.sum() > 1:
                coords.append(
                    [[round(float(a), 8), round(float(d), 8)] for a, d in zip(ra[ok], dec[ok], strict=True)]
                )
        features.append(
            {
                "type": "Feature",
                "properties": {"level": c.level, "sigma": c.sigma, "lines": len(coords)},
                "geometry": {"type": "MultiLineString", "coordinates": coords},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def parse_colour(value: str | Sequence[int]) -> tuple[int, int, int]:
    """An RGB triple 0..255 from a matplotlib colour (``"white"``, ``"#00ff88"``) or a triple."""
    from matplotlib.colors import to_rgb

    if isinstance(value, str):
        try:
            r, g, b = to_rgb(value.strip())
        except ValueError:
            raise DisplayError(f"unknown colour {value!r}; use a name such as 'white' or '#rrggbb'") from None
        return round(r * 255), round(g * 255), round(b * 255)
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise DisplayError(
            f"a colour must be a name, '#rrggbb' or three integers 0..255, got {value!r}"
        ) from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise DisplayError(f"a colour must be three integers 0..255, got {value!r}")
    return rgb  # type: ignore[return-value]


def line_coverage(
    lines: Sequence[np.ndarray], width: int, height: int, line_width: float = 1.0
) -> np.ndarray:
    """Anti-aliased coverage (float32 0..1, FITS order) of ``lines`` drawn ``line_width`` px wide.

    Drawn by matplotlib's Agg rasteriser (exact-area anti-aliasing) on a transparent
    canvas of the output's size; the coverage is the canvas's alpha.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    if not (math.isfinite(line_width) and 0 < line_width <= 32):
        raise DisplayError(f"line width must be within (0, 32] pixels, got {line_width!r}")
    dpi = 72.0  # one point per pixel: line widths are given in pixels
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    fig.patch.set_alpha(0.0)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.patch.set_alpha(0.0)
    # Pixel i covers [i - 0.5, i + 0.5]; y grows upwards as in FITS order.
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(-0.5, height - 0.5)
    segments = LineCollection(list(lines), colors="white", linewidths=line_width, antialiaseds=True)
    segments.set_capstyle("round")
    segments.set_joinstyle("round")
    ax.add_collection(segments, autolim=False)  # the limits are set: no extents to compute
    canvas.draw()
    alpha = np.asarray(canvas.buffer_rgba())[::-1, :, 3]
    return alpha.astype(np.float32) / 255.0


def draw_contours(
    base: DisplayImage,
    contours: Sequence[ContourLevel],
    colour: tuple[int, int, int] = (255, 255, 255),
    line_width: float = 1.0,
) -> DisplayImage:
    """``base`` (any picture; it keeps its colormap) with the contour lines drawn over it.

    Lines are opaque wherever they pass, over no-data pixels of the base too.
    """
    rgb_base = as_rgb(base)
    lines = [line for c in contours for line in c.lines]
    coverage = line_coverage(lines, base.width, base.height, line_width)
    rgb = np.array(rgb_base.rgb)
    # Blend only the pixels a line touches (a few percent of the picture).
    touched = np.nonzero(coverage > 0)
    a = coverage[touched][:, None]
    # Where the base has no data the line is drawn at full opacity (there is nothing to blend with).
    a = np.where(rgb_base.mask[touched][:, None], np.float32(1.0), a)
    colour_f = np.asarray(colour, np.float32)
    blended = rgb[touched].astype(np.float32) * (1.0 - a) + colour_f * a
    rgb[touched] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    mask = rgb_base.mask & (coverage == 0)
    return DisplayImage(mask=mask, rgb=rgb)
