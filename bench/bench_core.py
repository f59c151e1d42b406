"""Speed of the sky-math core, side by side with astropy reproject on the same output.

Tiles are decoded into memory first; the timed part is pixel → sky → HEALPix cells →
blend (what the compose stage does), on the grid path (`skyrender.grid`, the default)
and the exact path. Prints Mpix/s per configuration, the ratio to ``reproject_interp``
over ``hips_as_dask_array`` (bilinear) and to CDS hips2fits' method, both measured in
the same run, and the grid's measured position error.

    python bench/bench_core.py            # full run
    python bench/bench_core.py --short    # CI: fewer sizes and repeats
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from skyrender.decode import decode_tile
from skyrender.geometry import make_geometry
from skyrender.grid import pixel_errors, plan_grid
from skyrender.properties import load_survey
from skyrender.render import reproject
from skyrender.sampling import TileSet
from skyrender.threads import resolve_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import peers  # noqa: E402

from tests.shared_dir import SHARED_DIR  # noqa: E402

HIPS = SHARED_DIR / "data" / "hips"


def load_tiles(survey_dir: Path, order: int) -> dict[int, np.ndarray]:
    """Every FITS tile of ``order``, decoded: npix → (tile_width, tile_width) array."""
    tiles = {}
    for path in sorted((survey_dir / f"Norder{order}").glob("Dir*/Npix*.fits")):
        tiles[int(path.stem[4:])] = decode_tile(path.read_bytes(), "fits")
    return tiles


def load_tileset(survey_dir: Path, order: int) -> tuple[TileSet, str]:
    survey = load_survey(str(survey_dir))
    tiles = load_tiles(survey_dir, order)
    return TileSet.from_tiles(order, tiles, tile_width=survey.tile_width), survey.frame


def best_of(fn, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times) if repeats < 3 else statistics.median(times)


def interleaved(geom, tiles: TileSet, frame: str, peer_tiles: dict, rounds: int, clock) -> dict[str, float]:
    """Median [s] by ``clock`` of our grid and exact paths and CDS's method on ``geom``, one core,
    over ``rounds`` rounds that each run all three (ours grid 3 times, the peer and exact once)."""
    times: dict[str, list[float]] = {"grid": [], "peer": [], "exact": []}
    for _ in range(rounds):
        times["grid"].append(best_of(lambda: reproject(geom, tiles, frame, sampling="grid"), 3, clock))
        times["peer"].append(peers.hips2fits_method_ms(peer_tiles, 3, geom, frame, 1, clock) / 1e3)
        times["exact"].append(best_of(lambda: reproject(geom, tiles, frame, sampling="exact"), 1, clock))
    return {name: statistics.median(values) for name, values in times.items()}


def reference(survey_dir: Path, order: int, geom) -> float:
    from reproject import reproject_interp
    from reproject.hips import hips_as_dask_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array, wcs = hips_as_dask_array(str(survey_dir), level=order)
        t0 = time.perf_counter()
        reproject_interp((array, wcs), geom.wcs, shape_out=(geom.height, geom.width), order="bilinear")
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI mode: fewer sizes, fewer repeats")
    args = parser.parse_args(argv)
    repeats = 2 if args.short else 5
    sizes = [(512, 512), (1024, 768)] if args.short else [(512, 512), (1024, 768), (2048, 2048)]

    planck = HIPS / "cds-planck-hfi143"
    tiles, frame = load_tileset(planck, 3)
    print(f"# skyrender core benchmark  (cores: {os.cpu_count()}, numba threads: 1, cdshealpix threads: 1)")
    print(
        f"# survey: Planck HFI 143 GHz, order 3, {tiles.npix.size} tiles of {tiles.tile_width} px (galactic)"
    )
    print(f"{'field':<26}{'interp':<10}{'sampling':<9}{'ms':>9}{'Mpix/s':>9}{'reproject ms':>14}{'ratio':>8}")
    geom0 = make_geometry(266.4, -28.9, 20.0, 64, 64)
    for sampling in ("grid", "exact"):  # compile the kernels outside the timing
        reproject(geom0, tiles, frame, sampling=sampling)
        reproject(geom0, tiles, frame, interpolation="nearest", sampling=sampling)
    for width, height in sizes:
        geom = make_geometry(266.4, -28.9, 20.0, width, height)
        ref_s = (
            reference(planck, 3, geom) if (width * height <= 1024 * 768 or not args.short) else float("nan")
        )
        for interp in ("nearest", "bilinear"):
            for sampling in ("grid", "exact"):
                def run(g=geom, i=interp, s=sampling):
                    return reproject(g, tiles, frame, interpolation=i, sampling=s)

                secs = best_of(run, repeats)
                mpix = width * height / secs / 1e6
                ratio = ref_s / secs if interp == "bilinear" else float("nan")
                print(
                    f"{f'TAN {width}x{height}':<26}{interp:<10}{sampling:<9}{secs * 1e3:9.1f}{mpix:9.2f}"
                    f"{(ref_s * 1e3 if interp == 'bilinear' else float('nan')):14.1f}{ratio:8.1f}"
                )

    # What a compose replica does (serve_config: num_threads 0): the same render on every core.
    cores = resolve_threads(0)
    geom = make_geometry(266.4, -28.9, 20.0, 1024, 768)
    for sampling in ("grid", "exact"):
        secs = best_of(
            lambda g=geom, s=sampling: reproject(g, tiles, frame, num_threads=cores, sampling=s), repeats
        )
        print(
            f"{f'TAN 1024x768, {cores} threads':<26}{'bilinear':<10}{sampling:<9}{secs * 1e3:9.1f}"
            f"{1024 * 768 / secs / 1e6:9.2f}{'':>14}{'':>8}"
        )
    # The peer the issue names: CDS hips2fits' method (astropy WCS + cdshealpix + numpy), one core.
    # Rounds alternate ours and the peer, and each takes the median of its rounds: the cores' speed
    # drifts by tens of percent within a minute here, and two back-to-back blocks measured two machines.
    rounds = 3 if args.short else 5
    peer_tiles = load_tiles(planck, 3)
    wall = interleaved(geom, tiles, frame, peer_tiles, rounds, time.perf_counter)
    print(
        f"{'TAN 1024x768, CDS method':<26}{'bilinear':<10}{'':<9}{wall['peer'] * 1e3:9.1f}"
        f"{1024 * 768 / wall['peer'] / 1e6:9.2f}"
    )
    for name in ("grid", "exact"):
        secs = wall[name]
        print(
            f"  ours, {name:<5} (1 core): {secs * 1e3:7.1f} ms = {1024 * 768 / secs / 1e6:6.1f} Mpix/s"
            f" = {wall['peer'] / secs:5.1f}x CDS's method"
        )
    # The same in process CPU time: steadier than wall time when others share the cores.
    cpu = interleaved(geom, tiles, frame, peer_tiles, rounds, time.process_time)
    print(f"  CPU time: CDS's method {cpu['peer'] * 1e3:.1f} ms")
    for name in ("grid", "exact"):
        secs = cpu[name]
        print(
            f"  CPU time: ours, {name:<5} {secs * 1e3:7.1f} ms = {1024 * 768 / secs / 1e6:6.1f} Mpix/s"
            f" = {cpu['peer'] / secs:5.1f}x CDS's method"
        )
    plan = plan_grid(geom, frame, tiles.order + tiles.tile_depth)
    err_px, err_cells = pixel_errors(plan, geom, frame)
    print(
        f"  grid: step {plan.step} px, {plan.interpolated_fraction:.1%} of cells interpolated; measured "
        f"position error at every interpolated pixel: max {err_px.max():.1e} px "
        f"({err_cells.max():.1e} cell), median {np.median(err_px):.1e} px"
    )

    gaia = HIPS / "cds-gaia-dr2-rv"
    gtiles, gframe = load_tileset(gaia, 3)
    for proj in ("AIT", "MOL"):
        geom = make_geometry(0.0, 0.0, 360.0, 1024, 512, proj)
        ref_s = reference(gaia, 3, geom) if (proj == "AIT" or not args.short) else float("nan")
        for sampling in ("grid", "exact"):
            secs = best_of(lambda g=geom, s=sampling: reproject(g, gtiles, gframe, sampling=s), repeats)
            print(
                f"{f'{proj} all-sky 1024x512':<26}{'bilinear':<10}{sampling:<9}{secs * 1e3:9.1f}"
                f"{1024 * 512 / secs / 1e6:9.2f}{ref_s * 1e3:14.1f}{ref_s / secs:8.1f}"
            )
        plan = plan_grid(geom, gframe, gtiles.order + gtiles.tile_depth)
        err_px, _ = pixel_errors(plan, geom, gframe, every=2)
        print(
            f"  grid: step {plan.step} px, {plan.interpolated_fraction:.1%} of cells interpolated, "
            f"max error {err_px.max():.1e} px"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
