"""WCS validation and description: is this header a usable 2-D celestial image, and where is it?

Headers arrive as astropy ``Header`` objects or as dicts of keywords decoded from JSON.
Everything wrong with one — malformed values, unknown projection codes, zero scales, a
singular matrix, missing or silly image sizes, no celestial axes — becomes an
`InvalidWCSError` carrying the reason wcslib (or our own check) gives; no numpy/astropy
exception escapes.

Only the two image axes are kept (``WCS(header, naxis=2)``): a stray third axis such as
MAGPIS's ``CTYPE3 = 'LAMBDA'`` with ``NAXIS = 2`` is ignored, like ``.celestial`` would, but
without reordering the pixel axes when the header lists latitude first.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from .errors import InvalidWCSError
from .wcserrors import explain_wcs_error, library_reason

__all__ = [
    "MAX_HEADER_SIDE",
    "WcsDescription",
    "describe_header",
    "normalize_header",
    "wcs_from_header",
]

#: Largest accepted NAXIS1/NAXIS2 [pixels]: a sanity bound for descriptions (renders
#: apply their own, much smaller, limits).
MAX_HEADER_SIDE = 1_000_000

#: Keywords whose value must be a number (JSON strings holding numbers are accepted).
NUMERIC_KEYWORDS = (
    r"^(CRPIX[0-9]+[A-Z]?|CRVAL[0-9]+[A-Z]?|CDELT[0-9]+[A-Z]?|CROTA[0-9]+|CD[0-9]+_[0-9]+[A-Z]?"
    r"|PC[0-9]+_[0-9]+[A-Z]?|PV[0-9]+_[0-9]+[A-Z]?|LONPOLE[A-Z]?|LATPOLE[A-Z]?|EQUINOX[A-Z]?|EPOCH"
    r"|MJD-OBS|MJDREF|A_[0-9]+_[0-9]+|B_[0-9]+_[0-9]+|AP_[0-9]+_[0-9]+|BP_[0-9]+_[0-9]+)$"
)
#: Keywords whose value must be text.
STRING_KEYWORDS = r"^(CTYPE[0-9]+[A-Z]?|CUNIT[0-9]+[A-Z]?|RADESYS[A-Z]?|RADECSYS|WCSNAME[A-Z]?|SPECSYS)$"
#: Keywords whose value must be a whole number.
INTEGER_KEYWORDS = r"^(NAXIS[0-9]*|WCSAXES[A-Z]?|A_ORDER|B_ORDER|AP_ORDER|BP_ORDER)$"
_NUMERIC = re.compile(NUMERIC_KEYWORDS)
_STRING = re.compile(STRING_KEYWORDS)
_INTEGER = re.compile(INTEGER_KEYWORDS)

_FRAME_NAMES = {"icrs": "icrs", "fk5": "fk5", "fk4": "fk4", "fk4noeterms": "fk4", "galactic": "galactic"}


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, np.integer, np.floating)):
        raise InvalidWCSError(f"{key} must be a number, got {value!r}", field=key)
    try:
        number = float(value)
    except ValueError:
        raise InvalidWCSError(f"{key} must be a number, got {value!r}", field=key) from None
    if not math.isfinite(number):
        raise InvalidWCSError(f"{key} must be finite, got {value!r}", field=key)
    return number


def _integer(key: str, value: Any) -> int:
    number = _number(key, value)
    if not number.is_integer():
        raise InvalidWCSError(f"{key} must be a whole number, got {value!r}", field=key)
    return int(number)


def _clean_value(key: str, value: Any) -> Any:
    """A header value checked for its keyword: numbers where wcslib needs numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if _INTEGER.match(key):
        return _integer(key, value)
    if _NUMERIC.match(key):
        number = _number(key, value)
        return int(number) if isinstance(value, int) else number
    if _STRING.match(key) and not isinstance(value, str):
        raise InvalidWCSError(f"{key} must be a string, got {value!r}", field=key)
    if value is None or isinstance(value, fits.card.Undefined):
        raise InvalidWCSError(f"{key} has no value", field=key)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidWCSError(f"{key} must be finite, got {value!r}", field=key)
    if not isinstance(value, (str, bool, int, float)):
        raise InvalidWCSError(
            f"{key} must be a string, number or boolean, got {type(value).__name__}", field=key
        )
    return value


