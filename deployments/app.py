"""The FastAPI application of an ingress replica: middleware, error handlers and routers.

Where a new route goes: write ``deployments/routes_<topic>.py`` with an
``router = APIRouter()`` whose routes take ``svc: ServicesDep`` (`deployments.services`)
for the configuration, survey catalogue and render chain, then add it to ``ROUTERS``
below. Errors: raise `deployments.errors.ApiError` (or let a core/upstream exception
through the render chain); limits: `deployments.limits`. An image route gets its ETag,
Cache-Control and (GET) 304 from ``svc.chain.render`` and documents them with
``openapi_extra=deployments.contract.CACHEABLE``; ``Allow``/``OPTIONS``/``HEAD`` come from
`deployments.methods` for every route.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

import skyrender

from . import health, hips_files, routes_catalogue, routes_hips2fits, routes_layers, routes_render, viewer
from .arrival import ShedOnArrival
from .config import LimitsConfig
from .contract import install_openapi
from .docs import install_docs
from .errors import install_error_handlers
from .limits import RequestLimits
from .methods import MethodHandling
from .request_context import install_request_context
from .services import Services

__all__ = ["ROUTERS", "create_app"]

#: Every router of the service, in the order FastAPI matches them (the catch-all
#: ``/hips/{name}/{path}`` last).
ROUTERS: tuple[APIRouter, ...] = (
    routes_render.router,
    routes_layers.router,
    routes_hips2fits.router,
    routes_catalogue.router,
    health.router,
    viewer.router,
    hips_files.router,
)


def create_app(services: Services | None = None, limits: LimitsConfig | None = None) -> FastAPI:
    """The app, serving with ``services`` (None: only the OpenAPI document is usable).

    ``limits`` (default: the services' configuration, else the defaults) are the ones the
    document states.
    """
    app = FastAPI(
        title="skyrender",
        version=skyrender.__version__,
        description="Rendering tier of the VLASS sky portal: HiPS tiles to PNG/JPEG previews and snapshots.",
        docs_url=None,  # served by install_docs, from local assets
        redoc_url=None,
    )
    app.state.services = services
    app.state.limits = services.config.limits if services is not None else limits
    # Starlette runs the middleware added last first: the request context sees every answer;
    # method handling (Allow, OPTIONS, HEAD) is innermost, next to the routes it inspects.
    app.add_middleware(MethodHandling)
    app.add_middleware(RequestLimits)
    install_request_context(app)
    # Outermost: under overload a render is refused from its headers, and a health probe answered,
    # before anything else runs.
    app.add_middleware(ShedOnArrival)
    app.add_middleware(health.HealthFirst)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # The document states the configured limits and every constraint the service checks.
    install_openapi(app, app.state.limits or LimitsConfig())
    install_docs(app)
    return app
