"""``/hips/<name>/...``: a local survey's files (tiles, properties, MOC, Allsky), so the
tile URLs of a manifest resolve for a local survey too."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from skyrender.errors import SkyRenderError
from skyrender.tiles import parse_tile_url

from .errors import ApiError
from .services import ServicesDep

__all__ = ["router"]

router = APIRouter()

_OTHER_FILES = ("properties", "Moc.fits")
_ALLSKY = ("Allsky.fits", "Allsky.jpg", "Allsky.png")


@router.get("/hips/{name}/{path:path}", include_in_schema=False)
async def hips_file(svc: ServicesDep, name: str, path: str) -> Response:
    """Serve a local survey's files (tiles, properties, MOC) so manifest URLs resolve."""
    cfg = next((s for s in svc.config.surveys if s.name == name and s.is_local), None)
    if cfg is None:
        raise ApiError(404, "unknown survey", f"no local survey {name!r}")
    if path not in _OTHER_FILES and not path.endswith(_ALLSKY):
        try:
            path = parse_tile_url(path).path
        except SkyRenderError as exc:
            raise ApiError(404, "not found", str(exc)) from None
    full = Path(cfg.url, path)
    if not full.is_file():
        raise ApiError(404, "not found", path)
    return FileResponse(full)
