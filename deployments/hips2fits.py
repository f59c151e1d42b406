"""hips2fits compatibility: the query astroquery's ``hips2fits`` client sends, parsed.

CDS hips2fits takes either a field (``width``, ``height``, ``projection``, ``fov``, ``ra``,
``dec``, ``coordsys``, ``rotation_angle``) or a ``wcs`` (a JSON FITS header with NAXIS1/2),
plus ``hips``, ``format`` (fits | jpg | png), ``min_cut``/``max_cut`` (percent when they end
in ``%``), ``stretch`` and ``cmap``. Errors are ``{title, description}``, as hips2fits
returns them and astroquery prints them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from skyrender.display import STRETCHES, Cut, parse_cut
from skyrender.errors import SkyRenderError
from skyrender.frames import transform_lonlat
from skyrender.geometry import OutputGeometry, geometry_from_header, make_geometry
from skyrender.tiles import format_of

from .errors import ApiError

__all__ = ["Hips2FitsError", "Hips2FitsQuery", "parse_query"]


class Hips2FitsError(ApiError):
    """A bad hips2fits query: answered as ``{title, description}`` with status 400/404."""

    def __init__(self, title: str, description: str, status: int = 400, field: str | None = None):
        super().__init__(status, title, description, field=field)


@dataclass(frozen=True)
class Hips2FitsQuery:
    hips: str
    geometry: OutputGeometry
    format: str  # fits | jpeg | png
    min_cut: Cut
    max_cut: Cut
    stretch: str
    cmap: str


def _number(params: Mapping[str, str], key: str, default: float | None = None) -> float:
    raw = params.get(key)
    if raw is None or raw == "":
        if default is None:
            raise Hips2FitsError("Missing parameter", f"'{key}' is required (or give 'wcs')")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Hips2FitsError("Invalid parameter", f"'{key}' must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise Hips2FitsError("Invalid parameter", f"'{key}' must be finite, got {raw!r}")
    return value


def _integer(params: Mapping[str, str], key: str) -> int:
    value = _number(params, key)
    if not value.is_integer():
        raise Hips2FitsError("Invalid parameter", f"'{key}' must be a whole number of pixels")
    return int(value)


def _cut(raw: str | None, default: str) -> Cut:
    try:
        cut = parse_cut(raw or default)
    except SkyRenderError:
        raise Hips2FitsError(
            "Invalid parameter", f"cut {raw!r} must be a number or a percentage like '99.5%'"
        ) from None
    assert cut is not None
    return cut


def parse_query(params: Mapping[str, str], *, max_side: int, max_pixels: int) -> Hips2FitsQuery:
    """Parse a hips2fits query (query string or form fields) into a render request."""
    hips = (params.get("hips") or "").strip()
    if not hips:
        raise Hips2FitsError("Missing parameter", "'hips' is required: a survey name or ID")
    try:
        fmt = format_of(params.get("format") or "fits")
    except SkyRenderError:
        raise Hips2FitsError(
            "Invalid parameter", f"format {params.get('format')!r}: use fits, jpg or png"
        ) from None
    stretch = (params.get("stretch") or "linear").strip().lower()
    if stretch not in STRETCHES:
        raise Hips2FitsError("Invalid parameter", f"stretch {stretch!r}: use one of {', '.join(STRETCHES)}")
    cmap = (params.get("cmap") or "Greys_r").strip()
    try:
        if params.get("wcs"):
            try:
                header: Any = json.loads(params["wcs"])
            except json.JSONDecodeError as exc:
                raise Hips2FitsError("Invalid WCS", f"'wcs' is not valid JSON: {exc}") from None
            if not isinstance(header, dict):
                raise Hips2FitsError("Invalid WCS", "'wcs' must be a JSON object of FITS keywords")
            geometry = geometry_from_header(header, max_side=max_side, max_pixels=max_pixels)
        else:
            coordsys = (params.get("coordsys") or "icrs").strip().lower()
            if coordsys not in ("icrs", "galactic"):
                raise Hips2FitsError("Invalid parameter", f"coordsys {coordsys!r}: use icrs or galactic")
            ra, dec = _number(params, "ra"), _number(params, "dec")
            if coordsys == "galactic":
                # hips2fits takes the centre in ICRS whatever the projection's frame.
                ra, dec = transform_lonlat(ra, dec, "icrs", "galactic")
            projection = (params.get("projection") or "").strip()
            if not projection:
                raise Hips2FitsError("Missing parameter", "'projection' is required (or give 'wcs')")
            geometry = make_geometry(
                ra,
                dec,
                _number(params, "fov"),
                _integer(params, "width"),
                _integer(params, "height"),
                projection,
                _number(params, "rotation_angle", 0.0),
                coordsys,
                max_side=max_side,
                max_pixels=max_pixels,
            )
    except SkyRenderError as exc:
        field = {"rotation": "rotation_angle"}.get(exc.field or "", exc.field)
        if field and params.get("wcs"):
            field = f"wcs.{field}" if field.isupper() else "wcs"
        raise Hips2FitsError("Invalid parameter", str(exc), field=field) from None
    return Hips2FitsQuery(
        hips=hips,
        geometry=geometry,
        format=fmt,
        min_cut=_cut(params.get("min_cut"), "0.5%"),
        max_cut=_cut(params.get("max_cut"), "99.5%"),
        stretch=stretch,
        cmap=cmap,
    )
