"""The portal's render contract: tiles → PNG, field → PNG/JPEG, tile manifest, WCS check."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from skyrender.compose import field_of_tiles
from skyrender.display import parse_cut
from skyrender.errors import SkyRenderError
from skyrender.tiles import TileId

from .contract import CACHEABLE, check_fits_header
from .contracts import DisplaySpec
from .errors import ApiError
from .limits import check_header_keys, check_size, check_tile_count, field_geometry, requested_size
from .models import (
    ErrorBody,
    ManifestRequest,
    ManifestResponse,
    ManifestTileModel,
    PreviewRequest,
    RenderTilesRequest,
    SnapshotRequest,
    WcsValidateRequest,
    WcsValidateResponse,
)
from .services import Services, ServicesDep
from .tile_urls import public_url, resolve_tile_url

__all__ = ["IMAGE_RESPONSES", "router"]

#: OpenAPI responses of every image endpoint.
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the rendered image; WCS in X-WCS"},
    400: {"model": ErrorBody, "description": "invalid input"},
    403: {"model": ErrorBody, "description": "tile URL outside the configured survey roots"},
    404: {"model": ErrorBody, "description": "unknown survey"},
    502: {"model": ErrorBody, "description": "upstream returned errors or unusable tiles"},
    503: {"model": ErrorBody, "description": "upstream unavailable or service overloaded"},
    504: {"model": ErrorBody, "description": "upstream too slow"},
}

router = APIRouter()


async def _tiles_render(svc: Services, request: Request, body: RenderTilesRequest) -> Response:
    limits = svc.config.limits
    width, height = requested_size(body, limits)
    check_size(limits, width, height)
    check_tile_count(limits, len(body.tiles))
    resolved = [resolve_tile_url(svc.config, request, url) for url in body.tiles]
    cfgs = {cfg.name: cfg for cfg, _ in resolved}
    if len(cfgs) > 1:
        raise ApiError(400, "invalid request", f"tiles come from several surveys: {sorted(cfgs)}")
    cfg = resolved[0][0]
    tiles = [tile for _, tile in resolved]
    orders = sorted({t.order for t in tiles})
    if len(orders) > 1:
        raise ApiError(
            400, "invalid tile URL", f"tiles of several orders {orders} cannot be composed into one image"
        )
    await svc.chain.start(request, width, height)  # admitted (or refused now), then its turn
    survey = await svc.catalogue.survey(cfg)
    try:
        geom = field_of_tiles(tiles, width, height, survey.frame)
    except SkyRenderError as exc:
        raise ApiError.of_input("invalid geometry", exc, {"fov": "tiles"}) from None
    display = DisplaySpec(
        format="png",
        cmap=body.colormap,
        stretch=body.scale,
        min_cut=parse_cut(body.minCut),
        max_cut=parse_cut(body.maxCut),
    )
    unique: dict[int, TileId] = {}
    for t in tiles:
        unique.setdefault(t.npix, t)
    return await svc.chain.render(request, cfg, survey, geom, tiles[0].order, list(unique.values()), display)


@router.post("/render/preview", response_class=Response, responses=IMAGE_RESPONSES, openapi_extra=CACHEABLE)
async def render_preview(svc: ServicesDep, request: Request, body: RenderTilesRequest) -> Response:
    """Render the given tiles (all of one survey and order) into a PNG."""
    return await _tiles_render(svc, request, body)


@router.post("/render/snapshot", response_class=Response, responses=IMAGE_RESPONSES, openapi_extra=CACHEABLE)
async def render_snapshot(svc: ServicesDep, request: Request, body: SnapshotRequest) -> Response:
    """Render the given tiles into a PNG snapshot (default 512x512) for the job runner."""
    return await _tiles_render(svc, request, body)


@router.post(
    "/v1/tile-manifest",
    response_model=ManifestResponse,
    responses={k: v for k, v in IMAGE_RESPONSES.items() if k != 200},
)
async def tile_manifest(svc: ServicesDep, request: Request, body: ManifestRequest) -> ManifestResponse:
    """The tiles of a survey that cover a field, at the order a render would use."""
    cfg = svc.catalogue.config_for(body.survey, body.epoch)
    survey = await svc.catalogue.survey(cfg)
    geom = field_geometry(
        svc.config.limits,
        body.ra,
        body.dec,
        body.fovDeg,
        *requested_size(body, svc.config.limits),
        body.projection,
    )
    plan = (await svc.chain.plan(svc.catalogue, cfg, survey, geom)).plan
    tiles = [
        ManifestTileModel(
            id=t.id,
            url=public_url(request, svc.config, cfg, TileId(t.order, t.npix, survey.data_format)),
            healpixNside=t.nside,
            order=t.order,
            npix=t.npix,
        )
        for t in plan.tiles
    ]
    return ManifestResponse(
        survey=cfg.name,
        epoch=cfg.epoch,
        order=plan.order,
        tileWidth=survey.tile_width,
        frame=survey.frame,
        tiles=tiles,
    )


@router.post("/v1/preview", response_class=Response, responses=IMAGE_RESPONSES, openapi_extra=CACHEABLE)
async def preview(svc: ServicesDep, request: Request, body: PreviewRequest) -> Response:
    """Render a field of a configured survey as PNG or JPEG, with its WCS in ``X-WCS``."""
    cfg = svc.catalogue.config_for(body.survey, body.epoch)
    width, height = requested_size(body, svc.config.limits)
    check_size(svc.config.limits, width, height)
    await svc.chain.start(request, width, height)  # admitted (or refused now), then its turn
    survey = await svc.catalogue.survey(cfg)
    geom = field_geometry(
        svc.config.limits,
        body.ra, body.dec, body.fovDeg, width, height, body.projection, body.rotation,
    )  # fmt: skip
    planned = await svc.chain.plan(svc.catalogue, cfg, survey, geom)
    display = DisplaySpec(
        format=body.format,
        cmap=body.colormap,
        stretch=body.scale,
        min_cut=parse_cut(body.minCut),
        max_cut=parse_cut(body.maxCut),
    )
    return await svc.chain.render_plan(request, svc.catalogue, cfg, survey, planned, display)


@router.post("/v1/wcs-validate", response_model=WcsValidateResponse, responses={422: {"model": ErrorBody}})
async def wcs_validate(svc: ServicesDep, body: WcsValidateRequest) -> WcsValidateResponse:
    """Check a FITS header's WCS and describe what it maps to.

    A header the document's schema allows is answered 200: ``valid`` says whether wcslib
    can use it, and when not, ``error`` says why (``field``: the keyword at fault,
    ``reason``: wcslib's own words). A header the schema forbids (a required keyword
    missing, a value of the wrong type, a name that is no FITS keyword) is a 422 naming it.
    """
    from skyrender.wcsinfo import describe_header

    check_fits_header(body.fitsHeader, svc.config.limits, "fitsHeader")
    check_header_keys(svc.config.limits, len(body.fitsHeader))
    try:
        desc = await asyncio.to_thread(describe_header, body.fitsHeader)
    except SkyRenderError as exc:
        return WcsValidateResponse(
            valid=False, reprojected=None, error=str(exc), field=exc.field, reason=exc.reason
        )
    return WcsValidateResponse(valid=True, reprojected=desc.to_dict())
