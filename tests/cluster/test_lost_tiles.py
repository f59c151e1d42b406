"""Work lost between the stages: tiles lost between fetch and compose (their owner or node died)
are a retry, then a 503, never a picture with holes (the end-to-end case is test_multinode's node
loss); tile leases taken by a request that is then cancelled are handed back, so no other request
waits out the lease. One local Ray (no Serve) for the module."""

from __future__ import annotations

import asyncio
import functools
import pickle
import shutil
import tempfile
import threading
import time
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import ray
from ray.exceptions import RayTaskError

from deployments.config import AppConfig
from deployments.contracts import TileOutcome, TileRequest, TilesLost
from deployments.errors import api_error_of, is_replica_death


@pytest.fixture(scope="module")
def local_ray():
    temp_dir = tempfile.mkdtemp(prefix="skr-lt-", dir="/tmp")  # short: Ray's socket paths
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _as_from_a_replica(exc: BaseException) -> BaseException:
    """``exc`` as the ingress sees it: pickled across processes inside Ray's task error."""
    try:
        raise exc
    except BaseException as raised:
        wrapped = RayTaskError("Compose.render", "traceback", raised)
    return pickle.loads(pickle.dumps(wrapped))


def test_lost_tiles_are_worth_one_retry_and_then_a_503():
    wrapped = _as_from_a_replica(TilesLost("3 tiles lost from the object store (OwnerDiedError)"))
    assert is_replica_death(wrapped)
    error = api_error_of(wrapped)
    assert error.status == 503 and error.error == "service unavailable"
    assert "tiles lost" in str(error.detail)


def test_other_failures_are_not_mistaken_for_lost_tiles():
    assert not is_replica_death(_as_from_a_replica(ValueError("bad spec")))


def test_compose_raises_when_a_tile_reference_cannot_be_read(local_ray):
    """A real reference whose value is gone with the actor that was to produce it (as tiles are
    gone with the node that held them): compose raises TilesLost instead of drawing around it."""
    from deployments.compose_stage import Compose

    @ray.remote(num_cpus=0)
    class Owner:
        def put(self):
            # a 1 MiB tile: held in the object store (small objects would travel inline)
            return ray.put(np.full((512, 512), 1, dtype=np.float32))

    owner = Owner.remote()
    alive = ray.get(owner.put.remote())
    config = AppConfig(render={"backend": "numpy"}, upstream={"request_deadline_s": 5.0})
    compose = Compose.func_or_class(config.model_dump())
    assert compose._resolve({7: alive})[7][0, 0] == 1  # readable while its owner lives
    ray.kill(owner, no_restart=True)
    lost = owner.put.remote()  # the actor is gone: this value will never exist
    with pytest.raises(TilesLost, match="1 tiles lost"):
        compose._resolve({8: lost, 9: np.zeros((4, 4), dtype=np.float32)})


class _GatedHips:
    """A loopback HiPS upstream whose tile requests wait until `gate` is set (a stalled upstream)."""

    def __init__(self, root):
        self.gate = threading.Event()
        self.tile_requests = 0
        lock = threading.Lock()
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                if "/Npix" in self.path:
                    with lock:
                        outer.tile_requests += 1
                    outer.gate.wait(60)
                super().do_GET()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture()
def gated(hips_dir):
    server = _GatedHips(hips_dir)
    yield server
    server.stop()


NPIX = (304, 335, 336)  # tiles of cds-dss2-red at order 3


async def _fetch_stage(upstream: str):
    """A real fetch stage (outside Serve), its tile requests, and its own real tile-cache actor."""
    from deployments.fetch_stage import TileFetch

    survey = f"{upstream}/cds-dss2-red"
    config = AppConfig(
        surveys=[{"name": "dss2", "url": survey}],
        cache={"name": f"leases-{uuid.uuid4().hex[:8]}", "max_bytes": 64 << 20, "disk_enabled": False},
    )
    stage = TileFetch.func_or_class(config.model_dump())
    requests = [
        TileRequest(n, f"dss2/3/{n}.fits", f"{survey}/Norder3/Dir0/Npix{n}.fits", "fits") for n in NPIX
    ]
    assert await stage.ready()  # starts the cache actor, as Serve does before the first request
    return stage, requests, ray.get_actor(config.cache.name, namespace="skyrender")


