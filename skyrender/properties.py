"""HiPS ``properties`` files: the survey description a renderer needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import PropertiesError
from .frames import normalize_frame
from .tiles import format_of, tile_url

__all__ = [
    "HipsSurvey",
    "load_survey",
    "parse_properties",
    "survey_from_properties",
]


def parse_properties(text: str) -> dict[str, str]:
    """``key = value`` lines → dict. Comments, blank and malformed lines are skipped;
    a repeated key keeps its last value (HipsGen appends updates)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if key:
            out[key] = value.strip()
    return out


@dataclass(frozen=True)
class HipsSurvey:
    """What a renderer needs to know of a HiPS survey.

    Attributes
    ----------
    root : str
        http(s) URL (no trailing slash) or local directory of the survey.
    order : int
        Deepest tile order (``hips_order``).
    order_min : int
        Shallowest tile order (``hips_order_min``, default 0).
    tile_width : int
        Tile side [pixels] (``hips_tile_width``, default 512), a power of two.
    tile_formats : tuple of str
        ``fits`` | ``jpeg`` | ``png``; the first is the default.
    frame : str
        ``icrs`` | ``galactic`` | ``ecliptic`` (``hips_frame``, or old ``coordsys`` C/G/E).
    pixel_cut, data_range : (float, float) or None
        ``hips_pixel_cut`` and ``hips_data_range`` (or ``hips_data_minmax``), data units.
    bitpix : int or None
        ``hips_pixel_bitpix`` of the FITS tiles.
    initial_ra, initial_dec, initial_fov : float or None
        Suggested first view [deg].
    """

    root: str
    order: int
    order_min: int = 0
    tile_width: int = 512
    tile_formats: tuple[str, ...] = ("fits",)
    frame: str = "icrs"
    pixel_cut: tuple[float, float] | None = None
    data_range: tuple[float, float] | None = None
    bitpix: int | None = None
    initial_ra: float | None = None
    initial_dec: float | None = None
    initial_fov: float | None = None
    title: str | None = None
    creator_did: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def tile_depth(self) -> int:
        """log2 of the tile width."""
        return self.tile_width.bit_length() - 1

    @property
    def default_format(self) -> str:
        return self.tile_formats[0]

    @property
    def data_format(self) -> str:
        """The format to render from: FITS (true data values) when offered, else the default."""
        return "fits" if "fits" in self.tile_formats else self.default_format

    @property
    def is_colour(self) -> bool:
        """True for colour surveys (``dataproduct_subtype = color``)."""
        return "color" in self.properties.get("dataproduct_subtype", "").lower()

    def tile_url(self, order: int, npix: int, fmt: str | None = None) -> str:
        return tile_url(self.root, order, npix, fmt or self.default_format)


def _int(props: Mapping[str, str], key: str, default: int | None = None) -> int | None:
    raw = props.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(float(raw.split()[0]))
    except (ValueError, IndexError):
        raise PropertiesError(f"{key} must be an integer, got {raw!r}") from None


def _float(props: Mapping[str, str], key: str) -> float | None:
    raw = props.get(key)
    if raw is None or raw == "":
        return None
    try:
        return float(raw.split()[0])
    except (ValueError, IndexError):
        raise PropertiesError(f"{key} must be a number, got {raw!r}") from None


def _pair(props: Mapping[str, str], *keys: str) -> tuple[float, float] | None:
    for key in keys:
        raw = props.get(key)
        if raw:
            parts = raw.split()
            try:
                return float(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                raise PropertiesError(f"{key} must hold two numbers, got {raw!r}") from None
    return None


def survey_from_properties(text: str, root: str) -> HipsSurvey:
    """A `HipsSurvey` from the text of a ``properties`` file found at ``root``."""
    props = parse_properties(text)
    order = _int(props, "hips_order", _int(props, "maxOrder"))
    if order is None:
        raise PropertiesError("properties lack the required key hips_order")
    tile_width = _int(props, "hips_tile_width", 512) or 512
    if tile_width <= 0 or tile_width & (tile_width - 1):
        raise PropertiesError(f"hips_tile_width must be a power of two, got {tile_width}")
    formats_raw = props.get("hips_tile_format") or props.get("format") or "fits"
    formats = []
    for word in formats_raw.replace(",", " ").split():
        try:
            fmt = format_of(word)
        except ValueError:
            continue  # e.g. "tsv" catalogue tiles: not images
        if fmt not in formats:
            formats.append(fmt)
    if not formats:
        raise PropertiesError(f"hips_tile_format lists no image format: {formats_raw!r}")
    frame_raw = props.get("hips_frame") or props.get("coordsys") or "equatorial"
    try:
        frame = normalize_frame(frame_raw)
    except ValueError:
        raise PropertiesError(f"hips_frame {frame_raw!r} is not equatorial, galactic or ecliptic") from None
    return HipsSurvey(
        root=root.rstrip("/") if root.startswith(("http://", "https://")) else root,
        order=order,
        order_min=_int(props, "hips_order_min", 0) or 0,
        tile_width=tile_width,
        tile_formats=tuple(formats),
        frame=frame,
        pixel_cut=_pair(props, "hips_pixel_cut"),
        data_range=_pair(props, "hips_data_range", "hips_data_minmax"),
        bitpix=_int(props, "hips_pixel_bitpix"),
        initial_ra=_float(props, "hips_initial_ra"),
        initial_dec=_float(props, "hips_initial_dec"),
        initial_fov=_float(props, "hips_initial_fov"),
        title=props.get("obs_title") or props.get("label"),
        creator_did=props.get("creator_did") or props.get("publisher_did"),
        properties=MappingProxyType(props),
    )


def load_survey(path_or_url: str, timeout_s: float = 10.0) -> HipsSurvey:
    """Read ``<root>/properties`` (http(s) or local); ``path_or_url`` may name the file itself."""
    location = str(path_or_url).rstrip("/")
    root = location[: -len("/properties")] if location.endswith("/properties") else location
    if root.startswith(("http://", "https://")):
        import httpx

        try:
            response = httpx.get(f"{root}/properties", timeout=timeout_s, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise PropertiesError(f"cannot read {root}/properties: {exc}") from None
        if response.status_code != 200:
            raise PropertiesError(f"{root}/properties answered HTTP {response.status_code}")
        text = response.text
    else:
        path = Path(root, "properties")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise PropertiesError(f"cannot read {path}: {exc.strerror}") from None
    return survey_from_properties(text, root)
