"""Grid sampling: exact HEALPix positions on a coarse grid of output pixels, interpolated between.

The exact path (`render.compute_cells` then `sampling.blend`) evaluates, per output pixel,
the projection and a cdshealpix bilinear lookup. Both are smooth functions of the output
pixel inside one HEALPix base face and one region (equatorial, |z| ≤ 2/3, or a polar cap),
so, as Aladin Lite does with its mesh:

1. Grid nodes every ``step`` output pixels get their exact sky position
   (`projection.pixel_lonlat`, float64) and, at the survey's pixel order, their HEALPix
   *face coordinates*: base face f and continuous (X, Y) in [0, nside)², where the cell
   (⌊X⌋, ⌊Y⌋) is the NESTED cell f·nside² + interleave(⌊X⌋, ⌊Y⌋) (Górski et al. 2005,
   ang2pix_nest without the truncation; cdshealpix's (i + dx, j + dy)).
2. A grid cell is *interpolated* when its four nodes and its centre are on the sky, in one
   face and one region, and the bilinear interpolation of (X, Y) at the centre — where a
   bilinear interpolation's error is largest — is within `TOL_PIXELS` output pixel and
   `TOL_CELLS` HEALPix cell of the exact value. Every other cell (face edges, the
   |z| = 2/3 boundary, the poles, the border of an all-sky projection) is computed pixel
   by pixel the exact way.
3. One compiled pass over bands of rows interpolates (X, Y), takes the four cells around
   the position (centres at half-integers, bilinear weights: cdshealpix's), gathers them
   from the tile arrays and blends them with `sampling.blend`'s rule (weights
   renormalised over cells with data, NaN where the cell under the position has none,
   each channel on its own). A pixel whose four cells reach across the face's edge also
   goes the exact way: cdshealpix knows the neighbours across faces and the corners where
   only three cells meet.

The step is chosen per render from a measured error: a probe grid (`PROBE_STEP`) measures
the centre errors, which grow as step², and the step is the largest for which nearly
every probed cell would pass (`choose_step`). The cells that still fail at that step go
the exact way, so the bound holds everywhere that is interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from .geometry import OutputGeometry
from .projection import WcsKernel, pixel_lonlat, points_lonlat, wcs_kernel
from .sampling import INTERPOLATIONS, TileSet, blend, sample_cells
from .threads import run_row_chunks

#: Largest error of an interpolated position [output pixels] (the issue's bound).
TOL_PIXELS = 0.01
#: Largest error of an interpolated position [HEALPix cells at the survey's pixel order],
#: times the cells per output pixel when that is above 1: a value next to a jump of the
#: whole data range moves by this fraction of it. (An output pixel spanning several
#: cells is an aliased sample anyway; the tile order keeps it near one.)
TOL_CELLS = 2.5e-4
#: Grid step of the probe that measures the error [output pixels].
PROBE_STEP = 32
#: Steps `choose_step` picks from [output pixels].
STEPS = (4, 6, 8, 12, 16, 24, 32, 48, 64)
MIN_STEP = STEPS[0]
#: Rough cost of a pixel on the exact path and on the grid path [ns] (one core, measured
#: with bench/bench_core.py): only their ratio matters.
EXACT_NS = 80.0
GRID_NS = 15.0
#: Row chunks per thread of the CPU pass, taken in turn by whichever thread is free: on a
#: node whose other processes take a core now and then, two halves wait for the slower one.
GRID_CHUNKS_PER_THREAD = 4

_HALF_PI = 0.5 * math.pi


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _node_coords(lon, lat, valid, nside, face, c1, c2, region):
    """HEALPix coordinates of positions [rad] at ``nside``.

    region 0 (equatorial, |z| ≤ 2/3): (c1, c2) = (jm, jp), the continuous descending and
    ascending edge-line indices of Górski et al. (2005): one lattice for the whole belt,
    every face included (the face follows from ⌊jm/nside⌋ and ⌊jp/nside⌋). Regions 1
    (north cap) and 2 (south cap): (c1, c2) = (X, Y), the continuous coordinates inside
    base face ``face``. Off the sky: face = region = −1.
    """
    n = float(nside)
    for k in range(lon.shape[0]):
        if not valid[k]:
            face[k] = -1
            c1[k] = 0.0
            c2[k] = 0.0
            region[k] = -1
            continue
        z = math.sin(lat[k])
        c = math.cos(lat[k])
        za = abs(z)
        tt = lon[k] / _HALF_PI
        if tt >= 4.0:
            tt -= 4.0
        if tt < 0.0:
            tt += 4.0
        if za <= 2.0 / 3.0:
            t1 = n * (0.5 + tt)
            t2 = n * 0.75 * z
            jp = t1 - t2
            jm = t1 + t2
            face[k] = _lattice_face(int(math.floor(jm / n)), int(math.floor(jp / n)))
            c1[k] = jm
            c2[k] = jp
            region[k] = 0
        else:
            ntt = int(tt)
            if ntt >= 4:
                ntt = 3
            tp = tt - ntt
            # n·sqrt(3 (1 − |z|)), with 1 − |z| = cos² / (1 + |z|): no cancellation near the pole.
            s = n * math.sqrt(3.0 * c * c / (1.0 + za))
            jp = tp * s
            jm = (1.0 - tp) * s
            if z > 0.0:
                face[k] = ntt
                c1[k] = n - jm
                c2[k] = n - jp
                region[k] = 1
            else:
                face[k] = ntt + 8
                c1[k] = jp
                c2[k] = jm
                region[k] = 2


@numba.njit(cache=True, nogil=True, inline="always")
def _lattice_face(fm, fp):
    """Base face of the equatorial-lattice square (⌊jm/n⌋, ⌊jp/n⌋) = (fm, fp); −1 where none
    (the gaps between the polar caps' faces)."""
    d = fm - fp
    if d == 0:
        return 4 + (fp & 3)
    if d == 1:
        return fp & 3
    if d == -1:
        return 8 + (fm & 3)
    return -1


# Cubic Lagrange through nodes at u = s − 1, s, s + 1, s + 2 → power basis c0 + c1 u + c2 u² + c3 u³,
# for the stencil shifts s = −1, 0, 1 (index s + 1): a cell next to a boundary uses the 4×4
# nodes that lie on its side of it (the centre check still bounds the error).
_LAGRANGE = np.stack(
    [np.linalg.inv(np.vander(np.arange(4.0) + s - 1, 4, increasing=True)) for s in (-1, 0, 1)]
)


@numba.njit(cache=True, nogil=True, inline="always")
def _poly_at(coef, u, v):
    total = 0.0
    vp = 1.0
    for a in range(4):
        up = 1.0
        for b in range(4):
            total += coef[a, b] * vp * up
            up *= u
        vp *= v
    return total


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _classify(
    face, c1, c2, region, cface, cc1, cc2, cregion, nside, step, tol_px, tol_cells, lagrange,
    mode, cell_face, coef, err_cells, scale, power,
):  # fmt: skip
    """Per grid cell: how it is sampled and its interpolating polynomials.

    Node (i, j) of the cell grid is ``face[j + 1, i + 1]`` (one node of margin all round).
    ``mode`` 0: exact; 1: equatorial lattice; 2: inside polar face ``cell_face``.
    ``coef[cy, cx, k]`` (k = 0: c1, 1: c2) holds the polynomial in (v, u) ∈ [0, 1]²,
    bicubic where the 4×4 nodes around the cell allow it, else bilinear. The centre
    error [cells], the cells per output pixel and the error's power of the step are kept
    for `choose_step`.
    """
    ncy, ncx = mode.shape
    n4 = 4.0 * nside
    vals = np.empty((2, 4, 4))
    tmp = np.empty((4, 4))
    for cy in range(ncy):
        for cx in range(ncx):
            mode[cy, cx] = 0
            cell_face[cy, cx] = -1
            err_cells[cy, cx] = np.nan
            scale[cy, cx] = np.nan
            power[cy, cx] = 0.0
            coef[cy, cx] = 0.0
            j0 = cy + 1
            i0 = cx + 1
            r = region[j0, i0]
            f = face[j0, i0]
            if r < 0 or cregion[cy, cx] != r or (r > 0 and cface[cy, cx] != f):
                continue
            # The four corners must agree; the 4×4 stencil is used when all of it agrees.
            corners = True
            for dj in range(2):
                for di in range(2):
                    if region[j0 + dj, i0 + di] != r or (r > 0 and face[j0 + dj, i0 + di] != f):
                        corners = False
            if not corners:
                continue
            # The 4×4 stencil: centred when it all agrees, else shifted by a node away from
            # the boundary; bilinear on the corners when no stencil fits.
            cubic = False
            sy = 0
            sx = 0
            for ty in (0, -1, 1):
                for tx in (0, -1, 1):
                    if cubic or j0 + ty - 1 < 0 or i0 + tx - 1 < 0:
                        continue
                    if j0 + ty + 2 >= face.shape[0] or i0 + tx + 2 >= face.shape[1]:
                        continue
                    fits = True
                    for dj in range(-1, 3):
                        for di in range(-1, 3):
                            jj = j0 + ty + dj
                            ii = i0 + tx + di
                            if region[jj, ii] != r or (r > 0 and face[jj, ii] != f):
                                fits = False
                    if fits:
                        cubic = True
                        sy = ty
                        sx = tx
            ref = c1[j0, i0]
            for k in range(2):
                for dj in range(4):
                    for di in range(4):
                        if cubic or (1 <= dj <= 2 and 1 <= di <= 2):
                            jj = j0 + dj - 1 + (sy if cubic else 0)
                            ii = i0 + di - 1 + (sx if cubic else 0)
                            val = (c1 if k == 0 else c2)[jj, ii]
                            if r == 0:  # longitude wraps: jm and jp both jump by 4·nside
                                d = c1[jj, ii] - ref
                                if d > 0.5 * n4:
                                    val -= n4
                                elif d < -0.5 * n4:
                                    val += n4
                            vals[k, dj, di] = val
            centre = np.empty(2)
            for k in range(2):
                val = cc1[cy, cx] if k == 0 else cc2[cy, cx]
                if r == 0:
                    d = cc1[cy, cx] - ref
                    if d > 0.5 * n4:
                        val -= n4
                    elif d < -0.5 * n4:
                        val += n4
                centre[k] = val
            for k in range(2):
                if cubic:
                    # C = L_v · F · L_uᵀ (rows: powers of v; columns: powers of u).
                    lv = lagrange[sy + 1]
                    lu = lagrange[sx + 1]
                    for a in range(4):
                        for b in range(4):
                            acc = 0.0
                            for m in range(4):
                                acc += lv[a, m] * vals[k, m, b]
                            tmp[a, b] = acc
                    for a in range(4):
                        for b in range(4):
                            acc = 0.0
                            for m in range(4):
                                acc += tmp[a, m] * lu[b, m]
                            coef[cy, cx, k, a, b] = acc
                else:
                    f00, f10, f01, f11 = vals[k, 1, 1], vals[k, 1, 2], vals[k, 2, 1], vals[k, 2, 2]
                    coef[cy, cx, k, 0, 0] = f00
                    coef[cy, cx, k, 0, 1] = f10 - f00
                    coef[cy, cx, k, 1, 0] = f01 - f00
                    coef[cy, cx, k, 1, 1] = f11 - f10 - f01 + f00
            e1 = _poly_at(coef[cy, cx, 0], 0.5, 0.5) - centre[0]
            e = math.hypot(e1, _poly_at(coef[cy, cx, 1], 0.5, 0.5) - centre[1])
            # The cell's corners (the stencil may be shifted): from the polynomials.
            x00, x10 = _poly_at(coef[cy, cx, 0], 0.0, 0.0), _poly_at(coef[cy, cx, 0], 1.0, 0.0)
            x01, x11 = _poly_at(coef[cy, cx, 0], 0.0, 1.0), _poly_at(coef[cy, cx, 0], 1.0, 1.0)
            y00, y10 = _poly_at(coef[cy, cx, 1], 0.0, 0.0), _poly_at(coef[cy, cx, 1], 1.0, 0.0)
            y01, y11 = _poly_at(coef[cy, cx, 1], 0.0, 1.0), _poly_at(coef[cy, cx, 1], 1.0, 1.0)
            s = (
                max(
                    math.hypot(x10 - x00, y10 - y00),
                    math.hypot(x01 - x00, y01 - y00),
                    math.hypot(x11 - x01, y11 - y01),
                    math.hypot(x11 - x10, y11 - y10),
                )
                / step
            )
            err_cells[cy, cx] = e
            scale[cy, cx] = s
            power[cy, cx] = 4.0 if cubic else 2.0
            if e <= tol_cells * max(1.0, s) and e <= tol_px * s:
                mode[cy, cx] = 1 if r == 0 else 2
                cell_face[cy, cx] = f


@numba.njit(cache=True, nogil=True, inline="always")
def _interleave(tx, ty, bits):
    h = 0
    for b in range(bits):
        h |= ((tx >> b) & 1) << (2 * b)
        h |= ((ty >> b) & 1) << (2 * b + 1)
    return h


@numba.njit(cache=True, nogil=True)
def _find_tile(npix_sorted, key):
    pos = np.searchsorted(npix_sorted, key)
    if pos < npix_sorted.shape[0] and npix_sorted[pos] == key:
        return pos
    return -1


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "arcp", "reassoc"})
def _grid_rows(
    r0, r1, width, step, mode, cell_face, coef, nside, order, depth, bilinear, npix_sorted, flat, out,
    fallback,
):  # fmt: skip
    """Interpolate, gather and blend output rows [r0, r1); mark pixels left to the exact path."""
    ncx = mode.shape[1]
    n_channels = flat.shape[0]
    w = 1 << depth
    wm = w - 1
    tsize = w * w
    inv = 1.0 / step
    order_px = order + depth
    nm = nside - 1
    offs = np.empty(4, dtype=np.int64)
    wts = np.empty(4, dtype=np.float64)
    cu = np.empty((2, 4), dtype=np.float64)
    seg1 = np.empty(step, dtype=np.float64)
    seg2 = np.empty(step, dtype=np.float64)
    last_f = -1
    last_tx = -1
    last_ty = -1
    last_pos = -1
    for py in range(r0, r1):
        cy = py // step
        v = (py - cy * step) * inv
        row = py * width
        for cx in range(ncx):
            x0 = cx * step
            x1 = min(x0 + step, width)
            m = mode[cy, cx]
            if m == 0:
                for px in range(x0, x1):
                    fallback[row + px] = True
                continue
            # The row's polynomials in u (Horner in v), evaluated for the whole segment first:
            # a loop without branches, which LLVM vectorises.
            for k in range(2):
                for b in range(4):
                    c = coef[cy, cx, k]
                    cu[k, b] = ((c[3, b] * v + c[2, b]) * v + c[1, b]) * v + c[0, b]
            a0, a1, a2, a3 = cu[0, 0], cu[0, 1], cu[0, 2], cu[0, 3]
            b0, b1, b2, b3 = cu[1, 0], cu[1, 1], cu[1, 2], cu[1, 3]
            nseg = x1 - x0
            for kx in range(nseg):
                u = kx * inv
                seg1[kx] = ((a3 * u + a2) * u + a1) * u + a0
                seg2[kx] = ((b3 * u + b2) * u + b1) * u + b0
            pface = np.int64(cell_face[cy, cx])
            for kx in range(nseg):
                idx = row + x0 + kx
                p1 = seg1[kx]
                p2 = seg2[kx]
                if bilinear:
                    a = p1 - 0.5
                    b = p2 - 0.5
                    fa0 = math.floor(a)
                    fb0 = math.floor(b)
                    ia = np.int64(fa0)
                    ib = np.int64(fb0)
                    fa = a - fa0
                    fb = b - fb0
                    wts[0] = (1.0 - fa) * (1.0 - fb)
                    wts[1] = fa * (1.0 - fb)
                    wts[2] = (1.0 - fa) * fb
                    wts[3] = fa * fb
                    near = (1 if fa >= 0.5 else 0) + (2 if fb >= 0.5 else 0)
                    nq = 4
                else:
                    ia = np.int64(math.floor(p1))
                    ib = np.int64(math.floor(p2))
                    wts[0] = 1.0
                    near = 0
                    nq = 1
                    if m == 2:
                        ia = min(max(ia, 0), nside - 1)
                        ib = min(max(ib, 0), nside - 1)
                edge = False
                if nq == 4 and ((ia + 1) >> depth) == (ia >> depth) and ((ib + 1) >> depth) == (ib >> depth):
                    # The usual case: the four cells are in one tile (tiles align with the
                    # lattice and with faces), so one lookup and fixed offsets.
                    if m == 1:
                        fm = ia >> order_px
                        fp = ib >> order_px
                        f = _lattice_face(fm, fp)
                        if f < 0:
                            fallback[idx] = True
                            continue
                        ix = ia & nm
                        iy = nm - (ib & nm)
                        dy = -1  # jp up = FITS row down
                    else:
                        if ia < 0 or ib < 0 or ia + 1 >= nside or ib + 1 >= nside:
                            fallback[idx] = True
                            continue
                        f = pface
                        ix = ia
                        iy = ib
                        dy = 1
                    tx = ix >> depth
                    ty = iy >> depth
                    if f != last_f or tx != last_tx or ty != last_ty:
                        last_f = f
                        last_tx = tx
                        last_ty = ty
                        key = (np.int64(f) << (2 * order)) + _interleave(tx, ty, order)
                        last_pos = _find_tile(npix_sorted, key)
                    if last_pos < 0:
                        for c in range(n_channels):
                            out[c, idx] = np.nan
                        continue
                    base = last_pos * tsize + (wm - (ix & wm)) * w + (iy & wm)
                    # The four cells all hold data (the usual case): the weights sum to 1, no
                    # renormalising. A NaN among them (or a zero weight on one) takes the
                    # general blend below, which skips it.
                    fast = True
                    for c in range(n_channels):
                        s = (
                            wts[0] * flat[c, base]
                            + wts[1] * flat[c, base - w]
                            + wts[2] * flat[c, base + dy]
                            + wts[3] * flat[c, base - w + dy]
                        )
                        if s != s:
                            fast = False
                            break
                        out[c, idx] = s
                    if fast:
                        continue
                    offs[0] = base
                    offs[1] = base - w
                    offs[2] = base + dy
                    offs[3] = base - w + dy
                else:
                    for q in range(nq):
                        qa = ia + (q & 1)
                        qb = ib + (q >> 1)
                        if m == 1:  # lattice square (jm, jp) → face, (ix, iy)
                            fm = qa >> order_px
                            fp = qb >> order_px
                            f = _lattice_face(fm, fp)
                            if f < 0:
                                edge = True
                                break
                            ix = qa & nm
                            iy = nm - (qb & nm)
                        else:
                            if qa < 0 or qb < 0 or qa >= nside or qb >= nside:
                                edge = True  # the cell is in another face
                                break
                            f = pface
                            ix = qa
                            iy = qb
                        tx = ix >> depth
                        ty = iy >> depth
                        if f != last_f or tx != last_tx or ty != last_ty:
                            last_f = f
                            last_tx = tx
                            last_ty = ty
                            last_pos = _find_tile(
                                npix_sorted, (np.int64(f) << (2 * order)) + _interleave(tx, ty, order)
                            )
                        if last_pos < 0:
                            offs[q] = -1
                        else:
                            offs[q] = last_pos * tsize + (wm - (ix & wm)) * w + (iy & wm)
                if edge:
                    # Across a polar face's edge, or a corner where three faces meet:
                    # cdshealpix's neighbours decide.
                    fallback[idx] = True
                    continue
                for c in range(n_channels):
                    acc = 0.0
                    wsum = 0.0
                    near_ok = False
                    for q in range(nq):
                        wt = wts[q]
                        if wt <= 0.0 or offs[q] < 0:
                            continue
                        val = flat[c, offs[q]]
                        if val == val:
                            acc += wt * val
                            wsum += wt
                            if q == near:
                                near_ok = True
                    out[c, idx] = acc / wsum if (near_ok and wsum > 0.0) else np.nan


