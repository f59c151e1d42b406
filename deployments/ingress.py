"""The ingress deployment: the HTTP contract NestJS calls (a FastAPI app in Ray Serve).

Each replica builds its `Services` (configuration, survey catalogue, render chain over
the stage handles) and then its FastAPI app (`deployments.app.create_app`), which holds
the routes.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from .app import create_app
from .catalogue import SurveyCatalogue
from .config import AppConfig
from .render_chain import RenderChain
from .services import Services

__all__ = ["Ingress"]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress()
class Ingress:
    """Validates and plans requests, then chains fetch → compose → encode."""

    def __init__(
        self,
        fetch: DeploymentHandle,
        compose: DeploymentHandle,
        encode: DeploymentHandle,
        config: dict[str, Any],
    ):
        app_config = AppConfig.model_validate(config)
        catalogue = SurveyCatalogue(app_config)
        catalogue.start_preload()
        self.services = Services(
            config=app_config,
            catalogue=catalogue,
            chain=RenderChain(app_config, fetch, compose, encode),
            fetch=fetch,
            compose=compose,
            encode=encode,
            started=time.time(),
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this after the constructor: the app this replica serves."""
        return create_app(self.services)
