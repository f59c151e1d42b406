"""The three worker stages of the graph: tile fetch → compose (reprojection) → encode.

Each is a thin Ray Serve deployment over the core (`skyrender`) and the upstream client
(`deployments.upstream`). Arrays travel between them as Ray objects; only the encode
stage produces bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from skyrender.decode import decode_tile
from skyrender.errors import TileDecodeError

from .config import AppConfig
from .telemetry import metrics, observe_stage, observe_tile

log = logging.getLogger("ray.serve")


@dataclass
class FetchedTiles:
    """What the fetch stage hands to compose: decoded tiles and how they were obtained."""

    #: npix → the decoded tile, or an ObjectRef to it in the object store (cache hits).
    tiles: dict[int, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class TileFetch:
    """Fetches tiles (through the shared object-store cache) and decodes them."""

    def __init__(self, config: dict[str, Any]):
        from .tile_cache import CacheClient
        from .upstream import FetchConfig, RootPolicy, TileFetcher

        self.config = AppConfig.model_validate(config)
        up = self.config.upstream
        self.fetcher = TileFetcher(
            RootPolicy([s.url for s in self.config.surveys]),
            FetchConfig(
                connect_timeout_s=up.connect_timeout_s,
                read_timeout_s=up.read_timeout_s,
                retries=up.retries,
                backoff_s=up.backoff_s,
                per_host_limit=up.per_host_concurrency,
                max_tile_bytes=self.config.limits.max_tile_bytes,
                probe_cache_s=up.probe_cache_s,
                deadline_s=up.request_deadline_s,
            ),
        )
        self.disk = None
        if self.config.cache.disk_enabled:
            from .disk_cache import DiskTileCache

            try:
                self.disk = DiskTileCache(self.config.cache.disk_dir, self.config.cache.disk_max_bytes)
            except OSError as exc:  # no scratch volume: run without the disk tier
                log.warning("disk cache disabled: %s", exc)
        cache = self.config.cache
        self.cache = CacheClient(cache.name, max_bytes=cache.max_bytes) if cache.enabled else None
        self._gauges_at = 0.0
        self._evictions_seen = 0

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

    async def _decoded(self, location: str, fmt: str) -> np.ndarray:
        data = await self._raw(location)
        # Decoding is CPU work: keep the event loop free for other fetches.
        return await asyncio.to_thread(decode_tile, data, fmt, max_pixels=self.config.limits.max_tile_pixels)

    async def _one(self, key: str, location: str, fmt: str) -> tuple[np.ndarray, str]:
        try:
            if self.cache is None:
                array, how = await self._decoded(location, fmt), "fetched"
            else:
                array, how = await self.cache.get_or_fetch(key, lambda: self._decoded(location, fmt))
        except Exception as exc:
            observe_tile(location, type(exc).__name__)
            raise
        observe_tile(location, how)
        m = metrics()
        if m is not None:
            m.cache_events.inc(1, tags={"event": "hit" if how in ("hit", "coalesced") else "miss"})
        return array, how

    async def get_tiles(self, requests: list[tuple[int, str, str, str]]) -> FetchedTiles:
        """Fetch ``(npix, cache_key, location, fmt)`` tiles concurrently.

        Missing tiles (404) and undecodable ones are reported, not raised: the area is
        rendered as uncovered. Upstream failures (unreachable, timeout, 5xx) raise.
        """
        from .upstream import NoUsableTiles, TileNotFound, TileTooLarge

        start = time.perf_counter()
        out = FetchedTiles()
        results = await asyncio.gather(
            *(self._one(key, loc, fmt) for _, key, loc, fmt in requests), return_exceptions=True
        )
        for (npix, key, _, _), res in zip(requests, results, strict=True):
            if isinstance(res, TileNotFound):
                out.missing.append(key)
                out.outcomes["missing"] = out.outcomes.get("missing", 0) + 1
            elif isinstance(res, (TileDecodeError, TileTooLarge)):
                log.warning("tile %s skipped: %s", key, res)
                out.broken[key] = str(res)
                out.outcomes["broken"] = out.outcomes.get("broken", 0) + 1
            elif isinstance(res, BaseException):
                raise res
            else:
                array, how = res
                out.tiles[npix] = array
                out.outcomes[how] = out.outcomes.get(how, 0) + 1
        if out.broken and not out.tiles:
            first = next(iter(out.broken.items()))
            raise NoUsableTiles(f"no usable tile: {first[0]}: {first[1]}")
        out.seconds = time.perf_counter() - start
        observe_stage("fetch", out.seconds)
        await self._publish_cache_gauges()
        return out

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


@dataclass
class Composed:
    """The compose stage's output: the float image and facts for logs and headers."""

    image: np.ndarray
    backend: str
    seconds: float
    tiles_used: int
    fetch_seconds: float = 0.0
    tile_outcomes: dict[str, int] = field(default_factory=dict)


