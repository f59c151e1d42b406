"""Warm-up: run every step of a render once on a small synthetic field.

The first call of each numba kernel compiles it (or loads it from numba's cache), and
the first colormap, stretch and encoder call imports matplotlib, astropy.visualization
and Pillow's plugins: ~2-3 s altogether on a cold process. A service calls these before
it takes traffic, so no caller pays for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

__all__ = ["warm_decode", "warm_display", "warm_planning", "warm_render"]

#: The synthetic field: 64 x 48 pixels, 20 deg wide, so it spans several order-0 tiles.
_WIDTH, _HEIGHT, _FOV_DEG = 64, 48, 20.0
_TILE_WIDTH = 8

_PROPERTIES = """creator_did = ivo://skyrender/warmup
hips_order = 3
hips_order_min = 0
hips_tile_width = 8
hips_frame = galactic
hips_tile_format = fits
"""


def _geometry(projection: str = "TAN"):
    from .geometry import make_geometry

    return make_geometry(266.4, -28.9, _FOV_DEG, _WIDTH, _HEIGHT, projection, 0.0, "icrs")


def _tiles(channels: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (_TILE_WIDTH, _TILE_WIDTH) if channels == 1 else (channels, _TILE_WIDTH, _TILE_WIDTH)
    return {npix: rng.random(shape, dtype=np.float32) for npix in range(12)}


def warm_planning() -> float:
    """Plan a render (geometry, order, tile list) once; returns the seconds it took."""
    from .properties import survey_from_properties
    from .render import plan_render

    start = time.perf_counter()
    survey = survey_from_properties(_PROPERTIES, "/warmup")
    for projection in ("TAN", "AIT"):
        plan_render(_geometry(projection), survey)
    return time.perf_counter() - start


def warm_render(
    *,
    num_threads: int = 1,
    blender: Callable | None = None,
    interpolations: tuple[str, ...] | None = None,
) -> float:
    """Reproject grey and colour tiles with every interpolation; returns the seconds it took.

    Parameters
    ----------
    num_threads : int
        As the service renders (0: every core), so the threaded paths run too.
    blender : callable, optional
        The GPU blend (`skyrender.gpu.WgpuBlender.blend`) when the service uses it.
    interpolations : tuple of str, optional
        Default: every one of `skyrender.sampling.INTERPOLATIONS`.
    """
    from .render import SAMPLINGS, reproject
    from .sampling import INTERPOLATIONS, TileSet

    start = time.perf_counter()
    for projection in ("TAN", "AIT"):  # a field, and an all-sky one (face edges, poles, off-sky pixels)
        geom = _geometry(projection)
        for channels in (1, 3):
            tiles = TileSet.from_tiles(0, _tiles(channels), tile_width=_TILE_WIDTH)
            for sampling in SAMPLINGS:
                for interpolation in interpolations or INTERPOLATIONS:
                    # A survey frame unlike the output's, so the frame rotation runs too.
                    reproject(
                        geom, tiles, "galactic", interpolation=interpolation, num_threads=num_threads,
                        blender=blender, sampling=sampling,
                    )  # fmt: skip
    return time.perf_counter() - start


def warm_display(*, png_opts: dict | None = None, jpeg_opts: dict | None = None) -> float:
    """Cuts, every stretch, a colormap, RGB, PNG, JPEG and FITS once; returns the seconds it took."""
    from .display import STRETCHES, as_rgb, to_display
    from .encode import encode_fits, encode_image

    start = time.perf_counter()
    image = np.random.default_rng(0).random((_HEIGHT, _WIDTH), dtype=np.float32)
    image[0, :4] = np.nan  # the no-data path
    for stretch in STRETCHES:
        img = to_display(image, stretch=stretch, cmap="viridis", min_cut="0.5%", max_cut="99.5%")
    encode_image(img, "png", **(png_opts or {}))
    encode_image(img, "jpeg", **(jpeg_opts or {}))
    rgb = as_rgb(img)
    encode_image(rgb, "png", **(png_opts or {}))
    encode_image(rgb, "jpeg", **(jpeg_opts or {}))
    colour = to_display(np.stack([image] * 3), stretch="linear")
    encode_image(colour, "png", **(png_opts or {}))
    encode_fits(image, _geometry().header())
    return time.perf_counter() - start


def warm_decode() -> float:
    """Decode a small FITS, PNG and JPEG tile once; returns the seconds it took."""
    from .decode import decode_tile
    from .display import to_display
    from .encode import encode_fits, encode_image

    start = time.perf_counter()
    tile = np.random.default_rng(0).random((_TILE_WIDTH, _TILE_WIDTH), dtype=np.float32)
    decode_tile(encode_fits(tile), "fits")
    img = to_display(tile)
    for fmt in ("png", "jpeg"):
        decode_tile(encode_image(img, fmt)[0], fmt)
    return time.perf_counter() - start
