"""Application configuration: the ``args`` of ``graph:build_app``, validated by pydantic.

Every knob an operator may turn lives here and in ``serve_config.yaml``; deployments read
nothing else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AppConfig",
    "CacheConfig",
    "LimitsConfig",
    "OverloadConfig",
    "RenderConfig",
    "SurveyConfig",
    "UpstreamConfig",
    "default_sample_dir",
    "expand_env",
]


class SurveyConfig(BaseModel):
    """One survey of the catalogue: an http(s) HiPS root or a local HiPS directory."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    url: str
    epoch: str | None = None
    aliases: list[str] = Field(default_factory=list, description="other names, e.g. a creator_did")

    @field_validator("url")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if v.startswith(("http://", "https://")):
            return v.rstrip("/")
        return str(Path(expand_env(v)).expanduser().resolve())

    @property
    def is_local(self) -> bool:
        return not self.url.startswith(("http://", "https://"))


class LimitsConfig(BaseModel):
    """Limits enforced on every request (4xx past them)."""

    model_config = ConfigDict(extra="forbid")

    max_width: int = 4096
    max_height: int = 4096
    max_pixels: int = 4096 * 4096
    max_fov_deg: float = 360.0
    min_fov_deg: float = Field(1e-4, gt=0, description="smallest field of view [deg] (0.36 arcsec)")
    max_tiles: int = 256
    max_render_bytes: int = Field(
        256 * 1024 * 1024, description="decoded tile bytes one render may hold; wider fields degrade"
    )
    max_tile_bytes: int = 8 * 1024 * 1024
    max_tile_pixels: int = 2048 * 2048
    max_header_keys: int = 500
    max_body_bytes: int = 1024 * 1024
    max_request_headers: int = Field(
        64,
        ge=1,
        le=90,
        description="header fields one request may carry (431 past it); below HAProxy's own 101, "
        "past which the front answers 400 before the request reaches a replica",
    )
    max_layers: int = Field(4, ge=1, description="layers one multi-layer request may render")


class UpstreamConfig(BaseModel):
    """How tiles are fetched from upstream HiPS servers."""

    model_config = ConfigDict(extra="forbid")

    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    retries: int = 2
    backoff_s: float = 0.1
    per_host_concurrency: int = 16
    probe_cache_s: float = 5.0
    request_deadline_s: float = 5.0
    catalogue_wait_s: float = Field(
        5.0, ge=0, description="how long a request waits for the survey catalogue at start-up [s]; then 503"
    )


class CacheConfig(BaseModel):
    """The shared tile cache in Ray's object store."""

    model_config = ConfigDict(extra="forbid", validate_default=True)  # expand ${VAR:-...} defaults too

    enabled: bool = True
    name: str = "skyrender-tile-cache"
    max_bytes: int = 512 * 1024 * 1024
    actor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources the cache actor asks for (pins it to a worker group on k8s)",
    )
    ingress_lookup: bool = Field(
        True,
        description="the ingress takes a render's tiles from the cache itself when it holds them all, "
        "without the fetch stage's hop (that stage is still called for any tile not held)",
    )
    ingress_recent_s: float = Field(
        1.0,
        ge=0.0,
        description="how long [s] the ingress reuses the tile references a lookup gave, without asking "
        "the cache actor again (0: ask for every render); a tile evicted meanwhile stays that long",
    )
    ingress_recent_tiles: int = Field(
        64, ge=1, description="at most this many tiles' references kept by the ingress (ingress_recent_s)"
    )
    disk_enabled: bool = True
    disk_dir: str = Field(
        "${SKYRENDER_CACHE_DIR:-/tmp/skyrender-cache}", description="scratch volume for tile bytes"
    )
    disk_max_bytes: int = 2 * 1024 * 1024 * 1024
    min_free_disk_bytes: int = Field(
        256 * 1024 * 1024, description="/healthz is 503 below this much free disk"
    )

    @field_validator("disk_dir")
    @classmethod
    def _expand(cls, v: str) -> str:
        return str(Path(expand_env(v)).expanduser().resolve())


