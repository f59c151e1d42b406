"""``/hips2fits``: CDS hips2fits' query interface (astroquery's ``hips2fits`` client works
unchanged). The query is parsed in `deployments.hips2fits`; errors are answered as
``{title, description}`` by `deployments.errors`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .contract import CACHEABLE, hips2fits_schema, validate_hips2fits
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


_SCHEMAS: dict[tuple, dict[str, Any]] = {}


def query_schema(limits: Any) -> dict[str, Any]:
    """The JSON Schema of a hips2fits query under ``limits`` (the document's, built once)."""
    key = (
        limits.max_width,
        limits.max_height,
        limits.min_fov_deg,
        limits.max_fov_deg,
        limits.max_header_keys,
    )
    if key not in _SCHEMAS:
        _SCHEMAS[key] = hips2fits_schema(limits)
    return _SCHEMAS[key]


def check_query(params: Mapping[str, str], limits: Any) -> None:
    """400 naming the parameter when the query breaks the document's schema."""
    problems = validate_hips2fits(params, query_schema(limits))
    if problems:
        missing = any(msg.startswith("needs one of") or "required" in msg for _, msg in problems)
        title = "Missing parameter" if missing else "Invalid parameter"
        if (problems[0][0] or "").startswith("wcs"):
            title = "Invalid WCS"
        raise Hips2FitsError(title, "; ".join(msg for _, msg in problems[:5]), field=problems[0][0])


async def _hips2fits(svc: Services, request: Request, params: Mapping[str, str]) -> Response:
    lim = svc.config.limits
    check_query(params, lim)
    query = parse_query(params, max_side=max(lim.max_width, lim.max_height), max_pixels=lim.max_pixels)
    cfg = await svc.catalogue.by_id(query.hips)
    if cfg is None:
        raise Hips2FitsError(
            "Unknown HiPS", f"no configured survey is called or identified by {query.hips!r}", 404
        )
    geom = query.geometry
    await svc.chain.start(request, geom.width, geom.height)  # admitted (or refused now), then its turn
    survey = await svc.catalogue.survey(cfg)
    planned = await svc.chain.plan(svc.catalogue, cfg, survey, geom)
    display = DisplaySpec(
        format=query.format,
        cmap=query.cmap,
        stretch=query.stretch,
        min_cut=query.min_cut,
        max_cut=query.max_cut,
        rgb=True,
    )
    return await svc.chain.render_plan(request, svc.catalogue, cfg, survey, planned, display)


@router.get("/hips2fits", response_class=Response, responses=HIPS2FITS_RESPONSES, openapi_extra=CACHEABLE)
async def hips2fits_get(svc: ServicesDep, request: Request) -> Response:
    """CDS hips2fits-compatible cutout (astroquery's ``hips2fits`` client works unchanged).

    Its parameters are documented from the schema the query is validated with
    (`deployments.contract.hips2fits_schema`).
    """
    return await _hips2fits(svc, request, dict(request.query_params))


@router.post("/hips2fits", response_class=Response, responses=HIPS2FITS_RESPONSES, openapi_extra=CACHEABLE)
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
