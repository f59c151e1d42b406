"""Prometheus metrics through Ray's metrics export port: the series move after requests."""

from __future__ import annotations

import time

import pytest

from .loopback import StaticHips
from .serve_harness import ServeApp, free_port, scrape_metrics


@pytest.fixture(scope="module")
def served(hips_dir):
    upstream = StaticHips(hips_dir)
    port = free_port()
    app = ServeApp(
        {
            "surveys": [{"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"}],
            "build_sample_survey": False,
        },
        metrics_port=port,
    )
    yield app, port
    app.close()
    upstream.stop()


def _total(samples, **labels) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_series_move_after_requests(served):
    app, port = served
    field = {"ra": 266.4, "dec": -28.9, "fovDeg": 3.0, "width": 128, "height": 96}
    assert app.client.post("/v1/preview", json=field).status_code == 200
    assert app.client.post("/v1/preview", json=field).status_code == 200
    assert app.client.post("/v1/tile-manifest", json=field).status_code == 200
    assert app.client.post("/v1/preview", json={**field, "fovDeg": 1e-7}).status_code == 400
    # Ray exports each series on its own schedule: poll until every expectation holds (or 60 s).
    deadline = time.monotonic() + 60
    while True:
        series = scrape_metrics(port)
        unmet = _unmet(series)
        if not unmet or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not unmet, f"{unmet}; have {sorted(k for k in series if 'skyrender' in k)}"
    assert any(s.name.startswith("ray_serve_") for v in series.values() for s in v)


WANTED = [
    "ray_skyrender_requests_total",
    "ray_skyrender_request_seconds_bucket",
    "ray_skyrender_stage_seconds_bucket",
    "ray_skyrender_tile_fetches_total",
    "ray_skyrender_cache_events_total",
    "ray_skyrender_compose_renders_total",
]


def _unmet(series: dict[str, list]) -> list[str]:
    """What the scrape does not show yet after the requests of the test."""
    missing = [name for name in WANTED if name not in series]
    if missing:
        return [f"missing series {missing}"]
    unmet = []
    requests = series["ray_skyrender_requests_total"]
    for endpoint, status, count in (("/v1/preview", "200", 2), ("/v1/preview", "400", 1),
                                    ("/v1/tile-manifest", "200", 1)):  # fmt: skip
        if _total(requests, endpoint=endpoint, status=status) < count:
            unmet.append(f"fewer than {count} {endpoint} {status}")
    stages = {s.labels["stage"] for s in series["ray_skyrender_stage_seconds_bucket"]}
    if not stages >= {"fetch", "compose", "encode"}:
        unmet.append(f"stages {stages}")
    outcomes = {s.labels["outcome"] for s in series["ray_skyrender_tile_fetches_total"]}
    if not ("downloaded" in outcomes and outcomes & {"hit", "fetched"}):
        unmet.append(f"tile fetch outcomes {outcomes}")
    if _total(series["ray_skyrender_cache_events_total"], event="hit") < 1:
        unmet.append("no cache hit")
    backends = {s.labels["backend"] for s in series["ray_skyrender_compose_renders_total"]}
    if not (backends and backends <= {"wgpu", "numpy"}):
        unmet.append(f"compose backends {backends}")
    return unmet
