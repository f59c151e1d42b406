"""Deadlines and load shedding against the real application (one app for the module).

What is checked is behaviour, with generous bounds: refusals are 503 with ``Retry-After`` and say
why; an expired request is never computed (Compose's render counter does not move); health keeps
answering while the renders queue; shed requests are counted in the metrics. Speed is measured by
``bench/overload.py``, not here.
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from .loopback import StaticHips
from .serve_harness import ServeApp, free_port, scrape_metrics

FIELD = {"ra": 266.4, "dec": -28.9, "fovDeg": 2.0, "width": 256, "height": 256}
BIG = {**FIELD, "fovDeg": 3.0, "width": 2048, "height": 2048}


@pytest.fixture(scope="module")
def served(hips_dir):
    upstream = StaticHips(hips_dir)
    port = free_port()
    one = {"min_replicas": 1, "max_replicas": 1}
    app = ServeApp(
        {
            "surveys": [{"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"}],
            "build_sample_survey": False,
        },
        # One replica per stage: Compose's render counter (in /healthz) is then the whole count.
        deployments={
            "Ingress": {"autoscaling_config": {**one, "target_ongoing_requests": 16}},
            "Compose": {"autoscaling_config": {**one, "target_ongoing_requests": 2}},
        },
        metrics_port=port,
    )
    try:
        # Tiles warm, stages measured. A first render on a loaded machine may miss even the
        # longest deadline (a 503 that says to retry): retry, as a caller would, for a while.
        ok, statuses, until = 0, [], time.monotonic() + 120
        while ok < 3 and time.monotonic() < until:
            r = app.client.post("/v1/preview", json=FIELD, headers={"Request-Timeout": "10"})
            statuses.append(r.status_code)
            ok += r.status_code == 200
        assert ok == 3, statuses
        yield app, port
    finally:
        app.close()
        upstream.stop()


def _assert_shed(r: httpx.Response, reason: str | None = None) -> dict:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["error"] in ("overloaded", "deadline exceeded"), body
    detail = body["detail"]
    assert {"stage", "reason", "estimate_s", "remaining_s", "retry_after_s"} <= set(detail)
    if reason is not None:
        assert detail["reason"] == reason, detail
    return detail


def test_a_request_past_its_deadline_is_not_computed(served):
    app, _ = served
    before = app.compose_renders()
    past = f"{time.time() - 1.0:.3f}"
    r = app.client.post("/v1/preview", json=FIELD, headers={"X-Request-Deadline": past})
    detail = _assert_shed(r, "deadline_passed")
    # Refused on arrival, from its headers: the body is not even read.
    assert detail["stage"] == "arrival", detail
    assert r.headers["server-timing"].startswith("decided;dur="), r.headers
    r = app.client.post("/v1/preview", json=FIELD, headers={"Request-Timeout": "0"})
    _assert_shed(r, "deadline_passed")
    r = app.client.post("/v1/preview", content=b"{not json", headers={"Request-Timeout": "0"})
    _assert_shed(r, "deadline_passed")
    assert app.compose_renders() == before
    # With time to spare the same request is rendered, and a bad body is a 422 again.
    assert app.client.post("/v1/preview", json=FIELD).status_code == 200
    assert app.client.post("/v1/preview", content=b"{not json").status_code == 422


def test_a_deadline_too_short_for_compose_is_dropped_before_computing(served):
    """Compose busy with big renders: another one whose deadline its measured time cannot meet
    is dropped (503), not computed; with time to spare it is rendered."""
    app, _ = served
    r = app.client.post("/v1/preview", json=BIG, headers={"Request-Timeout": "10"})
    assert r.status_code == 200, r.text  # compose has measured a big one
    before = app.compose_renders()
    with concurrent.futures.ThreadPoolExecutor(8) as pool, httpx.Client(base_url=app.url, timeout=60) as http:
        long = {"Request-Timeout": "10"}
        busy = [pool.submit(http.post, "/v1/preview", json=BIG, headers=long) for _ in range(8)]
        time.sleep(0.3)  # they are being fetched and composed
        r = http.post("/v1/preview", json=BIG, headers={"Request-Timeout": "0.3"})
        done = [f.result().status_code for f in busy]
    detail = _assert_shed(r)
    # Refused at the ingress, dropped by a stage, or given up by the ingress while it still
    # waited in Compose's queue (which then drops it on arrival): never computed.
    assert detail["stage"] in ("arrival", "ingress", "fetch", "compose", "chain"), detail
    assert app.compose_renders() == before + done.count(200)  # not the short one
    # The same request with time to spare is rendered.
    assert app.client.post("/v1/preview", json=BIG, headers={"Request-Timeout": "8"}).status_code == 200
    assert app.compose_renders() == before + done.count(200) + 1


def test_bad_deadline_headers_are_400(served):
    app, _ = served
    for headers in ({"Request-Timeout": "soon"}, {"Request-Timeout": "-2"}, {"X-Request-Deadline": "later"}):
        r = app.client.post("/v1/preview", json=FIELD, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid deadline", r.text


def test_under_load_refusals_are_fast_503s_with_retry_after_and_health_answers(served):
    """Big renders fill the stages; short-deadline requests are refused at once; health answers."""
    app, _ = served
    stop = time.monotonic() + 8.0
    health: list[tuple[str, int, float]] = []

    def load(_):
        out = []
        with httpx.Client(base_url=app.url, timeout=60) as http:
            while time.monotonic() < stop:
                out.append(http.post("/v1/preview", json=BIG).status_code)
        return out

    def probe():
        with httpx.Client(base_url=app.url, timeout=60) as http:
            while time.monotonic() < stop:
                for path in ("/healthz", "/readyz"):
                    t0 = time.perf_counter()
                    status = http.get(path).status_code
                    health.append((path, status, time.perf_counter() - t0))
                time.sleep(0.3)

    refusals: list[tuple[httpx.Response, float]] = []
    with concurrent.futures.ThreadPoolExecutor(13) as pool:
        loads = [pool.submit(load, i) for i in range(12)]
        probing = pool.submit(probe)
        time.sleep(2.0)  # the work piles up behind Compose
        with httpx.Client(base_url=app.url, timeout=60) as http:
            while time.monotonic() < stop - 1.0:
                t0 = time.perf_counter()
                r = http.post("/v1/preview", json=FIELD, headers={"Request-Timeout": "0.5"})
                refusals.append((r, time.perf_counter() - t0))
                time.sleep(0.2)
        statuses = [s for f in loads for s in f.result()]
        probing.result()
    shed = [(r, t) for r, t in refusals if r.status_code == 503]
    assert shed, f"no refusal among {[r.status_code for r, _ in refusals]}"
    for r, elapsed in shed:
        _assert_shed(r)
        assert elapsed < 2.0, f"a refusal took {elapsed:.2f} s"  # generous: the bench measures ms
    # The load itself: answered or refused, never a 5xx other than 503, never a 504 from queueing.
    assert set(statuses) <= {200, 503}, statuses
    # Health answered all along (the bench measures how fast); /readyz where this version has it.
    served_paths = {p for p, s, _ in health if s != 404}
    assert "/healthz" in served_paths
    for path, status, elapsed in health:
        if path in served_paths:
            assert status == 200 and elapsed < 3.0, (path, status, elapsed)


def _has(samples, labels: dict[str, str]) -> bool:
    return any(s.value > 0 and all(s.labels.get(k) == v for k, v in labels.items()) for s in samples)


def test_shed_requests_queue_waits_and_misses_are_in_the_metrics(served):
    app, port = served
    past = f"{time.time() - 1.0:.3f}"
    assert app.client.post("/v1/preview", json=FIELD, headers={"X-Request-Deadline": past}).status_code == 503
    shed = {"endpoint": "/v1/preview", "reason": "deadline_passed", "stage": "arrival"}
    wanted = {
        "ray_skyrender_shed_total": shed,
        "ray_skyrender_deadline_misses_total": {"stage": "arrival"},
        "ray_skyrender_queue_wait_seconds_count": {"stage": "compose"},
    }
    # Renders took their turn in the ingress (deployments/turns.py): a wait of its own, measured.
    wanted_waits = {"stage": "ingress"}
    deadline = time.monotonic() + 60
    while True:
        series = scrape_metrics(port)
        unmet = [name for name, labels in wanted.items() if not _has(series.get(name, []), labels)]
        if not _has(series.get("ray_skyrender_queue_wait_seconds_count", []), wanted_waits):
            unmet.append("ray_skyrender_queue_wait_seconds_count{stage=ingress}")
        if not unmet or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not unmet, f"{unmet}; have {sorted(k for k in series if 'skyrender' in k)}"


def test_probes_are_answered_by_the_health_applications(served):
    """/healthz and /readyz come from their own applications (HealthEndpoint: the ingress's latest
    answer, with its Age), with the ingress's methods; no-cache asks the ingress now."""
    app = served[0]
    for path in ("/healthz", "/readyz"):
        r = app.client.get(path)
        assert r.status_code == 200, r.text
        assert int(r.headers["age"]) <= 10 and r.headers["server-timing"].startswith("app;dur=")
        assert app.client.get(path, headers={"Cache-Control": "no-cache"}).headers["age"] == "0"
        head = app.client.head(path)
        assert head.status_code == 200 and head.content == b""
        options = app.client.options(path)
        assert options.status_code == 204 and options.headers["allow"] == "GET, HEAD, OPTIONS"
        wrong = app.client.post(path)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD, OPTIONS"
        assert app.client.get(f"{path}/more").status_code == 404
    # /livez stays the ingress's own (liveness of its event loop): no Age.
    assert "age" not in app.client.get("/livez").headers