async def _until(probe, timeout_s: float = 10.0, every_s: float = 0.05):
    """Poll ``probe`` (async, returns (done, value)) until done or ``timeout_s``; the last value."""
    until = time.monotonic() + timeout_s
    while True:
        done, value = await probe()
        if done or time.monotonic() > until:
            return value
        await asyncio.sleep(every_s)


async def _never() -> np.ndarray:
    raise AssertionError("the fetch of a cancelled request began")


@pytest.mark.parametrize("tiles", [3, 1])
def test_a_request_cancelled_while_taking_its_leases_hands_them_back(local_ray, gated, tiles):
    """The cancel lands while the actor call taking the tiles' leases is in flight: the actor
    grants them all the same; they are handed back, so another request for those tiles fetches
    them at once instead of waiting out the lease (30 s)."""

    async def scenario():
        stage, requests, actor = await _fetch_stage(gated.url)
        requests = requests[:tiles]
        if tiles > 1:  # every tile's lease in one call (lease_many), then the fetches
            leasing = asyncio.ensure_future(stage._gather(requests))
        else:  # a lone tile's lease is taken by the call that fetches it
            leasing = asyncio.ensure_future(stage.cache.get_or_fetch(requests[0].key, _never))
        await asyncio.sleep(0)  # it has asked the actor for the leases and awaits the answer
        leasing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leasing

        async def stats():
            s = await actor.stats.remote()
            return s["misses"] == tiles and s["in_flight"] == 0, s

        after = await _until(stats)
        assert after["misses"] == tiles, after  # the actor did grant the leases...
        assert after["in_flight"] == 0, f"leases of a cancelled request still held: {after}"  # ...handed back
        assert after["failed"] == tiles, after
        assert gated.tile_requests == 0  # cancelled before any fetch began
        assert await actor.lease.remote(requests[0].key) == ("fetch", None)  # not "wait"

    asyncio.run(scenario())


def test_a_request_that_completes_hands_no_lease_back(local_ray, gated):
    """The request keeps its leases while it fetches (others wait on it), then publishes the tiles."""

    async def scenario():
        stage, requests, actor = await _fetch_stage(gated.url)
        gathering = asyncio.ensure_future(stage._gather(requests))

        async def fetching():
            return gated.tile_requests == len(NPIX), gated.tile_requests

        assert await _until(fetching) == len(NPIX)  # every fetch began and waits on the upstream
        held = await actor.stats.remote()
        assert held["in_flight"] == len(NPIX) and held["failed"] == 0, held
        assert await actor.lease.remote(requests[0].key) == ("wait", None)  # still ours
        gated.gate.set()
        results = await gathering
        assert [outcome for _, outcome in results] == [TileOutcome.FETCHED] * len(NPIX), results
        done = await actor.stats.remote()
        assert done["in_flight"] == 0 and done["puts"] == len(NPIX) and done["failed"] == 0, done
        assert (await actor.lease.remote(requests[1].key))[0] == "hit"

    asyncio.run(scenario())


@ray.remote(num_cpus=0)
class _Leaseholder:
    """A replica's stand-in: an async actor whose request holds a tile's lease while it fetches."""

    def __init__(self, cache_name: str):
        from deployments.tile_cache import CacheClient

        self.client = CacheClient(cache_name, max_bytes=64 << 20)

    async def ready(self) -> bool:
        return (await self.client.stats()).get("available", True)

    async def fetch(self, key: str) -> str:
        async def stalled() -> np.ndarray:
            await asyncio.sleep(60)  # a slow upstream
            raise AssertionError("not cancelled")

        _, how = await self.client.get_or_fetch(key, stalled)
        return how

    async def client_state(self) -> tuple[bool, float]:
        return self.client._actor is not None, self.client._down_until


