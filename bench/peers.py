"""Peers measured in the same run as our code, for the ratio (this machine's speed drifts)."""

from __future__ import annotations

import statistics
import time

import numpy as np


def hips2fits_method_ms(
    tiles: dict[int, np.ndarray], order: int, geom, frame: str, repeats: int, clock=time.perf_counter
) -> float:
    """CDS hips2fits' method on decoded tiles, median ms: astropy WCS ``pixel_to_world`` →
    the survey's frame → cdshealpix bilinear (4 cells and weights) → numpy gather and sum.

    ``tiles`` maps npix at ``order`` to FITS-ordered (tile_width, tile_width) arrays.
    ``clock``: wall time by default; ``time.process_time`` gives the process's CPU time
    (steadier on a shared machine).
    """
    from cdshealpix import nested

    from skyrender.sampling import subpixel_offsets

    keys = np.array(sorted(tiles))
    stack = np.stack([tiles[k] for k in keys]).reshape(len(keys), -1)
    tile_depth = int(np.log2(stack.shape[1]) // 2)
    depth = order + tile_depth
    offsets = subpixel_offsets(tile_depth)
    sub_mask = (1 << (2 * tile_depth)) - 1
    times = []
    for _ in range(repeats):
        t0 = clock()
        ys, xs = np.mgrid[0 : geom.height, 0 : geom.width]
        sky = geom.wcs.pixel_to_world(xs, ys)
        if frame == "galactic":
            sky = sky.galactic
            lon, lat = sky.l, sky.b
        else:
            sky = sky.icrs
            lon, lat = sky.ra, sky.dec
        ipix, weights = nested.bilinear_interpolation(lon.ravel(), lat.ravel(), depth)
        ipix = np.asarray(ipix).astype(np.int64)
        tile = ipix >> (2 * tile_depth)
        pos = np.clip(np.searchsorted(keys, tile), 0, len(keys) - 1)
        values = stack[pos, offsets[ipix & sub_mask]]
        values[keys[pos] != tile] = np.nan
        _ = np.nansum(values * np.asarray(weights), axis=1).reshape(geom.height, geom.width)
        times.append(clock() - t0)
    return statistics.median(times) * 1e3
