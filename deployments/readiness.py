"""Readiness: is this application ready to take traffic (``/readyz``)?

Ready means: the survey catalogue has been read (every survey tried once), this ingress
replica has warmed up, the application has come up once (all its initial replicas,
which warm up in their constructors, are running), and every stage still has a running
replica. An upstream outage does not make the service unready: cached tiles and the
other surveys can still be served (``/healthz`` reports upstreams).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Readiness", "StagesStatus"]

#: How long one answer from Serve's controller is reused [s]: probes come every few seconds.
_STATUS_TTL_S = 2.0
#: Up to this age [s] an older answer is still reported at once while a fresh one is asked for
#: in the background: under overload the controller (and this replica's thread pool) is slow.
_STATUS_STALE_S = 10.0


@dataclass(frozen=True)
class StagesStatus:
    """What Serve's controller says about this application's deployments."""

    ok: bool
    app_status: str
    replicas: dict[str, dict[str, int]]
    detail: str = ""


@dataclass
class Readiness:
    """The start-up timeline of an ingress replica and the readiness check.

    ``timeline`` maps a step (``planning_warm``, ``fetch_ready``, ``catalogue_loaded``, ``health_primed``,
    ``ready``) to its time after ``started`` [s].
    """

    started: float
    timeline: dict[str, float] = field(default_factory=dict)
    warmup_s: dict[str, float] = field(default_factory=dict)
    _came_up: bool = False
    _cached: tuple[float, StagesStatus] | None = None
    _refresh: asyncio.Task | None = None

    def mark(self, step: str, warmup_s: float | None = None) -> None:
        """Record that ``step`` is done now (and how long its warm-up took [s], if any)."""
        self.timeline.setdefault(step, round(time.time() - self.started, 3))
        if warmup_s is not None:
            self.warmup_s[step] = round(warmup_s, 3)

    async def stages(self, timeout_s: float) -> StagesStatus:
        """This application's deployments, from Serve's controller (cached for a second, then
        refreshed in the background while the answer is younger than `_STATUS_STALE_S`)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < _STATUS_TTL_S:
            return self._cached[1]
        self.refresh(timeout_s)
        if self._cached is not None and now - self._cached[0] < _STATUS_STALE_S:
            return self._cached[1]
        return await asyncio.shield(self._refresh)

    def refresh(self, timeout_s: float) -> asyncio.Task:
        """Ask the controller again in the background (unless a question is under way)."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._ask(timeout_s))
        return self._refresh

    async def _ask(self, timeout_s: float) -> StagesStatus:
        asked = time.monotonic()
        try:
            status = await asyncio.wait_for(asyncio.to_thread(_serve_status), timeout=timeout_s)
        except Exception as exc:  # the controller is busy or restarting: not ready for now
            return StagesStatus(False, "UNKNOWN", {}, f"Serve controller: {type(exc).__name__}: {exc}")
        self._cached = (asked, status)
        return status

    def came_up(self, status: StagesStatus) -> bool:
        """True once the application has been RUNNING (latched: a later redeploy or
        autoscaling does not make a serving application unready)."""
        self._came_up = self._came_up or status.app_status == "RUNNING"
        return self._came_up


def _serve_status() -> StagesStatus:
    """This application's deployments from the controller's details, read as the plain dict it
    sends: ``serve.status()`` builds its schema objects from the same dict, which pickles every
    deployment's router class and cost ~0.1 s of this replica's CPU (and GIL) per call."""
    from ray import serve
    from ray.serve.context import _get_global_client

    app_name = serve.get_replica_context().app_name
    details = _get_global_client().get_serve_details()
    app: Any = (details.get("applications") or {}).get(app_name)
    if app is None:
        return StagesStatus(False, "UNKNOWN", {}, f"application {app_name!r} not found")
    replicas = {
        name: dict(Counter(_value(r.get("state")) for r in dep.get("replicas") or []))
        for name, dep in (app.get("deployments") or {}).items()
    }
    idle = [name for name, states in replicas.items() if states.get("RUNNING", 0) < 1]
    detail = f"no running replica of {', '.join(idle)}" if idle else ""
    return StagesStatus(not idle, _value(app.get("status")), replicas, detail)


def _value(state: Any) -> str:
    """An enum member or its value, as the value."""
    return str(getattr(state, "value", state))
