"""Output geometry: the WCS and size of the image to render.

Two ways in: a field (centre, field of view, size, projection, rotation), built the way
hips2fits does but with the reference pixel at the exact image centre; or a full FITS
header (any projection wcslib accepts).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs._wcs import WCSHDO_P14, WCSHDO_safe
from astropy.wcs.utils import proj_plane_pixel_scales

from .errors import GeometryError, InvalidWCSError
from .frames import frame_of_wcs, normalize_frame
from .wcserrors import explain_wcs_error

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "FIELD_PROJECTIONS",
    "MIN_PIXEL_SCALE_DEG",
    "OutputGeometry",
    "PARAMETRIC_PROJECTIONS",
    "WCSLIB_PROJECTIONS",
    "geometry_from_header",
    "header_from_mapping",
    "make_geometry",
]

#: Smallest output pixel [deg] (3.6 micro-arcsec): far below any survey's resolution, and
#: far above where wcslib's matrix inversion fails (a pixel that underflows to 0 is singular).
MIN_PIXEL_SCALE_DEG = 1e-9

#: Default limits; the service passes its own from configuration.
DEFAULT_MAX_SIDE = 8192
DEFAULT_MAX_PIXELS = 4096 * 4096

#: Projection codes wcslib knows (Calabretta & Greisen 2002, plus HPX/XPH).
WCSLIB_PROJECTIONS = (
    "AZP SZP TAN STG SIN ARC ZPN ZEA AIR CYP CEA CAR MER SFL PAR MOL AIT COP COE COD COO "
    "BON PCO TSC CSC QSC HPX XPH"
).split()

#: Projections that need parameters (PVi_m) a field description cannot give: only a full
#: FITS header can use them.
PARAMETRIC_PROJECTIONS = ("ZPN", "COP", "COE", "COD", "COO", "BON")

#: Projections a field (centre, fov, size) can be rendered in.
FIELD_PROJECTIONS = tuple(p for p in WCSLIB_PROJECTIONS if p not in PARAMETRIC_PROJECTIONS)

_CTYPES = {
    "icrs": ("RA--", "DEC-"),
    "fk5": ("RA--", "DEC-"),
    "galactic": ("GLON", "GLAT"),
    "ecliptic": ("ELON", "ELAT"),
}


@dataclass(frozen=True)
class OutputGeometry:
    """The output image: a 2-D celestial WCS and a size in pixels.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS; pixel (0, 0) is the bottom-left pixel's centre (FITS order).
    width, height : int
        Image size [pixels].
    frame : str
        Frame of the WCS world coordinates (``icrs``, ``fk5``, ``galactic``, ``ecliptic``).
    """

    wcs: WCS = field(compare=False)
    width: int
    height: int
    frame: str
    #: The `make_geometry` arguments this field was built from (None for a FITS header):
    #: a geometry crossing a process boundary is rebuilt from them in ~15 µs, where
    #: wcslib's parse of its header takes ~0.5 ms.
    field_args: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def projection(self) -> str:
        return self.wcs.wcs.ctype[0][5:8].strip("-").upper()

    @property
    def pixel_scale_deg(self) -> float:
        """Finest pixel side at the reference point [deg]."""
        return float(np.min(proj_plane_pixel_scales(self.wcs)))

    @property
    def n_pixels(self) -> int:
        return self.width * self.height

    def header(self) -> fits.Header:
        """FITS header of the output image (WCS keywords plus NAXIS1/NAXIS2)."""
        hdr = fits.Header()
        hdr["NAXIS"] = 2
        hdr["NAXIS1"] = self.width
        hdr["NAXIS2"] = self.height
        hdr.update(self.wcs.to_header())
        return hdr

    def wcs_keywords(self) -> dict[str, Any]:
        """WCS keywords as a JSON-friendly dict (for the ``X-WCS`` response header)."""
        return dict(self._wcs_keywords)

    @cached_property
    def _wcs_keywords(self) -> dict[str, Any]:
        # Built once per geometry: a render needs them for its ETag and again for X-WCS. Every
        # panning request has a new geometry, and astropy's route (Header.fromstring of wcslib's
        # cards) took ~0.75 ms of the ingress's event loop per request; the cards read directly
        # take ~0.04 ms and give the same keywords (tests/core/test_geometry.py compares them).
        w = self.wcs
        if not any(d is not None for d in (w.sip, w.cpdis1, w.cpdis2, w.det2im1, w.det2im2)):
            cards = w.wcs.to_header(WCSHDO_P14 | WCSHDO_safe)  # what WCS.to_header() parses
            return {"NAXIS": 2, "NAXIS1": self.width, "NAXIS2": self.height, **keywords_of_cards(cards)}
        return self._wcs_keywords_by_astropy()

    def _wcs_keywords_by_astropy(self) -> dict[str, Any]:
        """`wcs_keywords` through astropy's FITS header (any WCS, distortions included)."""
        out: dict[str, Any] = {}
        for key, value in self.header().items():
            if key in ("COMMENT", "HISTORY", ""):
                continue
            out[key] = value.item() if isinstance(value, np.generic) else value
        return out

    def center_world(self) -> tuple[float, float]:
        """World coordinates of the image centre [deg], in the WCS frame."""
        lon, lat = self.wcs.wcs_pix2world([(self.width - 1) / 2], [(self.height - 1) / 2], 0)
        return float(lon[0]), float(lat[0])

    def __reduce_ex__(self, protocol: int) -> tuple:
        # A geometry crosses a process boundary with every render (ingress -> compose).
        if self.field_args is not None:
            return _geometry_from_field, (self.field_args,)
        # astropy pickles a WCS through a whole FITS HDU (~1.8 ms a round trip); the header
        # text holds all of a plain celestial WCS (~0.6 ms). Distortions (SIP, lookup tables)
        # go astropy's way.
        w = self.wcs
        if any(d is not None for d in (w.sip, w.cpdis1, w.cpdis2, w.det2im1, w.det2im2)):
            return super().__reduce_ex__(protocol)
        text = w.to_header_string(relax=True)
        return _geometry_from_header_text, (text, self.width, self.height, self.frame)