@dataclass(frozen=True)
class GridPlan:
    """Interpolating polynomials of HEALPix coordinates over a grid of output pixels.

    Attributes
    ----------
    step : int
        Grid step [output pixels]; cell (i, j) covers pixels [i·step, (i+1)·step) × [j·step, (j+1)·step).
    width, height : int
        Output size [pixels].
    pixel_order : int
        HEALPix order of the survey's pixels (tile order + tile depth).
    mode : ndarray
        int8 (ny, nx): 0 computed exactly pixel by pixel, 1 interpolated on the equatorial
        lattice (jm, jp), 2 interpolated inside polar face ``cell_face``.
    cell_face : ndarray
        int8 (ny, nx): the polar cells' base face.
    coef : ndarray
        float64 (ny, nx, 2, 4, 4): per coordinate, the polynomial Σ coef[a, b]·v^a·u^b,
        (u, v) ∈ [0, 1]² across the cell [cells at ``pixel_order``].
    max_error_px, max_error_cells : float
        Largest measured error of an interpolated cell (at its centre) [output pixels],
        [HEALPix cells]; 0 when no cell is interpolated.
    """

    step: int
    width: int
    height: int
    pixel_order: int
    mode: np.ndarray
    cell_face: np.ndarray
    coef: np.ndarray
    max_error_px: float
    max_error_cells: float

    @property
    def nside(self) -> int:
        return 1 << self.pixel_order

    @property
    def interpolated_fraction(self) -> float:
        """Fraction of the grid cells that are interpolated."""
        return float((self.mode > 0).mean()) if self.mode.size else 0.0