def normalize_header(header: Mapping[str, Any] | fits.Header) -> fits.Header:
    """A clean astropy Header from a Header or a dict of FITS keywords (JSON values).

    Keys are upper-cased; values of WCS keywords must be numbers or numeric strings;
    nested objects and nulls are refused. COMMENT/HISTORY (strings or lists of
    strings) are kept.

    Raises
    ------
    InvalidWCSError
        Any value of the wrong type, or a key/value FITS cannot hold.
    """
    if isinstance(header, fits.Header):
        items = [(card.keyword, card.value) for card in header.cards]
    elif isinstance(header, Mapping):
        items = [(str(k).strip().upper(), v) for k, v in header.items()]
    else:
        raise InvalidWCSError(f"a header must be a dict of FITS keywords, got {type(header).__name__}")
    out = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long keys become HIERARCH cards; harmless here
        for key, value in items:
            if key in ("", "END"):
                continue
            try:
                if key in ("COMMENT", "HISTORY"):
                    lines = value if isinstance(value, (list, tuple)) else [value]
                    for line in lines:
                        if not isinstance(line, str):
                            raise InvalidWCSError(f"{key} must be text, got {type(line).__name__}", field=key)
                        out.append((key, line))
                    continue
                out[key] = _clean_value(key, value)
            except InvalidWCSError:
                raise
            except Exception as exc:  # astropy refuses the key or value (non-ASCII, too long, ...)
                raise InvalidWCSError(
                    f"keyword {key!r} cannot be written in a FITS header: {exc}", field=key
                ) from None
    return out


def _projection_code(header: fits.Header) -> str | None:
    ctype = header.get("CTYPE1")
    if not isinstance(ctype, str) or len(ctype) < 8:
        return None
    return ctype[5:8].strip("-").upper() or None


def _image_size(header: fits.Header, max_side: int) -> tuple[int, int]:
    sizes = []
    for key in ("NAXIS1", "NAXIS2"):
        if key not in header:
            raise InvalidWCSError(f"{key} (image size) is missing", field=key)
        value = header[key]
        if not 1 <= value <= max_side:
            raise InvalidWCSError(f"{key} must be between 1 and {max_side} pixels, got {value}", field=key)
        sizes.append(int(value))
    return sizes[0], sizes[1]


def _check_scales(header: fits.Header) -> None:
    # wcslib silently defaults a missing CDELTi to 1 deg/pixel: demand a scale for both axes.
    has_cd = any(f"CD{i}_{j}" in header for i in (1, 2) for j in (1, 2))
    if has_cd:
        return
    for i in (1, 2):
        key = f"CDELT{i}"
        if key not in header:
            raise InvalidWCSError(f"no pixel scale: {key} (or a CD matrix) is missing", field=key)
        if header[key] == 0:
            raise InvalidWCSError(f"{key} is zero: the pixel scale must be non-zero [deg]", field=key)


def wcs_from_header(
    header: Mapping[str, Any] | fits.Header, *, max_side: int = MAX_HEADER_SIDE
) -> tuple[WCS, int, int]:
    """The 2-D celestial WCS and image size of a header.

    Parameters
    ----------
    header : Mapping or astropy.io.fits.Header
        FITS keywords, including NAXIS1 and NAXIS2.
    max_side : int
        Largest accepted NAXIS1/NAXIS2 [pixels].

    Returns
    -------
    (astropy.wcs.WCS, int, int)
        A set-up celestial WCS whose pixel axes are the image's (x = axis 1, y = axis 2),
        and the width and height [pixels].

    Raises
    ------
    InvalidWCSError
        With wcslib's reason, or ours (missing size or scale, singular matrix, no
        celestial axes).
    """
    from astropy.wcs import FITSFixedWarning

    hdr = normalize_header(header)
    width, height = _image_size(hdr, max_side)
    _check_scales(hdr)
    error: Exception | None = None
    with warnings.catch_warnings(record=True) as caught:  # record: astropy's fix-up chatter stays quiet
        warnings.simplefilter("always", FITSFixedWarning)
        try:
            wcs = WCS(hdr, naxis=2)
            wcs.wcs.set()
        except Exception as exc:  # wcslib raises a family of private exception types
            error = exc
    if error is not None:
        problem = explain_wcs_error(error, _projection_code(hdr))
        reason = problem.reason
        notes = [str(w.message).strip() for w in caught if issubclass(w.category, FITSFixedWarning)]
        if notes:
            reason += f" (astropy: {'; '.join(notes)})"
        raise InvalidWCSError(problem.message, field=problem.field, reason=reason)
    if not wcs.has_celestial or wcs.wcs.lng < 0 or wcs.wcs.lat < 0:
        raise InvalidWCSError(
            "no celestial axes: CTYPE1/CTYPE2 must be a longitude/latitude pair such as "
            f"RA---TAN/DEC--TAN, got {list(wcs.wcs.ctype)!r}",
            field="CTYPE1",
        )
    matrix = wcs.pixel_scale_matrix
    det = float(np.linalg.det(matrix)) if np.all(np.isfinite(matrix)) else math.nan
    if not math.isfinite(det) or abs(det) <= 1e-12 * float(np.abs(matrix).max()) ** 2:
        raise InvalidWCSError(
            "the pixel-to-sky matrix (CD, or PC with CDELT) is singular: a scale is zero or the axes "
            "are parallel",
            field="CDELT1",
        )
    return wcs, width, height


