"""Exception types of the core.

Every error a caller can provoke with bad input derives from :class:`SkyRenderError`
(a ``ValueError``), so the HTTP tier can map the whole family to 4xx responses and let
anything else surface as a genuine 5xx.
"""


class SkyRenderError(ValueError):
    """Base class for errors caused by the input (bad geometry, bad tile, bad header...)."""


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
