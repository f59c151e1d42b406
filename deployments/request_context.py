"""Per-request bookkeeping: request id, one JSON log line, metrics, ``Server-Timing: app``.

Routes add facts for the log line to ``request.state.render`` (survey, order, tiles,
stage timings); an unexpected exception is logged with the request id and answered 500
as JSON, never as a bare traceback.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

from .telemetry import log_request, observe_request

__all__ = ["RequestContext", "install_request_context", "serve_request_id"]

log = logging.getLogger("ray.serve")


def serve_request_id() -> str | None:
    """The id Serve's proxy gave the request being handled (None outside a request)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:
        return None


def install_request_context(app: FastAPI) -> None:
    """Add the request-context middleware to ``app`` (outermost: it sees every answer)."""
    app.add_middleware(RequestContext)


class RequestContext:
    """The request-context middleware, in plain ASGI.

    Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) runs the app in a task
    of its own and streams the answer through a channel: CPU per request that a 2-core node
    spends on every render. This one only wraps ``send``.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Serve's proxy already takes X-Request-ID (or makes one) and echoes it in the response.
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), None)
        rid = (given or serve_request_id() or uuid.uuid4().hex)[:128]
        # ``request.state`` of every Request built on this scope (the routes' included).
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["render"] = {}
        # A render's deadline counts from its arrival (here, or in `ShedOnArrival` before its turn).
        state.setdefault("arrived_at", time.time())
        start = state.get("arrived_perf") or time.perf_counter()
        answer: dict[str, Any] = {}

        async def send_timed(message: dict) -> None:
            if message["type"] == "http.response.start":
                seconds = time.perf_counter() - start
                answer.update(status=message["status"], seconds=seconds)
                _release(state)
                # The time spent in this replica, beside the stages' own entries (all in ms).
                headers = MutableHeaders(scope=message)
                timing = headers.get("server-timing")
                app_timing = f"app;dur={seconds * 1e3:.1f}"
                headers["Server-Timing"] = f"{timing}, {app_timing}" if timing else app_timing
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        except Exception as exc:  # a bug: log it with the request id, answer 500 as JSON
            log.exception("request %s failed", rid)
            if answer:  # the answer had started: nothing else can be sent
                raise
            response = JSONResponse(
                status_code=500, content={"error": "internal error", "detail": type(exc).__name__}
            )
            await response(scope, receive, send_timed)
        finally:
            _release(state)  # a render admitted and then refused (a 4xx): free its place
        status = answer.get("status", 500)
        seconds = answer.get("seconds", time.perf_counter() - start)
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        observe_request(endpoint, status, seconds)
        log_request(
            {
                "request_id": rid,
                "method": scope.get("method"),
                "endpoint": endpoint,
                "status": status,
                "duration_ms": round(seconds * 1e3, 2),
                **state["render"],
            }
        )


def _release(state: dict) -> None:
    """Free the render's admission place and its turn (`deployments.turns`), once each."""
    for key in ("release_admission", "release_turn"):
        release = state.pop(key, None)
        if release is not None:
            release()