def _grid(
    geom: OutputGeometry,
    survey_frame: str,
    pixel_order: int,
    step: int,
    num_threads: int,
    kernel: WcsKernel | None = None,
) -> tuple[GridPlan, np.ndarray, np.ndarray, np.ndarray]:
    """The plan at ``step``; per cell the centre error [cells], cells per output pixel and error power."""
    ncx = (geom.width - 1) // step + 1
    ncy = (geom.height - 1) // step + 1
    nside = 1 << pixel_order
    kernel = kernel if kernel is not None else wcs_kernel(geom.wcs)
    kw = dict(wcs_frame=geom.frame, target_frame=survey_frame, step=float(step), num_threads=num_threads)
    kw["kernel"] = kernel

    def coords(nx: int, ny: int, origin: float):
        lon, lat, valid = pixel_lonlat(geom.wcs, nx, ny, x0=origin, y0=origin, **kw)
        n = nx * ny
        face = np.empty(n, np.int8)
        c1 = np.empty(n)
        c2 = np.empty(n)
        region = np.empty(n, np.int8)
        _node_coords(lon, lat, valid, nside, face, c1, c2, region)
        return face.reshape(ny, nx), c1.reshape(ny, nx), c2.reshape(ny, nx), region.reshape(ny, nx)

    # Nodes from one step before the image to two after: the bicubic stencils of the edge cells.
    face, c1, c2, region = coords(ncx + 3, ncy + 3, -float(step))
    cface, cc1, cc2, cregion = coords(ncx, ncy, 0.5 * step)
    mode = np.empty((ncy, ncx), np.int8)
    cell_face = np.empty((ncy, ncx), np.int8)
    coef = np.empty((ncy, ncx, 2, 4, 4))
    err = np.empty((ncy, ncx))
    scale = np.empty((ncy, ncx))
    power = np.empty((ncy, ncx))
    _classify(
        face, c1, c2, region, cface, cc1, cc2, cregion, nside, float(step), TOL_PIXELS, TOL_CELLS, _LAGRANGE,
        mode, cell_face, coef, err, scale, power,
    )  # fmt: skip
    ok = mode > 0
    err_ok = err[ok]
    plan = GridPlan(
        step=step,
        width=geom.width,
        height=geom.height,
        pixel_order=pixel_order,
        mode=mode,
        cell_face=cell_face,
        coef=coef,
        max_error_px=float((err_ok / scale[ok]).max()) if err_ok.size else 0.0,
        max_error_cells=float(err_ok.max()) if err_ok.size else 0.0,
    )
    return plan, err, scale, power


