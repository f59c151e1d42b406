"""The compose stage's GPU path: the gather + blend of `skyrender.sampling.blend` as a wgpu
compute shader.

WGSL has no 64-bit floats or integers, so the split is: the f64 sky → HEALPix step stays
on the CPU (cdshealpix, exact at any order, at the poles and across faces); the CPU turns
each cell into a 32-bit index into the tile planes (a cheap integer pass); the GPU
gathers, blends, renormalises over cells with data, and writes NaN where the cell under
the pixel has none — the same rule as the numpy path. On a machine without a GPU,
Mesa's lavapipe gives wgpu a Vulkan adapter on the CPU, so this path is tested anyway.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numba
import numpy as np

from .sampling import Cells, TileSet, subpixel_offsets

log = logging.getLogger(__name__)

MISSING = np.uint32(0xFFFFFFFF)
WORKGROUP = 64
MAX_GROUPS = 65535

SHADER = """
struct Params { n: u32, k: u32, plane_offset: u32, row_stride: u32 };
@group(0) @binding(0) var<storage, read> planes: array<f32>;
@group(0) @binding(1) var<storage, read> cell_index: array<u32>;
@group(0) @binding(2) var<storage, read> cell_weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> result: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

fn is_nan(v: f32) -> bool {
    // Bit test: compilers may fold v != v away under fast-math rules.
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x + gid.y * params.row_stride;
    if (r >= params.n) { return; }
    var acc = 0.0;
    var wsum = 0.0;
    var wmax = 0.0;
    var nearest_ok = false;
    for (var c = 0u; c < params.k; c = c + 1u) {
        let wt = cell_weight[r * params.k + c];
        if (wt <= 0.0) { continue; }
        let i = cell_index[r * params.k + c];
        var ok = false;
        if (i != 0xffffffffu) {
            let v = planes[params.plane_offset + i];
            if (!is_nan(v)) {
                acc = acc + wt * v;
                wsum = wsum + wt;
                ok = true;
            }
        }
        if (wt > wmax) {
            wmax = wt;
            nearest_ok = ok;
        }
    }
    if (nearest_ok && wsum > 0.0) {
        result[r] = acc / wsum;
    } else {
        result[r] = bitcast<f32>(0x7fc00000u);
    }
}
"""


@numba.njit(cache=True, nogil=True)
def _cell_index(ipix, shift, npix_sorted, offsets, tile_size, out):
    """Flat index of every cell into one channel's planes (MISSING for absent tiles)."""
    n_rows, n_cells = ipix.shape
    n_tiles = npix_sorted.shape[0]
    mask = (np.uint64(1) << np.uint64(shift)) - np.uint64(1)
    ushift = np.uint64(shift)
    last_t = np.int64(-1)
    last_pos = 0
    for r in range(n_rows):
        for k in range(n_cells):
            p = ipix[r, k]
            t = np.int64(p >> ushift)
            if t != last_t:
                last_t = t
                last_pos = np.searchsorted(npix_sorted, t)
            if last_pos < n_tiles and npix_sorted[last_pos] == t:
                out[r, k] = np.uint32(last_pos * tile_size + offsets[np.int64(p & mask)])
            else:
                out[r, k] = np.uint32(0xFFFFFFFF)


