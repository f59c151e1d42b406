"""The fetch stage: tiles from the shared object-store cache, the disk tier or upstream, decoded.

A thin Ray Serve deployment over `deployments.upstream` (the root policy, retries,
timeouts), `deployments.disk_cache` and `deployments.tile_cache`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import numpy as np
from ray import serve

from skyrender.decode import decode_tile
from skyrender.errors import TileDecodeError

from .config import AppConfig
from .contracts import FetchedTiles, TileOutcome, TileRequest
from .deadline import Budget, Deadline, Shed
from .shedding import StageGuard
from .telemetry import metrics, observe_stage, observe_tile

__all__ = ["TileFetch"]

#: A fetch given at least this long before the deadline and still waiting then was waiting on
#: an upstream (a 504); one given less was starved by our own queues (a 503) [s].
_UPSTREAM_FAIR_S = 0.5
#: A fetch gives up this long before the deadline [s], so that its 504 (a slow upstream) reaches
#: the ingress before the ingress gives up on the render at the deadline (a 503: our own time).
_REPORT_S = 0.3

log = logging.getLogger("ray.serve")

#: The lease of a tile when the cache actor could not be reached: fetch it directly.
_NO_CACHE = ("nocache", None)


@serve.deployment
class TileFetch:
    """Fetches tiles (through the shared object-store cache) and decodes them."""

    def __init__(self, config: dict[str, Any]):
        from .tile_cache import CacheClient
        from .upstream import FetchConfig, RootPolicy, TileFetcher

        self.config = AppConfig.model_validate(config)
        up = self.config.upstream
        self.fetcher = TileFetcher(
            RootPolicy([s.url for s in self.config.surveys]),
            FetchConfig.from_settings(up.model_dump(), max_tile_bytes=self.config.limits.max_tile_bytes),
        )
        self.disk = None
        if self.config.cache.disk_enabled:
            from .disk_cache import DiskTileCache

            try:
                self.disk = DiskTileCache(self.config.cache.disk_dir, self.config.cache.disk_max_bytes)
            except OSError as exc:  # no scratch volume: run without the disk tier
                log.warning("disk cache disabled: %s", exc)
        cache = self.config.cache
        self.cache = (
            CacheClient(
                cache.name,
                max_bytes=cache.max_bytes,
                resources=cache.actor_resources,
                call_timeout_s=up.connect_timeout_s + up.read_timeout_s,
                wait_timeout_s=up.request_deadline_s,
                retry_after_s=up.probe_cache_s,
            )
            if cache.enabled
            else None
        )
        self._gauges_at = 0.0
        self._evictions_seen = 0
        # The fetch stage's time follows the upstream, not the output's size: it checks only
        # that the deadline has not passed, and bounds its work by the time left.
        self.guard = StageGuard("fetch", check_need=False)
        # Decode once now (FITS, PNG, JPEG: the first imports), so no caller pays for it.
        from skyrender.warmup import warm_decode

        log.info("fetch warm in %.2f s", warm_decode())

    async def ready(self) -> bool:
        """Answers once this stage has a running replica; connects the shared cache first."""
        if self.cache is not None:
            await self.cache.stats()  # starts the cache actor if it is not running
        return True

    async def _raw(self, location: str) -> bytes:
        """Tile bytes: from the disk tier when there, else from upstream (then kept on disk)."""
        remote = location.startswith(("http://", "https://"))
        if remote and self.disk is not None:
            self.fetcher.policy.check(location)  # the disk tier never bypasses the root policy
            data = await asyncio.to_thread(self.disk.get, location)
            if data is not None:
                observe_tile(location, "disk")
                return data
        start = time.perf_counter()
        data = await self.fetcher.fetch(location)
        observe_tile(location, "downloaded", time.perf_counter() - start, len(data))
        if remote and self.disk is not None:
            await asyncio.to_thread(self.disk.put, location, data)
        return data

    async def exists(self, location: str) -> bool:
        """Does the survey file exist (e.g. an ``Allsky`` mosaic)? Kept on disk when it does,
        so the render that follows reads it from there."""
        from .upstream import TileNotFound

        try:
            await self._raw(location)
        except TileNotFound:
            return False
        return True

    async def read_meta(self, location: str) -> bytes | None:
        """A survey file that is not a tile (``properties``, ``Moc.fits``); None when it does not exist.

        Read like a tile (root policy, retries, timeouts), but fresh from upstream first:
        the disk copy only answers when upstream cannot, so a restart during an upstream
        outage still knows its surveys.
        """
        from .upstream import TileNotFound, UpstreamError

        remote = location.startswith(("http://", "https://"))
        try:
            data = await self.fetcher.fetch(location)
        except TileNotFound:
            return None
        except UpstreamError:
            if not remote or self.disk is None:
                raise
            self.fetcher.policy.check(location)
            data = await asyncio.to_thread(self.disk.get, location)
            if data is None:
                raise
            log.warning("%s unreachable: using its copy on disk", location)
            return data
        if remote and self.disk is not None:
            await asyncio.to_thread(self.disk.put, location, data)
        return data

    async def _decoded(self, location: str, fmt: str) -> np.ndarray:
        data = await self._raw(location)
        # Decoding is CPU work: keep the event loop free for other fetches.
        return await asyncio.to_thread(decode_tile, data, fmt, max_pixels=self.config.limits.max_tile_pixels)

    async def _decoded_allsky(self, location: str, fmt: str) -> np.ndarray:
        """An ``Allsky`` mosaic cut into its order-3 tiles: float32 (768, [3,] w, w)."""
        from skyrender.budget import ALLSKY_ORDER
        from skyrender.decode import decode_allsky

        data = await self._raw(location)
        _, stack = await asyncio.to_thread(
            decode_allsky, data, fmt, order=ALLSKY_ORDER, max_pixels=self.config.limits.max_tile_pixels
        )
        return stack

    async def _one(
        self, req: TileRequest, lease: tuple[str, Any] | None = None, deadline: Deadline | None = None
    ) -> tuple[Any, TileOutcome]:
        location, fmt = req.location, req.format
        decode = self._decoded_allsky if req.allsky_npix else self._decoded
        try:
            if self.cache is None or lease == _NO_CACHE:
                array, how = await decode(location, fmt), "fetched" if self.cache is None else "nocache"
            else:
                array, how = await self.cache.get_or_fetch(
                    req.key, lambda: decode(location, fmt), lease, deadline
                )
        except Exception as exc:
            observe_tile(location, type(exc).__name__)
            raise
        outcome = TileOutcome(how)
        observe_tile(location, outcome.value)
        m = metrics()
        if m is not None:
            m.cache_events.inc(1, tags={"event": "hit" if outcome.from_cache else "miss"})
        return array, outcome

    async def get_tiles(self, requests: list[TileRequest], budget: Budget | None = None) -> FetchedTiles:
        """Fetch the requested tiles concurrently, within the request's deadline.

        Missing tiles (404) and undecodable ones are reported, not raised: the area is
        rendered as uncovered. Upstream failures (unreachable, timeout, 5xx) raise; so does
        an upstream still fetching when the deadline comes (`UpstreamTimeout`: a 504), and a
        request whose deadline has passed before it starts (`Shed`: a 503, nothing fetched).
        """
        run = self.guard.enter(budget)
        try:
            fetched = await self._get_tiles(requests, budget)
        except BaseException:
            self.guard.abandon()
            raise
        report = self.guard.leave(run, budget)
        return dataclasses.replace(fetched, finished_at=time.time(), reports=(report,))

    async def _gather(self, requests: list[TileRequest], budget: Budget | None = None) -> list[Any]:
        """Each tile, or the exception fetching it raised, concurrently."""
        # One call to the cache actor for every tile's lease: its round trips cost CPU on both
        # sides, and a render needs several tiles.
        leases: list[Any] = [None] * len(requests)
        deadline = budget.deadline if budget is not None else None
        if self.cache is not None and len(requests) > 1:
            leased = await self.cache.lease_many([r.key for r in requests], deadline)
            leases = list(leased) if leased is not None else [_NO_CACHE] * len(requests)
        started: set[int] = set()

        async def one(i: int, req: TileRequest, lease: Any) -> tuple[Any, TileOutcome]:
            started.add(i)
            return await self._one(req, lease, deadline)

        try:
            return await asyncio.gather(
                *(one(i, r, lease) for i, (r, lease) in enumerate(zip(requests, leases, strict=True))),
                return_exceptions=True,
            )
        except BaseException:
            # Cancelled (the caller gave up) before some tiles' fetches began: their leases
            # would make every other request wanting those tiles wait the whole lease time.
            # (A cancel while lease_many is in flight: the client hands those back itself.)
            if self.cache is not None:
                unstarted = [i for i in range(len(requests)) if i not in started]
                self.cache.give_back_later(
                    [requests[i].key for i in unstarted],
                    [leases[i] for i in unstarted],
                    "the request fetching it was cancelled",
                )
            raise

    async def _get_tiles(self, requests: list[TileRequest], budget: Budget | None) -> FetchedTiles:
        from .upstream import NoUsableTiles, TileNotFound, TileTooLarge, UpstreamTimeout

        start, started_at = time.perf_counter(), time.time()
        tiles: dict[int, Any] = {}
        missing: list[str] = []
        broken: dict[str, str] = {}
        outcomes: dict[TileOutcome, int] = {}
        gathered = self._gather(requests, budget)
        # The fetcher's own timeouts hold per tile; the request's deadline bounds them all.
        left = budget.deadline.remaining() if budget is not None else None
        bound = None if left is None else max(left - _REPORT_S, 0.0)
        try:
            results = await asyncio.wait_for(gathered, timeout=bound)
        except TimeoutError:
            assert budget is not None and left is not None
            if left < _UPSTREAM_FAIR_S:
                # Our own queues spent the deadline before the tiles could be read: a 503.
                raise Shed("fetch", "deadline_passed", 1, 0.0, budget.deadline.remaining()) from None
            # Tiles read from the cache take milliseconds: these waited on an upstream (directly,
            # or on the fetch another request leads), which is slow: a 504.
            raise UpstreamTimeout(
                f"tiles not fetched within the request's deadline ({budget.deadline.budget_s:.2f} s)"
            ) from None
        for req, res in zip(requests, results, strict=True):
            if isinstance(res, TileNotFound):
                missing.append(req.key)
                outcome = TileOutcome.MISSING
            elif isinstance(res, (TileDecodeError, TileTooLarge)):
                log.warning("tile %s skipped: %s", req.key, res)
                broken[req.key] = str(res)
                outcome = TileOutcome.BROKEN
            elif isinstance(res, BaseException):
                raise res
            elif req.allsky_npix:  # the mosaic: cut out the tiles the field needs
                stack, outcome = res
                if not isinstance(stack, np.ndarray):
                    stack = await stack  # a cache hit: the ObjectRef of the whole mosaic
                for npix in req.allsky_npix:
                    tiles[npix] = stack[npix]
            else:
                tiles[req.npix], outcome = res
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if broken and not tiles:
            first = next(iter(broken.items()))
            raise NoUsableTiles(f"no usable tile: {first[0]}: {first[1]}")
        seconds = time.perf_counter() - start
        observe_stage("fetch", seconds)
        await self._publish_cache_gauges()
        return FetchedTiles(
            tiles=tiles,
            missing=tuple(missing),
            broken=broken,
            outcomes=outcomes,
            seconds=seconds,
            stamps=(started_at, time.time()),
        )

    async def _publish_cache_gauges(self) -> None:
        """Copy the cache actor's byte and entry counts into gauges, at most once a second."""
        m = metrics()
        now = time.monotonic()
        if m is None or self.cache is None or now - self._gauges_at < 1.0:
            return
        self._gauges_at = now
        try:
            stats = await asyncio.wait_for(self.cache.stats(), timeout=1.0)
        except Exception:  # a dead cache actor only costs us the gauges
            return
        m.cache_bytes.set(float(stats.get("bytes_held", 0)))
        m.cache_entries.set(float(stats.get("entries", 0)))
        evictions = int(stats.get("evictions", 0))
        if evictions > self._evictions_seen:
            m.cache_events.inc(evictions - self._evictions_seen, tags={"event": "eviction"})
        self._evictions_seen = evictions

    async def probe(self, root: str) -> tuple[bool, str]:
        """Is the survey root reachable (its ``properties``, cached a few seconds)?"""
        return await self.fetcher.probe(root)

    async def cache_stats(self) -> dict[str, Any]:
        import ray

        stats = await self.cache.stats() if self.cache is not None else {"enabled": False}
        stats["fetch_node_id"] = ray.get_runtime_context().get_node_id()
        if self.disk is not None:
            stats["disk"] = await asyncio.to_thread(self.disk.stats)
        return stats
