"""Which tiles a field needs: order choice and tile listing.

The order follows CDS hips2fits: take the first HEALPix order whose pixel is no larger
than the output pixel, subtract log2(tile width) to get the tile order, and clamp it to
the survey's [order_min, order].

The tile list is exact for the pixels it samples: the bilinear cells (four per position,
so neighbours across tile edges are included) of every border pixel of the image and of
an interior grid finer than a tile. A tile the field touches is either crossed by the
border or lies wholly inside, where the grid catches it. Fields wider than 180 degrees,
or with pixels off the sky (all-sky projections), take every tile of the order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .frames import rotation_matrix
from .geometry import OutputGeometry
from .projection import _rotate_lonlat
from .sampling import sample_cells
from .tiles import tile_url

__all__ = [
    "ManifestTile",
    "choose_order",
    "field_tiles",
    "filter_by_moc",
    "healpix_pixel_size_deg",
    "load_moc",
    "tile_manifest",
]

log = logging.getLogger(__name__)


def healpix_pixel_size_deg(order: int) -> float:
    """Mean side of a HEALPix cell of ``order`` [deg] (sqrt of its solid angle)."""
    return math.degrees(math.sqrt(4 * math.pi / (12 * 4**order)))


def choose_order(pixel_scale_deg: float, tile_width: int, order_min: int, order_max: int) -> int:
    """Tile order for an output pixel size, the hips2fits way.

    Parameters
    ----------
    pixel_scale_deg : float
        Output pixel side [deg].
    tile_width : int
        Survey tile width [pixels], a power of two.
    order_min, order_max : int
        The survey's ``hips_order_min`` and ``hips_order``.
    """
    depth = int(tile_width).bit_length() - 1
    pixel_order = 29
    for k in range(30):
        if healpix_pixel_size_deg(k) <= pixel_scale_deg:
            pixel_order = k
            break
    return int(min(max(pixel_order - depth, order_min), order_max))


@dataclass(frozen=True)
class ManifestTile:
    """One tile of a manifest."""

    id: str
    order: int
    npix: int
    url: str

    @property
    def nside(self) -> int:
        """HEALPix NSIDE of the tile's own order."""
        return 1 << self.order


def field_tiles(geom: OutputGeometry, survey_frame: str, order: int, tile_depth: int) -> np.ndarray:
    """Sorted tile indices (int64) of ``order`` that a bilinear render of ``geom`` reads."""
    w, h = geom.width, geom.height
    fov_x = geom.pixel_scale_deg * w
    fov_y = geom.pixel_scale_deg * h
    if max(fov_x, fov_y) > 180.0:
        return np.arange(12 * 4**order, dtype=np.int64)
    # Tile side in output pixels decides the interior grid step (a few samples per tile).
    tile_px = healpix_pixel_size_deg(order) / geom.pixel_scale_deg
    step = max(1, min(32, int(tile_px / 4)))
    xs = np.unique(np.r_[np.arange(0, w, step), w - 1]).astype(float)
    ys = np.unique(np.r_[np.arange(0, h, step), h - 1]).astype(float)
    border_x = np.r_[np.arange(w), np.arange(w), np.zeros(h), np.full(h, w - 1)]
    border_y = np.r_[np.zeros(w), np.full(w, h - 1), np.arange(h), np.arange(h)]
    grid_x, grid_y = np.meshgrid(xs, ys)
    px = np.r_[border_x, grid_x.ravel()]
    py = np.r_[border_y, grid_y.ravel()]
    lon, lat, valid = _lonlat_at(geom, px, py, survey_frame)
    if not valid.all():
        return np.arange(12 * 4**order, dtype=np.int64)
    cells = sample_cells(lon, lat, valid, order + tile_depth, "bilinear")
    return np.unique((cells.ipix >> np.uint64(2 * tile_depth)).astype(np.int64))


def _lonlat_at(geom: OutputGeometry, px: np.ndarray, py: np.ndarray, survey_frame: str):
    """Survey-frame positions [rad] of scattered pixels (a few thousand: astropy is fine)."""
    with np.errstate(invalid="ignore"):
        lon_deg, lat_deg = geom.wcs.all_pix2world(px, py, 0)
    return _rotate_lonlat(np.radians(lon_deg), np.radians(lat_deg), rotation_matrix(geom.frame, survey_frame))


def load_moc(data: bytes, *, source: str = "Moc.fits"):
    """A `mocpy.MOC` from the bytes of a HiPS ``Moc.fits``.

    A HiPS MOC is in the HiPS frame whatever its ``COORDSYS`` says (HipsGen writes the
    survey's frame letter there, e.g. ``G``; HiPS clients read the cells as they are), so
    the cells are read as they are and a disagreeing ``COORDSYS`` is logged once per
    ``source``.
    """
    from io import BytesIO

    from astropy.io import fits
    from mocpy import MOC

    with fits.open(BytesIO(data)) as hdul:
        header = hdul[1].header if len(hdul) > 1 else hdul[0].header
        coordsys = str(header.get("COORDSYS", "C")).strip().upper()
        if coordsys not in ("C", ""):
            if source not in _MOC_WARNED:
                _MOC_WARNED.add(source)
                log.warning("%s says COORDSYS=%r: its cells are read in the HiPS frame", source, coordsys)
            header["COORDSYS"] = "C"  # what mocpy accepts; the cells stay as they are
            buffer = BytesIO()
            hdul.writeto(buffer)
            data = buffer.getvalue()
    return MOC.from_fits(BytesIO(data))


#: Sources whose COORDSYS warning was logged (once each).
_MOC_WARNED: set[str] = set()


def filter_by_moc(npix: np.ndarray, order: int, moc) -> np.ndarray:
    """Keep the tiles of ``order`` that intersect ``moc`` (a `mocpy.MOC`)."""
    if moc is None or npix.size == 0:
        return npix
    # Degrading a MOC only grows it, so a tile survives iff its ancestor cell is covered.
    coarse = moc.degrade_to_order(order) if moc.max_order > order else moc
    cells = coarse.flatten().astype(np.int64)
    ancestors = npix >> (2 * (order - coarse.max_order))
    return npix[np.isin(ancestors, cells)]


def tile_manifest(
    geom: OutputGeometry,
    survey,
    *,
    order: int | None = None,
    fmt: str | None = None,
    moc=None,
) -> list[ManifestTile]:
    """Tiles of ``survey`` (a `HipsSurvey`) that a render of ``geom`` reads.

    Parameters
    ----------
    geom : OutputGeometry
    survey : HipsSurvey
    order : int, optional
        Force a tile order; default: `choose_order`.
    fmt : str, optional
        Tile format for the URLs; default: the survey's first format.
    moc : mocpy.MOC, optional
        Survey coverage; tiles outside it are dropped.
    """
    if order is None:
        order = choose_order(geom.pixel_scale_deg, survey.tile_width, survey.order_min, survey.order)
    fmt = fmt or survey.data_format
    npix = field_tiles(geom, survey.frame, order, survey.tile_depth)
    npix = filter_by_moc(npix, order, moc)
    return [
        ManifestTile(
            id=f"{order}/{int(n)}", order=order, npix=int(n), url=tile_url(survey.root, order, int(n), fmt)
        )
        for n in npix
    ]