def test_a_probe_answer_is_as_old_as_its_arrival_not_its_ask():
    """An answer the ingress gave late (a replica still starting, a busy event loop) is fresh
    when it arrives: its age starts then, or a probe right after would call it stale (503)."""
    import asyncio

    from deployments.health_endpoint import HealthEndpoint

    class SlowIngress:  # the handle's health_answer, answering after `delay_s`
        def __init__(self, delay_s: float):
            self.delay_s = delay_s
            self.health_answer = self

        def remote(self, path: str, live: bool):
            async def answer():
                await asyncio.sleep(self.delay_s)
                return 200, b"{}", {}

            return answer()

    async def scenario() -> float:
        endpoint = object.__new__(HealthEndpoint.func_or_class)
        endpoint.path, endpoint.period_s, endpoint.max_age_s, endpoint.timeout_s = "/healthz", 10.0, 0.5, 5.0
        endpoint.ingress = SlowIngress(0.6)  # longer than max_age_s
        endpoint._latest, endpoint._error = None, "no answer from the ingress yet"
        refresher = asyncio.get_running_loop().create_task(endpoint._refresh())
        try:
            while endpoint._latest is None:
                await asyncio.sleep(0.01)
            return time.monotonic() - endpoint._latest[0]
        finally:
            refresher.cancel()

    assert asyncio.run(scenario()) < 0.1


