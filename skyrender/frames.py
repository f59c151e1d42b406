"""Celestial frames: names, and the rotation matrices between them.

HiPS surveys are stored in one of three frames (``hips_frame``: equatorial, galactic,
ecliptic). The output image may be in another; the change of frame is a fixed 3×3
rotation of unit vectors, which we take from astropy once and cache.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .errors import GeometryError

__all__ = [
    "FRAMES",
    "frame_of_wcs",
    "normalize_frame",
    "rotation_matrix",
    "transform_lonlat",
]

#: Canonical frame names used across the package.
FRAMES = ("icrs", "galactic", "ecliptic")

_ALIASES = {
    "icrs": "icrs",
    "equatorial": "icrs",
    "c": "icrs",
    "fk5": "fk5",
    "galactic": "galactic",
    "g": "galactic",
    "ecliptic": "ecliptic",
    "e": "ecliptic",
}


def normalize_frame(name: str) -> str:
    """Return the canonical frame name (``icrs``, ``fk5``, ``galactic``, ``ecliptic``).

    Accepts HiPS names (``equatorial``), the old ``coordsys`` letters (C, G, E) and
    astropy's names. Raises `GeometryError` for anything else.
    """
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise GeometryError(f"unknown celestial frame {name!r}; expected one of {FRAMES}")
    return _ALIASES[key]


def _astropy_frame(name: str):
    from astropy.coordinates import FK5, ICRS, BarycentricMeanEcliptic, Galactic

    return {
        "icrs": ICRS(),
        "fk5": FK5(equinox="J2000"),
        "galactic": Galactic(),
        "ecliptic": BarycentricMeanEcliptic(equinox="J2000"),
    }[name]


@lru_cache(maxsize=32)
def rotation_matrix(from_frame: str, to_frame: str) -> np.ndarray:
    """3×3 matrix taking unit vectors in ``from_frame`` to unit vectors in ``to_frame``.

    The matrix is read off astropy's own transformation (it maps the three basis
    vectors), so our kernels agree with astropy to rounding.
    """
    src, dst = normalize_frame(from_frame), normalize_frame(to_frame)
    if src == dst:
        return np.eye(3)
    from astropy.coordinates import CartesianRepresentation, SkyCoord

    basis = CartesianRepresentation(np.eye(3))
    coords = SkyCoord(_astropy_frame(src).realize_frame(basis))
    out = coords.transform_to(_astropy_frame(dst)).cartesian.xyz.value  # (3, 3): column i = image of e_i
    # Astropy may rescale distance-less vectors; keep it a pure rotation.
    out = out / np.linalg.norm(out, axis=0, keepdims=True)
    return np.ascontiguousarray(out)


def frame_of_wcs(wcs) -> str:
    """Canonical frame name of a celestial astropy WCS."""
    from astropy.wcs.utils import wcs_to_celestial_frame

    try:
        frame = wcs_to_celestial_frame(wcs)
    except ValueError as exc:
        raise GeometryError(f"cannot tell the celestial frame of this WCS: {exc}") from exc
    name = frame.name.lower()
    if name in ("icrs", "galactic"):
        return name
    if name == "fk5":
        return "fk5"
    if "ecliptic" in name:
        return "ecliptic"
    raise GeometryError(f"unsupported celestial frame {frame.name!r}")


def transform_lonlat(lon_deg: float, lat_deg: float, from_frame: str, to_frame: str) -> tuple[float, float]:
    """A position [deg] in ``from_frame`` as (lon, lat) [deg] in ``to_frame``.

    Uses `rotation_matrix`, so it agrees with astropy to rounding; lon is in [0, 360).
    """
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    vec = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    x, y, z = rotation_matrix(from_frame, to_frame) @ vec
    out_lon = float(np.degrees(np.arctan2(y, x)) % 360.0)
    out_lat = float(np.degrees(np.arcsin(np.clip(z, -1.0, 1.0))))
    return out_lon, out_lat
