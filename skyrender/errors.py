"""Exception types of the core.

Every error a caller can provoke with bad input derives from :class:`SkyRenderError`
(a ``ValueError``), so the HTTP tier can map the whole family to 4xx responses and let
anything else surface as a genuine 5xx. An error may name the input at fault (``field``:
a parameter such as ``fov`` or a FITS keyword such as ``CDELT1``) and keep the library's
own words (``reason``, e.g. wcslib's) apart from the sentence meant for people.
"""

from __future__ import annotations

__all__ = [
    "DisplayError",
    "EncodeError",
    "GeometryError",
    "InvalidWCSError",
    "PropertiesError",
    "SkyRenderError",
    "TileDecodeError",
    "TilePathError",
]


def _rebuild(cls: type, message: str, field: str | None, reason: str | None) -> SkyRenderError:
    return cls(message, field=field, reason=reason)


class SkyRenderError(ValueError):
    """Base class for errors caused by the input (bad geometry, bad tile, bad header...).

    Parameters
    ----------
    message : str
        What is wrong, as a sentence about the request.
    field : str, optional
        The parameter or FITS keyword at fault.
    reason : str, optional
        The underlying library's reason (wcslib, astropy), without source file names.
    """

    def __init__(self, message: str = "", *, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple:
        # Errors cross process boundaries (Ray stages): keep field and reason.
        return _rebuild, (type(self), str(self), self.field, self.reason)


class PropertiesError(SkyRenderError):
    """A HiPS ``properties`` file is unreadable or lacks a required key."""


class TilePathError(SkyRenderError):
    """A string is not a HiPS tile path/URL (``NorderK/DirD/NpixN.ext``)."""


class TileDecodeError(SkyRenderError):
    """A tile's bytes are corrupt, truncated, of the wrong type, or too large to decode."""


class GeometryError(SkyRenderError):
    """An output geometry is invalid: fov, size, coordinates, projection."""


class InvalidWCSError(SkyRenderError):
    """A FITS header does not describe a usable 2-D celestial WCS."""


class DisplayError(SkyRenderError):
    """Unknown colormap, stretch or cut, or an unusable cut value."""


class EncodeError(SkyRenderError):
    """Unknown output format or unusable encoding parameter."""
