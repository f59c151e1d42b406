"""HiPS tile addressing: ``NorderK/DirD/NpixN.ext`` with D = (N // 10000) * 10000, both ways."""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import TilePathError

__all__ = [
    "FORMAT_EXT",
    "MAX_ORDER",
    "TileId",
    "allsky_path",
    "format_of",
    "parse_tile_url",
    "tile_path",
    "tile_url",
]

#: Tile format name → file extension (HiPS 1.0 §4.2).
FORMAT_EXT = {"fits": "fits", "jpeg": "jpg", "png": "png"}
_EXT_FORMAT = {"fits": "fits", "jpg": "jpeg", "jpeg": "jpeg", "png": "png"}

#: Deepest HEALPix order a 64-bit NESTED index can hold.
MAX_ORDER = 29

_TILE_RE = re.compile(
    r"(?:^|/)Norder(\d{1,2})/Dir(\d{1,20})/Npix(\d{1,20})\.(fits|jpg|jpeg|png)$", re.IGNORECASE
)


class TileId(NamedTuple):
    """A tile: HEALPix order, NESTED index at that order, and format (fits | jpeg | png)."""

    order: int
    npix: int
    format: str

    @property
    def path(self) -> str:
        return tile_path(self.order, self.npix, self.format)


def _check(order: int, npix: int) -> None:
    if not 0 <= order <= MAX_ORDER:
        raise TilePathError(f"order {order} outside 0..{MAX_ORDER}")
    if not 0 <= npix < 12 * 4**order:
        raise TilePathError(f"npix {npix} outside 0..{12 * 4**order - 1} for order {order}")


def format_of(fmt: str) -> str:
    """Canonical format name of a format or extension (``jpg`` → ``jpeg``)."""
    key = str(fmt).strip().lower().lstrip(".")
    if key not in _EXT_FORMAT:
        raise TilePathError(f"unknown tile format {fmt!r}; expected fits, jpeg or png")
    return _EXT_FORMAT[key]


def tile_path(order: int, npix: int, fmt: str) -> str:
    """Relative path of a tile, e.g. ``Norder3/Dir0/Npix300.fits``."""
    order, npix = int(order), int(npix)
    _check(order, npix)
    ext = FORMAT_EXT[format_of(fmt)]
    return f"Norder{order}/Dir{(npix // 10000) * 10000}/Npix{npix}.{ext}"


def tile_url(root: str, order: int, npix: int, fmt: str) -> str:
    """URL (or local path) of a tile under a survey root, with or without a trailing slash."""
    return f"{root.rstrip('/')}/{tile_path(order, npix, fmt)}"


def parse_tile_url(url: str) -> TileId:
    """(order, npix, format) of a tile URL or path; `TilePathError` for anything else.

    A query string or fragment is ignored (some servers add cache busters); the Dir
    component must match npix, as HiPS prescribes.
    """
    if not isinstance(url, str) or len(url) > 4096:
        raise TilePathError("a tile URL must be a string of at most 4096 characters")
    path = re.split(r"[?#]", url, maxsplit=1)[0]
    match = _TILE_RE.search(path)
    if match is None:
        raise TilePathError(f"not a HiPS tile path (NorderK/DirD/NpixN.fits|jpg|png): {url[:200]!r}")
    order, directory, npix = int(match.group(1)), int(match.group(2)), int(match.group(3))
    _check(order, npix)
    if directory != (npix // 10000) * 10000:
        raise TilePathError(
            f"Dir{directory} does not hold Npix{npix} (expected Dir{(npix // 10000) * 10000})"
        )
    return TileId(order, npix, format_of(match.group(4)))


def allsky_path(fmt: str, order: int = 3) -> str:
    """Relative path of the Allsky mosaic of ``order`` (``Norder3/Allsky.jpg``)."""
    return f"Norder{int(order)}/Allsky.{FORMAT_EXT[format_of(fmt)]}"