def test_a_probe_ask_that_outlasts_its_timeout_does_not_hold_the_next():
    """The first ask can wait for the ingress replica to start, and such a call may take long to
    end once cancelled: the next ask goes out at once and its answer is kept when it comes."""
    import asyncio

    from deployments.health_endpoint import HealthEndpoint

    class StartingIngress:  # the first call ends 3 s after it is made, cancelled or not
        def __init__(self):
            self.calls = 0
            self.health_answer = self

        def remote(self, path: str, live: bool):
            self.calls += 1
            first = self.calls == 1

            async def answer():
                if first:
                    end = time.monotonic() + 3.0
                    while time.monotonic() < end:
                        try:
                            await asyncio.sleep(end - time.monotonic())
                        except asyncio.CancelledError:
                            continue  # a call that ends in its own time
                return 200, b"{}", {}

            return answer()

    async def scenario() -> float:
        endpoint = object.__new__(HealthEndpoint.func_or_class)
        endpoint.path, endpoint.period_s, endpoint.max_age_s, endpoint.timeout_s = "/healthz", 0.1, 10.0, 0.5
        endpoint.ingress = StartingIngress()
        endpoint._latest, endpoint._error = None, "no answer from the ingress yet"
        start = time.monotonic()
        refresher = asyncio.get_running_loop().create_task(endpoint._refresh())
        try:
            while endpoint._latest is None:
                await asyncio.sleep(0.01)
            return time.monotonic() - start
        finally:
            refresher.cancel()

    assert asyncio.run(scenario()) < 1.5  # the timeout, one period and the second answer