def test_a_request_cancelled_by_ray_hands_its_lease_back_and_keeps_the_cache(local_ray):
    """Serve cancels a request whose caller gave up with Ray's recursive cancel, which also
    cancels the actor calls the request makes. The leaseholder's `fail` must still reach the
    cache actor (else every request for the tile waits out the lease: a 504), and the client
    must not take the cancelled call for an unreachable actor (and drop the cache)."""
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    holder = _Leaseholder.remote(name)
    assert ray.get(holder.ready.remote())
    actor = ray.get_actor(name, namespace="skyrender")
    fetching = holder.fetch.remote("t/1")
    deadline = time.monotonic() + 10
    while ray.get(actor.stats.remote())["in_flight"] != 1:  # the request holds the lease
        assert time.monotonic() < deadline, "the lease was never taken"
        time.sleep(0.05)
    ray.cancel(fetching, recursive=True)
    with pytest.raises((ray.exceptions.TaskCancelledError, RayTaskError)):
        ray.get(fetching, timeout=30)
    deadline = time.monotonic() + 10
    while (stats := ray.get(actor.stats.remote()))["in_flight"] != 0:
        assert time.monotonic() < deadline, f"lease of a cancelled request still held: {stats}"
        time.sleep(0.05)
    assert stats["failed"] == 1, stats
    assert ray.get(actor.lease.remote("t/1")) == ("fetch", None)  # not "wait"
    held, down_until = ray.get(holder.client_state.remote())
    assert held and down_until == 0.0, "the client dropped a cache actor that answers"
    ray.kill(holder)


def test_a_waiting_request_cancelled_by_ray_keeps_the_cache(local_ray):
    """The cancel lands while the request waits in the cache actor for another leaseholder's
    tile: the client must not take the cancelled wait for an unreachable actor."""
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    holder = _Leaseholder.remote(name)
    assert ray.get(holder.ready.remote())
    actor = ray.get_actor(name, namespace="skyrender")
    assert ray.get(actor.lease.remote("t/2")) == ("fetch", None)  # another request leads the fetch
    waiting = holder.fetch.remote("t/2")
    deadline = time.monotonic() + 10
    while ray.get(actor.stats.remote())["coalesced"] != 1:  # it waits on the leaseholder
        assert time.monotonic() < deadline, "the request never waited"
        time.sleep(0.05)
    time.sleep(0.2)  # its wait call is in the actor
    ray.cancel(waiting, recursive=True)
    with pytest.raises((ray.exceptions.TaskCancelledError, RayTaskError)):
        ray.get(waiting, timeout=60)
    held, down_until = ray.get(holder.client_state.remote())
    assert held and down_until == 0.0, "the client dropped a cache actor that answers"
    ray.kill(holder)


@ray.remote(num_cpus=0)
class _SilentCache:
    """A cache actor that takes calls and never answers them (its node lost, or restarting)."""

    def resize(self, max_bytes: int) -> None:
        pass

    async def lease_many(self, keys: list[str]):
        await asyncio.sleep(600)


def test_a_cache_actor_that_does_not_answer_costs_half_the_time_left_not_the_render(local_ray, gated):
    """Its calls are bounded by half the request's time left (not the upstream's 7 s, longer than
    the render's deadline): the tiles are then fetched directly, within the deadline."""
    from deployments.deadline import Budget, Deadline

    gated.gate.set()  # the upstream answers at once

    async def scenario():
        from deployments.fetch_stage import TileFetch

        name = f"silent-{uuid.uuid4().hex[:8]}"
        silent = _SilentCache.options(name=name, namespace="skyrender").remote()
        survey = f"{gated.url}/cds-dss2-red"
        config = AppConfig(
            surveys=[{"name": "dss2", "url": survey}],
            cache={"name": name, "max_bytes": 64 << 20, "disk_enabled": False},
        )
        stage = TileFetch.func_or_class(config.model_dump())
        assert stage.cache.call_timeout_s == 7.0  # connect + read: more than the deadline below
        requests = [
            TileRequest(n, f"dss2/3/{n}.fits", f"{survey}/Norder3/Dir0/Npix{n}.fits", "fits") for n in NPIX
        ]
        now = time.time()
        start = time.monotonic()
        fetched = await stage.get_tiles(requests, Budget(Deadline(now, now + 3.0), 0.3, now))
        took = time.monotonic() - start
        ray.kill(silent)
        return fetched, took

    fetched, took = asyncio.run(scenario())
    assert sorted(fetched.tiles) == sorted(NPIX) and fetched.outcomes == {TileOutcome.NOCACHE: len(NPIX)}
    assert 1.3 < took < 2.8, took  # the lease call's 1.5 s, then the tiles from upstream


