"""The compose stage's GPU path: the gather + blend of `skyrender.sampling.blend` as a wgpu
compute shader.

WGSL has no 64-bit floats or integers, so the work is split:

* CPU, f64: sky → HEALPix cells and weights (`sampling.sample_cells`, cdshealpix; exact at
  any order, at the poles and across faces).
* GPU: the cells' uint64 ipix and float64 weights are uploaded as they are, read as
  (lo, hi) u32 pairs. The shader takes the tile number and sub-cell from the ipix bits,
  finds the tile by binary search in the sorted tile list, places the sub-cell in the
  tile by bit de-interleaving (`sampling.subpixel_offsets`), picks the max-weight cell by
  comparing the f64 weights' bits (exact, so the coverage rule cannot flip on f32
  rounding), and blends with f32 weights: NaN skipped, renormalised over the cells with
  data, NaN where the max-weight cell has none — the rule of the numpy path.

The other split — a CPU pass precomputing a u32 flat index and f32 weight per cell — was
measured at 12.2 ms for 1024×768 bilinear cells (more than the numba blend itself,
9.0 ms), against ~0 ms here: the GPU path would not take the gather off the CPU.
Uploading 16 bytes per cell instead of 8 is the price (50 MB for 1024×768 bilinear).
Tile numbers must fit u32 (tile order ≤ 13).

Buffers stay under the device's ``max_storage_buffer_binding_size``: rows are processed in
chunks, and tile planes larger than one binding are split into groups of whole tiles,
blended in several passes that accumulate (sum, weight, nearest-has-data) per row. The
uploaded planes are kept for the last `TileSet` object blended (held by weak reference),
so re-rendering the same tiles uploads nothing but the cells.

Without a GPU, Mesa's lavapipe gives wgpu a Vulkan adapter on the CPU, so this path is
tested anyway (``apt-get install mesa-vulkan-drivers libvulkan1``).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import weakref
from typing import Any

import numpy as np

from .grid import GridPlan
from .sampling import Cells, TileSet
from .sampling import blend as cpu_blend

__all__ = [
    "GRID_SHADER",
    "MAX_CHANNELS",
    "MAX_TILE",
    "SHADER",
    "WORKGROUP",
    "WgpuBlender",
]

log = logging.getLogger(__name__)

#: Threads per workgroup (1-D); rows beyond 65535 groups wrap into the y dimension.
WORKGROUP = 64
MAX_CHANNELS = 4
#: Largest tile number the shader handles (u32; tile order ≤ 13).
MAX_TILE = 0xFFFFFFFF

# Functions both shaders use (each declares `params.n_tiles` and `tile_npix`).
_WGSL_IS_NAN = """
fn is_nan(v: f32) -> bool {
    // Bit test: shader compilers may fold v != v away.
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}
"""

_WGSL_FIND_TILE = """
fn find_tile(t: u32) -> u32 {
    // Position of tile t in tile_npix, or n_tiles when absent.
    var lo = 0u;
    var hi = params.n_tiles;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (tile_npix[mid] < t) { lo = mid + 1u; } else { hi = mid; }
    }
    if (lo < params.n_tiles && tile_npix[lo] == t) { return lo; }
    return params.n_tiles;
}
"""

SHADER = """
struct Params {
    n: u32,             // rows in this chunk
    k: u32,             // cells per row
    n_channels: u32,
    row_stride: u32,    // rows per y step of the dispatch grid
    shift: u32,         // 2 * tile depth: ipix >> shift is the tile number
    depth: u32,         // tile depth: the tile is 2**depth pixels wide
    n_tiles: u32,
    t0: u32,            // tile positions [t0, t1) are in this pass's plane group
    t1: u32,
    first: u32,         // 1: start from zero, else continue from `state`
    last: u32,          // 1: write `result`, else save to `state`
    pad: u32,
};
@group(0) @binding(0) var<storage, read> planes: array<f32>;             // (C, t1 - t0, w*w)
@group(0) @binding(1) var<storage, read> tile_npix: array<u32>;          // (T,) sorted
@group(0) @binding(2) var<storage, read> cell_ipix: array<vec2<u32>>;    // (n*k,) u64 as (lo, hi)
@group(0) @binding(3) var<storage, read> cell_weight: array<vec2<u32>>;  // (n*k,) f64 as (lo, hi)
@group(0) @binding(4) var<storage, read_write> result: array<f32>;       // (C, n)
@group(0) @binding(5) var<storage, read_write> state: array<f32>;        // (C, n, 3) between passes
@group(0) @binding(6) var<uniform> params: Params;

