"""Health probes answered outside the ingress: ``/healthz`` and ``/readyz`` under overload.

Under overload the ingress's event loop is busy with the renders in flight: a probe that
reaches it waits its turn (measured: 200-450 ms behind a burst of 96 clients, while the
answer itself takes under a millisecond). Serve's proxy stays quick (its own ``/-/healthz``
answers in under 15 ms). So each of the two probe routes is an application of its own
(Serve routes by one prefix per application), served by this deployment in its own process:
it asks the ingress for both answers in the background every ``period_s`` (1 s: each ask is a
Serve call, ~5 ms of CPU on the two sides) and answers probes with the latest at once (``Age``
header: its age in seconds). With no answer from the ingress for ``max_age_s`` it answers 503
itself: an ingress that does not answer is not ready.
``Cache-Control: no-cache`` asks the ingress now and waits, as ``/healthz`` does there.

Without these applications (``serve run graph:build_app``) the ingress answers the same
routes itself (`deployments.health`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from .errors import error_response
from .nodelay import set_tcp_nodelay_on_accept

__all__ = ["HealthEndpoint"]

_ALLOW = "GET, HEAD, OPTIONS"

log = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0})
class HealthEndpoint:
    """Answers one probe path (``/healthz`` or ``/readyz``) from the ingress's latest answers."""

    async def __init__(
        self,
        path: str,
        app: str = "skyrender",
        ingress: str = "Ingress",
        period_s: float = 1.0,
        max_age_s: float = 10.0,
        timeout_s: float = 10.0,
    ):
        if path not in ("/healthz", "/readyz"):
            raise ValueError(f"path must be /healthz or /readyz, not {path!r}")
        set_tcp_nodelay_on_accept()  # before this replica's HTTP server accepts a connection
        self.path, self.app = path, app
        self.period_s, self.max_age_s, self.timeout_s = period_s, max_age_s, timeout_s
        self.ingress = serve.get_deployment_handle(ingress, app_name=app)
        self._latest: tuple[float, tuple[int, bytes, dict[str, str]]] | None = None
        self._error = "no answer from the ingress yet"
        self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    async def _ask(self, live: bool = False) -> tuple[int, bytes, dict[str, str]]:
        """The ingress's answer, or TimeoutError after ``timeout_s`` (seconds).

        Not `asyncio.wait_for`: on its timeout it waits for the cancelled call to end, and a call
        still waiting for the ingress replica to start can take long to: the next ask, which the
        started replica would answer at once, waited behind it.
        """
        call = asyncio.ensure_future(self._call(live))
        call.add_done_callback(lambda t: t.cancelled() or t.exception())  # read even if we leave
        done, _ = await asyncio.wait({call}, timeout=self.timeout_s)
        if not done:
            call.cancel()  # not awaited, for the reason above
            raise TimeoutError(f"no answer from the ingress in {self.timeout_s:g} s")
        return call.result()

    async def _call(self, live: bool) -> tuple[int, bytes, dict[str, str]]:
        return await self.ingress.health_answer.remote(self.path, live)

    async def _refresh(self) -> None:
        while True:
            try:
                # Timed when it arrives: the ingress made it then, however long the ask waited
                # (for a replica to start, or behind a loaded event loop).
                answer = await self._ask()
                self._latest = (time.monotonic(), answer)
            except Exception as exc:  # the ingress starting, restarting or stuck: said by age
                self._error = f"{type(exc).__name__}: {exc}"[:500]
            await asyncio.sleep(self.period_s)

    async def __call__(self, request: Request) -> Response:
        start = time.perf_counter()
        path, method = request.url.path, request.method.upper()
        # The same methods and errors as the ingress's routes (deployments.methods).
        if path != self.path:
            return error_response(path, 404, f"no route at {path}")
        if method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": _ALLOW})
        if method not in ("GET", "HEAD"):
            detail = f"{method} is not served at {path}; allowed: {_ALLOW}"
            return error_response(path, 405, detail, {"Allow": _ALLOW})
        response = await self._get(request, start)
        if method == "HEAD":
            return Response(status_code=response.status_code, headers=dict(response.headers))
        return response

    async def _get(self, request: Request, start: float) -> Response:
        if "no-cache" in request.headers.get("cache-control", "").lower():
            try:
                status, body, headers = await self._ask(live=True)
            except Exception as exc:
                return _json(503, _unanswered(f"{type(exc).__name__}: {exc}"), start, {"Retry-After": "1"})
            return _answer(status, body, headers, 0.0, start)
        age = time.monotonic() - self._latest[0] if self._latest is not None else math.inf
        if self._latest is None or age > self.max_age_s:
            detail = self._error if self._latest is None else f"last answer {age:.1f} s old; {self._error}"
            return _json(503, _unanswered(detail), start, {"Retry-After": "1"})
        status, body, headers = self._latest[1]
        return _answer(status, body, headers, age, start)


def _unanswered(detail: str) -> dict[str, Any]:
    return {"status": "unknown", "error": "ingress not answering", "detail": detail}


def _answer(status: int, body: bytes, headers: dict[str, str], age_s: float, start: float) -> Response:
    out = {**headers, "Age": str(int(age_s)), "Server-Timing": _timing(start)}
    return Response(body, status_code=status, headers=out, media_type="application/json")


def _json(status: int, body: dict[str, Any], start: float, headers: dict[str, str] | None = None) -> Response:
    out = {**(headers or {}), "Server-Timing": _timing(start)}
    return Response(json.dumps(body), status_code=status, headers=out, media_type="application/json")


def _timing(start: float) -> str:
    return f"app;dur={(time.perf_counter() - start) * 1e3:.1f}"
