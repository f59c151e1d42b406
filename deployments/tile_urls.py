"""Tile URLs: where the fetch stage reads a tile, what URL a caller is given, and which
configured survey a caller's tile URL belongs to."""

from __future__ import annotations

import os

from fastapi import Request

from skyrender.tiles import TileId, tile_path

from .config import AppConfig, SurveyConfig
from .errors import ApiError

__all__ = ["public_url", "survey_of_url", "tile_location"]


def tile_location(cfg: SurveyConfig, tile: TileId) -> str:
    """Where the fetch stage reads a tile: the upstream URL, or the file of a local survey."""
    if cfg.is_local:
        return os.path.join(cfg.url, tile.path)
    return f"{cfg.url}/{tile.path}"


def public_url(request: Request, cfg: SurveyConfig, tile: TileId) -> str:
    """The tile URL a caller can fetch: upstream's, or this service's ``/hips/<name>/`` mirror."""
    if cfg.is_local:
        base = str(request.base_url).rstrip("/")
        return f"{base}/hips/{cfg.name}/{tile_path(tile.order, tile.npix, tile.format)}"
    return f"{cfg.url}/{tile_path(tile.order, tile.npix, tile.format)}"


def survey_of_url(config: AppConfig, url: str) -> SurveyConfig:
    """The configured survey a caller's tile URL belongs to (403 when none)."""
    for cfg in config.surveys:
        if cfg.is_local:
            marker = f"/hips/{cfg.name}/"
            if url.startswith(("http://", "https://")) and marker in url:
                return cfg
        elif url.startswith(cfg.url + "/"):
            return cfg
    raise ApiError(403, "tile URL not allowed", f"{url} is not under a configured survey root")