class RenderConfig(BaseModel):
    """Rendering defaults."""

    model_config = ConfigDict(extra="forbid", validate_default=True)  # expand ${VAR:-...} defaults too

    interpolation: str = "bilinear"
    sampling: Literal["grid", "exact"] = Field(
        "grid",
        description="grid: exact positions on a coarse grid of output pixels, interpolated within "
        "0.01 px (skyrender.grid); exact: every pixel's position and cells",
    )
    backend: str = Field("auto", description="compose backend: auto | wgpu | numpy")
    png_deflate: Literal["isal", "zlib"] = Field(
        "isal",
        description="library deflating single-band PNGs: isal (ISA-L, levels 0-3, 4-5x faster than "
        "zlib at level 1 on sky pictures, files 2-4 % larger) | zlib (levels 0-9)",
    )
    png_compress_level: int = Field(2, ge=0, le=9, description="deflate level, on png_deflate's own scale")
    jpeg_quality: int = Field(90, ge=1, le=95)
    num_threads: int = Field(0, ge=0, description="threads per render (0 = every core of the node)")
    jit_cache_dir: str = Field(
        "${NUMBA_CACHE_DIR:-/tmp/skyrender-jit}",
        description="numba's compiled-kernel cache (NUMBA_CACHE_DIR): a directory that survives restarts",
    )
    cache_max_age_s: int = Field(
        3600, ge=0, description="Cache-Control max-age of rendered images [s] (NestJS caches them)"
    )

    @field_validator("jit_cache_dir")
    @classmethod
    def _expand(cls, v: str) -> str:
        return str(Path(expand_env(v)).expanduser().resolve())

    @model_validator(mode="after")
    def _level_on_the_deflaters_scale(self) -> RenderConfig:
        from skyrender.encode import PNG_DEFLATERS

        top = PNG_DEFLATERS[self.png_deflate]
        if self.png_compress_level > top:
            raise ValueError(
                f"png_compress_level {self.png_compress_level} is above {self.png_deflate}'s highest "
                f"level {top} (zlib's go to 9)"
            )
        return self


class OverloadConfig(BaseModel):
    """Deadlines and admission control (see *Overload* in docs/operations.md)."""

    model_config = ConfigDict(extra="forbid")

    deadline_s: float = Field(
        4.0, gt=0, description="a request's deadline when the caller gives none [s]: below the caller's 5 s"
    )
    max_deadline_s: float = Field(
        10.0,
        gt=0,
        description="longest deadline a caller may ask for (Request-Timeout, X-Request-Deadline) [s]",
    )
    hips2fits_deadline_s: float = Field(
        10.0, gt=0, description="the default deadline of /hips2fits: scripts wait longer than the portal [s]"
    )
    answer_grace_s: float = Field(
        0.5,
        ge=0,
        le=1.0,
        description="how long past a configured deadline an admitted render may still finish: the stages "
        "and the ingress work to it (the caller's own timeout is later); none past a caller's deadline [s]",
    )
    admission: bool = Field(True, description="refuse at the ingress what cannot finish by its deadline")
    margin_s: float = Field(0.1, ge=0, description="time kept for the answer's way back to the caller [s]")
    headroom: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="fraction of a request's time before its deadline kept free at admission for "
        "errors of the wait estimate",
    )
    max_in_progress: int = Field(
        16,
        ge=0,
        description="admitted renders an ingress replica sends through the stages at once; the others "
        "wait their turn in order, so that newcomers are read and refused in ms (0: no limit)",
    )
    turn_stall_s: float = Field(
        1.0,
        gt=0,
        description="a render in progress longer than this no longer counts against max_in_progress: it "
        "waits on an upstream, not on our stages, and renders of warm tiles need not wait behind it [s]",
    )
    compute_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU niceness of compose and encode, so refusals and health get the cores "
        "(with Ray's workers started at 0: RAY_worker_niceness)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> OverloadConfig:
        longest = max(self.deadline_s, self.hips2fits_deadline_s)
        if self.max_deadline_s < longest:
            raise ValueError(f"max_deadline_s {self.max_deadline_s} < a default deadline {longest}")
        return self


class AppConfig(BaseModel):
    """Everything ``graph:build_app`` takes."""

    model_config = ConfigDict(extra="forbid")

    surveys: list[SurveyConfig] = Field(default_factory=list)
    public_base_url: str | None = Field(
        None,
        description="the service's public URL (e.g. https://sky.example.org): local surveys' tile URLs "
        "are given and accepted under it, besides the host a request came to",
    )
    build_sample_survey: bool = Field(
        True,
        description="build the bundled HI4PI sample HiPS at start-up if a local survey's folder is empty",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    overload: OverloadConfig = Field(default_factory=OverloadConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> AppConfig:
        names = [s.name for s in self.surveys]
        if len(names) != len(set(names)):
            raise ValueError(f"survey names must be unique: {names}")
        return self

    def survey(self, name: str | None, epoch: str | None = None) -> SurveyConfig | None:
        """The survey called ``name`` (or its alias), or the first; ``epoch`` picks among same-named ones."""
        candidates = self.surveys
        if name:
            candidates = [s for s in self.surveys if name == s.name or name in s.aliases]
        if epoch is not None:
            candidates = [s for s in candidates if s.epoch == epoch]
        return candidates[0] if candidates else None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (shell style) in a configured path."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)


def default_sample_dir() -> str:
    """Where the bundled sample survey is built (``$SKYRENDER_SAMPLE_DIR`` or ``./var/hips/hi4pi``)."""
    return os.environ.get("SKYRENDER_SAMPLE_DIR", str(Path.cwd() / "var" / "hips" / "hi4pi"))
