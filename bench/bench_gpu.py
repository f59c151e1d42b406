"""CPU (numba) blend vs wgpu blend on the same cells: real DSS2 tiles, 1024×768 output;
then the grid path (`skyrender.grid`): CPU pass vs wgpu pass on the same grid plan.

The cells (f64 sky → HEALPix, cdshealpix) are computed once and not timed: both paths
share that step. Prints ms per blend (median) with the tile planes already on the
device, and the first GPU call on a new `TileSet` (planes uploaded). The GPU path's CPU
part is nil: the cells are uploaded as raw uint64/float64 bits (see `skyrender.gpu`).

    python bench/bench_gpu.py            # full run
    python bench/bench_gpu.py --short    # CI: fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

from skyrender.geometry import make_geometry
from skyrender.gpu import WgpuBlender
from skyrender.grid import grid_blend, plan_grid
from skyrender.render import compute_cells
from skyrender.sampling import TileSet, blend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.shared_dir import SHARED_DIR  # noqa: E402

HIPS = SHARED_DIR / "data" / "hips"


def load_dss2(order: int = 3) -> TileSet:
    """DSS2 red tiles decoded with astropy (BITPIX 16, BLANK −32768 → NaN)."""
    tiles = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CDS tiles are unpadded and carry a float BLANK
        for path in sorted((HIPS / "cds-dss2-red" / f"Norder{order}").glob("Dir*/Npix*.fits")):
            raw = fits.getdata(path)
            data = raw.astype(np.float32)
            data[raw == -32768] = np.nan
            tiles[int(path.stem[4:])] = data
    return TileSet.from_tiles(order, tiles)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="fewer repeats (CI)")
    args = parser.parse_args(argv)
    repeats = 3 if args.short else 15

    t0 = time.perf_counter()
    blender = WgpuBlender.create()
    if blender is None:
        print("no wgpu adapter: nothing to compare (install mesa-vulkan-drivers for lavapipe)")
        return 0
    info = blender.adapter_info
    setup = time.perf_counter() - t0
    print(f"adapter: {info['name']} ({info['backend']}, {info['device_type']}), {setup:.2f} s")
    tiles = load_dss2()
    geom = make_geometry(266.4, -28.9, 6.0, 1024, 768)
    print(f"{geom.width}x{geom.height}, DSS2 red order 3: {tiles.npix.size} tiles of {tiles.tile_width} px")
    for interpolation in ("bilinear", "nearest"):
        cells = compute_cells(geom, "icrs", tiles.order + tiles.tile_depth, interpolation)
        blend(cells, tiles)  # numba compile
        t0 = time.perf_counter()
        blender.blend(cells, TileSet(tiles.order, tiles.tile_depth, tiles.npix, tiles.planes))
        cold = 1e3 * (time.perf_counter() - t0)  # a new TileSet: planes uploaded
        blender.blend(cells, tiles)
        cpu = median_ms(lambda c=cells: blend(c, tiles), repeats)
        gpu = median_ms(lambda c=cells: blender.blend(c, tiles), repeats)
        print(
            f"{interpolation:>8}: CPU blend {cpu:7.1f} ms | GPU blend {gpu:7.1f} ms "
            f"(first call, planes uploaded: {cold:7.1f} ms)"
        )
    # Grid sampling: the f64 plan (exact nodes, per-cell polynomials) is shared and timed
    # apart; the passes interpolate, gather and blend every pixel.
    t0 = time.perf_counter()
    plan = plan_grid(geom, "icrs", tiles.order + tiles.tile_depth)
    plan_ms = 1e3 * (time.perf_counter() - t0)
    print(f"grid plan (CPU, f64): step {plan.step} px, {plan_ms:.1f} ms")
    for interpolation in ("bilinear", "nearest"):
        bilinear = interpolation == "bilinear"
        cpu_values, _ = grid_blend(plan, tiles, bilinear=bilinear)
        gpu_values, _ = blender.grid_blend(plan, tiles, bilinear=bilinear)
        both = np.isfinite(cpu_values) & np.isfinite(gpu_values)
        span = float(np.nanmax(cpu_values) - np.nanmin(cpu_values)) or 1.0
        diff = float(np.abs(cpu_values - gpu_values)[both].max()) / span if both.any() else 0.0
        cpu = median_ms(lambda b=bilinear: grid_blend(plan, tiles, bilinear=b), repeats)
        gpu = median_ms(lambda b=bilinear: blender.grid_blend(plan, tiles, bilinear=b), repeats)
        print(
            f"{interpolation:>8}: CPU grid pass {cpu:7.1f} ms | GPU grid pass {gpu:7.1f} ms "
            f"(max |GPU - CPU| {diff:.1e} of the range)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
