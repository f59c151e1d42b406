"""Test-side loading of HiPS FITS tiles with astropy alone (independent of skyrender.decode)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from skyrender.sampling import TileSet


def load_fits_tiles(survey_dir: Path, order: int) -> dict[int, np.ndarray]:
    """``{npix: float32 tile}`` of every FITS tile of ``order`` (BLANK → NaN, FITS row order)."""
    tiles = {}
    for path in sorted(Path(survey_dir, f"Norder{order}").glob("Dir*/Npix*.fits")):
        npix = int(re.search(r"Npix(\d+)\.fits$", path.name).group(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path) as hdul:
                hdu = hdul[0]
                blank = hdu.header.get("BLANK")
                raw = hdu.data  # astropy applies BSCALE/BZERO
                data = np.asarray(raw, dtype=np.float32)
                if blank is not None and hdu.header.get("BITPIX", 0) > 0:
                    scale = hdu.header.get("BSCALE", 1.0)
                    zero = hdu.header.get("BZERO", 0.0)
                    data[data == np.float32(float(blank) * scale + zero)] = np.nan
        tiles[npix] = data
    return tiles


def tileset(survey_dir: Path, order: int) -> TileSet:
    tiles = load_fits_tiles(survey_dir, order)
    return TileSet.from_tiles(order, tiles, tile_width=next(iter(tiles.values())).shape[-1])
