"""What the routes work with: one `Services` per ingress replica, on ``app.state.services``.

A route asks for it with a parameter annotated `ServicesDep`; nothing here knows HTTP
routes, so any route module can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from ray.serve.handle import DeploymentHandle

from .catalogue import SurveyCatalogue
from .config import AppConfig
from .readiness import Readiness
from .render_chain import RenderChain

__all__ = ["Services", "ServicesDep", "services"]


@dataclass(frozen=True)
class Services:
    """The ingress replica's configuration, survey catalogue, render chain, stage handles
    and readiness (when it started, what is warm)."""

    config: AppConfig
    catalogue: SurveyCatalogue
    chain: RenderChain
    fetch: DeploymentHandle
    compose: DeploymentHandle
    encode: DeploymentHandle
    readiness: Readiness


async def services(request: Request) -> Services:
    """The `Services` of the app serving ``request`` (a FastAPI dependency).

    ``async`` on purpose: FastAPI runs a plain function dependency in its thread pool, one
    thread hand-off per request for a lookup.
    """
    return request.app.state.services


#: Route parameter type: ``async def route(svc: ServicesDep, ...)``.
ServicesDep = Annotated[Services, Depends(services)]
