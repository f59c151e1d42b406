"""The wgpu compute path gives the numpy path's pixels (lavapipe here, a GPU in production)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from skyrender.geometry import make_geometry
from skyrender.gpu import WgpuBlender
from skyrender.render import compute_cells
from skyrender.sampling import TileSet, blend

from .tiles_on_disk import tileset

#: f32 accumulation on the GPU vs f64 on the CPU: agreement to 1e-5 of the data range.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def gpu():
    blender = WgpuBlender.create()
    if blender is None:
        if os.environ.get("CI") and not os.environ.get("SKYRENDER_ALLOW_NO_GPU"):
            pytest.fail("no wgpu adapter: CI installs mesa-vulkan-drivers so this path must run")
        pytest.skip("no wgpu adapter on this machine (install mesa-vulkan-drivers for lavapipe)")
    return blender


def _agree(gpu, cells, tiles):
    cpu = blend(cells, tiles)
    out = gpu.blend(cells, tiles)
    assert out.shape == cpu.shape and out.dtype == np.float32
    assert np.array_equal(np.isnan(out), np.isnan(cpu)), "different coverage"
    finite = np.isfinite(cpu)
    if finite.any():
        span = float(np.nanmax(cpu) - np.nanmin(cpu)) or 1.0
        assert np.abs(out[finite] - cpu[finite]).max() <= TOLERANCE * span
    return cpu


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_real_tiles_dss2(gpu, hips_dir, interpolation):
    tiles = tileset(hips_dir / "cds-dss2-red", 3)
    geom = make_geometry(266.4, -28.9, 4.0, 1024, 768)
    cpu = _agree(gpu, compute_cells(geom, "icrs", 12, interpolation), tiles)
    assert np.isfinite(cpu).mean() > 0.9


@pytest.mark.parametrize(
    "ra,dec,fov,proj", [(0.0, 89.9, 20.0, "TAN"), (45.0, 41.8, 30.0, "SIN"), (0.0, 0.0, 360.0, "AIT")]
)
def test_gaia_poles_and_faces(gpu, hips_dir, ra, dec, fov, proj):
    tiles = tileset(hips_dir / "cds-gaia-dr2-rv", 3)
    geom = make_geometry(ra, dec, fov, 512, 256, proj)
    _agree(gpu, compute_cells(geom, "icrs", 8), tiles)


def test_random_tiles_colour_and_missing(gpu):
    rng = np.random.default_rng(5)
    arrays = {
        int(n): rng.normal(size=(3, 8, 8)).astype(np.float32) for n in rng.choice(48, 30, replace=False)
    }
    for a in list(arrays.values())[:5]:
        a[:, :2, :2] = np.nan
    tiles = TileSet.from_tiles(1, arrays)
    geom = make_geometry(30.0, 10.0, 120.0, 300, 200, "ZEA")
    _agree(gpu, compute_cells(geom, "icrs", 4), tiles)


def test_reports_its_adapter(gpu):
    info = gpu.adapter_info
    assert info["backend_type"] and info["device"]
