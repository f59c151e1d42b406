"""The compose stage: reprojects decoded tiles onto the output WCS (wgpu when an adapter
exists, else numpy). The sky math is the core's (`skyrender.render.reproject`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Any

import numpy as np
from ray import serve

from .config import AppConfig
from .contracts import Composed, FetchedTiles, RenderSpec, TilesLost
from .deadline import Budget
from .shedding import StageGuard, yield_cpu
from .telemetry import metrics, observe_stage

__all__ = ["Compose"]

log = logging.getLogger("ray.serve")


@serve.deployment
class Compose:
    """Reprojects decoded tiles onto the output WCS: wgpu when an adapter exists, else numpy."""

    def __init__(self, config: dict[str, Any]):
        self.config = AppConfig.model_validate(config)
        use_jit_cache(self.config.render.jit_cache_dir)
        self.backend, self._blender = _pick_backend(self.config.render.backend)
        self.store_reads = 0
        self.renders = 0  # reprojections computed by this replica (/healthz shows it)
        self.guard = StageGuard("compose")
        self._niced_at = 0.0
        log.info("compose backend: %s", self.backend)
        # Render once now: Serve routes requests to this replica only after the constructor,
        # so no caller pays for compiling the kernels (or loading them from the JIT cache).
        from skyrender.warmup import warm_render

        self.warmup_s = warm_render(
            num_threads=self.config.render.num_threads,
            blender=self._blender.blend if self._blender is not None else None,
        )
        log.info("compose backend: %s, warm in %.2f s", self.backend, self.warmup_s)
        m = metrics()
        if m is not None:
            for name in ("wgpu", "numpy"):
                m.compose_backend.set(1.0 if name == self.backend else 0.0, tags={"backend": name})

    def _resolve(self, tiles: dict[int, Any]) -> dict[int, np.ndarray]:
        """Read the tiles held as object-store references (from any node) in one batch.

        Raises `TilesLost` when they cannot be read: the ingress renders again rather than
        draw a picture with holes.
        """
        import ray

        refs = {n: t for n, t in tiles.items() if isinstance(t, ray.ObjectRef)}
        out = {n: t for n, t in tiles.items() if not isinstance(t, ray.ObjectRef)}
        if refs:
            try:
                # A read from the object store takes milliseconds, even across nodes; one that
                # hangs is a lost node not yet declared dead. A quarter of the deadline leaves the
                # ingress time to fetch the tiles again.
                timeout = max(1.0, self.config.upstream.request_deadline_s / 4)
                values = ray.get(list(refs.values()), timeout=timeout)
            except Exception as exc:  # lost with their owner or node (or unreachable): no holes
                log.warning("%d tiles lost from the object store: %s", len(refs), exc)
                lost = f"{len(refs)} tiles lost from the object store ({type(exc).__name__})"
                raise TilesLost(lost) from None
            out.update(zip(refs, values, strict=True))
            self.store_reads += len(refs)
        return out

    def info(self) -> dict[str, Any]:
        import ray

        info: dict[str, Any] = {
            "backend": self.backend,
            "sampling": self.config.render.sampling,
            "node_id": ray.get_runtime_context().get_node_id(),
            "tiles_read_from_object_store": self.store_reads,
            "renders": self.renders,
            "service_s_per_mpx": round(self.guard.clock.service_s_per_work, 4),
            "warmup_s": round(self.warmup_s, 3),
        }
        if self._blender is not None:
            info["adapter"] = self._blender.adapter_info
        return info

    def _yield_cpu(self) -> None:
        """Keep every thread of this replica (render pools included) at the configured niceness."""
        now = time.monotonic()
        if now - self._niced_at > 5.0:
            self._niced_at = now
            yield_cpu(self.config.overload.compute_niceness)

    def render(self, spec: RenderSpec, fetched: FetchedTiles, budget: Budget | None = None) -> Composed:
        """Render ``fetched`` tiles onto ``spec.geometry``, unless it can no longer be in time.

        Raises `deployments.deadline.Shed`, before any work, when ``budget``'s deadline has
        passed or this replica's measured time for a render of that size no longer fits.
        """
        self._yield_cpu()
        run = self.guard.enter(budget, fetched.finished_at or None)
        try:
            composed = self._render(spec, fetched)
        except BaseException:
            self.guard.abandon()
            raise
        report = self.guard.leave(run, budget)
        return dataclasses.replace(composed, finished_at=time.time(), reports=(*fetched.reports, report))

    def _render(self, spec: RenderSpec, fetched: FetchedTiles) -> Composed:
        from skyrender.render import reproject
        from skyrender.sampling import TileSet

        start, started_at = time.perf_counter(), time.time()
        resolved = self._resolve(fetched.tiles)
        tiles = TileSet.from_tiles(spec.order, resolved, tile_width=spec.tile_width)
        image = reproject(
            spec.geometry,
            tiles,
            spec.survey_frame,
            interpolation=spec.interpolation or self.config.render.interpolation,
            num_threads=self.config.render.num_threads,
            sampling=self.config.render.sampling,
            blender=self._blender.blend if self._blender is not None else None,
            grid_blender=self._blender.grid_blend if self._blender is not None else None,
        )
        seconds = time.perf_counter() - start
        self.renders += 1
        observe_stage("compose", seconds)
        m = metrics()
        if m is not None:
            m.compose_renders.inc(1, tags={"backend": self.backend})
            m.compose_backend.set(1.0, tags={"backend": self.backend})
        return Composed(
            image=image,
            backend=self.backend,
            seconds=seconds,
            tiles_used=len(resolved),
            fetch_seconds=fetched.seconds,
            tile_outcomes=dict(fetched.outcomes),
            stamps=(*fetched.stamps, started_at, time.time()),
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


def use_jit_cache(directory: str) -> None:
    """Point numba's kernel cache at ``directory`` (created if needed).

    numba reads ``NUMBA_CACHE_DIR`` when it is imported and fixes each kernel's cache when
    its module is imported, so this must run before the first `skyrender` kernel import
    in the process (this module imports none at its top).
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        log.warning("JIT cache %s unusable (%s): numba's default applies", directory, exc)
        return
    os.environ["NUMBA_CACHE_DIR"] = directory
    if "numba" in sys.modules:
        from numba.core import config as numba_config

        numba_config.reload_config()
    if "skyrender.projection" in sys.modules or "skyrender.sampling" in sys.modules:
        log.warning("kernels imported before NUMBA_CACHE_DIR was set: their cache stays where it was")
