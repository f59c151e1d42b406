"""``/hips2fits``: CDS hips2fits' query interface (astroquery's ``hips2fits`` client works
unchanged). The query is parsed in `deployments.hips2fits`; errors are answered as
``{title, description}`` by `deployments.errors`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from skyrender.display import STRETCHES
from skyrender.render import plan_render
from skyrender.tiles import TileId

from .contracts import DisplaySpec
from .hips2fits import Hips2FitsError, parse_query
from .services import Services, ServicesDep

__all__ = ["router"]

HIPS2FITS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/fits": {}, "image/png": {}, "image/jpeg": {}},
        "description": "the cutout",
    },
    400: {"description": "bad query: JSON {title, description}"},
    404: {"description": "unknown HiPS: JSON {title, description}"},
    502: {"description": "upstream errors: JSON {title, description}"},
    503: {"description": "upstream unavailable: JSON {title, description}"},
    504: {"description": "upstream too slow: JSON {title, description}"},
}

router = APIRouter()


async def _hips2fits(svc: Services, request: Request, params: Mapping[str, str]) -> Response:
    lim = svc.config.limits
    query = parse_query(params, max_side=max(lim.max_width, lim.max_height), max_pixels=lim.max_pixels)
    cfg = await svc.catalogue.by_id(query.hips)
    if cfg is None:
        raise Hips2FitsError(
            "Unknown HiPS", f"no configured survey is called or identified by {query.hips!r}", 404
        )
    survey = await svc.catalogue.survey(cfg)
    geom = query.geometry
    plan = await asyncio.to_thread(plan_render, geom, survey, moc=svc.catalogue.moc(cfg.name))
    tiles = [TileId(t.order, t.npix, survey.data_format) for t in plan.tiles]
    display = DisplaySpec(
        format=query.format,
        cmap=query.cmap,
        stretch=query.stretch,
        min_cut=query.min_cut,
        max_cut=query.max_cut,
        rgb=True,
    )
    return await svc.chain.render(request, cfg, survey, geom, plan.order, tiles, display)


@router.get("/hips2fits", response_class=Response, responses=HIPS2FITS_RESPONSES)
async def hips2fits_get(
    svc: ServicesDep,
    request: Request,
    hips: str | None = Query(None, description="survey name or HiPS ID (required)"),
    width: str | None = Query(None, description="output width [pixels]"),
    height: str | None = Query(None, description="output height [pixels]"),
    projection: str | None = Query(None, description="wcslib projection code"),
    fov: str | None = Query(None, description="field of view, larger side [deg]"),
    ra: str | None = Query(None, description="centre right ascension, ICRS [deg]"),
    dec: str | None = Query(None, description="centre declination, ICRS [deg]"),
    coordsys: str | None = Query(None, description="icrs | galactic: frame of the projection"),
    rotation_angle: str | None = Query(None, description="rotation [deg]"),
    wcs: str | None = Query(None, description="JSON FITS header with NAXIS1/NAXIS2, instead of the field"),
    format: str | None = Query(None, description="fits | jpg | png"),
    min_cut: str | None = Query(None, description="lower cut: value, or percent like '0.5%'"),
    max_cut: str | None = Query(None, description="upper cut: value, or percent like '99.5%'"),
    stretch: str | None = Query(None, description=" | ".join(STRETCHES)),
    cmap: str | None = Query(None, description="matplotlib colormap name"),
) -> Response:
    """CDS hips2fits-compatible cutout (astroquery's ``hips2fits`` client works unchanged)."""
    return await _hips2fits(svc, request, dict(request.query_params))


@router.post("/hips2fits", response_class=Response, responses=HIPS2FITS_RESPONSES)
async def hips2fits_post(svc: ServicesDep, request: Request) -> Response:
    """The same as ``GET /hips2fits`` with the parameters as form fields."""
    try:
        form = await request.form()
    except StarletteHTTPException:  # the body limit: its handler answers
        raise
    except Exception as exc:
        raise Hips2FitsError("Invalid form", str(exc)) from None
    params = {k: v for k, v in form.items() if isinstance(v, str)}
    return await _hips2fits(svc, request, {**dict(request.query_params), **params})
