"""Per-request bookkeeping: request id, one JSON log line, metrics, ``Server-Timing: app``.

Routes add facts for the log line to ``request.state.render`` (survey, order, tiles,
stage timings); an unexpected exception is logged with the request id and answered 500
as JSON, never as a bare traceback.
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .telemetry import log_request, observe_request

__all__ = ["install_request_context", "serve_request_id"]

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

    @app.middleware("http")
    async def _request_context(request: Request, call_next) -> Response:
        # Serve's proxy already takes X-Request-ID (or makes one) and echoes it in the response.
        rid = (request.headers.get("x-request-id") or serve_request_id() or uuid.uuid4().hex)[:128]
        request.state.request_id = rid
        request.state.render = {}
        request.state.arrived_at = time.time()  # a render's deadline counts from here
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug: log it with the request id, answer 500 as JSON
            log.exception("request %s failed", rid)
            response = JSONResponse(
                status_code=500, content={"error": "internal error", "detail": type(exc).__name__}
            )
        release = getattr(request.state, "release_admission", None)
        if release is not None:  # a render admitted and then refused (a 4xx): free its place
            release()
        seconds = time.perf_counter() - start
        # The time spent in this replica, beside the stages' own entries (all in ms).
        timing = response.headers.get("server-timing")
        app_timing = f"app;dur={seconds * 1e3:.1f}"
        response.headers["Server-Timing"] = f"{timing}, {app_timing}" if timing else app_timing
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        observe_request(endpoint, response.status_code, seconds)
        log_request(
            {
                "request_id": rid,
                "method": request.method,
                "endpoint": endpoint,
                "status": response.status_code,
                "duration_ms": round(seconds * 1e3, 2),
                **request.state.render,
            }
        )
        return response
