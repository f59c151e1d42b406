"""wcslib's and astropy's WCS errors, told as a sentence about the request.

wcslib reports failures as ``ERROR 3 in wcsset() at line 2868 of file cextern/wcslib/C/wcs.c:
Linear transformation matrix is singular.``: useful to a C programmer, not to someone who
sent a FITS header or a field of view. :func:`explain_wcs_error` says which keyword is at
fault and what would be accepted, and keeps the library's own words (without source file
names or line numbers) as the ``reason``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: wcslib's trace lines: ``ERROR 5 in wcsset() at line 2740 of file cextern/wcslib/C/wcs.c:``.
_TRACE = re.compile(r"ERROR\s+\d+\s+in\s+\w+\(\)(\s+at\s+line\s+\d+)?(\s+of\s+file\s+\S+)?:?", re.I)
#: Any leftover mention of a C/C++ source file (``.../wcs.c``, ``line 12``).
_SOURCE = re.compile(r"\s*(at\s+line\s+\d+\s+)?of\s+file\s+\S+\.(c|h|cpp)\b:?|\S+\.(c|h|cpp):\d+:?", re.I)


@dataclass(frozen=True)
class WcsProblem:
    """A WCS failure explained.

    Attributes
    ----------
    message : str
        What is wrong with the request and what would be accepted.
    field : str or None
        The FITS keyword at fault (``CTYPE2``, ``CDELT1``...), when one can be named.
    reason : str
        The library's own reason, without file names or line numbers.
    """

    message: str
    field: str | None
    reason: str


def library_reason(exc: BaseException | str) -> str:
    """The library's message without wcslib's ``ERROR n in f() at line l of file x.c:`` traces."""
    text = str(exc)
    lines = []
    for raw in text.splitlines():
        line = _SOURCE.sub("", _TRACE.sub("", raw)).strip()
        if line:
            lines.append(line.rstrip("."))
    reasons = list(dict.fromkeys(lines))
    if not reasons:
        return type(exc).__name__ if isinstance(exc, BaseException) else "unknown WCS error"
    return ". ".join(reasons) + "."


def _keyword(reason: str, prefix: str) -> str | None:
    m = re.search(rf"\b({prefix}\d+[A-Z]?)\b", reason, re.I)
    return m.group(1).upper() if m else None


def explain_wcs_error(exc: BaseException | str, projection: str | None = None) -> WcsProblem:
    """Translate a wcslib/astropy WCS error into a sentence about the header.

    Parameters
    ----------
    exc : Exception or str
        What ``WCS(header)`` or ``wcs.wcs.set()`` raised.
    projection : str, optional
        The projection code of the header (TAN, ZPN...), to name it in the sentence.

    Returns
    -------
    WcsProblem
    """
    reason = library_reason(exc)
    low = reason.lower()
    proj = f"the {projection} projection" if projection else "this projection"
    m = re.search(r"unrecognized projection code \((\S+) in (CTYPE\d+)", reason, re.I)
    if m:
        return WcsProblem(
            f"{m.group(2).upper()}: {m.group(1)!r} is not a projection code wcslib knows; use one such as "
            "TAN, SIN, AIT, MOL, CAR, ZEA or STG",
            m.group(2).upper(),
            reason,
        )
    m = re.search(r"inconsistent projection types \(expected (\S+), got (\S+) in (CTYPE\d+)", reason, re.I)
    if m:
        return WcsProblem(
            f"{m.group(3).upper()} is {m.group(2)!r} but CTYPE1 and CTYPE2 must pair a longitude with a "
            f"latitude in the same projection: expected {m.group(1)!r}",
            m.group(3).upper(),
            reason,
        )
    if "celestial axes" in low or "axis type" in low or "inconsistent or unrecognized" in low:
        return WcsProblem(
            "CTYPE1/CTYPE2 must be a longitude/latitude pair such as RA---TAN/DEC--TAN or GLON-AIT/GLAT-AIT",
            _keyword(reason, "CTYPE") or "CTYPE1",
            reason,
        )
    if "singular" in low:
        return WcsProblem(
            "the pixel-to-sky matrix is singular: a pixel scale (CDELT1/CDELT2 or the CD matrix) is zero or "
            "too small, or the two image axes are parallel (PCi_j/CDi_j)",
            "CDELT1",
            reason,
        )
    if "projection parameter" in low or "parameters for" in low or "invalid parameter value" in low:
        return WcsProblem(
            f"{proj} needs valid projection parameters (PV2_1, PV2_2..., Calabretta & Greisen 2002), "
            "which the header does not give; use a projection without parameters such as TAN, SIN or AIT, "
            "or add them",
            "PV2_1",
            reason,
        )
    if "ill-conditioned" in low or "latp" in low or "lonpole" in low or "latpole" in low:
        return WcsProblem(
            "the reference point and the native pole are inconsistent: check CRVAL2 (within -90..90 deg) "
            "and LONPOLE/LATPOLE",
            "CRVAL2",
            reason,
        )
    unit = _keyword(reason, "CUNIT")
    if unit:
        return WcsProblem(f"{unit} is not a unit wcslib knows; celestial axes take 'deg'", unit, reason)
    if "invalid coordinate" in low or "world coordinate" in low:
        return WcsProblem(
            "the reference point (CRVAL1, CRVAL2) is not a valid sky position: latitude within -90..90 deg",
            "CRVAL2",
            reason,
        )
    if "tabular" in low:
        return WcsProblem("the lookup-table (-TAB) axes are not supported", None, reason)
    return WcsProblem(f"the header's WCS is not usable: {reason}", None, reason)
