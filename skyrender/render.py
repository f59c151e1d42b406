"""One render, split into the steps the service runs on different workers.

``plan_render`` (cheap: geometry → order → tile list) → fetch and decode the tiles
(I/O, not here) → ``reproject`` (sky math: positions, cells, blend) → display/encode.
`render_field` chains them for a local survey, for the command line and the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import GeometryError
from .geometry import OutputGeometry
from .manifest import ManifestTile, choose_order, tile_manifest
from .projection import pixel_lonlat
from .sampling import INTERPOLATIONS, Cells, TileSet, blend, sample_cells

#: Ways to find the survey cells of each output pixel: `skyrender.grid` (exact positions on a
#: coarse grid, interpolated in between) or the exact per-pixel path.
SAMPLINGS = ("grid", "exact")


@dataclass(frozen=True)
class RenderPlan:
    """What a render needs: the geometry, the tile order and the tiles."""

    geometry: OutputGeometry
    survey_frame: str
    order: int
    tile_depth: int
    tiles: list[ManifestTile]


def plan_render(
    geom: OutputGeometry,
    survey,
    *,
    order: int | None = None,
    fmt: str | None = None,
    moc=None,
    max_tiles: int | None = None,
):
    """The order and tiles of ``survey`` (a `HipsSurvey`) that a render of ``geom`` reads.

    With ``max_tiles``, a chosen order whose tiles would be more than that steps down to
    coarser orders (4x fewer tiles each) until they fit or the survey's shallowest order
    is reached: the picture keeps its size and field, with less detail.
    """
    explicit = order is not None
    if order is None:
        order = choose_order(geom.pixel_scale_deg, survey.tile_width, survey.order_min, survey.order)
    tiles = tile_manifest(geom, survey, order=order, fmt=fmt, moc=moc)
    while not explicit and max_tiles is not None and len(tiles) > max_tiles and order > survey.order_min:
        order -= 1
        tiles = tile_manifest(geom, survey, order=order, fmt=fmt, moc=moc)
    return RenderPlan(
        geometry=geom, survey_frame=survey.frame, order=order, tile_depth=survey.tile_depth, tiles=tiles
    )


def compute_cells(
    geom: OutputGeometry,
    survey_frame: str,
    pixel_order: int,
    interpolation: str = "bilinear",
    num_threads: int = 1,
) -> Cells:
    """Survey cells and weights of every output pixel (the f64 sky step)."""
    if interpolation not in INTERPOLATIONS:
        raise GeometryError(f"unknown interpolation {interpolation!r}; expected one of {INTERPOLATIONS}")
    lon, lat, valid = pixel_lonlat(
        geom.wcs, geom.width, geom.height, wcs_frame=geom.frame, target_frame=survey_frame,
        num_threads=num_threads,
    )  # fmt: skip
    return sample_cells(lon, lat, valid, pixel_order, interpolation, num_threads=num_threads)


def reproject(
    geom: OutputGeometry,
    tiles: TileSet,
    survey_frame: str,
    *,
    interpolation: str = "bilinear",
    num_threads: int = 1,
    blender: Callable[[Cells, TileSet], np.ndarray] | None = None,
    sampling: str = "grid",
    grid_blender: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """Render ``tiles`` onto ``geom``.

    ``sampling="grid"`` (`skyrender.grid`) computes exact positions on a coarse grid of
    output pixels and interpolates in between, within a measured error of 0.01 output
    pixel; ``"exact"`` computes every pixel's position and cells. The wgpu path replaces
    the CPU pass: ``grid_blender`` (`WgpuBlender.grid_blend`) on the grid path,
    ``blender`` (`WgpuBlender.blend`) on the exact path.

    Returns
    -------
    ndarray
        float32 (height, width) for grey tiles, (3, height, width) for colour; FITS
        order (row 0 = bottom); NaN where the sky is off the projection or not covered.
    """
    if sampling not in SAMPLINGS:
        raise GeometryError(f"unknown sampling {sampling!r}; expected one of {SAMPLINGS}")
    if interpolation not in INTERPOLATIONS:
        raise GeometryError(f"unknown interpolation {interpolation!r}; expected one of {INTERPOLATIONS}")
    if sampling == "grid":
        from .grid import grid_reproject_values

        values = grid_reproject_values(
            geom, tiles, survey_frame, interpolation=interpolation, num_threads=num_threads,
            grid_blender=grid_blender,
        )  # fmt: skip
    else:
        cells = compute_cells(geom, survey_frame, tiles.order + tiles.tile_depth, interpolation, num_threads)
        values = blender(cells, tiles) if blender is not None else blend(cells, tiles, num_threads)
    image = values.reshape(tiles.n_channels, geom.height, geom.width)
    return image[0] if tiles.n_channels == 1 else image


def render_field(
    geom: OutputGeometry,
    survey,
    load_tile: Callable[[ManifestTile], np.ndarray | None],
    *,
    interpolation: str = "bilinear",
    order: int | None = None,
    moc=None,
    num_threads: int = 1,
    sampling: str = "grid",
) -> np.ndarray:
    """Plan, load (``load_tile`` returns a decoded tile or None when missing) and reproject."""
    plan = plan_render(geom, survey, order=order, moc=moc)
    decoded = {}
    for tile in plan.tiles:
        data = load_tile(tile)
        if data is not None:
            decoded[tile.npix] = data
    tileset = TileSet.from_tiles(plan.order, decoded, tile_width=survey.tile_width)
    return reproject(
        geom, tileset, survey.frame, interpolation=interpolation, num_threads=num_threads, sampling=sampling
    )
