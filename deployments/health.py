"""Health: ``/livez`` (the process answers: Kubernetes liveness), ``/readyz`` (ready to
serve: Kubernetes readiness, see `deployments.readiness`), ``/healthz`` (are the upstreams
and the disk well: NestJS's circuit breaker reads it) and ``/v1/stats`` (cache counters)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

import skyrender

from .config import SurveyConfig
from .disk_cache import disk_free_bytes
from .errors import message_of, unwrap
from .services import Services, ServicesDep
from .telemetry import observe_request

__all__ = ["HealthFirst", "keep_fresh", "prime", "router"]

router = APIRouter()

#: How long /healthz waits for a stage's live answer when it has no recent one [s]. Under
#: overload a question to Compose waits behind the renders queued there; health must not.
_LIVE_WAIT_S = 0.05
#: An answer younger than this is reported as it is [s]; older, it is still reported at once
#: while a fresh one is asked for in the background, up to `_STALE_S`.
_FRESH_S = 1.0
_STALE_S = 10.0
#: How often every question is asked again in the background (`keep_fresh`) [s].
_KEEP_S = 4.0


class _LastAnswers:
    """A stage's latest answer to a health question, refreshed in the background (one ingress replica).

    Under overload the ingress's event loop is busy and every await costs a turn of it: a probe
    answered from what is known, without waiting for anything, stays fast.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, Any]] = {}
        self._pending: dict[str, asyncio.Task] = {}

    async def get(self, key: str, ask, timeout_s: float, fallback, live: bool = False) -> Any:
        """The last answer (with its ``age_s``) while younger than `_STALE_S`, asking again in the
        background once it is older than `_FRESH_S`; with none as recent, the live answer if it
        comes within `_LIVE_WAIT_S`, else the last one. ``live``: ask now and wait for the answer."""
        if live:
            return await self._ask(key, ask, timeout_s, fallback)
        last = self._last.get(key)
        age = time.monotonic() - last[0] if last is not None else math.inf
        if age < _FRESH_S:
            return self._aged(key)
        task = self.refresh(key, ask, timeout_s, fallback)
        if age < _STALE_S:
            return self._aged(key)
        done, _ = await asyncio.wait({task}, timeout=_LIVE_WAIT_S)
        if done:
            return task.result()
        if last is not None:
            return self._aged(key)
        return await task  # nothing known yet: wait for the first answer

    def refresh(self, key: str, ask, timeout_s: float, fallback) -> asyncio.Task:
        task = self._pending.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(self._ask(key, ask, timeout_s, fallback))
            self._pending[key] = task
        return task

    def _aged(self, key: str) -> Any:
        at, value = self._last[key]
        return {**value, "age_s": round(time.monotonic() - at, 3)} if isinstance(value, dict) else value

    async def _ask(self, key: str, ask, timeout_s: float, fallback) -> Any:
        try:
            value = await asyncio.wait_for(ask(), timeout=timeout_s)
        except Exception as exc:
            value = fallback(exc)  # kept too: a failing upstream must show in the next answers
        self._last[key] = (time.monotonic(), value)
        return value


_answers = _LastAnswers()


def _questions(svc: Services) -> dict[str, tuple[Any, Any]]:
    """Every health question to a stage: key -> (ask, fallback on failure)."""
    questions: dict[str, tuple[Any, Any]] = {
        "compose": (
            lambda: _as_coroutine(svc.compose.info.remote()),
            lambda exc: {"backend": "unknown", "detail": str(exc)},
        ),
        "cache": (lambda: _as_coroutine(svc.fetch.cache_stats.remote()), lambda exc: {"error": str(exc)}),
    }
    for cfg in svc.config.surveys:
        if not cfg.is_local:
            questions[f"probe {cfg.url}"] = (
                lambda url=cfg.url: _as_coroutine(svc.fetch.probe.remote(url)),
                lambda exc: (False, f"probe failed: {message_of(unwrap(exc))}"),
            )
    return questions