def choose_step(err_cells: np.ndarray, scale: np.ndarray, power: np.ndarray, probe_step: int) -> int:
    """Grid step [output pixels] from the centre errors measured on a probe grid.

    An interpolation's error grows as step^p (p = 4 bicubic, 2 bilinear), so a cell whose
    centre is off by ``e`` at ``probe_step`` passes at steps up to
    ``probe_step · (tol / e)^(1/p)``; cells that cannot be interpolated at all (face or
    region boundaries, the sky's border) cover a band whose width grows as the step. The
    step minimises the estimated time per pixel: exact pixels (`EXACT_NS`), interpolated
    ones (`GRID_NS`) and the two exact positions per grid cell.
    """
    n_cells = err_cells.size
    if n_cells == 0:
        return MIN_STEP
    measured = np.isfinite(err_cells) & (power > 0)
    structural = 1.0 - measured.mean()  # cells no polynomial can cover
    e = np.maximum(err_cells[measured], 1e-300)
    s = scale[measured]
    tol = np.minimum(TOL_CELLS * np.maximum(1.0, s), TOL_PIXELS * s)
    allowed = probe_step * (tol / e) ** (1.0 / power[measured])
    best, best_cost = MIN_STEP, math.inf
    for step in STEPS:
        exact = min(1.0, structural * step / probe_step + (allowed < step).sum() / n_cells)
        cost = EXACT_NS * exact + GRID_NS * (1.0 - exact) + 2.0 * EXACT_NS / step**2
        if cost < best_cost:
            best, best_cost = step, cost
    return best


