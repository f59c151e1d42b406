"""Metrics (through Ray's metrics system, scraped from Ray's metrics export port) and
structured request logs.

Series carry the ``skyrender_`` prefix; Ray adds its ``ray_`` prefix on export, so
Prometheus sees e.g. ``ray_skyrender_requests_total``. Tags are kept low-cardinality
(endpoint templates, status codes, stage names, upstream hosts) on purpose.
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "LATENCY_BOUNDARIES_S",
    "log_request",
    "metrics",
    "observe_estimate",
    "observe_late_answer",
    "observe_queue_wait",
    "observe_request",
    "observe_shed",
    "observe_stage",
    "observe_tile",
    "upstream_label",
]

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]

# A child of "ray.serve": Serve writes it to the replica log files (JSON-encoded there).
request_log = logging.getLogger("ray.serve.skyrender.requests")


class _Metrics:
    """The application's series, created once per process (replica)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.requests = Counter(
            "skyrender_requests_total",
            "HTTP requests by endpoint and status",
            tag_keys=("endpoint", "status"),
        )
        self.request_seconds = Histogram(
            "skyrender_request_seconds",
            "HTTP request latency by endpoint [s]",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("endpoint",),
        )
        self.stage_seconds = Histogram(
            "skyrender_stage_seconds",
            "Time spent per render stage (fetch, compose, encode) [s]",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("stage",),
        )
        self.tile_fetches = Counter(
            "skyrender_tile_fetches_total",
            "Tile requests by upstream and outcome (hit, fetched, coalesced, missing, broken, error)",
            tag_keys=("upstream", "outcome"),
        )
        self.tile_fetch_seconds = Histogram(
            "skyrender_tile_fetch_seconds",
            "Upstream tile fetch latency [s]",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("upstream",),
        )
        self.tile_bytes = Counter(
            "skyrender_tile_fetch_bytes_total", "Bytes of tiles fetched from upstream", tag_keys=("upstream",)
        )
        self.cache_events = Counter(
            "skyrender_cache_events_total", "Tile cache hits, misses and evictions", tag_keys=("event",)
        )
        self.cache_bytes = Gauge(
            "skyrender_cache_bytes", "Bytes of decoded tiles held by the object-store cache"
        )
        self.cache_entries = Gauge("skyrender_cache_entries", "Tiles held by the object-store cache")
        self.compose_backend = Gauge(
            "skyrender_compose_backend",
            "Compose backend in use (1 for the active one)",
            tag_keys=("backend",),
        )
        self.shed = Counter(
            "skyrender_shed_total",
            "Requests dropped without computing them, by endpoint, stage and reason "
            "(deadline_passed, would_miss_deadline, queue_full): demand the service did not serve",
            tag_keys=("endpoint", "stage", "reason"),
        )
        self.queue_wait_seconds = Histogram(
            "skyrender_queue_wait_seconds",
            "Time a request waited before a stage started it (Serve queues and the handoff) [s]",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("stage",),
        )
        self.deadline_misses = Counter(
            "skyrender_deadline_misses_total",
            "Requests whose deadline passed: dropped at a stage (stage) or answered late (stage=answer)",
            tag_keys=("stage",),
        )
        self.admission_estimate_seconds = Gauge(
            "skyrender_admission_estimate_seconds",
            "The ingress's latest estimate of a newcomer's time to finish [s]",
        )
        self.compose_renders = Counter(
            "skyrender_compose_renders_total",
            "Reprojections by compose backend (wgpu, numpy)",
            tag_keys=("backend",),
        )


@lru_cache(maxsize=1)
def metrics() -> _Metrics | None:
    """The process's metric objects, or None outside a Ray worker (plain unit tests)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return _Metrics()
    except Exception:  # metrics must never break a request
        return None


def upstream_label(location: str) -> str:
    """Low-cardinality upstream name: the host of a URL, or ``local`` for files."""
    if location.startswith(("http://", "https://")):
        return urlsplit(location).netloc or "unknown"
    return "local"


def observe_request(endpoint: str, status: int, seconds: float) -> None:
    m = metrics()
    if m is None:
        return
    m.requests.inc(1, tags={"endpoint": endpoint, "status": str(status)})
    m.request_seconds.observe(seconds, tags={"endpoint": endpoint})


def observe_stage(stage: str, seconds: float) -> None:
    m = metrics()
    if m is not None:
        m.stage_seconds.observe(seconds, tags={"stage": stage})


def observe_shed(endpoint: str, stage: str, reason: str) -> None:
    m = metrics()
    if m is not None:
        m.shed.inc(1, tags={"endpoint": endpoint, "stage": stage, "reason": reason})
        if reason == "deadline_passed":
            m.deadline_misses.inc(1, tags={"stage": stage})


def observe_queue_wait(stage: str, seconds: float) -> None:
    m = metrics()
    if m is not None:
        m.queue_wait_seconds.observe(max(seconds, 0.0), tags={"stage": stage})


def observe_late_answer() -> None:
    """A render answered after its deadline: the caller had given up (a deadline miss)."""
    m = metrics()
    if m is not None:
        m.deadline_misses.inc(1, tags={"stage": "answer"})


def observe_estimate(seconds: float) -> None:
    m = metrics()
    if m is not None:
        m.admission_estimate_seconds.set(seconds)


def observe_tile(
    location: str, outcome: str, seconds: float | None = None, nbytes: int | None = None
) -> None:
    m = metrics()
    if m is None:
        return
    upstream = upstream_label(location)
    m.tile_fetches.inc(1, tags={"upstream": upstream, "outcome": outcome})
    if seconds is not None:
        m.tile_fetch_seconds.observe(seconds, tags={"upstream": upstream})
    if nbytes:
        m.tile_bytes.inc(nbytes, tags={"upstream": upstream})


def observe_held(requests: list[Any], seconds: float) -> None:
    """Tiles read from the cache by the ingress (`RenderChain.tiles`), counted as the fetch
    stage counts its hits: the metrics stay one picture whichever process read them."""
    m = metrics()
    if m is None:
        return
    for r in requests:
        m.tile_fetches.inc(1, tags={"upstream": upstream_label(r.location), "outcome": "hit"})
    m.cache_events.inc(len(requests), tags={"event": "hit"})
    m.stage_seconds.observe(seconds, tags={"stage": "fetch"})


def log_request(record: dict[str, Any]) -> None:
    """One JSON line per request (request id, endpoint, status, timings, tiles, outcome)."""
    record.setdefault("ts", round(time.time(), 3))
    request_log.info(json.dumps(record, separators=(",", ":"), default=str))