@serve.deployment(ray_actor_options={"num_cpus": 0.5, "num_gpus": 0}, max_ongoing_requests=4)
class Compose:
    """Reprojects decoded tiles onto the output WCS: wgpu when an adapter exists, else numpy."""

    def __init__(self, config: dict[str, Any]):
        self.config = AppConfig.model_validate(config)
        self.backend, self._blender = _pick_backend(self.config.render.backend)
        self.store_reads = 0
        log.info("compose backend: %s", self.backend)
        m = metrics()
        if m is not None:
            for name in ("wgpu", "numpy"):
                m.compose_backend.set(1.0 if name == self.backend else 0.0, tags={"backend": name})

    def _resolve(self, tiles: dict[int, Any]) -> dict[int, np.ndarray]:
        """Read the tiles held as object-store references (from any node) in one batch."""
        import ray

        refs = {n: t for n, t in tiles.items() if isinstance(t, ray.ObjectRef)}
        out = {n: t for n, t in tiles.items() if not isinstance(t, ray.ObjectRef)}
        if refs:
            try:
                values = ray.get(list(refs.values()), timeout=self.config.upstream.request_deadline_s)
            except Exception as exc:  # an object lost with its node: render without those tiles
                log.warning("tiles lost from the object store (%s): rendering without them", exc)
                values = [None] * len(refs)
            for n, v in zip(refs, values, strict=True):
                if v is not None:
                    out[n] = v
            self.store_reads += len(refs)
        return out

    def info(self) -> dict[str, Any]:
        import ray

        info: dict[str, Any] = {
            "backend": self.backend,
            "node_id": ray.get_runtime_context().get_node_id(),
            "tiles_read_from_object_store": self.store_reads,
        }
        if self._blender is not None:
            info["adapter"] = self._blender.adapter_info
        return info

    def render(self, spec: dict[str, Any], fetched: FetchedTiles) -> Composed:
        """Render ``fetched`` tiles onto ``spec["geometry"]`` (an `OutputGeometry`)."""
        from skyrender.render import reproject
        from skyrender.sampling import TileSet

        start = time.perf_counter()
        tiles = TileSet.from_tiles(spec["order"], self._resolve(fetched.tiles), tile_width=spec["tile_width"])
        image = reproject(
            spec["geometry"],
            tiles,
            spec["survey_frame"],
            interpolation=spec.get("interpolation", self.config.render.interpolation),
            num_threads=self.config.render.num_threads,
            blender=self._blender.blend if self._blender is not None else None,
        )
        seconds = time.perf_counter() - start
        observe_stage("compose", seconds)
        m = metrics()
        if m is not None:
            m.compose_renders.inc(1, tags={"backend": self.backend})
            m.compose_backend.set(1.0, tags={"backend": self.backend})
        return Composed(
            image=image,
            backend=self.backend,
            seconds=seconds,
            tiles_used=len(fetched.tiles),
            fetch_seconds=fetched.seconds,
            tile_outcomes=dict(fetched.outcomes),
        )


def _pick_backend(wanted: str):
    """("wgpu", blender) or ("numpy", None).

    ``wgpu`` uses any adapter, a software one included (lavapipe: how CI runs the shader);
    ``auto`` uses wgpu only on a hardware GPU, since a CPU-emulated adapter is slower than
    the numpy path on the same cores.
    """
    if wanted in ("auto", "wgpu"):
        try:
            from skyrender.gpu import WgpuBlender

            blender = WgpuBlender.create()
        except Exception as exc:  # a broken driver must not stop the replica
            log.warning("wgpu unavailable (%s): using numpy", exc)
            blender = None
        if blender is not None and (wanted == "wgpu" or blender.adapter_info["adapter_type"] != "CPU"):
            return "wgpu", blender
        if wanted == "wgpu":
            log.warning("backend 'wgpu' requested but no adapter found: using numpy")
        elif blender is not None:
            log.info("wgpu adapter %s is CPU-emulated: using numpy", blender.adapter_info["device"])
    return "numpy", None


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
class Encode:
    """Cuts, stretch, colormap and encoding: the only stage that makes bytes."""

    def __init__(self, config: dict[str, Any]):
        self.config = AppConfig.model_validate(config)

    def encode(self, spec: dict[str, Any], composed: Composed) -> dict[str, Any]:
        from skyrender.display import as_rgb, to_display
        from skyrender.encode import encode_fits, encode_image

        start = time.perf_counter()
        fmt = spec["format"]
        if fmt == "fits":
            body, media_type = encode_fits(composed.image, spec["header"]), "application/fits"
        else:
            img = to_display(
                composed.image,
                min_cut=spec.get("min_cut"),
                max_cut=spec.get("max_cut"),
                stretch=spec.get("stretch", "linear"),
                cmap=spec.get("cmap", "viridis"),
                survey_cut=spec.get("survey_cut"),
            )
            if spec.get("rgb"):  # hips2fits clients expect an RGB(A) array, not a palette
                img = as_rgb(img)
            opts = (
                {"compress_level": self.config.render.png_compress_level}
                if fmt == "png"
                else {"quality": self.config.render.jpeg_quality}
            )
            body, media_type = encode_image(img, fmt, **opts)
        encode_s = time.perf_counter() - start
        observe_stage("encode", encode_s)
        return {
            "body": body,
            "media_type": media_type,
            "encode_s": encode_s,
            "compose_s": composed.seconds,
            "fetch_s": composed.fetch_seconds,
            "tile_outcomes": composed.tile_outcomes,
            "backend": composed.backend,
            "tiles_used": composed.tiles_used,
        }