""" + _WGSL_IS_NAN + """
fn positive(w: vec2<u32>) -> bool {
    // f64 > 0: sign clear, not zero, not NaN/inf (exponent 0x7ff).
    return (w.y >> 31u) == 0u && (w.x | w.y) != 0u && ((w.y >> 20u) & 0x7ffu) != 0x7ffu;
}

fn greater(a: vec2<u32>, b: vec2<u32>) -> bool {
    // Non-negative f64 values order as their bit patterns do.
    return a.y > b.y || (a.y == b.y && a.x > b.x);
}

fn to_f32(w: vec2<u32>) -> f32 {
    // Positive f64 → f32 by truncating the mantissa (relative error < 2^-23).
    let e = (w.y >> 20u) & 0x7ffu;
    if (e < 897u) { return 0.0; }  // below the f32 normal range
    if (e > 1150u) { return bitcast<f32>(0x7f800000u); }
    let m = ((w.y & 0xfffffu) << 3u) | (w.x >> 29u);
    return bitcast<f32>(((e - 896u) << 23u) | m);
}

fn compact(v: u32) -> u32 {
    // The bits at even positions of v, packed together.
    var x = v & 0x55555555u;
    x = (x | (x >> 1u)) & 0x33333333u;
    x = (x | (x >> 2u)) & 0x0f0f0f0fu;
    x = (x | (x >> 4u)) & 0x00ff00ffu;
    x = (x | (x >> 8u)) & 0x0000ffffu;
    return x;
}