def _geometry_from_field(args: tuple) -> OutputGeometry:
    width, height = args[3], args[4]  # checked against the limits when first built
    return make_geometry(*args, max_side=max(width, height), max_pixels=width * height)


def _geometry_from_header_text(text: str, width: int, height: int, frame: str) -> OutputGeometry:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        # wcslib parses the text itself: ~0.2 ms less than through an astropy Header.
        return OutputGeometry(WCS(text), width, height, frame)


def _check_size(width: Any, height: Any, max_side: int, max_pixels: int) -> tuple[int, int]:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            if not (isinstance(value, float) and value.is_integer()):
                raise GeometryError(f"{name} must be a whole number of pixels, got {value!r}", field=name)
        if not 1 <= int(value) <= max_side:
            raise GeometryError(f"{name} must be between 1 and {max_side} pixels, got {value!r}", field=name)
    width, height = int(width), int(height)
    if width * height > max_pixels:
        raise GeometryError(
            f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}", field="width"
        )
    return width, height


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} must be a number, got {value!r}", field=name) from None
    if not math.isfinite(v):
        raise GeometryError(f"{name} must be finite, got {value!r}", field=name)
    return v


def make_geometry(
    ra: float,
    dec: float,
    fov_deg: float,
    width: int,
    height: int,
    projection: str = "TAN",
    rotation_deg: float = 0.0,
    frame: str = "icrs",
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> OutputGeometry:
    """Geometry of a field centred on (ra, dec).

    Parameters
    ----------
    ra, dec : float
        Centre [deg] in ``frame`` (longitude, latitude: for ``galactic`` these are l, b).
    fov_deg : float
        Field of view along the larger side [deg], in (0, 360].
    width, height : int
        Image size [pixels].
    projection : str
        wcslib projection code (TAN, SIN, AIT, MOL, CAR, ZEA, STG, ...).
    rotation_deg : float
        Rotation of the sky on the image [deg], the FITS ``CROTA2`` convention: positive
        turns north from +y towards −x (east), i.e. counter-clockwise as displayed.
    frame : str
        Frame of the centre and of the output WCS.

    Notes
    -----
    The pixel scale is ``fov_deg / max(width, height)``, square pixels, east left (CDELT1
    < 0) and north up. CRPIX is the exact image centre ``((w + 1) / 2, (h + 1) / 2)``.
    """
    ra = _finite("ra", ra)
    dec = _finite("dec", dec)
    fov_deg = _finite("fov", fov_deg)
    rotation_deg = _finite("rotation", rotation_deg)
    if not -90.0 <= dec <= 90.0:
        raise GeometryError(f"dec must be within [-90, 90] degrees, got {dec}", field="dec")
    if not 0.0 < fov_deg <= 360.0:
        raise GeometryError(f"fov must be within (0, 360] degrees, got {fov_deg}", field="fov")
    width, height = _check_size(width, height, max_side, max_pixels)
    code = str(projection).strip().upper()
    if code in PARAMETRIC_PROJECTIONS:
        raise GeometryError(
            f"projection {code} needs parameters (PV2_1...) a field cannot give; use a full WCS header, "
            "or one of " + ", ".join(FIELD_PROJECTIONS),
            field="projection",
        )
    if code not in WCSLIB_PROJECTIONS:
        raise GeometryError(
            f"unknown projection {projection!r}; expected a wcslib code such as TAN, SIN, AIT",
            field="projection",
        )
    frame = normalize_frame(frame)
    lon_prefix, lat_prefix = _CTYPES[frame]
    scale = fov_deg / max(width, height)
    if not scale >= MIN_PIXEL_SCALE_DEG:
        # wcslib would call the matrix singular; say what the caller can change.
        raise GeometryError(
            f"fov {fov_deg:g} deg over {max(width, height)} pixels gives {scale:g} deg pixels, below the "
            f"smallest usable pixel of {MIN_PIXEL_SCALE_DEG:g} deg: widen the field",
            field="fov",
        )
    w = WCS(naxis=2)
    w.wcs.ctype = [f"{lon_prefix}-{code}", f"{lat_prefix}-{code}"]
    w.wcs.crval = [ra % 360.0, dec]
    w.wcs.crpix = [(width + 1) / 2.0, (height + 1) / 2.0]
    w.wcs.cdelt = [-scale, scale]
    if rotation_deg:
        rho = math.radians(rotation_deg)
        c, s = math.cos(rho), math.sin(rho)
        # CROTA2 → PC with CDELT1 = −CDELT2 (Calabretta & Greisen 2002, eq. 188).
        w.wcs.pc = [[c, s], [-s, c]]
    if frame == "icrs":
        w.wcs.radesys = "ICRS"
    elif frame == "fk5":
        w.wcs.radesys = "FK5"
        w.wcs.equinox = 2000.0
    _set_or_raise(w)
    args = (ra, dec, fov_deg, width, height, code, rotation_deg, frame)
    return OutputGeometry(wcs=w, width=width, height=height, frame=frame, field_args=args)


def _set_or_raise(w: WCS) -> None:
    try:
        w.wcs.set()
    except Exception as exc:  # wcslib raises several private types
        problem = explain_wcs_error(exc, w.wcs.ctype[0][5:8].strip("-").upper())
        # A field's keywords come from its parameters: name the parameter, not the keyword.
        param = {"CDELT1": "fov", "CRVAL2": "dec", "LATPOLE": "dec", "PV2_1": "projection"}.get(
            problem.field or "", problem.field
        )
        raise GeometryError(
            f"this field has no valid WCS: {problem.message}", field=param, reason=problem.reason
        ) from None


def geometry_from_header(
    header: Mapping[str, Any] | fits.Header,
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> OutputGeometry:
    """Geometry from a FITS header (dict of keywords or astropy Header) with NAXIS1/NAXIS2.

    The celestial part of the WCS is taken, so a stray third axis is harmless.
    """
    from .wcsinfo import wcs_from_header

    try:
        wcs, width, height = wcs_from_header(header)
    except InvalidWCSError:
        raise
    width, height = _check_size(width, height, max_side, max_pixels)
    return OutputGeometry(wcs=wcs, width=width, height=height, frame=frame_of_wcs(wcs))


def keywords_of_cards(cards: str) -> dict[str, Any]:
    """The ``KEY = value`` cards of a FITS header text (80-character cards) as a dict.

    For wcslib's own header text (`astropy.wcs.Wcsprm.to_header`): quoted strings (trailing
    blanks dropped, ``''`` an escaped quote), logicals ``T``/``F``, integers and floats (``D``
    exponents too), comments dropped; cards without a value (``COMMENT``, blank) skipped, as
    astropy's ``WCS.to_header()`` does.
    """
    out: dict[str, Any] = {}
    for start in range(0, len(cards), 80):
        card = cards[start : start + 80]
        key = card[:8].strip()
        if not key or card[8:10] != "= ":
            continue
        text = card[10:].strip()
        if text.startswith("'"):
            value, i = [], 1
            while i < len(text):
                if text[i] == "'":
                    if text[i + 1 : i + 2] == "'":
                        value.append("'")
                        i += 2
                        continue
                    break
                value.append(text[i])
                i += 1
            out[key] = "".join(value).rstrip()
            continue
        text = text.split("/", 1)[0].strip()
        if text in ("T", "F"):
            out[key] = text == "T"
        else:
            try:
                out[key] = int(text)
            except ValueError:
                out[key] = float(text.replace("D", "E"))
    return out


def header_from_mapping(mapping: Mapping[str, Any]) -> fits.Header:
    """A FITS Header from a dict of keywords (JSON values), silently fixing nothing."""
    hdr = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        for key, value in mapping.items():
            hdr[str(key).upper()] = value
    return hdr