@ray.remote(num_cpus=0)
class _SlowCache:
    """A cache actor that grants "fetch" leases after 2.5 s, and records the leases handed back."""

    def __init__(self):
        self.handed_back: list[str] = []

    def resize(self, max_bytes: int) -> None:
        pass

    async def lease_many(self, keys: list[str]):
        await asyncio.sleep(2.5)
        return [("fetch", None)] * len(keys)

    async def fail(self, key: str, reason: str) -> None:
        self.handed_back.append(key)

    def returned(self) -> list[str]:
        return sorted(self.handed_back)


def test_leases_granted_after_the_request_stopped_waiting_are_handed_back(local_ray):
    """The lease call timed out (1.1 s here) and the client dropped the actor: the leases it
    grants later still go back to it, or every other request for those tiles would wait
    them out (30 s)."""
    from deployments.deadline import Deadline
    from deployments.tile_cache import CacheClient

    name = f"slow-{uuid.uuid4().hex[:8]}"
    slow = _SlowCache.options(name=name, namespace="skyrender").remote()
    keys = ["t/1", "t/2"]

    async def scenario():
        client = CacheClient(name, max_bytes=1 << 20)
        now = time.time()
        assert await client.lease_many(keys, Deadline(now, now + 2.2)) is None  # fetch directly
        assert client._actor is None  # a second without an answer: taken for gone for a while
        until = time.monotonic() + 10
        while (returned := await slow.returned.remote()) != keys and time.monotonic() < until:
            await asyncio.sleep(0.1)
        return returned

    assert asyncio.run(scenario()) == keys
    ray.kill(slow)


def test_the_ingress_reuses_a_lookup_for_recent_s_and_forgets_it_after_lost_tiles(local_ray):
    """`CacheReader` keeps the references a lookup gave for ``recent_s`` (at most
    ``recent_entries``): `kept` gives them without asking the cache actor (its hit count
    stays) while all of a render's tiles were looked up that recently; a tile not looked up,
    `forget` (a render found tiles lost) or the time running out makes the render ask again."""
    from deployments.tile_cache import CacheReader, TileCache

    name = f"recent-{uuid.uuid4().hex[:8]}"
    actor = TileCache.options(name=name, namespace="skyrender").remote(64 * 2**20)
    keys = [f"s/3/{n}.fits" for n in range(4)]
    for n, key in enumerate(keys):
        ray.get(actor.put.remote(key, np.full((512, 512), n, dtype=np.float32)))

    def hits() -> int:
        return ray.get(actor.stats.remote())["hits"]

    async def scenario() -> None:
        reader = CacheReader(name, recent_s=30.0, recent_entries=8)
        assert reader.kept(keys[:3]) is None  # nothing looked up yet
        first = await reader.held(keys[:3])
        assert first is not None and hits() == 3
        assert reader.kept(keys[:3]) == first and hits() == 3  # reused: no actor call
        assert reader.reused == 3
        assert reader.kept(keys) is None  # keys[3] was never looked up: ask
        wider = await reader.held(keys)
        assert wider is not None and hits() == 7
        assert [float(ray.get(ref)[0, 0]) for ref in reader.kept(keys)] == [0.0, 1.0, 2.0, 3.0]
        reader.forget()
        assert reader.kept(keys[:2]) is None
        assert await reader.held(keys[:2]) is not None and hits() == 9
        assert await reader.held(["s/3/99.fits"]) is None  # not held: the fetch stage's, nothing kept
        assert reader.kept(["s/3/99.fits"]) is None
        short = CacheReader(name, recent_s=0.2)
        await short.held(keys[:1])
        assert short.kept(keys[:1]) is not None
        await asyncio.sleep(0.3)
        assert short.kept(keys[:1]) is None  # expired: the next render asks again
        assert not short._recent  # and the expired references were let go
        every = CacheReader(name, recent_s=0.0)  # 0: every render asks
        await every.held(keys[:1])
        assert every.kept(keys[:1]) is None
        few = CacheReader(name, recent_s=30.0, recent_entries=2)
        await few.held(keys)
        assert few.kept(keys[2:]) is not None and few.kept(keys[:1]) is None  # the latest two

    asyncio.run(scenario())
    ray.kill(actor)
