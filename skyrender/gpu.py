"""The compose stage's GPU path: the gather + blend of `skyrender.sampling.blend` as a wgpu
compute shader.

WGSL has no 64-bit floats or integers, so the work is split:

* CPU, f64: sky → HEALPix cells and weights (`sampling.sample_cells`, cdshealpix; exact at
  any order, at the poles and across faces).
* CPU, one integer pass (`_prepare`, numba): each cell becomes a u32 flat index into one
  channel of the stacked tile planes (``tile_position·w² + offset``, ``MISSING`` for an
  absent tile) and an f32 weight; the max-weight cell of each row is moved to slot 0, chosen
  on the f64 weights so that ties broken by the f32 rounding cannot change the coverage.
* GPU: gather, NaN skip, weighted sum renormalised over the cells with data, NaN where the
  slot-0 cell has none: the rule of the numpy path.

The other split — uploading ipix as (lo, hi) u32 pairs and binary-searching the tiles in
the shader — needs no CPU pass over the cells but doubles the upload and has no exact
f64 weight comparison for the nearest cell; measured on 1024×768 bilinear cells the
integer pass costs about as much as the f64 → f32 weight cast the other split needs
anyway, so the index is precomputed here (``bench/bench_gpu.py`` prints both).

Buffers stay under the device's ``max_storage_buffer_binding_size``: rows are processed in
chunks, and tile planes larger than one binding are split into groups of whole tiles,
blended in several passes that accumulate (sum, weight, nearest-has-data) per row. The
uploaded planes are kept for the last `TileSet` object blended (held by weak reference),
so re-rendering the same tiles uploads nothing but the cells.

Without a GPU, Mesa's lavapipe gives wgpu a Vulkan adapter on the CPU, so this path is
tested anyway (``apt-get install mesa-vulkan-drivers libvulkan1``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import weakref
from typing import Any

import numba
import numpy as np

from .sampling import Cells, TileSet, subpixel_offsets
from .sampling import blend as cpu_blend

log = logging.getLogger(__name__)

#: Flat index of a cell whose tile is not in the `TileSet`.
MISSING = np.uint32(0xFFFFFFFF)
#: Threads per workgroup (1-D); rows beyond 65535 groups wrap into the y dimension.
WORKGROUP = 64
MAX_CHANNELS = 4

SHADER = """
struct Params {
    n: u32,             // rows in this chunk
    k: u32,             // cells per row (slot 0 = max weight)
    n_channels: u32,
    row_stride: u32,    // rows per y step of the dispatch grid
    base: u32,          // first flat index (per channel) held by this plane group
    count: u32,         // flat indices (per channel) held by this plane group
    first: u32,         // 1: start from zero, else continue from `state`
    last: u32,          // 1: write `result`, else save to `state`
};
@group(0) @binding(0) var<storage, read> planes: array<f32>;       // (C, group tiles·w²)
@group(0) @binding(1) var<storage, read> cell_index: array<u32>;   // (n, k)
@group(0) @binding(2) var<storage, read> cell_weight: array<f32>;  // (n, k)
@group(0) @binding(3) var<storage, read_write> result: array<f32>; // (C, n)
@group(0) @binding(4) var<storage, read_write> state: array<f32>;  // (C, n, 3) between passes
@group(0) @binding(5) var<uniform> params: Params;

