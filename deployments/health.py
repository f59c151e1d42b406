"""Health: ``/healthz`` (are the upstreams and the disk well: NestJS's circuit breaker reads
it) and ``/v1/stats`` (tile cache counters)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

import skyrender

from .config import SurveyConfig
from .disk_cache import disk_free_bytes
from .errors import message_of, unwrap
from .services import Services, ServicesDep

__all__ = ["router"]

router = APIRouter()


async def _probe(svc: Services, cfg: SurveyConfig) -> tuple[bool, str]:
    """Is the survey's ``properties`` readable (a local file, or upstream's through the fetch stage)?"""
    if cfg.is_local:
        ok = Path(cfg.url, "properties").is_file()
        return ok, "local directory" if ok else f"{cfg.url}/properties missing"
    try:
        return await asyncio.wait_for(svc.fetch.probe.remote(cfg.url), timeout=_stage_timeout(svc))
    except Exception as exc:
        return False, f"probe failed: {message_of(unwrap(exc))}"


def _stage_timeout(svc: Services) -> float:
    """How long a health question to a stage may take [s]: one upstream request's worth."""
    up = svc.config.upstream
    return up.connect_timeout_s + up.read_timeout_s


@router.get("/healthz", responses={503: {"description": "an upstream survey is unreachable"}})
async def healthz(svc: ServicesDep) -> JSONResponse:
    """200 when every configured survey answers; 503 with the reason otherwise."""
    surveys_cfg = svc.config.surveys
    checks = await asyncio.gather(*(_probe(svc, cfg) for cfg in surveys_cfg))
    surveys = {
        cfg.name: {"url": cfg.url, "ok": ok, "detail": detail}
        for cfg, (ok, detail) in zip(surveys_cfg, checks, strict=True)
    }
    try:
        compose = await asyncio.wait_for(svc.compose.info.remote(), timeout=_stage_timeout(svc))
    except Exception as exc:  # compose still starting: report, do not fail health for it
        compose = {"backend": "unknown", "detail": str(exc)}
    try:
        cache = await asyncio.wait_for(svc.fetch.cache_stats.remote(), timeout=_stage_timeout(svc))
    except Exception as exc:
        cache = {"error": str(exc)}
    cache_cfg = svc.config.cache
    disk: dict[str, Any] = {"directory": cache_cfg.disk_dir}
    try:
        disk["free_bytes"] = await asyncio.to_thread(disk_free_bytes, cache_cfg.disk_dir)
        disk["ok"] = disk["free_bytes"] >= cache_cfg.min_free_disk_bytes
    except OSError as exc:
        disk.update(free_bytes=None, ok=False, detail=str(exc))
    ok = all(s["ok"] for s in surveys.values()) and disk["ok"]
    body = {
        "status": "ok" if ok else "degraded",
        "version": skyrender.__version__,
        "uptime_s": round(time.time() - svc.started, 3),
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
    """Tile cache counters (hits, misses, evictions, bytes held)."""
    return {"cache": await svc.fetch.cache_stats.remote()}