class WgpuBlender:
    """A wgpu device with the blend pipeline compiled; `blend` mirrors `sampling.blend`."""

    def __init__(self, adapter, device):
        import wgpu

        self._wgpu = wgpu
        self.adapter = adapter
        self.device = device
        self.max_binding = int(device.limits["max-storage-buffer-binding-size"])
        module = device.create_shader_module(code=SHADER)
        self.pipeline = device.create_compute_pipeline(
            layout="auto", compute={"module": module, "entry_point": "main"}
        )
        self._planes_key: tuple[int, tuple[int, ...]] | None = None
        self._planes_buffer = None

    @classmethod
    def create(cls, power_preference: str = "high-performance") -> WgpuBlender | None:
        """A blender on the best adapter, or None when there is none (never raises for that)."""
        if not os.environ.get("XDG_RUNTIME_DIR"):
            # Mesa complains on every call without it; a private 0700 directory is enough.
            os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="xdg-")
        try:
            import wgpu

            adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
            if adapter is None:
                return None
            device = adapter.request_device_sync()
        except Exception as exc:  # no driver, no adapter: the numpy path takes over
            log.info("no wgpu adapter: %s", exc)
            return None
        return cls(adapter, device)

    @property
    def adapter_info(self) -> dict[str, str]:
        info = self.adapter.info
        return {
            k: str(info.get(k, ""))
            for k in ("device", "vendor", "adapter_type", "backend_type", "description")
        }

    def _planes(self, tiles: TileSet):
        """Upload the tile planes once per TileSet (the same object blended again reuses them)."""
        key = (id(tiles.planes), tiles.planes.shape)
        if self._planes_key != key:
            data = np.ascontiguousarray(tiles.planes, dtype=np.float32)
            self._planes_buffer = self.device.create_buffer_with_data(
                data=data, usage=self._wgpu.BufferUsage.STORAGE
            )
            self._planes_key = key
        return self._planes_buffer

    def blend(self, cells: Cells, tiles: TileSet) -> np.ndarray:
        """float32 (C, N): the weighted blend, NaN where nothing covers (see `sampling.blend`)."""
        from .sampling import blend as cpu_blend

        n, k = cells.ipix.shape
        n_channels = tiles.n_channels
        plane_size = tiles.planes[0].size
        if tiles.npix.size == 0 or n == 0:
            return np.full((n_channels, n), np.nan, dtype=np.float32)
        if tiles.planes.nbytes > self.max_binding or n * k * 4 > self.max_binding or plane_size >= 2**32 - 1:
            return cpu_blend(cells, tiles)  # over the device's binding size: the CPU does it
        index = np.empty((n, k), dtype=np.uint32)
        _cell_index(
            cells.ipix, 2 * tiles.tile_depth, tiles.npix, subpixel_offsets(tiles.tile_depth),
            tiles.tile_width**2, index,
        )  # fmt: skip
        wgpu = self._wgpu
        dev = self.device
        planes = self._planes(tiles)
        index_buf = dev.create_buffer_with_data(data=index, usage=wgpu.BufferUsage.STORAGE)
        weight_buf = dev.create_buffer_with_data(
            data=np.ascontiguousarray(cells.weights, dtype=np.float32), usage=wgpu.BufferUsage.STORAGE
        )
        out = np.empty((n_channels, n), dtype=np.float32)
        groups = -(-n // WORKGROUP)
        gx = min(groups, MAX_GROUPS)
        gy = -(-groups // gx)
        result = dev.create_buffer(size=n * 4, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
        for c in range(n_channels):
            params = np.array([n, k, c * plane_size, gx * WORKGROUP], dtype=np.uint32)
            params_buf = dev.create_buffer_with_data(data=params, usage=wgpu.BufferUsage.UNIFORM)
            bind = dev.create_bind_group(
                layout=self.pipeline.get_bind_group_layout(0),
                entries=[
                    {"binding": 0, "resource": {"buffer": planes, "offset": 0, "size": planes.size}},
                    {"binding": 1, "resource": {"buffer": index_buf, "offset": 0, "size": index_buf.size}},
                    {"binding": 2, "resource": {"buffer": weight_buf, "offset": 0, "size": weight_buf.size}},
                    {"binding": 3, "resource": {"buffer": result, "offset": 0, "size": result.size}},
                    {"binding": 4, "resource": {"buffer": params_buf, "offset": 0, "size": params_buf.size}},
                ],
            )
            encoder = dev.create_command_encoder()
            compute = encoder.begin_compute_pass()
            compute.set_pipeline(self.pipeline)
            compute.set_bind_group(0, bind)
            compute.dispatch_workgroups(gx, gy, 1)
            compute.end()
            dev.queue.submit([encoder.finish()])
            out[c] = np.frombuffer(dev.queue.read_buffer(result), dtype=np.float32, count=n)
        return out