@dataclass(frozen=True)
class WcsDescription:
    """What a header maps to on the sky. Angles in degrees.

    Attributes
    ----------
    projection : str
        wcslib projection code (``TAN``, ``SIN``, ``CAR``...).
    frame : str
        ``icrs``, ``fk5``, ``fk4``, ``galactic``, ``ecliptic`` or another astropy frame name.
    center_ra, center_dec : float
        ICRS position of the image centre, pixel ((width-1)/2, (height-1)/2) 0-based.
    center_lon, center_lat : float
        The same point in the header's own frame.
    pixel_scale_deg : (float, float)
        Pixel size along x and y at the reference point [deg/pixel], positive.
    width, height : int
        Image size [pixels].
    rotation_deg : float
        Angle from the image's +y axis to the direction of north (of the header's own
        frame) at the image centre, positive from +y towards −x, i.e. counter-clockwise
        as displayed; in (-180, 180]. This is the FITS ``CROTA2`` convention and
        :func:`skyrender.geometry.make_geometry`'s ``rotation_deg``.
    corners : list of (float, float) or None
        ICRS (ra, dec) of the outer pixel-edge corners, in the order bottom-left,
        bottom-right, top-right, top-left (bottom = row 0); None for a corner outside the
        projection's valid region.
    fov_deg : (float, float)
        Extent along x and y: width × scale x, height × scale y [deg].
    header : dict
        The normalised celestial WCS as FITS keywords (with NAXIS, NAXIS1, NAXIS2).
    """

    projection: str
    frame: str
    center_ra: float
    center_dec: float
    center_lon: float
    center_lat: float
    pixel_scale_deg: tuple[float, float]
    width: int
    height: int
    rotation_deg: float
    corners: list[tuple[float, float] | None]
    fov_deg: tuple[float, float]
    header: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (snake_case keys, lists for pairs, only builtin types)."""
        out = asdict(self)
        out["pixel_scale_deg"] = list(self.pixel_scale_deg)
        out["fov_deg"] = list(self.fov_deg)
        out["corners"] = [None if c is None else list(c) for c in self.corners]
        out["header"] = dict(self.header)
        return out


def _frame_name(wcs: WCS) -> tuple[str, Any]:
    from astropy.wcs.utils import wcs_to_celestial_frame

    try:
        frame = wcs_to_celestial_frame(wcs)
    except Exception as exc:
        raise InvalidWCSError(
            "cannot tell the celestial frame from RADESYS/CTYPE1", field="RADESYS", reason=library_reason(exc)
        ) from None
    name = frame.name.lower()
    if "ecliptic" in name:
        return "ecliptic", frame
    return _FRAME_NAMES.get(name, name), frame


def _pix2lonlat(wcs: WCS, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) [deg] of 0-based pixels; the header may list latitude first."""
    world = wcs.wcs_pix2world(np.column_stack([xs, ys]).astype(float), 0)
    return world[:, wcs.wcs.lng], world[:, wcs.wcs.lat]


def _lonlat2pix(wcs: WCS, lon: float, lat: float) -> tuple[float, float]:
    world = np.zeros((1, 2))
    world[0, wcs.wcs.lng], world[0, wcs.wcs.lat] = lon, lat
    x, y = wcs.wcs_world2pix(world, 0)[0]
    return float(x), float(y)


