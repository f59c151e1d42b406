"""The wgpu compute path gives the numpy path's pixels (lavapipe here, a GPU in production).

Tolerance: the GPU sums in f32 with f32 weights, the CPU in f64; the values must agree to
``TOLERANCE`` × (data range of the CPU image), and the NaN masks must be identical (the
nearest cell is chosen on the f64 weights on both paths).

Without an adapter the tests skip, except in CI (``CI=true``), where they fail unless
``SKYRENDER_ALLOW_NO_GPU=1``: CI installs Mesa's lavapipe so that the shader really runs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from skyrender import gpu as gpu_module
from skyrender.geometry import make_geometry
from skyrender.gpu import WgpuBlender
from skyrender.render import compute_cells
from skyrender.sampling import Cells, TileSet, blend

from .tiles_on_disk import tileset

#: GPU vs CPU: max |diff| ≤ TOLERANCE × (max − min of the CPU image).
TOLERANCE = 1e-5


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def gpu() -> WgpuBlender:
    blender = WgpuBlender.create()
    if blender is None:
        if _ci() and os.environ.get("SKYRENDER_ALLOW_NO_GPU") != "1":
            pytest.fail("no wgpu adapter in CI: install mesa-vulkan-drivers libvulkan1 (lavapipe)")
        pytest.skip("no wgpu adapter on this machine (install mesa-vulkan-drivers for lavapipe)")
    return blender


@pytest.fixture(scope="module")
def dss2(hips_dir) -> TileSet:
    return tileset(hips_dir / "cds-dss2-red", 3)


@pytest.fixture(scope="module")
def gaia(hips_dir) -> TileSet:
    return tileset(hips_dir / "cds-gaia-dr2-rv", 3)


def _agree(blender: WgpuBlender, cells: Cells, tiles: TileSet) -> np.ndarray:
    cpu = blend(cells, tiles)
    out = blender.blend(cells, tiles)
    assert out.shape == cpu.shape and out.dtype == np.float32
    assert np.array_equal(np.isnan(out), np.isnan(cpu)), "different coverage"
    finite = np.isfinite(cpu)
    if finite.any():
        span = float(np.nanmax(cpu) - np.nanmin(cpu)) or 1.0
        assert np.abs(out[finite] - cpu[finite]).max() <= TOLERANCE * span
    return cpu


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_real_dss2_tiles_1024x768(gpu, dss2, interpolation):
    geom = make_geometry(266.4, -28.9, 6.0, 1024, 768)
    cpu = _agree(gpu, compute_cells(geom, "icrs", 3 + dss2.tile_depth, interpolation), dss2)
    assert np.isfinite(cpu).mean() > 0.9  # the field is really covered by the tiles


@pytest.mark.parametrize(
    "ra,dec,fov,proj",
    [
        (0.0, 89.9, 20.0, "TAN"),  # north polar cap, all four polar faces meet
        (0.0, -89.9, 20.0, "TAN"),
        (45.0, 41.8, 30.0, "SIN"),  # corner where equatorial and polar faces meet
        (0.0, 0.0, 360.0, "AIT"),  # the whole sky: every face and its edges
    ],
)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_gaia_poles_and_faces(gpu, gaia, ra, dec, fov, proj, interpolation):
    geom = make_geometry(ra, dec, fov, 512, 256, proj)
    cpu = _agree(gpu, compute_cells(geom, "icrs", 3 + gaia.tile_depth, interpolation), gaia)
    assert np.isfinite(cpu).any()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_tilesets_colour_missing_and_blank(gpu, seed):
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 5))
    order = int(rng.integers(0, 3))
    n_tiles = 12 * 4**order
    present = rng.choice(n_tiles, int(n_tiles * 0.7), replace=False)  # some tiles missing
    shape = (3, 1 << depth, 1 << depth) if seed == 2 else (1 << depth, 1 << depth)
    arrays = {int(n): rng.normal(100.0, 20.0, size=shape).astype(np.float32) for n in present}
    for a in list(arrays.values())[: len(arrays) // 3]:
        a[rng.random(a.shape) < 0.3] = np.nan  # blank pixels inside tiles
    tiles = TileSet.from_tiles(order, arrays)
    # Random weights, some zero or negative, as a stress test beyond what cdshealpix gives.
    n = 20000
    ipix = rng.integers(0, 12 * 4 ** (order + depth), size=(n, 4)).astype(np.uint64)
    weights = rng.random((n, 4))
    weights[rng.random((n, 4)) < 0.2] = 0.0
    weights[rng.random((n, 4)) < 0.05] = -1.0
    weights[:100] = 0.0  # rows off the sky
    _agree(gpu, Cells(order + depth, ipix, weights), tiles)
    geom = make_geometry(30.0, 10.0, 120.0, 300, 200, "ZEA")
    _agree(gpu, compute_cells(geom, "icrs", order + depth), tiles)


def test_chunked_rows_and_plane_groups(gpu, dss2):
    # 3 MiB bindings: DSS2 planes (1 MiB per tile) split into groups of 3 tiles, and the
    # 786k rows into chunks; the multi-pass accumulation must give the same image.
    small = WgpuBlender.create(max_binding=3 << 20)
    if small is None:
        pytest.fail("the adapter of the gpu fixture vanished")
    geom = make_geometry(266.4, -28.9, 6.0, 1024, 768)
    cells = compute_cells(geom, "icrs", 3 + dss2.tile_depth)
    _agree(small, cells, dss2)
    assert len(small._plane_groups) == -(-dss2.npix.size // 3)


def test_planes_uploaded_once_per_tileset(gpu, gaia):
    geom = make_geometry(10.0, 20.0, 30.0, 64, 64)
    cells = compute_cells(geom, "icrs", 3 + gaia.tile_depth)
    first = gpu.blend(cells, gaia)
    buffers = [b for _, _, b in gpu._plane_groups]
    second = gpu.blend(cells, gaia)
    assert [b for _, _, b in gpu._plane_groups] == buffers  # same device buffers, no upload
    np.testing.assert_array_equal(first, second)
    other = TileSet(gaia.order, gaia.tile_depth, gaia.npix, gaia.planes.copy())
    gpu.blend(cells, other)
    assert [b for _, _, b in gpu._plane_groups] != buffers  # another TileSet: uploaded anew


def test_nearest_cell_chosen_on_f64_weights(gpu):
    # Tile 1 is absent; cells 0..3 are in tile 0, 4..7 in tile 1, 8..11 in tile 2 (order 1).
    tiles = TileSet.from_tiles(0, {0: np.full((2, 2), 3.0, np.float32), 2: np.full((2, 2), 5.0, np.float32)})
    ipix = np.array([[5, 9, 0, 6], [9, 5, 0, 6], [5, 6, 0, 9], [0, 9, 5, 6]], dtype=np.uint64)
    # Row 0: the nearest (max-weight) cell is 9 by 1e-12, equal weights in f32: only the f64
    # comparison finds that it has data. Row 1: the nearest is the absent cell 5 → NaN.
    weights = np.array(
        [
            [0.25, 0.25 + 1e-12, 0.25, 0.0],
            [0.25, 0.25 + 1e-12, 0.25, 0.0],
            [0.4, 0.1, 0.2, 0.3],
            [0.5, 0.5, 0.0, -1.0],
        ]
    )
    cells = Cells(1, ipix, weights)
    cpu = _agree(gpu, cells, tiles)[0]
    assert np.isfinite(cpu[0]) and np.isnan(cpu[1]) and np.isnan(cpu[2]) and cpu[3] == 4.0


def test_empty_inputs(gpu, gaia):
    cells = Cells(8, np.zeros((0, 4), np.uint64), np.zeros((0, 4)))
    assert gpu.blend(cells, gaia).shape == (1, 0)
    empty = TileSet(3, 5, np.zeros(0, np.int64), np.zeros((1, 0, 32, 32), np.float32))
    one = Cells(8, np.zeros((2, 1), np.uint64), np.ones((2, 1)))
    assert np.isnan(gpu.blend(one, empty)).all()
    with pytest.raises(ValueError):
        gpu.blend(Cells(9, one.ipix, one.weights), gaia)


def test_reports_its_adapter(gpu):
    info = gpu.adapter_info
    assert info["name"] and info["backend"] and info["device_type"]
    assert info["backend_type"] == info["backend"] and info["adapter_type"] == info["device_type"]


def test_no_adapter_gives_none(monkeypatch):
    import wgpu

    def fail(**kwargs):
        raise RuntimeError("Request adapter failed: No suitable graphics adapter found")

    monkeypatch.setattr(wgpu.gpu, "request_adapter_sync", fail)
    assert gpu_module.WgpuBlender.create() is None


# -- grid sampling on the GPU (skyrender.grid plan in f64, interpolation + gather + blend in WGSL) --


def _grid_agree(blender: WgpuBlender, geom, tiles: TileSet, interpolation: str) -> np.ndarray:
    """The wgpu grid pass equals the numpy grid pass: f32 positions relative to each cell
    move a value by ≤ 1e-4 of the range (bilinear); nearest flips at most 0.1 % of pixels
    whose position is within ~1e-5 cell of a cell edge; coverage is the same but for a
    one-pixel rim."""
    from scipy.ndimage import binary_dilation

    from skyrender.render import reproject

    cpu = reproject(geom, tiles, "icrs", interpolation=interpolation)
    out = reproject(geom, tiles, "icrs", interpolation=interpolation, grid_blender=blender.grid_blend)
    assert out.shape == cpu.shape and out.dtype == np.float32
    nan_cpu, nan_gpu = np.isnan(cpu), np.isnan(out)
    rim = binary_dilation(nan_cpu) & binary_dilation(~nan_cpu)
    assert not ((nan_cpu != nan_gpu) & ~rim).any(), "different coverage"
    both = ~nan_cpu & ~nan_gpu
    if both.any():
        span = float(np.nanmax(cpu) - np.nanmin(cpu)) or 1.0
        diff = np.abs(out - cpu)[both] / span
        if interpolation == "bilinear":
            assert diff.max() <= 1e-4
        else:
            assert (diff > 0).mean() <= 1e-3
    return cpu


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_grid_real_dss2_tiles_1024x768(gpu, dss2, interpolation):
    geom = make_geometry(266.4, -28.9, 6.0, 1024, 768)
    cpu = _grid_agree(gpu, geom, dss2, interpolation)
    assert np.isfinite(cpu).mean() > 0.9


@pytest.mark.parametrize(
    "ra,dec,fov,proj",
    [
        (30.0, 90.0, 40.0, "TAN"),  # north polar cap
        (200.0, -88.0, 40.0, "ZEA"),  # south polar cap
        (45.0, 0.0, 40.0, "TAN"),  # faces 0, 4, 5, 8 meet
        (0.0, 0.0, 360.0, "AIT"),  # every face, the lattice's wrap at longitude 0, the sky's border
    ],
)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_grid_gaia_poles_and_faces(gpu, gaia, ra, dec, fov, proj, interpolation):
    geom = make_geometry(ra, dec, fov, 512, 256, proj)
    _grid_agree(gpu, geom, gaia, interpolation)


def test_grid_rows_in_several_dispatches_and_cpu_beyond_limits(gaia):
    # Gaia tiles of faces 4 and 5 (0.5 MiB) in 1 MiB bindings: the 512 rows go in two dispatches.
    keep = (gaia.npix // 64 == 4) | (gaia.npix // 64 == 5)
    tiles = TileSet(gaia.order, gaia.tile_depth, gaia.npix[keep], np.ascontiguousarray(gaia.planes[:, keep]))
    small = WgpuBlender.create(max_binding=1 << 20)
    if small is None:
        pytest.fail("no adapter")
    geom = make_geometry(67.5, 0.0, 120.0, 1024, 512, "CAR")
    _grid_agree(small, geom, tiles, "bilinear")
    # All of Gaia (3 MiB) does not fit one 1 MiB binding: the CPU pass answers, same pictures.
    _grid_agree(small, make_geometry(0.0, 0.0, 360.0, 256, 128, "AIT"), gaia, "bilinear")
