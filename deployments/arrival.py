"""Refusal on arrival: under overload, a render request is refused before its body is read.

When even a render of the size admitted lately would miss its deadline, a request to a render
endpoint gets its 503 + ``Retry-After`` from the headers alone: no body fetched from Serve's
proxy, no validation, no routing. Under overload most requests are refused, and each refusal
must cost the ingress next to nothing so that the renders admitted (and health probes) keep
the cores. Requests that pass hold their place, so that requests arriving together see each
other, and wait here for their turn among the renders in progress (`deployments.turns`) before
anything else is read; their route then admits them as decided here.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.datastructures import Headers

from .deadline import Deadline, InvalidDeadline, Shed
from .errors import error_response
from .request_context import serve_request_id
from .shedding import AdmissionGate
from .telemetry import observe_queue_wait, observe_request

__all__ = ["RENDER_ROUTES", "ShedOnArrival"]

#: (method, path) of the endpoints whose renders go through admission control.
RENDER_ROUTES = frozenset(
    {
        ("POST", "/render/preview"),
        ("POST", "/render/snapshot"),
        ("POST", "/v1/preview"),
        ("GET", "/hips2fits"),
        ("POST", "/hips2fits"),
        ("POST", "/v1/composite"),
        ("POST", "/v1/epochs/difference"),
        ("POST", "/v1/epochs/blink"),
        ("POST", "/v1/epochs/stats"),
    }
)


class ShedOnArrival:
    """ASGI middleware (outermost): refuse a render at once when the typical render would be refused."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        services = getattr(scope.get("app"), "state", None) and scope["app"].state.services
        if (
            scope["type"] != "http"
            or services is None
            or (scope["method"], scope["path"]) not in RENDER_ROUTES
        ):
            await self.app(scope, receive, send)
            return
        arrived_at, start = time.time(), time.perf_counter()
        headers = Headers(scope=scope)
        gate = services.chain.gate
        scripts = scope["path"].startswith("/hips2fits")
        default_s = gate.config.hips2fits_deadline_s if scripts else None
        try:
            deadline = gate.deadline(headers, arrived_at, default_s)
        except InvalidDeadline:  # the route answers it (400)
            await self.app(scope, receive, send)
            return
        shed = gate.refuse_on_arrival(deadline)
        if not isinstance(shed, Shed):
            if shed is None:
                await self.app(scope, receive, send)
                return
            # Let in: its place is held until its route admits it (or it ends before that).
            state = scope.setdefault("state", {})
            hold = state["arrival_hold"] = shed
            # The request's time (its deadline, `Server-Timing: app`) counts from its arrival here.
            state.update(arrived_at=arrived_at, arrived_perf=start)
            try:
                # Its turn among the renders in progress comes before its body is read: a
                # burst's renders that must wait anyway cost the loop nothing until then, and
                # the refusals behind them are read (and answered) sooner.
                waited_from = time.perf_counter()
                give_back = await services.chain.turns.take(deadline.remaining())
                if give_back is None:
                    late = Shed("ingress", "deadline_passed", 1, hold.estimate_s, deadline.remaining())
                    await _refuse(scope, receive, send, gate, late, deadline, headers, arrived_at, start)
                    return
                waited_s = time.perf_counter() - waited_from
                observe_queue_wait("ingress", waited_s)
                state.update(turn_taken=True, release_turn=give_back, turn_waited_s=waited_s)
                await self.app(scope, receive, send)
            finally:
                gate.release(hold)
                release_turn = state.pop("release_turn", None)
                if release_turn is not None:
                    release_turn()
            return
        await _refuse(scope, receive, send, gate, shed, deadline, headers, arrived_at, start)


async def _refuse(
    scope: dict,
    receive: Any,
    send: Any,
    gate: AdmissionGate,
    shed: Shed,
    deadline: Deadline,
    headers: Headers,
    arrived_at: float,
    start: float,
) -> None:
    """Answer a render refused before its route: 503, ``Retry-After``, ``Server-Timing: decided``."""
    request_id = (headers.get("x-request-id") or serve_request_id() or "")[:128]
    record = gate.record_shed(request_id, scope["path"], shed, deadline)
    error = "deadline exceeded" if shed.reason == "deadline_passed" else "overloaded"
    decided_ms = (time.time() - arrived_at) * 1e3
    response = error_response(
        scope["path"],
        503,
        {k: v for k, v in record.items() if k not in ("request_id", "endpoint")},
        {"Retry-After": str(shed.retry_after_s), "Server-Timing": f"decided;dur={decided_ms:.1f}"},
        error,
    )
    await response(scope, receive, send)
    observe_request(scope["path"], 503, time.perf_counter() - start)
