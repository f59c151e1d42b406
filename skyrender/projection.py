"""Output pixel → sky position, fast.

astropy's ``wcs_pix2world`` costs ~170 ns a pixel here, more than the whole HEALPix
step, so for the projections a sky preview uses (TAN, SIN, ARC, ZEA, STG, CAR, AIT,
MOL) we evaluate the FITS WCS chain ourselves, a compiled pass then numpy's SIMD arctan2:

    pixel → intermediate world (x, y) = CD · (p − CRPIX)            [deg]
          → native spherical (φ, θ)  (the projection's inverse, Calabretta & Greisen 2002)
          → unit vector, rotated by R = M_frame · R_native→celestial
          → (lon, lat) in the survey's frame                        [rad]   (numpy)

R_native→celestial is not derived by hand: it is fitted (orthogonal Procrustes) to
native and celestial coordinates that wcslib itself returns (``Wcsprm.p2s``) for a few
pixels, so LONPOLE/LATPOLE conventions are exactly wcslib's. Everything else (other
projections, PV terms, SIP/distortions) falls back to astropy. Tests hold the fast path
to astropy within 1e-9 deg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from astropy.wcs import WCS

from .frames import rotation_matrix
from .threads import run_row_chunks

#: Projections evaluated by the compiled kernel; codes index ``_kernel``'s branches.
FAST_PROJECTIONS = {"TAN": 0, "SIN": 1, "ARC": 2, "ZEA": 3, "STG": 4, "CAR": 5, "AIT": 6, "MOL": 7}

_D2R = math.pi / 180.0
_R2D = 180.0 / math.pi


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _native_vector(code: int, x: float, y: float) -> tuple[float, float, float, bool]:
    """Inverse projection: intermediate world (x, y) [deg] → native unit vector.

    Returns (cos θ cos φ, cos θ sin φ, sin θ, ok). For the zenithal projections
    φ = arg(−y, x), so cos φ = −y / R and sin φ = x / R: the vector follows from R alone
    with at most one square root, no trigonometry (the formulas of Calabretta &
    Greisen 2002 rewritten through half-angle identities).
    """
    if code <= 4:
        if code == 0:  # TAN: tan θ = R0 / R
            d = math.sqrt(x * x + y * y + _R2D * _R2D)
            return -y / d, x / d, _R2D / d, True
        r2 = (x * x + y * y) * _D2R * _D2R  # R² [rad²]
        if code == 1:  # SIN: cos θ = R / R0
            if r2 > 1.0:
                if r2 > 1.0 + 1e-12:
                    return 0.0, 0.0, 0.0, False
                r2 = 1.0
            return -y * _D2R, x * _D2R, math.sqrt(1.0 - r2), True
        if code == 2:  # ARC: θ = 90° − R
            r = math.sqrt(r2)
            if r > math.pi:
                return 0.0, 0.0, 0.0, False
            k = math.sin(r) / r * _D2R if r > 0.0 else _D2R
            return -y * k, x * k, math.cos(r), True
        if code == 3:  # ZEA: sin((90° − θ) / 2) = R / (2 R0)
            s2 = r2 / 4.0
            if s2 > 1.0:
                if s2 > 1.0 + 1e-12:
                    return 0.0, 0.0, 0.0, False
                s2 = 1.0
            k = math.sqrt(1.0 - s2) * _D2R
            return -y * k, x * k, 1.0 - 2.0 * s2, True
        # STG: tan((90° − θ) / 2) = R / (2 R0)
        t2 = r2 / 4.0
        k = _D2R / (1.0 + t2)
        return -y * k, x * k, (1.0 - t2) / (1.0 + t2), True
    if code == 5:  # CAR
        if abs(y) > 90.0:
            return 0.0, 0.0, 0.0, False
        phi = x * _D2R
        theta = y * _D2R
    elif code == 6:  # AIT (Hammer-Aitoff)
        xr = x * _D2R
        yr = y * _D2R
        z2 = 1.0 - xr * xr / 16.0 - yr * yr / 4.0
        if z2 < 0.5:  # outside the 2:1 ellipse that bounds the whole sky
            if z2 < 0.5 - 1e-13:
                return 0.0, 0.0, 0.0, False
            z2 = 0.5
        z = math.sqrt(z2)
        phi = 2.0 * math.atan2(z * xr / 2.0, 2.0 * z2 - 1.0)
        s = yr * z
        if abs(s) > 1.0:
            return 0.0, 0.0, 0.0, False
        theta = math.asin(s)
    else:  # MOL (Mollweide)
        xr = x * _D2R
        yr = y * _D2R
        s = yr / math.sqrt(2.0)
        if abs(s) > 1.0:
            if abs(s) > 1.0 + 1e-13:
                return 0.0, 0.0, 0.0, False
            s = math.copysign(1.0, s)
        c = math.sqrt(max(0.0, 1.0 - s * s))
        if c == 0.0:
            if abs(xr) > 1e-12:
                return 0.0, 0.0, 0.0, False
            phi = 0.0
        else:
            phi = math.pi * xr / (2.0 * math.sqrt(2.0) * c)
            if abs(phi) > math.pi:
                if abs(phi) > math.pi * (1.0 + 1e-13):
                    return 0.0, 0.0, 0.0, False
                phi = math.copysign(math.pi, phi)
        gamma = math.asin(s)
        t = (2.0 * gamma + math.sin(2.0 * gamma)) / math.pi
        theta = math.asin(min(1.0, max(-1.0, t)))
    ct = math.cos(theta)
    return ct * math.cos(phi), ct * math.sin(phi), math.sin(theta), True


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _kernel(code, width, height, x0, y0, step, crpix, cd, rot, vx_out, vy_out, vz_out, valid_out):
    """Unit vectors in the target frame for pixels (x0 + i·step, y0 + j·step); 0 off the sky.

    The angles are left to numpy (`_vectors_to_lonlat`): its arctan2 is SIMD, ~10x the
    scalar libm call a compiled loop makes, and the kernel needs no trigonometry for
    the zenithal projections.
    """
    n = 0
    for j in range(height):
        py = y0 + j * step - crpix[1]
        for i in range(width):
            px = x0 + i * step - crpix[0]
            x = cd[0, 0] * px + cd[0, 1] * py
            y = cd[1, 0] * px + cd[1, 1] * py
            u0, u1, u2, ok = _native_vector(code, x, y)
            if not ok:
                vx_out[n] = 0.0
                vy_out[n] = 0.0
                vz_out[n] = 0.0
                valid_out[n] = False
                n += 1
                continue
            vx_out[n] = rot[0, 0] * u0 + rot[0, 1] * u1 + rot[0, 2] * u2
            vy_out[n] = rot[1, 0] * u0 + rot[1, 1] * u1 + rot[1, 2] * u2
            vz_out[n] = rot[2, 0] * u0 + rot[2, 1] * u1 + rot[2, 2] * u2
            valid_out[n] = True
            n += 1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _points_kernel(code, xs, ys, crpix, cd, rot, vx_out, vy_out, vz_out, valid_out):
    """`_kernel` for a list of pixels (xs[k], ys[k]) instead of a regular grid."""
    for n in range(xs.shape[0]):
        px = xs[n] - crpix[0]
        py = ys[n] - crpix[1]
        x = cd[0, 0] * px + cd[0, 1] * py
        y = cd[1, 0] * px + cd[1, 1] * py
        u0, u1, u2, ok = _native_vector(code, x, y)
        if not ok:
            vx_out[n] = 0.0
            vy_out[n] = 0.0
            vz_out[n] = 0.0
            valid_out[n] = False
            continue
        vx_out[n] = rot[0, 0] * u0 + rot[0, 1] * u1 + rot[0, 2] * u2
        vy_out[n] = rot[1, 0] * u0 + rot[1, 1] * u1 + rot[1, 2] * u2
        vz_out[n] = rot[2, 0] * u0 + rot[2, 1] * u1 + rot[2, 2] * u2
        valid_out[n] = True


def _vectors_to_lonlat(vx: np.ndarray, vy: np.ndarray, vz: np.ndarray) -> None:
    """Unit vectors → (lon, lat) [rad] in place: lon into ``vx`` in [0, 2π), lat into ``vy``.

    ``vz`` is scratch. Latitude as atan2(z, ρ): it keeps full precision near the poles,
    where asin(z) loses half the digits. The zero vector (off-sky pixels) gives (0, 0).
    """
    rho = np.sqrt(vx * vx + vy * vy)
    np.arctan2(vz, rho, out=rho)  # latitude
    np.arctan2(vy, vx, out=vz)  # longitude in [-π, π]
    np.add(vz, 2.0 * math.pi, out=vz, where=vz < 0.0)
    np.subtract(vz, 2.0 * math.pi, out=vz, where=vz >= 2.0 * math.pi)
    vx[:] = vz
    vy[:] = rho


def _projection_code(wcs: WCS) -> str:
    return wcs.wcs.ctype[0][5:8].strip("-").upper()


def fast_path_supported(wcs: WCS) -> bool:
    """True when ``wcs`` is evaluated by the compiled kernel rather than astropy.

    Needs a plain 2-D celestial WCS (longitude first), one of `FAST_PROJECTIONS`, no PV
    projection parameters, no SIP or lookup-table distortions.
    """
    w = wcs.wcs
    if wcs.naxis != 2 or w.lng != 0 or w.lat != 1:
        return False
    if _projection_code(wcs) not in FAST_PROJECTIONS:
        return False
    if wcs.sip is not None or wcs.cpdis1 is not None or wcs.cpdis2 is not None or wcs.det2im1 is not None:
        return False
    # PV1_* (fiducial point offsets) and PV2_* (projection parameters) change the maths.
    if any(i in (1, 2) for i, _, _ in w.get_pv()):
        return False
    # wcslib's own distortions (TPD, e.g. from DSS plate solutions) only show in the header.
    # wcslib's own header text (80-character cards, keyword first) has them: ~11 µs, against
    # ~200 µs for astropy's `WCS.to_header_string`, which builds a Header first.
    text = w.to_header(True)
    if any(text[i : i + 8].startswith(("CQDIS", "CPDIS", "DQ", "DP")) for i in range(0, len(text), 80)):
        return False
    # Only the default native reference point (φ0, θ0) is handled by the affine step.
    return True


@dataclass(frozen=True)
class WcsKernel:
    """What the compiled kernel takes of a WCS, computed once per WCS by `wcs_kernel`.

    ``code`` is the `FAST_PROJECTIONS` code, None when astropy must evaluate the WCS
    (`fast_path_supported` false; the arrays are None too). ``crpix0``: reference pixel,
    0-based [pixels]; ``cd``: 2x2 pixel → intermediate world matrix [degrees/pixel];
    ``native_to_celestial``: 3x3 rotation of native unit vectors to celestial ones.
    """

    code: int | None
    crpix0: np.ndarray | None = None
    cd: np.ndarray | None = None
    native_to_celestial: np.ndarray | None = None


def wcs_kernel(wcs: WCS) -> WcsKernel:
    """`WcsKernel` of ``wcs``: checking it and asking wcslib for its rotation take ~0.15 ms,
    so a render that maps several grids of the same WCS computes this once."""
    w = wcs.wcs
    w.set()
    if not fast_path_supported(wcs):
        return WcsKernel(None)
    cd = np.ascontiguousarray(w.cd if w.has_cd() else w.get_pc() * w.cdelt[:, None], dtype=float)
    return WcsKernel(
        code=FAST_PROJECTIONS[_projection_code(wcs)],
        crpix0=np.asarray(w.crpix, dtype=float) - 1.0,  # FITS CRPIX is 1-based
        cd=cd,
        native_to_celestial=_native_to_celestial(wcs, cd),
    )


def _native_to_celestial(wcs: WCS, cd: np.ndarray) -> np.ndarray:
    """Rotation matrix native (φ, θ) unit vectors → celestial unit vectors, from wcslib
    (``cd``: the WCS's pixel → intermediate world matrix [degrees/pixel])."""
    w = wcs.wcs
    # A spread of intermediate world points near the reference point: well conditioned.
    offsets = np.array([[0, 0], [1, 0], [0, 1], [-1, 1], [1, -1], [2, 3]], dtype=float)
    scale = 1.0 / max(np.abs(cd).max(), 1e-12)  # ~1 degree in pixels
    pix = w.crpix + offsets * min(scale, 1e6) - 1.0  # 0-based
    res = w.p2s(pix, 0)
    ok = res["stat"] == 0
    phi, theta = np.radians(res["phi"][ok]), np.radians(res["theta"][ok])
    lon, lat = np.radians(res["world"][ok, 0]), np.radians(res["world"][ok, 1])
    a = np.stack([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)])
    b = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    u, _, vt = np.linalg.svd(b @ a.T)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def pixel_lonlat(
    wcs: WCS,
    width: int,
    height: int,
    *,
    wcs_frame: str,
    target_frame: str,
    step: float = 1.0,
    x0: float = 0.0,
    y0: float = 0.0,
    num_threads: int = 1,
    kernel: WcsKernel | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sky positions of a grid of output pixels, in ``target_frame``.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        2-D celestial WCS of the output image.
    width, height : int
        Number of grid points along x and y.
    wcs_frame, target_frame : str
        Frame of the WCS and frame wanted for the result (the survey's).
    step, x0, y0 : float
        Grid: 0-based pixel coordinates ``x0 + i·step``, ``y0 + j·step`` [pixels].
    num_threads : int
        Threads for the compiled path, over bands of rows (0 = every core).
    kernel : WcsKernel, optional
        ``wcs_kernel(wcs)``, when the caller maps several grids of one WCS.

    Returns
    -------
    lon, lat : ndarray
        float64 (height·width,) in radians, lon in [0, 2π), row-major with y the slow
        index (FITS order: the first row is the bottom of the image).
    valid : ndarray
        bool (height·width,), False for pixels off the sky (outside the projection).
    """
    n = int(width) * int(height)
    frame_rot = rotation_matrix(wcs_frame, target_frame)
    if kernel is None:
        kernel = wcs_kernel(wcs)
    if kernel.code is not None:
        rot = np.ascontiguousarray(frame_rot @ kernel.native_to_celestial)
        lon = np.empty(n)
        lat = np.empty(n)
        scratch = np.empty(n)
        valid = np.empty(n, dtype=np.bool_)
        code, crpix0, cd = kernel.code, kernel.crpix0, kernel.cd
        width = int(width)

        def rows(start: int, stop: int) -> None:
            a, b = start * width, stop * width
            _kernel(
                code, width, stop - start, float(x0), float(y0) + start * float(step), float(step),
                crpix0, cd, rot, lon[a:b], lat[a:b], scratch[a:b], valid[a:b],
            )  # fmt: skip
            _vectors_to_lonlat(lon[a:b], lat[a:b], scratch[a:b])

        run_row_chunks(rows, int(height), num_threads)
        return lon, lat, valid
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    with np.errstate(invalid="ignore"):
        lon_deg, lat_deg = wcs.all_pix2world((x0 + xs * step).ravel(), (y0 + ys * step).ravel(), 0)
    return _rotate_lonlat(np.radians(lon_deg), np.radians(lat_deg), frame_rot)


def points_lonlat(
    wcs: WCS,
    x: np.ndarray,
    y: np.ndarray,
    *,
    wcs_frame: str,
    target_frame: str,
    kernel: WcsKernel | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sky positions of arbitrary output pixels, in ``target_frame`` (same chain as `pixel_lonlat`).

    Parameters
    ----------
    wcs : astropy.wcs.WCS
    x, y : ndarray
        0-based pixel coordinates [pixels], same length.
    wcs_frame, target_frame : str
    kernel : WcsKernel, optional
        ``wcs_kernel(wcs)``, when the caller already has it.

    Returns
    -------
    lon, lat : ndarray
        float64 [rad], lon in [0, 2π).
    valid : ndarray
        bool, False off the sky.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    frame_rot = rotation_matrix(wcs_frame, target_frame)
    if kernel is None:
        kernel = wcs_kernel(wcs)
    if kernel.code is not None:
        rot = np.ascontiguousarray(frame_rot @ kernel.native_to_celestial)
        n = x.shape[0]
        lon, lat, scratch = np.empty(n), np.empty(n), np.empty(n)
        valid = np.empty(n, dtype=np.bool_)
        _points_kernel(kernel.code, x, y, kernel.crpix0, kernel.cd, rot, lon, lat, scratch, valid)
        _vectors_to_lonlat(lon, lat, scratch)
        return lon, lat, valid
    with np.errstate(invalid="ignore"):
        lon_deg, lat_deg = wcs.all_pix2world(x, y, 0)
    return _rotate_lonlat(np.radians(lon_deg), np.radians(lat_deg), frame_rot)


def _rotate_lonlat(lon, lat, rot):
    valid = np.isfinite(lon) & np.isfinite(lat)
    lon = np.where(valid, lon, 0.0)
    lat = np.where(valid, lat, 0.0)
    if not np.allclose(rot, np.eye(3)):
        c = np.cos(lat)
        v = rot @ np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)])
        lon = np.arctan2(v[1], v[0])
        lat = np.arctan2(v[2], np.hypot(v[0], v[1]))
    lon = np.mod(lon, 2 * np.pi)
    lon[lon >= 2 * np.pi] = 0.0
    return np.ascontiguousarray(lon), np.ascontiguousarray(lat), valid


def lonlat_reference(
    wcs: WCS, width: int, height: int, *, wcs_frame: str, target_frame: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same as `pixel_lonlat` but always through astropy (the reference for tests)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    with np.errstate(invalid="ignore"):
        lon_deg, lat_deg = wcs.all_pix2world(xs.ravel(), ys.ravel(), 0)
    return _rotate_lonlat(np.radians(lon_deg), np.radians(lat_deg), rotation_matrix(wcs_frame, target_frame))