def plan_grid(
    geom: OutputGeometry,
    survey_frame: str,
    pixel_order: int,
    *,
    step: int | None = None,
    num_threads: int = 1,
) -> GridPlan:
    """Exact face coordinates on a grid of output pixels, the step chosen from a measured error.

    Parameters
    ----------
    geom : OutputGeometry
    survey_frame : str
        The survey's frame (``icrs``, ``galactic``, ``ecliptic``).
    pixel_order : int
        HEALPix order of the survey's pixels (tile order + log2 tile width).
    step : int, optional
        Grid step [output pixels]; by default `choose_step` on a `PROBE_STEP` probe.
    num_threads : int
        Threads for the node positions (0 = every core).
    """
    kernel = wcs_kernel(geom.wcs)  # once: the probe and the plan map the same WCS
    if step is None:
        probe = min(PROBE_STEP, max(MIN_STEP, max(geom.width, geom.height) // 4))
        plan, err, scale, power = _grid(geom, survey_frame, pixel_order, probe, num_threads, kernel)
        step = choose_step(err, scale, power, probe)
        if step == probe:
            return plan
    if step < 1:
        raise ValueError(f"grid step must be >= 1 pixel, got {step}")
    return _grid(geom, survey_frame, pixel_order, int(step), num_threads, kernel)[0]


def grid_blend(
    plan: GridPlan,
    tiles: TileSet,
    *,
    bilinear: bool = True,
    num_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate, gather and blend every output pixel the plan covers.

    Returns
    -------
    values : ndarray
        float32 (C, height·width), FITS row order; undefined where ``fallback`` is set.
    fallback : ndarray
        bool (height·width,): pixels left to the exact path.
    """
    if plan.pixel_order != tiles.order + tiles.tile_depth:
        raise ValueError(
            f"grid at order {plan.pixel_order} does not match tiles of order {tiles.order} "
            f"and depth {tiles.tile_depth}"
        )
    n = plan.width * plan.height
    out = np.empty((tiles.n_channels, n), dtype=np.float32)
    fallback = np.zeros(n, dtype=np.bool_)  # the pass only marks the pixels it leaves
    if tiles.npix.size == 0:
        out.fill(np.nan)
        fallback.fill(False)
        return out, fallback
    flat = tiles.planes.reshape(tiles.n_channels, -1)
    npix = np.ascontiguousarray(tiles.npix, dtype=np.int64)

    def rows(a: int, b: int) -> None:
        _grid_rows(
            a, b, plan.width, plan.step, plan.mode, plan.cell_face, plan.coef, plan.nside, tiles.order,
            tiles.tile_depth, bilinear, npix, flat, out, fallback,
        )  # fmt: skip

    run_row_chunks(rows, plan.height, num_threads, chunks_per_thread=GRID_CHUNKS_PER_THREAD)
    return out, fallback


def exact_pixels(
    geom: OutputGeometry,
    tiles: TileSet,
    survey_frame: str,
    index: np.ndarray,
    *,
    interpolation: str = "bilinear",
    num_threads: int = 1,
) -> np.ndarray:
    """The exact path (projection, cdshealpix, blend) for the output pixels ``index``: float32 (C, m)."""
    x = (index % geom.width).astype(np.float64)
    y = (index // geom.width).astype(np.float64)
    lon, lat, valid = points_lonlat(geom.wcs, x, y, wcs_frame=geom.frame, target_frame=survey_frame)
    values = np.full((tiles.n_channels, index.size), np.nan, dtype=np.float32)
    if valid.any():  # off the sky is NaN: no need to ask cdshealpix
        on = np.flatnonzero(valid)
        cells = sample_cells(
            lon[on], lat[on], np.ones(on.size, np.bool_), tiles.order + tiles.tile_depth, interpolation,
            num_threads=num_threads,
        )  # fmt: skip
        values[:, on] = blend(cells, tiles, num_threads)
    return values


def grid_reproject_values(
    geom: OutputGeometry,
    tiles: TileSet,
    survey_frame: str,
    *,
    interpolation: str = "bilinear",
    num_threads: int = 1,
    plan: GridPlan | None = None,
    grid_blender: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """`sampling.blend`'s values for every output pixel, by grid sampling: float32 (C, height·width).

    ``grid_blender(plan, tiles, bilinear=...)`` replaces the CPU pass (the wgpu path,
    `skyrender.gpu.WgpuBlender.grid_blend`); the exact path fills what it leaves.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {INTERPOLATIONS}")
    if plan is None:
        plan = plan_grid(geom, survey_frame, tiles.order + tiles.tile_depth, num_threads=num_threads)
    bilinear = interpolation == "bilinear"
    if grid_blender is not None:
        values, fallback = grid_blender(plan, tiles, bilinear=bilinear)
    else:
        values, fallback = grid_blend(plan, tiles, bilinear=bilinear, num_threads=num_threads)
    index = np.flatnonzero(fallback)
    if index.size:
        values[:, index] = exact_pixels(
            geom, tiles, survey_frame, index, interpolation=interpolation, num_threads=num_threads
        )
    return values


def pixel_errors(
    plan: GridPlan, geom: OutputGeometry, survey_frame: str, *, every: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Measured error of the interpolated positions against exact ones, at every ``every``-th
    pixel (along x and y) of the interpolated cells.

    Returns
    -------
    err_px, err_cells : ndarray
        float64: the error [output pixels], [HEALPix cells]. Pixels whose four cells the
        grid pass hands to the exact path (across a face edge) are left out.
    """
    ys, xs = np.mgrid[0 : geom.height : every, 0 : geom.width : every]
    xs, ys = xs.ravel(), ys.ravel()
    cy, cx = ys // plan.step, xs // plan.step
    m = plan.mode[cy, cx]
    keep = m > 0
    xs, ys, cy, cx, m = xs[keep], ys[keep], cy[keep], cx[keep], m[keep]
    u = (xs - cx * plan.step) / plan.step
    v = (ys - cy * plan.step) / plan.step
    powers_u = np.stack([u**k for k in range(4)], axis=1)
    powers_v = np.stack([v**k for k in range(4)], axis=1)
    coef = plan.coef[cy, cx]  # (N, 2, 4, 4): [coordinate, power of v, power of u]
    interp = np.einsum("nkab,na,nb->nk", coef, powers_v, powers_u)
    lon, lat, valid = points_lonlat(
        geom.wcs, xs.astype(float), ys.astype(float), wcs_frame=geom.frame, target_frame=survey_frame
    )
    k = xs.size
    face, c1, c2, region = np.empty(k, np.int8), np.empty(k), np.empty(k), np.empty(k, np.int8)
    _node_coords(lon, lat, valid, plan.nside, face, c1, c2, region)
    n = float(plan.nside)
    exact = np.stack([c1, c2], axis=1)
    lattice = m == 1
    # Equatorial cells: an exact position inside a polar face, in lattice coordinates.
    polar = lattice & (region > 0)
    f = face[polar].astype(float) % 4
    fm = np.where(region[polar] == 1, f + 1, f)
    fp = np.where(region[polar] == 1, f, f + 1)
    exact[polar, 0] = c1[polar] + fm * n
    exact[polar, 1] = fp * n + n - c2[polar]
    shift = np.round((interp[lattice, 0] - exact[lattice, 0]) / (4 * n)) * 4 * n
    exact[lattice] += shift[:, None]
    err_cells = np.hypot(*(interp - exact).T)
    # Polar cells: positions that left the cell's face only count if the grid pass used them.
    inside = np.all((interp >= 0.5) & (interp <= n - 0.5), axis=1)
    wrong_face = (m == 2) & (face != plan.cell_face[cy, cx])
    err_cells[wrong_face & ~inside] = np.nan
    err_cells[wrong_face & inside] = np.inf
    # Output pixels per cell, from the polynomial's derivative along u and v.
    du = np.einsum("nkab,na,nb->nk", coef[:, :, :, 1:], powers_v, powers_u[:, :3] * np.arange(1, 4))
    dv = np.einsum("nkab,na,nb->nk", coef[:, :, 1:, :], powers_v[:, :3] * np.arange(1, 4), powers_u)
    scale = np.maximum(np.hypot(*du.T), np.hypot(*dv.T)) / plan.step  # cells per output pixel
    ok = np.isfinite(err_cells) | np.isinf(err_cells)
    return err_cells[ok] / scale[ok], err_cells[ok]
