"""``/hips/<name>/...``: a local survey's files (tiles, properties, MOC, Allsky), so the
tile URLs of a manifest resolve for a local survey too."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from skyrender.errors import SkyRenderError
from skyrender.tiles import parse_tile_url

from .errors import ApiError
from .http_cache import CachePolicy, if_none_match, strong_etag
from .services import ServicesDep

__all__ = ["router"]

router = APIRouter()

_OTHER_FILES = ("properties", "Moc.fits")
_ALLSKY = ("Allsky.fits", "Allsky.jpg", "Allsky.png")
_POLICY = CachePolicy()


@router.get("/hips/{name}/{path:path}", include_in_schema=False)
async def hips_file(svc: ServicesDep, request: Request, name: str, path: str) -> Response:
    """Serve a local survey's files (tiles, properties, MOC) so manifest URLs resolve.

    Each carries a strong ETag and Cache-Control; a matching If-None-Match is a 304.
    """
    cfg = next((s for s in svc.config.surveys if s.name == name and s.is_local), None)
    if cfg is None:
        raise ApiError(404, "unknown survey", f"no local survey {name!r}")
    if path not in _OTHER_FILES and not path.endswith(_ALLSKY):
        try:
            path = parse_tile_url(path).path
        except SkyRenderError as exc:
            raise ApiError(404, "not found", str(exc)) from None
    root = Path(cfg.url).resolve()
    full = (root / path).resolve()
    try:  # no way out of the survey's folder
        stat = full.stat() if full.is_relative_to(root) and full.is_file() else None
    except OSError:
        stat = None
    if stat is None:
        raise ApiError(404, "not found", path)
    # Files change only when the survey is rebuilt, which rewrites them: size, time and inode.
    etag = strong_etag("hips-file", cfg.name, path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    headers = {"ETag": etag, "Cache-Control": _POLICY.cache_control()}
    if if_none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(full, headers=headers, stat_result=stat)