async def _ask(svc: Services, key: str, live: bool = False) -> Any:
    ask, fallback = _questions(svc)[key]
    return await _answers.get(key, ask, _stage_timeout(svc), fallback, live)


async def _probe(svc: Services, cfg: SurveyConfig, live: bool = False) -> tuple[bool, str]:
    """Is the survey's ``properties`` readable (a local file, or upstream's through the fetch stage)?"""
    if cfg.is_local:
        ok = Path(cfg.url, "properties").is_file()
        return ok, "local directory" if ok else f"{cfg.url}/properties missing"
    ok, detail = await _ask(svc, f"probe {cfg.url}", live)
    return ok, detail


async def _as_coroutine(response) -> Any:
    return await response


async def prime(svc: Services) -> None:
    """Ask every health question once (at start-up), so that ``/healthz`` always has a last
    answer to report and never waits for a stage busy with renders."""
    await asyncio.gather(*(_ask(svc, key) for key in _questions(svc)))


async def keep_fresh(svc: Services, period_s: float = _KEEP_S) -> None:
    """Ask every health question again every ``period_s`` in the background (runs until cancelled).

    Probes may come seldom (Kubernetes: every 10 s): the answers they find (``/healthz``'s and
    ``/readyz``'s) must still be younger than `_STALE_S`, or the probe would wait for a stage, or
    Serve's controller, busy with renders.
    """
    timeout_s = _stage_timeout(svc)
    while True:
        await asyncio.sleep(period_s)
        for key, (ask, fallback) in _questions(svc).items():
            _answers.refresh(key, ask, timeout_s, fallback)
        svc.readiness.refresh(timeout_s)


def _stage_timeout(svc: Services) -> float:
    """How long a health question to a stage may take [s]: one upstream request's worth."""
    up = svc.config.upstream
    return up.connect_timeout_s + up.read_timeout_s


@router.get("/livez")
async def livez() -> dict[str, str]:
    """200 while the process answers (Kubernetes liveness): nothing else is checked."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"description": "still starting: the reason, with Retry-After"}})
async def readyz(svc: ServicesDep) -> JSONResponse:
    """200 once the survey catalogue is loaded and every stage is up and warm; 503 until then.

    An unreachable upstream does not make the service unready (see ``/healthz``).
    """
    readiness = svc.readiness
    stages = await readiness.stages(_stage_timeout(svc))
    came_up = readiness.came_up(stages)
    waiting = []
    if not svc.catalogue.loaded:
        waiting.append("survey catalogue loading")
    if not came_up:
        waiting.append(f"application {stages.app_status.lower()}")
    if not stages.ok:
        waiting.append(stages.detail)
    if not waiting:
        readiness.mark("ready")
    body = {
        "status": "ready" if not waiting else "starting",
        "timeline_s": readiness.timeline,
        "warmup_s": readiness.warmup_s,
        "replicas": stages.replicas,
    }
    if waiting:
        body.update(error="not ready", detail="; ".join(waiting))
        return JSONResponse(status_code=503, content=body, headers={"Retry-After": "1"})
    return JSONResponse(status_code=200, content=body)


@router.get("/healthz", responses={503: {"description": "an upstream survey is unreachable"}})
async def healthz(svc: ServicesDep, request: Request) -> JSONResponse:
    """200 when every configured survey answers; 503 with the reason otherwise.

    Answered from the stages' last answers (each with its ``age_s``, refreshed in the background
    once older than a second), so that it stays fast under overload; ``Cache-Control: no-cache``
    asks every stage now and waits for the answers.
    """
    live = "no-cache" in request.headers.get("cache-control", "").lower()
    return await healthz_answer(svc, live)


async def healthz_answer(svc: Services, live: bool = False) -> JSONResponse:
    """``/healthz``'s answer (see `healthz`); ``live``: ask every stage now and wait."""
    surveys_cfg = svc.config.surveys
    # One after the other: an answer already known returns without a turn of the event loop.
    checks = [await _probe(svc, cfg, live) for cfg in surveys_cfg]
    surveys = {
        cfg.name: {"url": cfg.url, "ok": ok, "detail": detail}
        for cfg, (ok, detail) in zip(surveys_cfg, checks, strict=True)
    }
    # Compose still starting or busy: report what is known, do not fail health for it.
    compose = await _ask(svc, "compose", live)
    cache = await _ask(svc, "cache", live)
    cache_cfg = svc.config.cache
    disk: dict[str, Any] = {"directory": cache_cfg.disk_dir}
    try:
        # statvfs of a local disk takes microseconds: not worth a place in the (busy) thread pool.
        disk["free_bytes"] = disk_free_bytes(cache_cfg.disk_dir)
        disk["ok"] = disk["free_bytes"] >= cache_cfg.min_free_disk_bytes
    except OSError as exc:
        disk.update(free_bytes=None, ok=False, detail=str(exc))
    ok = all(s["ok"] for s in surveys.values()) and disk["ok"]
    body = {
        "status": "ok" if ok else "degraded",
        "version": skyrender.__version__,
        "uptime_s": round(time.time() - svc.readiness.started, 3),
        "compose": compose,
        "cache": cache,
        "surveys": surveys,
        "disk": disk,
    }
    if not ok:
        bad = [f"{n}: {s['detail']}" for n, s in surveys.items() if not s["ok"]]
        body["error"] = "upstream unavailable" if bad else "disk space low"
        if not disk["ok"]:
            free, minimum = disk["free_bytes"], cache_cfg.min_free_disk_bytes
            bad.append(f"{free} bytes free in {cache_cfg.disk_dir}, minimum {minimum}")
        body["detail"] = "; ".join(bad)
    return JSONResponse(status_code=200 if ok else 503, content=body)


