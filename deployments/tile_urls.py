"""Tile URLs: where the fetch stage reads a tile, what URL a caller is given, and the strict
parse of a caller's tile URL.

A caller's tile URL is parsed, not matched: its scheme, host, port and path prefix must
equal a configured root exactly (an upstream survey's URL; for a local survey this
service's ``/hips/<name>/`` on the host the request came to, or under the configured
``public_base_url``), the rest of the path must be exactly ``NorderK/DirD/NpixN.ext``
with the ``Dir`` that holds ``Npix``, and there may be no user info and no dot segments,
raw or percent-encoded. Malformed URLs are 400, URLs outside every root 403, all before
any fetch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from fastapi import Request

from skyrender.errors import SkyRenderError
from skyrender.tiles import TileId, parse_tile_url

from .config import AppConfig, SurveyConfig
from .errors import ApiError

__all__ = ["public_url", "resolve_tile_url", "tile_location"]

_TILE_PATH = re.compile(r"Norder\d{1,2}/Dir\d{1,20}/Npix\d{1,20}\.(?:fits|jpg|jpeg|png)", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Root:
    """scheme://host:port/prefix/ of a survey, compared exactly (host lower-case)."""

    scheme: str
    host: str
    port: int
    prefix: str  # the path, ending with "/"

    @classmethod
    def of(cls, url: str) -> _Root:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        return cls(scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/") + "/")


def tile_location(cfg: SurveyConfig, tile: TileId) -> str:
    """Where the fetch stage reads a tile: the upstream URL, or the file of a local survey."""
    if cfg.is_local:
        return os.path.join(cfg.url, tile.path)
    return f"{cfg.url}/{tile.path}"


def _local_bases(config: AppConfig, request: Request) -> list[str]:
    """Base URLs under which this service serves its local surveys (``/hips/<name>/``)."""
    bases = [str(request.base_url).rstrip("/")]
    if config.public_base_url:
        bases.append(config.public_base_url.rstrip("/"))
    return bases


def public_url(request: Request, config: AppConfig, cfg: SurveyConfig, tile: TileId) -> str:
    """The tile URL a caller can fetch: upstream's, or this service's ``/hips/<name>/`` mirror
    (under ``public_base_url`` when configured, else on the host the request came to)."""
    if cfg.is_local:
        base = config.public_base_url or str(request.base_url)
        return f"{base.rstrip('/')}/hips/{cfg.name}/{tile.path}"
    return f"{cfg.url}/{tile.path}"


def _bad(detail: str) -> ApiError:
    return ApiError(400, "invalid tile URL", detail)


def resolve_tile_url(config: AppConfig, request: Request, url: str) -> tuple[SurveyConfig, TileId]:
    """The configured survey and the tile a caller's tile URL names (400/403 otherwise)."""
    shown = url[:200]
    if len(url) > 4096:
        raise _bad("a tile URL may have at most 4096 characters")
    if "\\" in url or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise _bad(f"{shown!r}: backslashes, spaces and control characters are not allowed")
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError as exc:
        raise _bad(f"{shown!r}: {exc}") from None
    if parts.scheme and parts.scheme.lower() not in _DEFAULT_PORTS:
        raise ApiError(403, "tile URL not allowed", f"{shown!r}: only http(s) URLs under a survey root")
    if not parts.scheme or not parts.hostname:
        raise _bad(f"{shown!r} is not an absolute http(s) URL")
    if "@" in parts.netloc:
        raise ApiError(403, "tile URL not allowed", f"{shown!r}: user info is not allowed in tile URLs")
    if parts.fragment or "#" in url:
        raise _bad(f"{shown!r}: fragments are not allowed in tile URLs")
    segments = parts.path.split("/")
    decoded = [unquote(s) for s in segments]
    if any(s in (".", "..") for s in segments + decoded) or any("/" in s for s in decoded):
        raise _bad(f"{shown!r}: dot segments and encoded slashes are not allowed")
    wanted = _Root(parts.scheme.lower(), parts.hostname.lower(), port, "")
    for cfg in config.surveys:
        roots = (
            [f"{base}/hips/{cfg.name}" for base in _local_bases(config, request)]
            if cfg.is_local
            else [cfg.url]
        )
        for root in map(_Root.of, roots):
            if (root.scheme, root.host, root.port) != (wanted.scheme, wanted.host, wanted.port):
                continue
            if not parts.path.startswith(root.prefix):
                continue
            rest = parts.path[len(root.prefix) :]
            if not _TILE_PATH.fullmatch(rest):
                raise _bad(f"{shown!r}: after the survey root, expected NorderK/DirD/NpixN.fits|jpg|png")
            try:
                return cfg, parse_tile_url(rest)
            except SkyRenderError as exc:
                raise _bad(f"{shown!r}: {exc}") from None
    raise ApiError(403, "tile URL not allowed", f"{shown} is not under a configured survey root")
