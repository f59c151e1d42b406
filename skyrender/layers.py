"""Several rendered layers of one grid into one answer: the encode stage's multi-layer step.

Each request kind is a frozen spec; :func:`combine` takes the spec and the layers' float
renders (grey, FITS order, NaN for no data, all on ``spec.geometry``) and returns the
bytes and their media type: a picture (PNG/JPEG), an animation (APNG/GIF), a FITS file,
or JSON (numbers, GeoJSON contours).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .animation import blink_frames, encode_animation
from .composite import LayerDisplay, LuptonParams, default_lupton, lupton_composite, overlay, rgb_composite
from .contours import contour_levels, contours_geojson, draw_contours, trace_contours
from .display import DisplayImage
from .encode import encode_fits, encode_image, encode_png
from .epochs import (
    DIFFERENCE_COLORMAP,
    EpochImage,
    compare_epochs,
    difference,
    difference_display,
    difference_header,
    finite_or_none,
)
from .errors import SkyRenderError
from .fieldstats import FieldStats, Region, field_stats
from .geometry import OutputGeometry


class LayerCoverageError(SkyRenderError):
    """A layer has no data anywhere in the field: it lies outside its survey's coverage."""


@dataclass(frozen=True)
class PictureOptions:
    """Encoder settings of pictures: PNG deflate library and level (`skyrender.encode.encode_png`),
    JPEG quality."""

    png_compress_level: int = 2
    png_deflate: str = "isal"
    jpeg_quality: int = 90


@dataclass(frozen=True)
class RgbSpec:
    """Three layers to red, green, blue (``lupton``: Lupton et al. asinh, else each its own cuts)."""

    geometry: OutputGeometry
    labels: tuple[str, ...]
    displays: tuple[LayerDisplay, ...]
    format: str = "png"
    lupton: bool = False
    lupton_params: LuptonParams | None = None
    lupton_q: float = 8.0


@dataclass(frozen=True)
class OverlaySpec:
    """Layers laid one over the other, each colormapped, each later one with its opacity (0..1)."""

    geometry: OutputGeometry
    labels: tuple[str, ...]
    displays: tuple[LayerDisplay, ...]
    opacities: tuple[float, ...]
    format: str = "png"


@dataclass(frozen=True)
class ContourSpec:
    """Contours of the second layer over the first (``format="geojson"``: the lines only)."""

    geometry: OutputGeometry
    labels: tuple[str, ...]
    displays: tuple[LayerDisplay, ...]
    levels: tuple[float, ...]
    in_sigma: bool
    colour: tuple[int, int, int] = (255, 255, 255)
    line_width: float = 1.0
    format: str = "png"


@dataclass(frozen=True)
class DifferenceSpec:
    """``later - earlier`` of two epochs of ``survey`` (layers: earlier, later)."""

    geometry: OutputGeometry
    labels: tuple[str, ...]
    survey: str
    epochs: tuple[str, str]
    display: LayerDisplay = field(default_factory=lambda: LayerDisplay(cmap=DIFFERENCE_COLORMAP))
    unit: str | None = None
    format: str = "png"


@dataclass(frozen=True)
class BlinkSpec:
    """One frame per epoch, all with the same cuts and stretch."""

    geometry: OutputGeometry
    labels: tuple[str, ...]
    display: LayerDisplay
    format: str = "apng"
    frame_ms: int = 700


@dataclass(frozen=True)
class StatsSpec:
    """Per-epoch numbers, and those of the last minus the first epoch."""

    geometry: OutputGeometry
    labels: tuple[str, ...]
    survey: str
    epochs: tuple[str, ...]
    region: Region | None = None


Spec = RgbSpec | OverlaySpec | ContourSpec | DifferenceSpec | BlinkSpec | StatsSpec


@dataclass(frozen=True)
class Combined:
    """The answer: bytes and media type."""

    body: bytes
    media_type: str


def check_coverage(images: Sequence[np.ndarray], labels: Sequence[str]) -> None:
    """Raise `LayerCoverageError` naming the first layer without any data in the field."""
    for image, label in zip(images, labels, strict=True):
        if not np.isfinite(image).any():
            raise LayerCoverageError(
                f"layer {label} has no data in this field: it is outside the survey's coverage"
            )


def _picture_bytes(img: DisplayImage, fmt: str, opts: PictureOptions) -> Combined:
    if fmt == "png" and img.is_colour:
        # Colour PNGs are the slow part of a composite: ISA-L (Up-filtered rows), or with zlib
        # Huffman-only, faster and smaller than zlib's default strategy.
        body = encode_png(
            img, compress_level=opts.png_compress_level, deflate=opts.png_deflate, huffman_only=True
        )
        return Combined(body, "image/png")
    png = {"compress_level": opts.png_compress_level, "deflate": opts.png_deflate}
    enc = png if fmt == "png" else {"quality": opts.jpeg_quality}
    body, media_type = encode_image(img, fmt, **enc)
    return Combined(body, media_type)