@router.get("/v1/stats")
async def stats(svc: ServicesDep) -> dict[str, Any]:
    """Tile cache counters (hits, misses, evictions, bytes held).

    ``hits`` are the cache actor's; ``reused_by_ingress`` counts the tiles this ingress replica
    took from references it kept from a recent lookup (`cache.ingress_recent_s`), not asking.
    """
    counters = await svc.fetch.cache_stats.remote()
    reader = svc.chain.cache
    if isinstance(counters, dict) and reader is not None:
        counters = {**counters, "reused_by_ingress": reader.reused}
    return {"cache": counters}


class HealthFirst:
    """ASGI middleware (outermost): ``GET /livez``, ``/readyz`` and ``/healthz`` answered at once.

    The same handlers as the routes, called before the application's middleware stack and
    routing: under overload every await of that stack waits for a turn of a busy event loop,
    and a probe must not (Kubernetes' and the portal's probes time out).
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        handler = _FAST.get(scope.get("path", "")) if scope["type"] == "http" else None
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if handler is None or scope["method"] != "GET" or services is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        response = await handler(services, Request(scope, receive))
        # How long it took in here: under overload, the rest of a probe's time is Serve's proxy.
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1e3:.1f}"
        await response(scope, receive, send)
        observe_request(scope["path"], response.status_code, time.perf_counter() - start)


async def _livez(svc: Services, request: Request) -> JSONResponse:
    return JSONResponse(await livez())


async def _readyz(svc: Services, request: Request) -> JSONResponse:
    return await readyz(svc)


_FAST = {"/livez": _livez, "/readyz": _readyz, "/healthz": healthz}


async def answer(svc: Services, path: str, live: bool = False) -> tuple[int, bytes, dict[str, str]]:
    """``/healthz`` or ``/readyz`` as answered now: (status, JSON body, headers).

    For the health applications (`deployments.health_endpoint`), which answer probes from
    their own process with the latest of these, so that a probe never waits for this replica's
    event loop, busy with renders under overload.
    """
    if path == "/healthz":
        response = await healthz_answer(svc, live)
    elif path == "/readyz":
        response = await readyz(svc)
    else:
        raise ValueError(f"no health answer for {path!r}")
    headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
    return response.status_code, bytes(response.body), headers
