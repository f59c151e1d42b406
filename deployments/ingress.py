"""The ingress deployment: the HTTP contract NestJS calls (a FastAPI app in Ray Serve).

Each replica builds its `Services` (configuration, survey catalogue, render chain over
the stage handles, readiness) and then its FastAPI app (`deployments.app.create_app`),
which holds the routes. At start it plans one render (the first imports), then loads the
survey catalogue through the fetch stage in the background; ``/readyz`` says when both
that and every stage are done.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from . import health
from .app import create_app
from .catalogue import SurveyCatalogue
from .config import AppConfig
from .nodelay import set_tcp_nodelay_on_accept
from .readiness import Readiness
from .render_chain import RenderChain
from .services import Services

__all__ = ["Ingress"]

log = logging.getLogger("ray.serve")


@serve.deployment
@serve.ingress()
class Ingress:
    """Validates and plans requests, then chains fetch → compose → encode."""

    async def __init__(
        self,
        fetch: DeploymentHandle,
        compose: DeploymentHandle,
        encode: DeploymentHandle,
        config: dict[str, Any],
    ):
        from skyrender.warmup import warm_planning

        set_tcp_nodelay_on_accept()  # before this replica's HTTP server accepts a connection
        started = time.time()
        app_config = AppConfig.model_validate(config)

        async def read(location: str) -> bytes | None:
            return await fetch.read_meta.remote(location)

        async def exists(location: str) -> bool:
            return await fetch.exists.remote(location)

        catalogue = SurveyCatalogue(app_config, read, exists)
        readiness = Readiness(started=started)
        self.services = Services(
            config=app_config,
            catalogue=catalogue,
            chain=RenderChain(app_config, fetch, compose, encode),
            fetch=fetch,
            compose=compose,
            encode=encode,
            readiness=readiness,
        )
        readiness.mark("planning_warm", warm_planning())
        self._startup = asyncio.get_running_loop().create_task(self._load_catalogue())

    async def _load_catalogue(self) -> None:
        """Wait for the fetch stage, then read every survey (the catalogue) through it."""
        svc = self.services
        await svc.fetch.ready.remote()
        svc.readiness.mark("fetch_ready")
        await svc.catalogue.load_all()
        svc.readiness.mark("catalogue_loaded")
        log.info("survey catalogue loaded: %s", svc.readiness.timeline)
        await health.prime(svc)
        svc.readiness.mark("health_primed")
        self._health = asyncio.get_running_loop().create_task(health.keep_fresh(svc))
        # Everything built so far (FastAPI, pydantic, astropy, the catalogue) lives as long as the
        # replica: out of the collector's sight, a full collection no longer walks it. Under
        # overload those walks held this event loop (refusals, health probes) for 50-150 ms.
        gc.freeze()

    async def health_answer(self, path: str, live: bool = False) -> tuple[int, bytes, dict[str, str]]:
        """``/healthz`` or ``/readyz`` as this replica answers it now (see `health.answer`)."""
        return await health.answer(self.services, path, live)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this after the constructor: the app this replica serves."""
        return create_app(self.services)