def _json(payload: Any, media_type: str = "application/json") -> Combined:
    return Combined(json.dumps(payload, separators=(",", ":")).encode(), media_type)


def stats_json(s: FieldStats) -> dict[str, Any]:
    """A `FieldStats` as the JSON the stats endpoint returns (camelCase, no NaN)."""
    return {
        "peak": finite_or_none(s.peak),
        "peakX": s.peak_x,
        "peakY": s.peak_y,
        "peakRa": finite_or_none(s.peak_ra),
        "peakDec": finite_or_none(s.peak_dec),
        "median": finite_or_none(s.median),
        "noise": finite_or_none(s.noise),
        "pixels": s.n_pixels,
    }


def combine(spec: Spec, images: Sequence[np.ndarray], opts: PictureOptions | None = None) -> Combined:
    """Combine the layers' renders as ``spec`` says.

    Raises
    ------
    LayerCoverageError
        A layer has no data in the field.
    SkyRenderError
        Any other unusable input (cuts, colours, levels...).
    """
    opts = opts or PictureOptions()
    images = [np.asarray(i) for i in images]
    if len(images) != len(spec.labels):
        raise SkyRenderError(f"{len(images)} renders for {len(spec.labels)} layers")
    for image, label in zip(images, spec.labels, strict=True):
        if image.ndim != 2:
            raise SkyRenderError(f"layer {label} is a colour survey: layers must be single-band")
    check_coverage(images, spec.labels)
    if isinstance(spec, RgbSpec):
        if spec.lupton:
            params = spec.lupton_params or default_lupton(images, spec.lupton_q)
            return _picture_bytes(lupton_composite(images, params), spec.format, opts)
        return _picture_bytes(rgb_composite(images, spec.displays), spec.format, opts)
    if isinstance(spec, OverlaySpec):
        picture = spec.displays[0].picture(images[0])
        for image, display, opacity in zip(images[1:], spec.displays[1:], spec.opacities[1:], strict=True):
            picture = overlay(picture, display.picture(image), opacity)
        return _picture_bytes(picture, spec.format, opts)
    if isinstance(spec, ContourSpec):
        base, layer = images
        levels = contour_levels(layer, spec.levels, in_sigma=spec.in_sigma)
        sigmas = list(spec.levels) if spec.in_sigma and levels else None  # no noise: no levels
        traced = trace_contours(layer, levels, sigmas)
        if spec.format == "geojson":
            return _json(contours_geojson(traced, spec.geometry), "application/geo+json")
        picture = draw_contours(spec.displays[0].picture(base), traced, spec.colour, spec.line_width)
        return _picture_bytes(picture, spec.format, opts)
    if isinstance(spec, DifferenceSpec):
        earlier, later = images
        diff = difference(later, earlier)
        if spec.format == "fits":
            header = difference_header(
                spec.geometry, spec.survey, spec.epochs[1], spec.epochs[0], unit=spec.unit
            )
            return Combined(encode_fits(diff, header), "application/fits")
        d = spec.display
        picture = difference_display(
            diff, min_cut=d.min_cut, max_cut=d.max_cut, stretch=d.stretch, cmap=d.cmap
        )
        return _picture_bytes(picture, spec.format, opts)
    if isinstance(spec, BlinkSpec):
        d = spec.display
        survey_cut = d.survey_cut if d.min_cut is None and d.max_cut is None else None
        frames, _ = blink_frames(
            images,
            min_cut=d.min_cut,
            max_cut=d.max_cut,
            stretch=d.stretch,
            cmap=d.cmap,
            survey_cut=survey_cut,
        )
        body, media_type = encode_animation(
            frames, spec.format, frame_ms=spec.frame_ms, compress_level=opts.png_compress_level
        )
        return Combined(body, media_type)
    if isinstance(spec, StatsSpec):
        epochs = [EpochImage(e, i) for e, i in zip(spec.epochs, images, strict=True)]
        payload: dict[str, Any] = {"survey": spec.survey, "epochs": [], "difference": None}
        if len(epochs) == 1:
            one = field_stats(images[0], spec.geometry, spec.region)
            payload["epochs"] = [{"epoch": epochs[0].epoch, **stats_json(one)}]
            return _json(payload)
        result = compare_epochs(epochs, spec.geometry, spec.region)
        payload["epochs"] = [{"epoch": e, **stats_json(s)} for e, s in result.epochs]
        payload["difference"] = {
            "later": result.later,
            "earlier": result.earlier,
            **stats_json(result.difference),
            "significance": finite_or_none(result.difference.significance),
        }
        return _json(payload)
    raise SkyRenderError(f"unknown layer combination {type(spec).__name__}")
