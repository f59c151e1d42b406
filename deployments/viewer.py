"""The sky viewer page: static HTML, CSS and JavaScript shipped in the package.

``/`` sends a browser to ``/viewer``; the page and its three files are read from
``deployments/static/viewer`` (package data: no CDN, no build step) and talk only to this
service's own endpoints (``v1/surveys``, ``v1/preview``), by relative URLs so the page also
works behind a path prefix.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from .errors import ApiError

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).with_name("static") / "viewer"

_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}

router = APIRouter(include_in_schema=False)


@cache
def _asset(name: str) -> tuple[bytes, str]:
    path = STATIC_DIR / name
    return path.read_bytes(), _MEDIA_TYPES[path.suffix] + "; charset=utf-8"


def _files() -> frozenset[str]:
    return frozenset(p.name for p in STATIC_DIR.iterdir() if p.suffix in _MEDIA_TYPES)


_ASSETS = _files()


def _respond(name: str) -> Response:
    content, media_type = _asset(name)
    # Revalidate every time: a deploy must not leave browsers on an older script.
    return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/")
async def root() -> RedirectResponse:
    """Browsers land on the viewer."""
    return RedirectResponse("viewer", status_code=307)


@router.get("/viewer")
async def viewer_page() -> Response:
    """The viewer's page."""
    return _respond("index.html")


@router.get("/viewer/{name}")
async def viewer_asset(name: str) -> Response:
    """The page's scripts and style sheet (only the files shipped, by exact name)."""
    if name not in _ASSETS or name == "index.html":
        raise ApiError(404, "not found", f"no viewer file {name!r}")
    return _respond(name)
