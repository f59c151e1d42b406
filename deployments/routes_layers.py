"""Multi-layer pictures: ``/v1/composite`` and the epoch comparisons under ``/v1/epochs``.

Each route validates the request (layer count, epochs, mode options), plans every layer
on one output grid, and hands them to `deployments.layer_chain`; the sky maths and the
combining are the core's (`skyrender.layers`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from skyrender.composite import LayerDisplay, LuptonParams
from skyrender.contours import parse_colour
from skyrender.display import parse_cut
from skyrender.errors import SkyRenderError
from skyrender.fieldstats import Region
from skyrender.geometry import OutputGeometry
from skyrender.layers import BlinkSpec, ContourSpec, DifferenceSpec, OverlaySpec, RgbSpec, StatsSpec

from .contract import CACHEABLE
from .errors import ApiError
from .layer_chain import (
    PlannedLayer,
    admit_layers,
    check_layer_count,
    plan_layer,
    run_layers,
    survey_epochs,
)
from .layer_models import (
    BlinkRequest,
    CompositeRequest,
    DifferenceRequest,
    Layer,
    StatsRequest,
    StatsResponse,
)
from .limits import field_geometry, requested_size
from .models import ErrorBody
from .services import Services, ServicesDep

__all__ = ["router"]

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "invalid input: layers, epochs, options, or a field outside coverage",
    },
    404: {"model": ErrorBody, "description": "unknown survey or epoch"},
    422: {"model": ErrorBody, "description": "the body does not match the schema"},
    502: {"model": ErrorBody, "description": "upstream returned errors or unusable tiles"},
    503: {"model": ErrorBody, "description": "upstream unavailable or service overloaded"},
    504: {"model": ErrorBody, "description": "upstream too slow"},
}


def _responses(*media: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {m: {} for m in media}, "description": description}, **_ERRORS}


def _geometry(svc: Services, body: Any) -> OutputGeometry:
    lim = svc.config.limits
    width, height = requested_size(body, lim)
    return field_geometry(lim, body.ra, body.dec, body.fovDeg, width, height, body.projection, body.rotation)


async def _plan_all(
    svc: Services, geom: OutputGeometry, wanted: list[tuple[str, str | None]]
) -> list[PlannedLayer]:
    """Plan every layer concurrently; a survey and epoch given twice (an RGB of one survey's
    stretches) is planned once."""
    distinct = list(dict.fromkeys(wanted))
    plans = await asyncio.gather(*(plan_layer(svc, geom, name, epoch) for name, epoch in distinct))
    by_layer = dict(zip(distinct, plans, strict=True))
    return [by_layer[w] for w in wanted]


def _display(layer: Layer, planned: PlannedLayer) -> LayerDisplay:
    return LayerDisplay(
        min_cut=parse_cut(layer.minCut),
        max_cut=parse_cut(layer.maxCut),
        stretch=layer.scale,
        cmap=layer.colormap,
        survey_cut=planned.survey.pixel_cut,
    )


def _check_colormaps(names: list[str]) -> None:
    from skyrender.display import colormap_lut

    for name in names:
        try:
            colormap_lut(name)
        except SkyRenderError as exc:
            raise ApiError(400, "invalid request", str(exc)) from None


@router.post(
    "/v1/composite",
    response_class=Response,
    responses=_responses(
        "image/png", "image/jpeg", "application/geo+json", description="the picture; WCS in X-WCS"
    ),
    openapi_extra=CACHEABLE,
)
async def composite(svc: ServicesDep, request: Request, body: CompositeRequest) -> Response:
    """Several layers on one grid as one picture: RGB, Lupton RGB, overlay, or contours.

    Layers are fetched and composed in parallel; each has its own survey, epoch, cuts and
    stretch. ``rgb`` and ``lupton`` take three layers (red, green, blue); ``overlay`` two
    or more, each laid over the ones before with its ``opacity``; ``contours`` two, the
    second's contours over the first (``format: geojson`` for the lines in RA/Dec).
    """
    n = len(body.layers)
    check_layer_count(svc.config, n)
    mode = body.mode
    wanted_count = {"rgb": 3, "lupton": 3, "contours": 2}.get(mode)
    if wanted_count is not None and n != wanted_count:
        raise ApiError(400, "wrong number of layers", f"mode {mode!r} takes {wanted_count} layers, got {n}")
    if mode == "overlay" and n < 2:
        raise ApiError(400, "wrong number of layers", f"mode 'overlay' takes at least 2 layers, got {n}")
    if body.format == "geojson" and mode != "contours":
        raise ApiError(400, "invalid request", "format 'geojson' is for mode 'contours' only")
    if mode == "contours" and body.contours is None:
        raise ApiError(400, "invalid request", "mode 'contours' needs 'contours': {levels, levelUnit, ...}")
    _check_colormaps([layer.colormap for layer in body.layers])
    geom = _geometry(svc, body)
    await admit_layers(svc, request, geom, n)  # refuse now if it cannot be in time; then wait its turn
    planned = await _plan_all(svc, geom, [(layer.survey, layer.epoch) for layer in body.layers])
    labels = tuple(p.label for p in planned)
    displays = tuple(_display(layer, p) for layer, p in zip(body.layers, planned, strict=True))
    fmt = body.format
    spec: Any
    try:
        if mode in ("rgb", "lupton"):
            params = None
            opts = body.lupton
            if (
                mode == "lupton"
                and opts is not None
                and (opts.minimum is not None or opts.stretch is not None)
            ):
                if opts.minimum is None or opts.stretch is None:
                    raise ApiError(
                        400, "invalid request", "lupton: give both 'minimum' and 'stretch', or neither"
                    )
                params = LuptonParams(minimum=tuple(opts.minimum), stretch=opts.stretch, q=opts.q)
            spec = RgbSpec(
                geometry=geom,
                labels=labels,
                displays=displays,
                format=fmt,
                lupton=mode == "lupton",
                lupton_params=params,
                lupton_q=opts.q if opts is not None else 8.0,
            )
        elif mode == "overlay":
            spec = OverlaySpec(
                geometry=geom,
                labels=labels,
                displays=displays,
                opacities=tuple(layer.opacity for layer in body.layers),
                format=fmt,
            )
        else:
            c = body.contours
            spec = ContourSpec(
                geometry=geom,
                labels=labels,
                displays=displays,
                levels=tuple(float(v) for v in c.levels),
                in_sigma=c.levelUnit == "sigma",
                colour=parse_colour(c.color),
                line_width=c.lineWidth,
                format=fmt,
            )
    except SkyRenderError as exc:
        raise ApiError(400, "invalid request", str(exc)) from None
    return await run_layers(svc, request, geom, planned, spec)


def _epochs(svc: Services, survey: str, asked: list[str] | None, *, pair: bool) -> list[str]:
    """The epochs to compare: as asked (checked), or the configured ones (the two latest for a pair)."""
    configured = survey_epochs(svc.config, survey)
    if asked is None:
        if len(configured) < 2:
            raise ApiError(
                400, "not enough epochs", f"survey {survey!r} has one epoch configured: {configured}"
            )
        epochs = configured[-2:] if pair else configured
    else:
        epochs = list(asked)
        twice = sorted({e for e in epochs if epochs.count(e) > 1})
        if twice:
            raise ApiError(
                400, "same epoch twice", f"epoch(s) {twice} given more than once; compare distinct epochs"
            )
        unknown = [e for e in epochs if e not in configured]
        if unknown:
            raise ApiError(
                404, "unknown epoch", f"survey {survey!r} has no epoch {unknown}; configured: {configured}"
            )
    check_layer_count(svc.config, len(epochs))
    return epochs


@router.post(
    "/v1/epochs/difference",
    response_class=Response,
    responses=_responses(
        "image/png", "image/jpeg", "application/fits", description="later minus earlier; WCS in X-WCS"
    ),
    openapi_extra=CACHEABLE,
)
async def epoch_difference(svc: ServicesDep, request: Request, body: DifferenceRequest) -> Response:
    """The difference of two epochs of one survey (later minus earlier) on one grid.

    Pictures use a diverging colormap centred on zero with symmetric cuts; FITS is the
    float32 difference with the output WCS and both epochs (``EPOCHNEW``, ``EPOCHREF``).
    """
    epochs = _epochs(svc, body.survey, body.epochs, pair=True)
    _check_colormaps([body.colormap])
    geom = _geometry(svc, body)
    await admit_layers(svc, request, geom, len(epochs))  # refuse now if too late, else wait its turn
    planned = await _plan_all(svc, geom, [(body.survey, e) for e in epochs])
    try:
        display = LayerDisplay(
            min_cut=parse_cut(body.minCut),
            max_cut=parse_cut(body.maxCut),
            stretch=body.scale,
            cmap=body.colormap,
        )
    except SkyRenderError as exc:
        raise ApiError(400, "invalid request", str(exc)) from None
    unit = planned[0].survey.properties.get("data_unit") or planned[0].survey.properties.get(
        "hips_pixel_unit"
    )
    spec = DifferenceSpec(
        geometry=geom,
        labels=tuple(p.label for p in planned),
        survey=body.survey,
        epochs=(epochs[0], epochs[1]),
        display=display,
        unit=unit,
        format=body.format,
    )
    return await run_layers(svc, request, geom, planned, spec)


@router.post(
    "/v1/epochs/blink",
    response_class=Response,
    responses=_responses("image/apng", "image/gif", description="one frame per epoch, looping; WCS in X-WCS"),
    openapi_extra=CACHEABLE,
)
async def epoch_blink(svc: ServicesDep, request: Request, body: BlinkRequest) -> Response:
    """The epochs of one survey as an animation: one frame each, the same cuts and stretch for all."""
    epochs = _epochs(svc, body.survey, body.epochs, pair=False)
    _check_colormaps([body.colormap])
    geom = _geometry(svc, body)
    await admit_layers(svc, request, geom, len(epochs))  # refuse now if too late, else wait its turn
    planned = await _plan_all(svc, geom, [(body.survey, e) for e in epochs])
    display = LayerDisplay(
        min_cut=parse_cut(body.minCut),
        max_cut=parse_cut(body.maxCut),
        stretch=body.scale,
        cmap=body.colormap,
        survey_cut=planned[0].survey.pixel_cut,
    )
    spec = BlinkSpec(
        geometry=geom,
        labels=tuple(p.label for p in planned),
        display=display,
        format=body.format,
        frame_ms=body.frameMs,
    )
    return await run_layers(svc, request, geom, planned, spec)


@router.post("/v1/epochs/stats", response_model=StatsResponse, responses=_ERRORS)
async def epoch_stats(svc: ServicesDep, request: Request, body: StatsRequest) -> Response:
    """Per-epoch peak and its position, median and robust noise, and the significance of the change.

    Over the field, or with ``position`` the peaks and medians within that aperture
    (the noise is always the whole field's). The difference is the last epoch minus
    the first.
    """
    epochs = _epochs(svc, body.survey, body.epochs, pair=False)
    geom = _geometry(svc, body)
    region = None
    if body.position is not None:
        p = body.position
        region = Region(ra=p.ra % 360.0, dec=p.dec, radius_deg=p.radiusArcsec / 3600.0)
    await admit_layers(svc, request, geom, len(epochs))  # refuse now if too late, else wait its turn
    planned = await _plan_all(svc, geom, [(body.survey, e) for e in epochs])
    spec = StatsSpec(
        geometry=geom,
        labels=tuple(p.label for p in planned),
        survey=body.survey,
        epochs=tuple(epochs),
        region=region,
    )
    return await run_layers(svc, request, geom, planned, spec)