def _rotation_deg(wcs: WCS, x: float, y: float, lon: float, lat: float) -> float:
    """Angle of north at pixel (x, y), from +y towards −x [deg]."""
    # Step a hundredth of a pixel north (south near the pole) and see where it lands.
    step = 0.01 * float(np.min(proj_plane_pixel_scales(wcs)))
    sign = 1.0 if lat + step <= 90.0 else -1.0
    px, py = _lonlat2pix(wcs, lon, lat + sign * step)
    dx, dy = sign * (px - x), sign * (py - y)
    angle = math.degrees(math.atan2(-dx, dy))
    angle = round(angle, 10) + 0.0  # tidy −0.0 and 1e-14 noise of axis-aligned images
    return 180.0 if angle == -180.0 else angle


def _world_pairs(wcs: WCS, frame: Any, xs: list[float], ys: list[float]) -> list[tuple[float, float] | None]:
    """ICRS (ra, dec) of pixels, None where the projection has no sky position."""
    from astropy.coordinates import SkyCoord

    lon, lat = _pix2lonlat(wcs, np.array(xs, float), np.array(ys, float))
    out: list[tuple[float, float] | None] = [None] * len(xs)
    ok = np.isfinite(lon) & np.isfinite(lat)
    if ok.any():
        icrs = SkyCoord(lon[ok], lat[ok], unit="deg", frame=frame).icrs
        for i, ra, dec in zip(np.flatnonzero(ok), icrs.ra.deg, icrs.dec.deg, strict=True):
            out[i] = (float(ra), float(dec))
    return out


def _header_dict(wcs: WCS, width: int, height: int) -> dict[str, Any]:
    hdr = fits.Header()
    hdr["NAXIS"] = 2
    hdr["NAXIS1"] = width
    hdr["NAXIS2"] = height
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdr.update(wcs.to_header(relax=True))
    out: dict[str, Any] = {}
    for key, value in hdr.items():
        if key in ("COMMENT", "HISTORY", ""):
            continue
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def describe_header(
    header: Mapping[str, Any] | fits.Header, *, max_side: int = MAX_HEADER_SIDE
) -> WcsDescription:
    """Validate a FITS header and describe the sky it maps.

    Parameters
    ----------
    header : Mapping or astropy.io.fits.Header
        FITS keywords (JSON types accepted: numbers may be numeric strings).
    max_side : int
        Largest accepted NAXIS1/NAXIS2 [pixels].

    Returns
    -------
    WcsDescription

    Raises
    ------
    InvalidWCSError
        The header is not a usable 2-D celestial WCS; the message says why.
    """
    wcs, width, height = wcs_from_header(header, max_side=max_side)
    frame_name, frame = _frame_name(wcs)
    try:
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        (lon,), (lat,) = _pix2lonlat(wcs, np.array([cx]), np.array([cy]))
        if not (math.isfinite(lon) and math.isfinite(lat)):
            raise InvalidWCSError(
                "the image centre has no sky position in this projection: CRPIX1/CRPIX2 put it outside "
                "the projection's valid region",
                field="CRPIX1",
            )
        center = _world_pairs(wcs, frame, [cx], [cy])[0]
        if center is None:
            raise InvalidWCSError(
                "the image centre has no sky position in this projection: CRPIX1/CRPIX2 put it outside "
                "the projection's valid region",
                field="CRPIX1",
            )
        x0, x1, y0, y1 = -0.5, width - 0.5, -0.5, height - 0.5
        corners = _world_pairs(wcs, frame, [x0, x1, x1, x0], [y0, y0, y1, y1])
        scale_x, scale_y = (float(s) for s in proj_plane_pixel_scales(wcs))
        rotation = _rotation_deg(wcs, cx, cy, float(lon), float(lat))
        header_dict = _header_dict(wcs, width, height)
    except InvalidWCSError:
        raise
    except Exception as exc:  # numerical trouble inside wcslib/astropy for an odd header
        problem = explain_wcs_error(exc, wcs.wcs.ctype[wcs.wcs.lng][5:8].strip("-").upper())
        raise InvalidWCSError(problem.message, field=problem.field, reason=problem.reason) from None
    if not math.isfinite(rotation):
        raise InvalidWCSError("cannot find north at the image centre")
    return WcsDescription(
        projection=wcs.wcs.ctype[wcs.wcs.lng][5:8].strip("-").upper(),
        frame=frame_name,
        center_ra=center[0],
        center_dec=center[1],
        center_lon=float(lon) % 360.0,
        center_lat=float(lat),
        pixel_scale_deg=(scale_x, scale_y),
        width=width,
        height=height,
        rotation_deg=rotation,
        corners=corners,
        fov_deg=(width * scale_x, height * scale_y),
        header=header_dict,
    )
