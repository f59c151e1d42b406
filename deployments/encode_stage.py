"""The encode stage: cuts, stretch, colormap and encoding (the core's `skyrender.display`
and `skyrender.encode`); the only stage that makes bytes."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ray import serve

from .config import AppConfig
from .contracts import Composed, DisplaySpec, EncodedImage, TileOutcome
from .deadline import Budget
from .shedding import StageGuard, yield_cpu
from .telemetry import observe_stage

__all__ = ["Encode"]

log = logging.getLogger("ray.serve")


@serve.deployment
class Encode:
    """Cuts, stretch, colormap and encoding: the only stage that makes bytes."""

    def __init__(self, config: dict[str, Any]):
        self.config = AppConfig.model_validate(config)
        self.guard = StageGuard("encode")
        self._niced_at = 0.0
        # Encode once now (every stretch, a colormap, PNG, JPEG, FITS): Serve routes requests
        # here only after the constructor, so no caller pays for the first imports.
        from skyrender.warmup import warm_display

        seconds = warm_display(png_opts=self._png_opts(), jpeg_opts=self._jpeg_opts())
        log.info("encode warm in %.2f s", seconds)

    def _png_opts(self) -> dict[str, Any]:
        render = self.config.render
        return {
            "compress_level": render.png_compress_level,
            "deflate": render.png_deflate,
            "num_threads": render.num_threads,
        }

    def _jpeg_opts(self) -> dict[str, Any]:
        return {"quality": self.config.render.jpeg_quality}

    def _yield_cpu(self) -> None:
        """Keep every thread of this replica (render pools included) at the configured niceness."""
        now = time.monotonic()
        if now - self._niced_at > 5.0:
            self._niced_at = now
            yield_cpu(self.config.overload.compute_niceness)

    def encode(self, spec: DisplaySpec, composed: Composed, budget: Budget | None = None) -> EncodedImage:
        """Encode ``composed.image`` as ``spec`` says (png | jpeg | fits), unless it can no longer be in time.

        Raises `deployments.deadline.Shed` before any work when ``budget``'s deadline has passed
        or this replica's measured time no longer fits.
        """
        self._yield_cpu()
        run = self.guard.enter(budget, composed.finished_at or None)
        try:
            encoded = self._encode(spec, composed)
        except BaseException:
            self.guard.abandon()
            raise
        report = self.guard.leave(run, budget)
        return dataclasses.replace(encoded, reports=(*composed.reports, report))

    def _encode(self, spec: DisplaySpec, composed: Composed) -> EncodedImage:
        from skyrender.display import as_rgb, to_display
        from skyrender.encode import encode_fits, encode_image

        start, started_at = time.perf_counter(), time.time()
        if spec.format == "fits":
            body, media_type = encode_fits(composed.image, spec.header), "application/fits"
        else:
            img = to_display(
                composed.image,
                min_cut=spec.min_cut,
                max_cut=spec.max_cut,
                stretch=spec.stretch,
                cmap=spec.cmap,
                survey_cut=spec.survey_cut,
            )
            if spec.rgb:  # hips2fits clients expect an RGB(A) array, not a palette
                img = as_rgb(img)
            opts = self._png_opts() if spec.format == "png" else self._jpeg_opts()
            body, media_type = encode_image(img, spec.format, **opts)
        seconds = time.perf_counter() - start
        observe_stage("encode", seconds)
        return EncodedImage(
            body=body,
            media_type=media_type,
            encode_seconds=seconds,
            compose_seconds=composed.seconds,
            fetch_seconds=composed.fetch_seconds,
            backend=composed.backend,
            tiles_used=composed.tiles_used,
            tile_outcomes=composed.tile_outcomes,
            stamps=(*composed.stamps, started_at, time.time()),
        )

    def combine(self, spec: Any, *composed: Composed, budget: Budget | None = None) -> EncodedImage:
        """Combine several layers' renders (one `Composed` each) as ``spec`` says.

        ``spec`` is one of `skyrender.layers`' specs (composite, difference, blink,
        stats); the layers' composes ran side by side, so the fetch and compose times
        reported are the slowest layer's. Raises `deployments.deadline.Shed` before any
        work when ``budget``'s deadline has passed or this replica's measured time no
        longer fits.
        """
        from skyrender.layers import PictureOptions, combine

        self._yield_cpu()
        run = self.guard.enter(budget, max(c.finished_at for c in composed) or None)
        start = time.perf_counter()
        render = self.config.render
        opts = PictureOptions(
            png_compress_level=render.png_compress_level,
            png_deflate=render.png_deflate,
            jpeg_quality=render.jpeg_quality,
        )
        try:
            out = combine(spec, [c.image for c in composed], opts)
        except BaseException:
            self.guard.abandon()
            raise
        seconds = time.perf_counter() - start
        report = self.guard.leave(run, budget)
        observe_stage("encode", seconds)
        outcomes: dict[TileOutcome, int] = {}
        for c in composed:
            for kind, count in c.tile_outcomes.items():
                outcomes[kind] = outcomes.get(kind, 0) + count
        return EncodedImage(
            body=out.body,
            media_type=out.media_type,
            encode_seconds=seconds,
            compose_seconds=max(c.seconds for c in composed),
            fetch_seconds=max(c.fetch_seconds for c in composed),
            backend=composed[0].backend,
            tiles_used=sum(c.tiles_used for c in composed),
            tile_outcomes=outcomes,
            reports=(*(r for c in composed for r in c.reports), report),
        )
