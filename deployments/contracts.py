"""What travels between the stages: typed, frozen and picklable.

ingress ─RenderSpec, [TileRequest]→ fetch ─FetchedTiles→ compose ─Composed→ encode
(with a DisplaySpec) ─EncodedImage→ ingress. Each stage's handle call takes and returns
exactly these; nothing is passed as a dict or a tuple. When the shared cache holds every
tile of a render, the ingress makes its FetchedTiles itself (`RenderChain.tiles`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skyrender.display import Cut
from skyrender.geometry import OutputGeometry

from .admission import StageReport

__all__ = [
    "Composed",
    "DisplaySpec",
    "EncodedImage",
    "FetchedTiles",
    "RenderSpec",
    "TileOutcome",
    "TileRequest",
    "TilesLost",
]


class TileOutcome(enum.StrEnum):
    """How the fetch stage obtained (or failed to obtain) one tile."""

    HIT = "hit"  # in the shared cache
    COALESCED = "coalesced"  # another request was fetching it; we waited for that fetch
    FETCHED = "fetched"  # fetched by us and published to the cache
    NOCACHE = "nocache"  # fetched by us; the cache was unavailable
    MISSING = "missing"  # the upstream has no such tile: the area is uncovered
    BROKEN = "broken"  # undecodable or over the size limit: skipped

    @property
    def from_cache(self) -> bool:
        return self in (TileOutcome.HIT, TileOutcome.COALESCED)

    @property
    def downloaded(self) -> bool:
        return self in (TileOutcome.FETCHED, TileOutcome.NOCACHE)


@dataclass(frozen=True)
class TileRequest:
    """One tile the fetch stage is asked for.

    Attributes
    ----------
    npix : int
        NESTED index at the render's order.
    key : str
        Cache key, ``<survey>/<order>/<npix>.<format>``.
    location : str
        Where to read it: an upstream URL, or a file of a local survey.
    format : str
        Tile format: fits | jpeg | png.
    allsky_npix : tuple of int
        Non-empty: ``location`` is the order-3 ``Allsky`` mosaic, and these are the tiles
        to cut from it (``npix`` is then unused).
    """

    npix: int
    key: str
    location: str
    format: str
    allsky_npix: tuple[int, ...] = ()


@dataclass(frozen=True)
class RenderSpec:
    """What compose needs besides the tiles: the output geometry and the tiles' HEALPix layout.

    Attributes
    ----------
    geometry : OutputGeometry
        The output image (WCS, width and height [pixels]).
    survey_frame : str
        The survey's frame (icrs, galactic, ecliptic).
    order : int
        HEALPix order of the tiles.
    tile_width : int or None
        Tile side [pixels]; None: as the tiles come (an Allsky mosaic's are narrower).
    interpolation : str or None
        nearest | bilinear; None: the configured default.
    """

    geometry: OutputGeometry
    survey_frame: str
    order: int
    tile_width: int | None
    interpolation: str | None = None


@dataclass(frozen=True)
class DisplaySpec:
    """How encode turns the float image into bytes.

    Attributes
    ----------
    format : str
        png | jpeg | fits.
    cmap, stretch : str
        Matplotlib colormap name; one of `skyrender.display.STRETCHES`.
    min_cut, max_cut : Cut or None
        Parsed cuts (data units or percentiles); None: the default.
    survey_cut : tuple of float or None
        The survey's ``hips_pixel_cut`` [data units], used when no cut is given.
    header : Any
        The FITS header of the output (FITS only).
    rgb : bool
        Expand a palette image to RGB (hips2fits clients expect it).
    """

    format: str = "png"
    cmap: str = "viridis"
    stretch: str = "linear"
    min_cut: Cut | None = None
    max_cut: Cut | None = None
    survey_cut: tuple[float, float] | None = None
    header: Any = None
    rgb: bool = False


@dataclass(frozen=True)
class FetchedTiles:
    """What the fetch stage hands to compose (or the ingress, from the cache: `RenderChain.tiles`).

    ``tiles`` maps npix to the decoded tile, or to an ObjectRef into the object store
    (cache hits: compose reads them from any node).
    """

    tiles: dict[int, Any] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    broken: dict[str, str] = field(default_factory=dict)
    outcomes: dict[TileOutcome, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: Wall-clock (start, end) of each stage so far [s since the epoch]: the hand-offs between
    #: them are the gaps (same host clock; on a cluster, node clocks' skew adds in).
    stamps: tuple[float, ...] = ()
    #: When the stage finished (Unix time) [s]: compose's queue wait starts here.
    finished_at: float = 0.0
    #: What the stages so far measured (`deployments.admission`), for the ingress's estimator.
    reports: tuple[StageReport, ...] = ()
    #: Who read the tiles, for the log line: "fetch" (the fetch stage), "cache" (the ingress,
    #: asking the cache actor) or "kept" (the ingress, from references a recent lookup gave).
    via: str = "fetch"



@dataclass(frozen=True)
class Composed:
    """The compose stage's output: the float image and facts for logs and headers.

    ``image`` is float32 (height, width) or (3, height, width), FITS row order.
    """

    image: np.ndarray
    backend: str
    seconds: float
    tiles_used: int
    fetch_seconds: float = 0.0
    tile_outcomes: dict[TileOutcome, int] = field(default_factory=dict)
    stamps: tuple[float, ...] = ()  # fetch's and compose's (start, end), see `FetchedTiles`
    finished_at: float = 0.0
    reports: tuple[StageReport, ...] = ()


@dataclass(frozen=True)
class EncodedImage:
    """The encode stage's output: the bytes, their media type, and where the time went [s]."""

    body: bytes
    media_type: str
    encode_seconds: float
    compose_seconds: float
    fetch_seconds: float
    backend: str
    tiles_used: int
    tile_outcomes: dict[TileOutcome, int] = field(default_factory=dict)
    stamps: tuple[float, ...] = ()  # fetch's, compose's and encode's (start, end), see `FetchedTiles`
    reports: tuple[StageReport, ...] = ()


class TilesLost(Exception):
    """Tiles handed to compose as object-store references could not be read: their owner
    (the cache actor) or the node holding them died between fetch and compose. Worth one
    retry of the render (the fetch then reads them again); never drawn as holes."""
