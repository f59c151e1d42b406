"""The field a list of tiles covers, for the endpoints that receive tile URLs.

The centre is the normalised mean of the tiles' centre vectors, the field of view twice
the largest angular distance from that centre to a tile vertex (so every tile fits), in
a TAN projection in the survey's frame. Fields too wide for TAN fall back to an all-sky
Hammer-Aitoff view.
"""

from __future__ import annotations

from collections.abc import Sequence

import astropy.units as u
import numpy as np
from cdshealpix import nested

from .errors import GeometryError
from .geometry import OutputGeometry, make_geometry
from .tiles import TileId

__all__ = [
    "MAX_TAN_FOV_DEG",
    "field_of_tiles",
]

#: Widest field rendered in TAN [deg]; wider lists get an all-sky AIT view.
MAX_TAN_FOV_DEG = 120.0


def field_of_tiles(
    tiles: Sequence[TileId],
    width: int,
    height: int,
    frame: str,
    **limits,
) -> OutputGeometry:
    """Output geometry covering ``tiles`` (all of one order), in ``frame`` (the survey's).

    Parameters
    ----------
    tiles : sequence of TileId
    width, height : int
        Output size [pixels].
    frame : str
        The survey's frame: the field is built there, so no tile is distorted by a
        change of frame.
    """
    order = tiles[0].order
    npix = np.unique(np.array([t.npix for t in tiles], dtype=np.uint64))
    lon, lat = nested.healpix_to_lonlat(npix, order)
    vec = _unit(lon.rad, lat.rad)
    centre = vec.sum(axis=1)
    norm = np.linalg.norm(centre)
    if norm < 1e-9:  # tiles spread evenly over the sky: any centre will do
        centre = np.array([1.0, 0.0, 0.0])
    else:
        centre = centre / norm
    vlon, vlat = nested.vertices(npix, order)
    corners = _unit(vlon.to_value(u.rad).ravel(), vlat.to_value(u.rad).ravel())
    max_sep = np.degrees(np.arccos(np.clip(centre @ corners, -1.0, 1.0)).max())
    ra = float(np.degrees(np.arctan2(centre[1], centre[0])) % 360.0)
    dec = float(np.degrees(np.arcsin(np.clip(centre[2], -1.0, 1.0))))
    fov = 2.0 * max_sep
    if fov > MAX_TAN_FOV_DEG:
        return make_geometry(ra, 0.0 if fov > 180 else dec, 360.0, width, height, "AIT", 0.0, frame, **limits)
    if fov <= 0:
        raise GeometryError("the tiles enclose no area")
    return make_geometry(ra, dec, fov, width, height, "TAN", 0.0, frame, **limits)


def _unit(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    c = np.cos(lat)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)])