""" + _WGSL_FIND_TILE + """
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x + gid.y * params.row_stride;
    if (r >= params.n) { return; }
    let n = params.n;
    let nc = params.n_channels;
    let w = 1u << params.depth;
    let tile_size = w * w;
    let count = (params.t1 - params.t0) * tile_size;  // values per channel in this group
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
    // The max-weight cell (first of equal weights), as the CPU path picks it.
    var best = params.k;
    var wmax = vec2<u32>(0u, 0u);
    for (var j = 0u; j < params.k; j = j + 1u) {
        let wt = cell_weight[r * params.k + j];
        if (positive(wt) && greater(wt, wmax)) {
            wmax = wt;
            best = j;
        }
    }
    var last_t = 0xffffffffu;
    var last_pos = params.n_tiles;
    for (var j = 0u; j < params.k; j = j + 1u) {
        let w64 = cell_weight[r * params.k + j];
        if (!positive(w64)) { continue; }
        let p = cell_ipix[r * params.k + j];
        let t = select((p.y << (32u - params.shift)) | (p.x >> params.shift), p.x, params.shift == 0u);
        if (t != last_t) {  // the cells of a row mostly share a tile
            last_t = t;
            last_pos = find_tile(t);
        }
        let pos = last_pos;
        if (pos < params.t0 || pos >= params.t1) { continue; }  // absent, or another group's
        let sub = p.x & ((1u << params.shift) - 1u);
        let offset = (w - 1u - compact(sub)) * w + compact(sub >> 1u);
        let wt = to_f32(w64);
        let at = (pos - params.t0) * tile_size + offset;
        for (var c = 0u; c < nc; c = c + 1u) {
            let v = planes[c * count + at];
            if (!is_nan(v)) {
                acc[c] = acc[c] + wt * v;
                wsum[c] = wsum[c] + wt;
                if (j == best) { near[c] = 1.0; }
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


#: The grid path (`skyrender.grid`): the CPU computes the grid plan in f64 (exact nodes,
#: per-cell polynomials); each cell's polynomials are uploaded relative to an integer base
#: (f32 keeps ~1e-5 cell inside a cell of at most 64 pixels). The shader evaluates them
#: per pixel, finds the four cells (equatorial lattice or polar face), gathers and blends
#: them; pixels the grid leaves to the exact path are flagged and done on the CPU.
GRID_SHADER = """
struct Params {
    width: u32,
    rows: u32,          // rows in this dispatch
    row0: u32,          // first output row of this dispatch
    step: u32,
    ncx: u32,
    n_channels: u32,
    depth: u32,         // tile depth
    order: u32,         // tile order
    order_px: u32,      // order + depth
    n_tiles: u32,
    bilinear: u32,
    pad: u32,
};
@group(0) @binding(0) var<storage, read> planes: array<f32>;          // (C, T, w*w)
@group(0) @binding(1) var<storage, read> tile_npix: array<u32>;       // (T,) sorted
@group(0) @binding(2) var<storage, read> cell_info: array<vec4<i32>>; // (mode, face, base1, base2)
@group(0) @binding(3) var<storage, read> cell_coef: array<f32>;       // (cells, 2, 4, 4) relative
@group(0) @binding(4) var<storage, read_write> result: array<f32>;    // (C, rows*width)
@group(0) @binding(5) var<storage, read_write> flags: array<u32>;     // (rows*width): 1 = exact path
@group(0) @binding(6) var<uniform> params: Params;

""" + _WGSL_IS_NAN + """
fn spread(v: u32) -> u32 {
    // The bits of v (< 2^16) at even positions.
    var x = v & 0x0000ffffu;
    x = (x | (x << 8u)) & 0x00ff00ffu;
    x = (x | (x << 4u)) & 0x0f0f0f0fu;
    x = (x | (x << 2u)) & 0x33333333u;
    x = (x | (x << 1u)) & 0x55555555u;
    return x;
}

""" + _WGSL_FIND_TILE + """
fn lattice_face(fm: i32, fp: i32) -> i32 {
    let d = fm - fp;
    if (d == 0) { return 4 + (fp & 3); }
    if (d == 1) { return fp & 3; }
    if (d == -1) { return 8 + (fm & 3); }
    return -1;
}

fn poly(base: u32, u: f32, v: f32) -> f32 {
    // Σ c[a, b] v^a u^b, Horner in v then u.
    var acc = 0.0;
    for (var b = 3; b >= 0; b = b - 1) {
        let i = base + u32(b);
        let cb = ((cell_coef[i + 12u] * v + cell_coef[i + 8u]) * v + cell_coef[i + 4u]) * v + cell_coef[i];
        acc = acc * u + cb;
    }
    return acc;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let px = gid.x;
    let r = gid.y;
    if (px >= params.width || r >= params.rows) { return; }
    let py = params.row0 + r;
    let n_px = params.rows * params.width;
    let idx = r * params.width + px;
    let cy = py / params.step;
    let cx = px / params.step;
    let cell = cy * params.ncx + cx;
    let info = cell_info[cell];
    flags[idx] = 1u;
    if (info.x == 0) { return; }
    let u = f32(px - cx * params.step) / f32(params.step);
    let v = f32(py - cy * params.step) / f32(params.step);
    let p1 = poly(cell * 32u, u, v);
    let p2 = poly(cell * 32u + 16u, u, v);
    let nside = 1 << params.order_px;
    let nm = nside - 1;
    let w = 1u << params.depth;
    let wm = w - 1u;
    let tsize = w * w;
    var wts = array<f32, 4>(1.0, 0.0, 0.0, 0.0);
    var offs = array<u32, 4>(0u, 0u, 0u, 0u);
    var ok = array<bool, 4>(false, false, false, false);
    var nq = 1;
    var near = 0;
    var ia: i32;
    var ib: i32;
    if (params.bilinear == 1u) {
        let a = p1 - 0.5;
        let b = p2 - 0.5;
        let fa0 = floor(a);
        let fb0 = floor(b);
        ia = info.z + i32(fa0);
        ib = info.w + i32(fb0);
        let fa = a - fa0;
        let fb = b - fb0;
        wts[0] = (1.0 - fa) * (1.0 - fb);
        wts[1] = fa * (1.0 - fb);
        wts[2] = (1.0 - fa) * fb;
        wts[3] = fa * fb;
        near = select(0, 1, fa >= 0.5) + select(0, 2, fb >= 0.5);
        nq = 4;
    } else {
        ia = info.z + i32(floor(p1));
        ib = info.w + i32(floor(p2));
        if (info.x == 2) {
            ia = clamp(ia, 0, nm);
            ib = clamp(ib, 0, nm);
        }
    }
    for (var q = 0; q < nq; q = q + 1) {
        let qa = ia + (q & 1);
        let qb = ib + (q >> 1u);
        var f: i32;
        var ix: i32;
        var iy: i32;
        if (info.x == 1) {
            f = lattice_face(qa >> params.order_px, qb >> params.order_px);
            if (f < 0) { return; }  // a corner where three faces meet: exact path
            ix = qa & nm;
            iy = nm - (qb & nm);
        } else {
            if (qa < 0 || qb < 0 || qa >= nside || qb >= nside) { return; }  // another face
            f = info.y;
            ix = qa;
            iy = qb;
        }
        let key = (u32(f) << (2u * params.order)) | spread(u32(ix) >> params.depth)
            | (spread(u32(iy) >> params.depth) << 1u);
        let pos = find_tile(key);
        if (pos < params.n_tiles) {
            ok[q] = true;
            offs[q] = pos * tsize + (wm - (u32(ix) & wm)) * w + (u32(iy) & wm);
        }
    }
    flags[idx] = 0u;
    let count = params.n_tiles * tsize;
    for (var c = 0u; c < params.n_channels; c = c + 1u) {
        var acc = 0.0;
        var wsum = 0.0;
        var near_ok = false;
        for (var q = 0; q < nq; q = q + 1) {
            if (!ok[q] || wts[q] <= 0.0) { continue; }
            let val = planes[c * count + offs[q]];
            if (!is_nan(val)) {
                acc = acc + wts[q] * val;
                wsum = wsum + wts[q];
                if (q == near) { near_ok = true; }
            }
        }
        if (near_ok && wsum > 0.0) {
            result[c * n_px + idx] = acc / wsum;
        } else {
            result[c * n_px + idx] = bitcast<f32>(0x7fc00000u);
        }
    }
}
"""


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
        grid_module = device.create_shader_module(code=GRID_SHADER)
        self.grid_pipeline = device.create_compute_pipeline(
            layout="auto", compute={"module": grid_module, "entry_point": "main"}
        )
        self._grid_layout = self.grid_pipeline.get_bind_group_layout(0)
        self._lock = threading.Lock()
        self._planes_of: weakref.ref[TileSet] | None = None
        self._plane_groups: list[tuple[int, int, Any]] = []  # (first tile, end tile, buffer)
        self._npix_buffer: Any = None
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
            # Mesa complains on every call without it; a private 0700 directory is enough,
            # removed when the process ends.
            runtime_dir = tempfile.mkdtemp(prefix="xdg-")
            atexit.register(shutil.rmtree, runtime_dir, True)
            os.environ["XDG_RUNTIME_DIR"] = runtime_dir
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
        """Tile list and planes on the device, in groups of whole tiles that fit one binding."""
        if self._planes_of is not None and self._planes_of() is tiles:
            return self._plane_groups
        self._plane_groups = []  # release the previous survey's planes first
        storage = self._wgpu.BufferUsage.STORAGE
        n_channels, n_tiles = tiles.planes.shape[:2]
        tile_size = tiles.tile_width**2
        per_group = max(1, self.max_binding // (4 * n_channels * tile_size))
        flat = tiles.planes.reshape(n_channels, n_tiles, tile_size)
        groups = []
        for t0 in range(0, n_tiles, per_group):
            t1 = min(n_tiles, t0 + per_group)
            data = np.ascontiguousarray(flat[:, t0:t1], dtype=np.float32)
            groups.append((t0, t1, self.device.create_buffer_with_data(data=data, usage=storage)))
        npix = np.asarray(tiles.npix, dtype=np.uint32)
        self._npix_buffer = self.device.create_buffer_with_data(data=npix, usage=storage)
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
            or int(tiles.npix[-1]) > MAX_TILE  # tile numbers are u32 in the shader
            or tile_bytes > self.max_binding  # one tile must fit a binding
        ):
            log.warning("tile set beyond the wgpu blend's limits: using numpy")
            return cpu_blend(cells, tiles)
        # Raw bits, no conversion: the shader reads u64/f64 as (lo, hi) u32 pairs.
        ipix = np.ascontiguousarray(cells.ipix, dtype=np.uint64)
        weights = np.ascontiguousarray(cells.weights, dtype=np.float64)
        with self._lock:
            groups = self._upload_planes(tiles)
            return self._run(ipix, weights, n_channels, tiles.tile_depth, groups)

    def _run(
        self, ipix: np.ndarray, weights: np.ndarray, n_channels: int, depth: int, groups: list
    ) -> np.ndarray:
        wgpu = self._wgpu
        dev = self.device
        n, k = ipix.shape
        multi = len(groups) > 1
        # Rows per chunk: every per-row buffer (cells, result, pass state) within one binding.
        per_row = max(8 * k, 4 * n_channels * (3 if multi else 1))
        rows = max(1, min(n, self.max_binding // per_row, WORKGROUP * self.max_groups * self.max_groups))
        out = np.empty((n_channels, n), dtype=np.float32)
        storage, copy_dst = wgpu.BufferUsage.STORAGE, wgpu.BufferUsage.COPY_DST
        ipix_buf = self._buffer("ipix", rows * k * 8, storage | copy_dst)
        weight_buf = self._buffer("weight", rows * k * 8, storage | copy_dst)
        result_buf = self._buffer("result", rows * n_channels * 4, storage | wgpu.BufferUsage.COPY_SRC)
        state_buf = self._buffer("state", rows * n_channels * 12, storage) if multi else self._dummy_state
        npix_buf = self._npix_buffer
        n_tiles = npix_buf.size // 4
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            m = r1 - r0
            dev.queue.write_buffer(ipix_buf, 0, ipix[r0:r1])
            dev.queue.write_buffer(weight_buf, 0, weights[r0:r1])
            n_groups = -(-m // WORKGROUP)
            gx = min(n_groups, self.max_groups)
            gy = -(-n_groups // gx)
            encoder = dev.create_command_encoder()
            for g, (t0, t1, planes) in enumerate(groups):
                params = np.array(
                    [m, k, n_channels, gx * WORKGROUP, 2 * depth, depth, n_tiles, t0, t1,
                     g == 0, g == len(groups) - 1, 0],
                    dtype=np.uint32,
                )  # fmt: skip
                params_buf = dev.create_buffer_with_data(data=params, usage=wgpu.BufferUsage.UNIFORM)
                bind = dev.create_bind_group(
                    layout=self._layout,
                    entries=[
                        _entry(0, planes, planes.size),
                        _entry(1, npix_buf, npix_buf.size),
                        _entry(2, ipix_buf, m * k * 8),
                        _entry(3, weight_buf, m * k * 8),
                        _entry(4, result_buf, m * n_channels * 4),
                        _entry(5, state_buf, m * n_channels * 12 if multi else state_buf.size),
                        _entry(6, params_buf, params_buf.size),
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

    # -- grid sampling -----------------------------------------------------------------

    def grid_blend(
        self, plan: GridPlan, tiles: TileSet, *, bilinear: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """`skyrender.grid.grid_blend` on the GPU: values float32 (C, N) and the pixels left to
        the exact path, bool (N,).

        The plan (exact nodes, per-cell polynomials) is the CPU's, in float64; each cell's
        polynomials go up relative to an integer base, so f32 keeps ~1e-5 HEALPix cell.
        Falls back to the CPU pass when the tiles need more than one binding or tile
        numbers beyond u32.
        """
        from .grid import grid_blend as cpu_grid_blend

        if plan.pixel_order != tiles.order + tiles.tile_depth:
            raise ValueError(
                f"grid at order {plan.pixel_order} does not match tiles of order {tiles.order} "
                f"and depth {tiles.tile_depth}"
            )
        n = plan.width * plan.height
        n_channels = tiles.n_channels
        if tiles.npix.size == 0 or n == 0:
            return np.full((n_channels, n), np.nan, dtype=np.float32), np.zeros(n, dtype=np.bool_)
        tile_bytes = 4 * n_channels * tiles.tile_width**2
        if (
            n_channels > MAX_CHANNELS
            or int(tiles.npix[-1]) > MAX_TILE
            or tile_bytes * tiles.npix.size > self.max_binding  # one plane group only
            or plan.pixel_order > 28  # lattice coordinates in i32
        ):
            log.warning("tile set beyond the wgpu grid pass's limits: using the CPU")
            return cpu_grid_blend(plan, tiles, bilinear=bilinear)
        ny, nx = plan.mode.shape
        base = np.floor(plan.coef[:, :, :, 0, 0])  # (ny, nx, 2)
        rel = plan.coef.copy()
        rel[:, :, :, 0, 0] -= base
        info = np.zeros((ny, nx, 4), dtype=np.int32)
        info[..., 0] = plan.mode
        info[..., 1] = plan.cell_face
        info[..., 2:] = np.where(plan.mode[..., None] > 0, base, 0).astype(np.int32)
        coef32 = np.ascontiguousarray(rel, dtype=np.float32)
        with self._lock:
            groups = self._upload_planes(tiles)
            return self._run_grid(plan, info, coef32, n_channels, tiles, groups[0][2], bilinear)

    def _run_grid(self, plan, info, coef32, n_channels, tiles, planes, bilinear):
        wgpu = self._wgpu
        dev = self.device
        width, height = plan.width, plan.height
        storage, copy_src = wgpu.BufferUsage.STORAGE, wgpu.BufferUsage.COPY_SRC
        info_buf = dev.create_buffer_with_data(data=info, usage=storage)
        coef_buf = dev.create_buffer_with_data(data=coef32, usage=storage)
        rows = max(1, min(height, self.max_binding // (4 * n_channels * width), self.max_groups))
        result_buf = self._buffer("grid_result", rows * width * n_channels * 4, storage | copy_src)
        flags_buf = self._buffer("grid_flags", rows * width * 4, storage | copy_src)
        out = np.empty((n_channels, width * height), dtype=np.float32)
        fallback = np.empty(width * height, dtype=np.bool_)
        npix_buf = self._npix_buffer
        for r0 in range(0, height, rows):
            m = min(rows, height - r0)
            params = np.array(
                [width, m, r0, plan.step, info.shape[1], n_channels, tiles.tile_depth, tiles.order,
                 plan.pixel_order, tiles.npix.size, int(bilinear), 0],
                dtype=np.uint32,
            )  # fmt: skip
            params_buf = dev.create_buffer_with_data(data=params, usage=wgpu.BufferUsage.UNIFORM)
            bind = dev.create_bind_group(
                layout=self._grid_layout,
                entries=[
                    _entry(0, planes, planes.size),
                    _entry(1, npix_buf, npix_buf.size),
                    _entry(2, info_buf, info_buf.size),
                    _entry(3, coef_buf, coef_buf.size),
                    _entry(4, result_buf, m * width * n_channels * 4),
                    _entry(5, flags_buf, m * width * 4),
                    _entry(6, params_buf, params_buf.size),
                ],
            )
            encoder = dev.create_command_encoder()
            compute = encoder.begin_compute_pass()
            compute.set_pipeline(self.grid_pipeline)
            compute.set_bind_group(0, bind)
            compute.dispatch_workgroups(-(-width // WORKGROUP), m, 1)
            compute.end()
            dev.queue.submit([encoder.finish()])
            got = dev.queue.read_buffer(result_buf, 0, m * width * n_channels * 4)
            out[:, r0 * width : (r0 + m) * width] = np.frombuffer(got, dtype=np.float32).reshape(
                n_channels, -1
            )
            got = dev.queue.read_buffer(flags_buf, 0, m * width * 4)
            fallback[r0 * width : (r0 + m) * width] = np.frombuffer(got, dtype=np.uint32) != 0
        return out, fallback


def _entry(binding: int, buffer: Any, size: int) -> dict[str, Any]:
    return {"binding": binding, "resource": {"buffer": buffer, "offset": 0, "size": size}}
