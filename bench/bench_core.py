"""Speed of the sky-math core, side by side with astropy reproject on the same output.

Tiles are decoded into memory first; the timed part is pixel → sky → HEALPix cells →
blend (what the compose stage does). Prints Mpix/s per configuration, and the ratio to
``reproject_interp`` over ``hips_as_dask_array`` (bilinear) measured in the same run.

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


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) if repeats < 3 else statistics.median(times)


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
    print(f"{'field':<26}{'interp':<10}{'ms':>9}{'Mpix/s':>9}{'reproject ms':>14}{'ratio':>8}")
    geom0 = make_geometry(266.4, -28.9, 20.0, 64, 64)
    reproject(geom0, tiles, frame)  # compile the kernels outside the timing
    reproject(geom0, tiles, frame, interpolation="nearest")
    for width, height in sizes:
        geom = make_geometry(266.4, -28.9, 20.0, width, height)
        ref_s = (
            reference(planck, 3, geom) if (width * height <= 1024 * 768 or not args.short) else float("nan")
        )
        for interp in ("nearest", "bilinear"):
            secs = best_of(lambda g=geom, i=interp: reproject(g, tiles, frame, interpolation=i), repeats)
            mpix = width * height / secs / 1e6
            ratio = ref_s / secs if interp == "bilinear" else float("nan")
            print(
                f"{f'TAN {width}x{height}':<26}{interp:<10}{secs * 1e3:9.1f}{mpix:9.2f}"
                f"{(ref_s * 1e3 if interp == 'bilinear' else float('nan')):14.1f}{ratio:8.1f}"
            )

    # What a compose replica does (serve_config: num_threads 0): the same render on every core.
    cores = resolve_threads(0)
    geom = make_geometry(266.4, -28.9, 20.0, 1024, 768)
    secs = best_of(lambda g=geom: reproject(g, tiles, frame, num_threads=cores), repeats)
    print(
        f"{f'TAN 1024x768, {cores} threads':<26}{'bilinear':<10}{secs * 1e3:9.1f}"
        f"{1024 * 768 / secs / 1e6:9.2f}{'':>14}{'':>8}"
    )
    # The peer the issue names: CDS hips2fits' method (astropy WCS + cdshealpix + numpy), one core.
    ours = best_of(lambda g=geom: reproject(g, tiles, frame), repeats)
    peer_ms = peers.hips2fits_method_ms(load_tiles(planck, 3), 3, geom, frame, repeats)
    print(
        f"{'TAN 1024x768, CDS method':<26}{'bilinear':<10}{peer_ms:9.1f}{1024 * 768 / peer_ms / 1e3:9.2f}"
        f"{'':>14}{'':>8}   ours {ours * 1e3:.1f} ms = {peer_ms / ours / 1e3:.1f}x faster"
    )

    gaia = HIPS / "cds-gaia-dr2-rv"
    gtiles, gframe = load_tileset(gaia, 3)
    for proj in ("AIT", "MOL"):
        geom = make_geometry(0.0, 0.0, 360.0, 1024, 512, proj)
        secs = best_of(lambda g=geom: reproject(g, gtiles, gframe), repeats)
        ref_s = reference(gaia, 3, geom) if (proj == "AIT" or not args.short) else float("nan")
        print(
            f"{f'{proj} all-sky 1024x512':<26}{'bilinear':<10}{secs * 1e3:9.1f}"
            f"{1024 * 512 / secs / 1e6:9.2f}{ref_s * 1e3:14.1f}{ref_s / secs:8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
