"""HEALPix sampling of HiPS tiles: which survey cells feed each output pixel, and the blend.

A HiPS tile of order K and width w = 2**k holds the NESTED cells of order K + k that
descend from cell ``npix`` of order K. Inside the tile, the sub-index ``s`` of a cell
(``ipix = npix·4**k + s``) splits into the bits at even positions (i) and odd positions
(j); the cell sits at FITS pixel ``x = j``, ``y = w − 1 − i`` (row 0 = bottom), the layout
HipsGen writes and astropy reproject's HiPS reader assumes.

The sky → cells step is cdshealpix (its bilinear interpolation gives the four cells
around each position and their weights, across tile and face edges); the blend is a
small compiled loop, with a wgpu twin in `skyrender.gpu`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np
from cdshealpix import cdshealpix as _chp

from .threads import run_row_chunks

#: Interpolations understood by `sample_cells`.
INTERPOLATIONS = ("nearest", "bilinear")


@lru_cache(maxsize=16)
def subpixel_offsets(tile_depth: int) -> np.ndarray:
    """Offset ``y·w + x`` in a FITS-ordered tile of every sub-cell index ``s``.

    Returns an int32 array of length ``4**tile_depth``.
    """
    w = 1 << tile_depth
    s = np.arange(w * w, dtype=np.int64)
    i = np.zeros_like(s)
    j = np.zeros_like(s)
    for b in range(tile_depth):
        i |= ((s >> (2 * b)) & 1) << b
        j |= ((s >> (2 * b + 1)) & 1) << b
    out = (w - 1 - i) * w + j
    out.setflags(write=False)
    return out.astype(np.int32)


def tile_cells_xy(tile_depth: int) -> tuple[np.ndarray, np.ndarray]:
    """FITS pixel (x, y) of each sub-cell index, for writing tiles (inverse of the layout)."""
    off = subpixel_offsets(tile_depth)
    w = 1 << tile_depth
    return off % w, off // w


@dataclass(frozen=True)
class TileSet:
    """Decoded tiles of one order, stacked for vectorised gathering.

    Attributes
    ----------
    order : int
        HEALPix order of the tiles.
    tile_depth : int
        log2 of the tile width in pixels.
    npix : ndarray
        int64 (T,), sorted tile indices.
    planes : ndarray
        float32 (C, T, w, w): C = 1 for grey data, 3 for colour; FITS row order; NaN = blank.
    """

    order: int
    tile_depth: int
    npix: np.ndarray
    planes: np.ndarray

    @property
    def tile_width(self) -> int:
        return 1 << self.tile_depth

    @property
    def n_channels(self) -> int:
        return self.planes.shape[0]

    @classmethod
    def from_tiles(cls, order: int, tiles: dict[int, np.ndarray], tile_width: int | None = None) -> TileSet:
        """Stack ``{npix: array}`` (grey (w, w) or colour (3, w, w), FITS order).

        A tile of another width than the others is rejected with ValueError: it means a
        mis-described survey, and guessing would misplace its pixels.
        """
        keys = np.array(sorted(int(k) for k in tiles), dtype=np.int64)
        arrays = [tiles[int(k)] for k in keys]
        if tile_width is None:
            tile_width = arrays[0].shape[-1] if arrays else 1
        depth = int(tile_width).bit_length() - 1
        if 1 << depth != tile_width:
            raise ValueError(f"tile width {tile_width} is not a power of two")
        colour = any(a.ndim == 3 for a in arrays)
        n_channels = 3 if colour else 1
        planes = np.full((n_channels, len(arrays), tile_width, tile_width), np.nan, dtype=np.float32)
        for t, a in enumerate(arrays):
            if a.shape[-2:] != (tile_width, tile_width):
                raise ValueError(f"tile {keys[t]} has shape {a.shape}, expected width {tile_width}")
            if a.ndim == 2:
                planes[:, t] = a  # a grey tile in a colour set shows as grey
            else:
                planes[:, t] = a[:n_channels] if colour else a.mean(axis=0)
        return cls(order=order, tile_depth=depth, npix=keys, planes=planes)


@dataclass(frozen=True)
class Cells:
    """Survey cells feeding each output pixel.

    ``ipix`` uint64 (N, K) NESTED indices at order ``order + tile_depth``; ``weights``
    float64 (N, K), zero rows for pixels off the sky. K = 4 (bilinear) or 1 (nearest).
    """

    pixel_order: int
    ipix: np.ndarray
    weights: np.ndarray


def sample_cells(
    lon: np.ndarray,
    lat: np.ndarray,
    valid: np.ndarray,
    pixel_order: int,
    interpolation: str = "bilinear",
    num_threads: int = 1,
) -> Cells:
    """HEALPix cells and weights for sky positions.

    Parameters
    ----------
    lon, lat : ndarray
        float64 positions in the survey frame [rad], lon in [0, 2π).
    valid : ndarray
        bool mask; invalid positions get zero weights.
    pixel_order : int
        HEALPix order of the survey's pixels (tile order + log2(tile width)).
    interpolation : {"bilinear", "nearest"}
    num_threads : int
        Threads for cdshealpix (0 = all cores).
    """
    lon = np.ascontiguousarray(lon, dtype=np.float64)
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    n = lon.shape[0]
    threads = np.uint16(num_threads)
    if interpolation == "bilinear":
        ipix = np.empty((n, 4), dtype=np.uint64)
        weights = np.empty((n, 4), dtype=np.float64)
        _chp.bilinear_interpolation(np.uint8(pixel_order), lon, lat, ipix, weights, threads)
    elif interpolation == "nearest":
        ipix = np.empty((n, 1), dtype=np.uint64)
        dx = np.empty(n)
        dy = np.empty(n)
        depth = np.full(n, pixel_order, dtype=np.uint8)  # the Rust call wants a per-position depth
        _chp.lonlat_to_healpix(depth, lon, lat, ipix.reshape(n), dx, dy, threads)
        weights = np.ones((n, 1), dtype=np.float64)
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {INTERPOLATIONS}")
    if not valid.all():
        weights[~valid] = 0.0
        ipix[~valid] = 0
    return Cells(pixel_order=pixel_order, ipix=ipix, weights=weights)


@numba.njit(cache=True, nogil=True)
def _blend(ipix, weights, shift, npix_sorted, offsets, planes, out):
    n_rows, n_cells = ipix.shape
    n_tiles = npix_sorted.shape[0]
    tile_size = planes.shape[2] * planes.shape[3]
    n_channels = planes.shape[0]
    mask = (np.uint64(1) << np.uint64(shift)) - np.uint64(1)
    ushift = np.uint64(shift)
    flat = planes.reshape(n_channels, n_tiles * tile_size)
    for c in range(n_channels):
        # Neighbouring pixels fall in the same tile: remember the last lookup.
        last_t = np.int64(-1)
        last_pos = 0
        for r in range(n_rows):
            acc = 0.0
            wsum = 0.0
            wmax = 0.0
            nearest_ok = False
            for k in range(n_cells):
                wt = weights[r, k]
                if wt <= 0.0:
                    continue
                p = ipix[r, k]
                t = np.int64(p >> ushift)
                if t != last_t:
                    last_t = t
                    last_pos = np.searchsorted(npix_sorted, t)
                pos = last_pos
                ok = False
                if pos < n_tiles and npix_sorted[pos] == t:
                    v = flat[c, pos * tile_size + offsets[np.int64(p & mask)]]
                    if v == v:  # not NaN
                        acc += wt * v
                        wsum += wt
                        ok = True
                if wt > wmax:
                    wmax = wt
                    nearest_ok = ok
            # The cell holding the position must have data; the others are renormalised
            # over those present, so coverage edges keep their level instead of darkening.
            out[c, r] = acc / wsum if (nearest_ok and wsum > 0.0) else np.nan


def blend(cells: Cells, tiles: TileSet, num_threads: int = 1) -> np.ndarray:
    """Weighted blend of the cells' values: float32 (C, N), NaN where nothing covers.

    Parameters
    ----------
    cells : Cells
        From `sample_cells`, at ``pixel_order == tiles.order + tiles.tile_depth``.
    tiles : TileSet
        The tiles available; cells in missing tiles count as no data.
    num_threads : int
        Threads, over runs of output pixels (0 = every core).
    """
    if cells.pixel_order != tiles.order + tiles.tile_depth:
        raise ValueError(
            f"cells at order {cells.pixel_order} do not match tiles of order {tiles.order} "
            f"and depth {tiles.tile_depth}"
        )
    n = cells.ipix.shape[0]
    out = np.empty((tiles.n_channels, n), dtype=np.float32)
    if tiles.npix.size == 0:
        out.fill(np.nan)
        return out
    offsets = subpixel_offsets(tiles.tile_depth)
    shift = 2 * tiles.tile_depth
    # Runs of whole 256-pixel blocks: each run writes its own columns of ``out``.
    block = 256
    n_blocks = -(-n // block)

    def run(start: int, stop: int) -> None:
        a, b = start * block, min(stop * block, n)
        _blend(cells.ipix[a:b], cells.weights[a:b], shift, tiles.npix, offsets, tiles.planes, out[:, a:b])

    run_row_chunks(run, n_blocks, num_threads)
    return out


def needed_tiles(cells: Cells, tile_depth: int) -> np.ndarray:
    """Sorted unique tile indices (int64) that the cells with non-zero weight fall in."""
    used = cells.ipix[cells.weights > 0]
    return np.unique((used >> np.uint64(2 * tile_depth)).astype(np.int64))