fn is_nan(v: f32) -> bool {
    // Bit test: shader compilers may fold v != v away.
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x + gid.y * params.row_stride;
    if (r >= params.n) { return; }
    let n = params.n;
    let nc = params.n_channels;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var wsum = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var near = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    if (params.first == 0u) {
        for (var c = 0u; c < nc; c = c + 1u) {
            let s = (c * n + r) * 3u;
            acc[c] = state[s];
            wsum[c] = state[s + 1u];
            near[c] = state[s + 2u];
        }
    }
    for (var j = 0u; j < params.k; j = j + 1u) {
        let wt = cell_weight[r * params.k + j];
        if (wt <= 0.0) { continue; }
        let i = cell_index[r * params.k + j];
        // MISSING (0xffffffff) and cells of other plane groups fail this range test.
        if (i < params.base || i - params.base >= params.count) { continue; }
        for (var c = 0u; c < nc; c = c + 1u) {
            let v = planes[c * params.count + (i - params.base)];
            if (!is_nan(v)) {
                acc[c] = acc[c] + wt * v;
                wsum[c] = wsum[c] + wt;
                if (j == 0u) { near[c] = 1.0; }
            }
        }
    }
    for (var c = 0u; c < nc; c = c + 1u) {
        if (params.last == 1u) {
            if (near[c] > 0.0 && wsum[c] > 0.0) {
                result[c * n + r] = acc[c] / wsum[c];
            } else {
                result[c * n + r] = bitcast<f32>(0x7fc00000u);
            }
        } else {
            let s = (c * n + r) * 3u;
            state[s] = acc[c];
            state[s + 1u] = wsum[c];
            state[s + 2u] = near[c];
        }
    }
}
"""


@numba.njit(cache=True, nogil=True)
def _prepare(ipix, weights, shift, npix_sorted, offsets, tile_size, index, wout):
    """Per cell: u32 flat index into one channel's planes and f32 weight, nearest cell first.

    ``index``/``wout`` are (N, K) outputs. A row's max-weight cell (first of equal f64
    weights, as in `sampling._blend`) is swapped into slot 0; the blend is a sum, so the
    order of the other cells does not matter beyond f32 rounding.
    """
    n_rows, n_cells = ipix.shape
    n_tiles = npix_sorted.shape[0]
    mask = (np.uint64(1) << np.uint64(shift)) - np.uint64(1)
    ushift = np.uint64(shift)
    last_t = np.int64(-1)
    last_pos = 0
    for r in range(n_rows):
        best = 0
        wmax = 0.0
        for k in range(n_cells):
            wt = weights[r, k]
            if wt > wmax:
                wmax = wt
                best = k
            p = ipix[r, k]
            t = np.int64(p >> ushift)
            if t != last_t:  # neighbouring pixels share a tile: reuse the last search
                last_t = t
                last_pos = np.searchsorted(npix_sorted, t)
            if last_pos < n_tiles and npix_sorted[last_pos] == t:
                index[r, k] = np.uint32(last_pos * tile_size + offsets[np.int64(p & mask)])
            else:
                index[r, k] = np.uint32(0xFFFFFFFF)
            wout[r, k] = np.float32(wt) if wt > 0.0 else np.float32(0.0)
        if best != 0:
            i0 = index[r, 0]
            w0 = wout[r, 0]
            index[r, 0] = index[r, best]
            wout[r, 0] = wout[r, best]
            index[r, best] = i0
            wout[r, best] = w0


def prepare_cells(cells: Cells, tiles: TileSet) -> tuple[np.ndarray, np.ndarray]:
    """The CPU part of the GPU blend: (u32 flat index, f32 weight), both (N, K), nearest first.

    The flat index is ``tile_position·w² + offset`` within one channel of ``tiles.planes``
    (`MISSING` where the cell's tile is absent).
    """
    n, k = cells.ipix.shape
    index = np.empty((n, k), dtype=np.uint32)
    weight = np.empty((n, k), dtype=np.float32)
    _prepare(
        np.ascontiguousarray(cells.ipix, dtype=np.uint64),
        np.ascontiguousarray(cells.weights, dtype=np.float64),
        2 * tiles.tile_depth,
        np.ascontiguousarray(tiles.npix, dtype=np.int64),
        subpixel_offsets(tiles.tile_depth),
        tiles.tile_width**2,
        index,
        weight,
    )
    return index, weight


class WgpuBlender:
    """A wgpu device with the blend pipeline compiled; `blend` mirrors `sampling.blend`.

    Create one per process with `create` (adapter, device and pipeline cost ~0.5 s).
    Calls are serialised by a lock: the scratch buffers are shared.
    """

    def __init__(self, adapter: Any, device: Any, *, max_binding: int | None = None):
        import wgpu

        self._wgpu = wgpu
        self.adapter = adapter
        self.device = device
        limit = int(device.limits["max-storage-buffer-binding-size"])
        # `max_binding` (bytes) below the device limit lets tests exercise the chunking.
        self.max_binding = min(limit, int(max_binding)) if max_binding else limit
        self.max_groups = int(device.limits["max-compute-workgroups-per-dimension"])
        module = device.create_shader_module(code=SHADER)
        self.pipeline = device.create_compute_pipeline(
            layout="auto", compute={"module": module, "entry_point": "main"}
        )
        self._layout = self.pipeline.get_bind_group_layout(0)
        self._lock = threading.Lock()
        self._planes_of: weakref.ref[TileSet] | None = None
        self._plane_groups: list[tuple[int, int, Any]] = []  # (base, count, buffer)
        self._scratch: dict[str, Any] = {}
        self._dummy_state = device.create_buffer(size=16, usage=wgpu.BufferUsage.STORAGE)

    @classmethod
    def create(
        cls, power_preference: str = "high-performance", *, max_binding: int | None = None
    ) -> WgpuBlender | None:
        """A blender on the preferred adapter, or None when there is none (never raises for that).

        Parameters
        ----------
        power_preference : {"high-performance", "low-power"}
        max_binding : int, optional
            Cap on one storage binding [bytes], below the device's own limit.
        """
        if not os.environ.get("XDG_RUNTIME_DIR"):
            # Mesa complains on every call without it; a private 0700 directory is enough.
            os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="xdg-")
        try:
            import wgpu

            adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
            if adapter is None:
                return None
            # Ask for the adapter's own buffer limits: the defaults (128/256 MiB) are lower
            # than what most GPUs allow, and larger bindings mean fewer passes.
            wanted = ("max-storage-buffer-binding-size", "max-buffer-size")
            device = adapter.request_device_sync(required_limits={k: adapter.limits[k] for k in wanted})
            return cls(adapter, device, max_binding=max_binding)
        except Exception as exc:  # no driver, no adapter: the numpy path takes over
            log.info("no wgpu adapter: %s", exc)
            return None

    @property
    def adapter_info(self) -> dict[str, str]:
        """Adapter description: ``name``, ``backend``, ``device_type`` (CPU, DiscreteGPU, ...),
        plus wgpu's own keys ``device``, ``vendor``, ``adapter_type``, ``backend_type``,
        ``description``."""
        info = self.adapter.info
        out = {
            k: str(info.get(k, ""))
            for k in ("device", "vendor", "adapter_type", "backend_type", "description")
        }
        out.update(name=out["device"], backend=out["backend_type"], device_type=out["adapter_type"])
        return out

    # -- buffers -----------------------------------------------------------------------

    def _upload_planes(self, tiles: TileSet) -> list[tuple[int, int, Any]]:
        """Tile planes on the device, in groups of whole tiles that fit one binding each."""
        if self._planes_of is not None and self._planes_of() is tiles:
            return self._plane_groups
        self._plane_groups = []  # release the previous survey's planes first
        n_channels, n_tiles = tiles.planes.shape[:2]
        tile_size = tiles.tile_width**2
        per_group = max(1, self.max_binding // (4 * n_channels * tile_size))
        flat = tiles.planes.reshape(n_channels, n_tiles, tile_size)
        groups = []
        for t0 in range(0, n_tiles, per_group):
            t1 = min(n_tiles, t0 + per_group)
            data = np.ascontiguousarray(flat[:, t0:t1], dtype=np.float32)
            buf = self.device.create_buffer_with_data(data=data, usage=self._wgpu.BufferUsage.STORAGE)
            groups.append((t0 * tile_size, (t1 - t0) * tile_size, buf))
        self._plane_groups = groups
        self._planes_of = weakref.ref(tiles)
        return groups

    def _buffer(self, name: str, size: int, usage: int) -> Any:
        """A scratch buffer of at least ``size`` bytes, reused across calls."""
        buf = self._scratch.get(name)
        if buf is None or buf.size < size:
            buf = self.device.create_buffer(size=max(size, 16), usage=usage)
            self._scratch[name] = buf
        return buf

    # -- blend -------------------------------------------------------------------------

    def blend(self, cells: Cells, tiles: TileSet) -> np.ndarray:
        """Weighted blend of the cells' values: float32 (C, N), NaN where nothing covers.

        Same contract as `skyrender.sampling.blend` (the result differs only by f32
        rounding of the sums: ~1e-7 of the data range).
        """
        if cells.pixel_order != tiles.order + tiles.tile_depth:
            raise ValueError(
                f"cells at order {cells.pixel_order} do not match tiles of order {tiles.order} "
                f"and depth {tiles.tile_depth}"
            )
        n, k = cells.ipix.shape
        n_channels = tiles.n_channels
        if tiles.npix.size == 0 or n == 0:
            return np.full((n_channels, n), np.nan, dtype=np.float32)
        tile_bytes = 4 * n_channels * tiles.tile_width**2
        if (
            n_channels > MAX_CHANNELS
            or tiles.planes[0].size >= int(MISSING)  # the u32 index would overflow
            or tile_bytes > self.max_binding  # one tile must fit a binding
        ):
            log.warning("tile set too large for the wgpu blend: using numpy")
            return cpu_blend(cells, tiles)
        index, weight = prepare_cells(cells, tiles)
        with self._lock:
            groups = self._upload_planes(tiles)
            return self._run(index, weight, n_channels, groups)

    def _run(self, index: np.ndarray, weight: np.ndarray, n_channels: int, groups: list) -> np.ndarray:
        wgpu = self._wgpu
        dev = self.device
        n, k = index.shape
        multi = len(groups) > 1
        # Rows per chunk: every per-row buffer (cells, result, pass state) within one binding.
        per_row = 4 * max(k, n_channels * (3 if multi else 1))
        rows = max(1, min(n, self.max_binding // per_row, WORKGROUP * self.max_groups * self.max_groups))
        out = np.empty((n_channels, n), dtype=np.float32)
        storage, copy_dst = wgpu.BufferUsage.STORAGE, wgpu.BufferUsage.COPY_DST
        index_buf = self._buffer("index", rows * k * 4, storage | copy_dst)
        weight_buf = self._buffer("weight", rows * k * 4, storage | copy_dst)
        result_buf = self._buffer("result", rows * n_channels * 4, storage | wgpu.BufferUsage.COPY_SRC)
        state_buf = (
            self._buffer("state", rows * n_channels * 12, storage) if multi else self._dummy_state
        )
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            m = r1 - r0
            dev.queue.write_buffer(index_buf, 0, index[r0:r1])
            dev.queue.write_buffer(weight_buf, 0, weight[r0:r1])
            n_groups = -(-m // WORKGROUP)
            gx = min(n_groups, self.max_groups)
            gy = -(-n_groups // gx)
            encoder = dev.create_command_encoder()
            for g, (base, count, planes) in enumerate(groups):
                params = np.array(
                    [m, k, n_channels, gx * WORKGROUP, base, count, g == 0, g == len(groups) - 1],
                    dtype=np.uint32,
                )
                params_buf = dev.create_buffer_with_data(data=params, usage=wgpu.BufferUsage.UNIFORM)
                bind = dev.create_bind_group(
                    layout=self._layout,
                    entries=[
                        _entry(0, planes, planes.size),
                        _entry(1, index_buf, m * k * 4),
                        _entry(2, weight_buf, m * k * 4),
                        _entry(3, result_buf, m * n_channels * 4),
                        _entry(4, state_buf, m * n_channels * 12 if multi else state_buf.size),
                        _entry(5, params_buf, params_buf.size),
                    ],
                )
                # One compute pass per plane group: wgpu orders them and syncs `state`.
                compute = encoder.begin_compute_pass()
                compute.set_pipeline(self.pipeline)
                compute.set_bind_group(0, bind)
                compute.dispatch_workgroups(gx, gy, 1)
                compute.end()
            dev.queue.submit([encoder.finish()])
            got = dev.queue.read_buffer(result_buf, 0, m * n_channels * 4)
            out[:, r0:r1] = np.frombuffer(got, dtype=np.float32).reshape(n_channels, m)
        return out


def _entry(binding: int, buffer: Any, size: int) -> dict[str, Any]:
    return {"binding": binding, "resource": {"buffer": buffer, "offset": 0, "size": size}}
