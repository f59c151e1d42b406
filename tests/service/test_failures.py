"""The failure table, each case against a real loopback upstream that misbehaves on purpose."""

from __future__ import annotations

import concurrent.futures
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from .loopback import StaticHips
from .misbehaving import MisbehavingHips
from .serve_harness import ServeApp

SURVEY = "cds-dss2-red"
FIELD = {"ra": 266.4, "dec": -28.9, "fovDeg": 3.0, "width": 128, "height": 96}
DEADLINE_S = 3.0


@pytest.fixture(scope="module")
def bad(hips_dir):
    server = MisbehavingHips(hips_dir, delay_s=DEADLINE_S + 5.0, flaky_failures=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def refusing(hips_dir):
    server = StaticHips(hips_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(bad, refusing):
    modes = ["ok", "slow", "err", "flaky", "corrupt", "truncated", "bomb", "redirect", "mixed"]
    surveys = [{"name": mode, "url": f"{bad.url}/{mode}/{SURVEY}"} for mode in modes]
    surveys.append({"name": "refusing", "url": f"{refusing.url}/{SURVEY}"})
    args = {
        "surveys": surveys,
        "build_sample_survey": False,
        "upstream": {
            "request_deadline_s": DEADLINE_S,
            "read_timeout_s": 2.0,
            "retries": 2,
            "backoff_s": 0.05,
        },
        "limits": {"max_tile_pixels": 2048 * 2048},
    }
    one_ingress = {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 4}
    deployments = {
        "Ingress": {"max_ongoing_requests": 8, "max_queued_requests": 4, "autoscaling_config": one_ingress},
        # Two compose replicas, as a deployment that must survive losing one needs:
        # with a single replica every request waits for its replacement to start.
        "Compose": {
            "autoscaling_config": {"min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 2}
        },
    }
    served = ServeApp(args, deployments=deployments)
    # Load every survey's properties while all upstreams are up.
    for s in surveys:
        served.client.post("/v1/tile-manifest", json={**FIELD, "survey": s["name"]})
    yield served
    served.close()


def _poll(condition, timeout_s: float, every_s: float = 0.2):
    """Wait until ``condition()`` is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every_s)


def _preview(app, survey, **kw):
    return app.client.post("/v1/preview", json={**FIELD, "survey": survey, **kw})


def test_healthy_baseline(app):
    assert _preview(app, "ok").status_code == 200


def test_refused_connections_are_503_fast_and_health_says_so(app, refusing):
    refusing.stop()
    t0 = time.perf_counter()
    r = _preview(app, "refusing")
    elapsed = time.perf_counter() - t0
    assert r.status_code == 503 and r.json()["error"] == "upstream unavailable", r.text
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    _poll(lambda: app.client.get("/healthz").status_code == 503, timeout_s=15)
    health = app.client.get("/healthz")
    assert health.status_code == 503 and "refusing" in health.json()["detail"]
    refusing.start()  # what this test broke, restored (same port)
    _poll(lambda: _preview(app, "refusing").status_code == 200, timeout_s=30)


def test_slow_upstream_is_504_before_the_deadline_plus_margin(app):
    t0 = time.perf_counter()
    r = _preview(app, "slow")
    elapsed = time.perf_counter() - t0
    assert r.status_code == 504, r.text
    assert elapsed < DEADLINE_S + 2.0, f"took {elapsed:.2f} s"


def test_5xx_is_retried_then_502(app, bad):
    before = bad.requests_for("/err/")
    r = _preview(app, "err")
    assert r.status_code == 502 and r.json()["error"] == "upstream error"
    tiles = len(app.client.post("/v1/tile-manifest", json={**FIELD, "survey": "err"}).json()["tiles"])
    assert bad.requests_for("/err/") - before >= 3 * tiles  # 1 try + 2 retries per tile


def test_flaky_upstream_recovers_through_retries(app):
    assert _preview(app, "flaky").status_code == 200


def test_missing_tile_is_uncovered_and_the_request_succeeds(app, bad):
    existing = f"{bad.url}/ok/{SURVEY}/Norder3/Dir0/Npix304.fits"
    missing = f"{bad.url}/ok/{SURVEY}/Norder3/Dir0/Npix305.fits"  # not in the test data
    r = app.client.post("/render/snapshot", json={"tiles": [existing, missing], "width": 128, "height": 128})
    assert r.status_code == 200, r.text
    rgba = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
    alpha = rgba[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()


@pytest.mark.parametrize("survey", ["corrupt", "truncated", "bomb"])
def test_broken_tiles_are_skipped_and_all_broken_is_502(app, survey):
    t0 = time.perf_counter()
    r = _preview(app, survey)
    assert r.status_code == 502 and r.json()["error"] == "no usable tiles", r.text
    assert time.perf_counter() - t0 < 5.0  # the bomb was refused, not allocated


def test_some_broken_tiles_still_render(app, bad):
    # Npix448 is served as is, its neighbour Npix449 as garbage: a good and a broken tile of one survey.
    good = f"{bad.url}/mixed/{SURVEY}/Norder3/Dir0/Npix448.fits"
    broken = f"{bad.url}/mixed/{SURVEY}/Norder3/Dir0/Npix449.fits"
    r = app.client.post("/render/snapshot", json={"tiles": [good, broken], "width": 128, "height": 128})
    assert r.status_code == 200, r.text
    assert r.headers["x-tiles-used"] == "1"  # the good one; the broken one is skipped, not drawn
    alpha = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3]
    assert (alpha == 255).mean() > 0.1 and (alpha == 0).mean() > 0.1  # drawn, and a hole where it broke
    alone = app.client.post("/render/snapshot", json={"tiles": [broken], "width": 64, "height": 64})
    assert alone.status_code == 502 and alone.json()["error"] == "no usable tiles"
    # Tiles of two surveys in one list are refused.
    other = f"{bad.url}/ok/{SURVEY}/Norder3/Dir0/Npix304.fits"
    assert app.client.post("/render/snapshot", json={"tiles": [good, other]}).status_code == 400


def test_redirect_off_root_is_refused(app):
    r = _preview(app, "redirect")
    assert r.status_code == 403, r.text


def test_overload_past_the_queue_is_a_fast_503(app):
    """More slow requests than max_ongoing + max_queued: the excess is refused at once."""
    statuses, durations = [], []

    def one(_):
        t0 = time.perf_counter()
        status = _preview(app, "slow").status_code
        return status, time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        for status, elapsed in pool.map(one, range(32)):
            statuses.append(status)
            durations.append(elapsed)
    rejected = [d for s, d in zip(statuses, durations, strict=True) if s == 503]
    assert rejected, f"no 503 among {statuses}"
    assert max(rejected) < 2.0
    assert all(s in (503, 504) for s in statuses)
    _poll(lambda: _preview(app, "ok").status_code == 200, timeout_s=30)  # the slow ones drained


def _replica_actor(deployment: str):
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    assert names, f"no replica of {deployment}"
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])


def _wait_for_running_replicas(deployment: str, n: int, timeout_s: float) -> tuple[float, float]:
    """Seconds until Serve reports fewer than ``n`` RUNNING replicas of ``deployment``
    (the death noticed), and until it reports ``n`` again (replaced)."""
    from ray import serve

    t0 = time.monotonic()
    seen_dip = False
    noticed = float("inf")
    while time.monotonic() - t0 < timeout_s:
        for app_status in serve.status().applications.values():
            dep = app_status.deployments.get(deployment)
            if dep is None:
                continue
            running = dep.replica_states.get("RUNNING", 0)
            if not seen_dip and running < n:
                seen_dip, noticed = True, time.monotonic() - t0
            if seen_dip and running >= n:
                return noticed, time.monotonic() - t0
        time.sleep(0.2)
    return noticed, float("inf")


def test_killed_replica_is_replaced_under_load(app):
    import ray

    results: list[tuple[float, int]] = []
    stop = threading.Event()
    rng = np.random.default_rng(3)
    centres = rng.uniform(-1, 1, size=(10_000, 2))

    def worker(offset):
        i = offset
        while not stop.is_set():
            ra, dec = 266.4 + centres[i % 10_000, 0], -28.9 + centres[i % 10_000, 1]
            t = time.monotonic()
            try:
                status = _preview(app, "ok", ra=ra, dec=dec).status_code
            except Exception:
                status = 0
            results.append((t, status))
            i += 4

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    _poll(lambda: sum(1 for _, s in results if s == 200) >= 8, timeout_s=60)  # under load
    killed_at = time.monotonic()
    ray.kill(_replica_actor("Compose"), no_restart=True)
    noticed_after, replaced_after = _wait_for_running_replicas("Compose", 2, timeout_s=27)
    # Requests in flight on the killed replica fail with the actor's death and the ingress
    # sends them once more, to the surviving replica. Keep the load on until the service has
    # answered well after the kill (past 5 s and 20 more renders).
    _poll(lambda: sum(1 for t, s in results if t > killed_at + 5 and s == 200) >= 20, timeout_s=60)
    stop.set()
    for t in threads:
        t.join()
    ok = sum(1 for _, s in results if s == 200)
    assert len(results) > 50
    failed = [(round(t - killed_at, 2), s) for t, s in results if s != 200]
    print(
        f"replica kill: {ok}/{len(results)} ok; death noticed after {noticed_after:.1f} s, "
        f"replaced after {replaced_after:.1f} s; failures: {failed}"
    )
    # Start-up of a compose replica (imports, wgpu adapter probe) is ~5 s idle, ~10 s with
    # the 4 clients loading both cores; the service itself never stopped answering.
    assert replaced_after < 20.0
    assert ok / len(results) >= 0.99, f"{ok}/{len(results)} ok; failures (s after kill, status): {failed}"
    # A request caught by the death is sent once more; what still fails says so (503), never a 500.
    assert all(status in (0, 503) for _, status in failed), failed
    after = [t for t, s in results if t > killed_at and s == 200]
    assert after and after[-1] - killed_at > 5  # still serving well after the kill
    failures_after = [t - killed_at for t, s in results if t > killed_at and s != 200]
    assert not failures_after or max(failures_after) < 10.0


def test_killed_cache_actor_degrades_to_fetching(app):
    import ray

    ray.kill(ray.get_actor("skyrender-tile-cache", namespace="skyrender"), no_restart=True)
    for k in range(3):
        assert _preview(app, "ok", ra=266.0 + 0.3 * k).status_code == 200

    def cache_back() -> bool:  # the fetch stage starts a new cache actor: what this test broke is back
        _preview(app, "ok")
        try:
            ray.get_actor("skyrender-tile-cache", namespace="skyrender")
        except ValueError:
            return False
        return True

    _poll(cache_back, timeout_s=30, every_s=1.0)


def test_a_dead_stage_behind_serve_wrappers_counts_as_a_replica_death():
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import RayServeException

    from deployments.errors import api_error_of, is_replica_death

    try:
        try:
            raise ActorDiedError()
        except ActorDiedError as died:
            raise RayServeException("an upstream actor died before finishing a dependent task") from died
    except RayServeException as wrapped:
        assert is_replica_death(wrapped)
        assert api_error_of(wrapped).status == 503
    assert not is_replica_death(RayServeException("queue full"))
