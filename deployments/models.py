"""Request and response bodies of the HTTP contract (field names exactly as NestJS sends them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from skyrender.display import STRETCHES, parse_cut
from skyrender.geometry import FIELD_PROJECTIONS

from .contract import CUT_PATTERN, TILE_URL_PATTERN, colormap_names

__all__ = [
    "ErrorBody",
    "ManifestRequest",
    "ManifestResponse",
    "ManifestTileModel",
    "PreviewRequest",
    "RenderTilesRequest",
    "SnapshotRequest",
    "WcsValidateRequest",
    "WcsValidateResponse",
]

Stretch = Literal[STRETCHES]
#: Every matplotlib colormap name (the document lists them: a closed set).
Colormap = Literal[colormap_names()]
#: Projections a field can be rendered in (those needing PV parameters need a full header).
Projection = Literal[FIELD_PROJECTIONS]
def _whole(v: Any) -> Any:
    """A JSON number that is a whole number (512 or 512.0: JSON Schema's integer), as int."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


#: Pixels: a whole JSON number (booleans and strings refused, as the document says).
Pixels = Annotated[int, BeforeValidator(_whole)]
#: A HiPS tile URL.
TileUrl = Annotated[str, StringConstraints(pattern=TILE_URL_PATTERN, max_length=2048)]


def _cut(v: float | str | None) -> float | str | None:
    """Check a cut with the core's parser (a `DisplayError` is a ValueError: pydantic reports it)."""
    parse_cut(v)
    return v.strip() if isinstance(v, str) else v


#: A cut: a number in data units, or a percentile string such as "99.5%" (the pattern is the
#: document's; a min cut above the max cut draws the colormap reversed).
Cut = Annotated[
    float | Annotated[str, StringConstraints(pattern=CUT_PATTERN)] | None, AfterValidator(_cut)
]


class _Body(BaseModel):
    # NaN/inf are refused at parse time: they would otherwise reach the sky maths. Strict:
    # a number given as a string, or a boolean as a number, is refused as the document says.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_absent(cls, data: Any) -> Any:
        """``""`` for an optional field whose documented schema allows it (``epoch``, ``survey``)
        means "not given", as HTML forms and JS clients send it: the field takes its default.
        A field whose pattern excludes ``""`` (a cut, a colour) keeps it and is refused, as the
        OpenAPI document says."""
        if isinstance(data, dict):
            blank = {k for k, v in data.items() if isinstance(v, str) and not v.strip()}
            return {k: v for k, v in data.items() if k not in blank & _blank_means_absent(cls)}
        return data


_BLANK: dict[type, frozenset[str]] = {}


def _blank_means_absent(cls: type[BaseModel]) -> frozenset[str]:
    """The optional fields of ``cls`` whose JSON schema accepts ``""`` (computed once per model)."""
    if cls not in _BLANK:
        import re

        props = cls.model_json_schema().get("properties", {})
        names = set()
        for name, field in cls.model_fields.items():
            branches = props.get(field.alias or name, {}).get("anyOf") or [props.get(field.alias or name, {})]
            strings = [b for b in branches if b.get("type") == "string"]
            if not field.is_required() and any(
                not b.get("minLength") and re.search(b.get("pattern", ""), "") and "" in b.get("enum", [""])
                for b in strings
            ):
                names.add(name)
        _BLANK[cls] = frozenset(names)
    return _BLANK[cls]


# Descriptions shared by the request bodies (they end up in the OpenAPI document NestJS reads).
WIDTH = "output width [pixels]; the configured limits on width, height and total pixels apply"
HEIGHT = "output height [pixels]"
COLORMAP = "matplotlib colormap name (viridis, gray, magma, ...); `_r` reverses; colour surveys ignore it"
SCALE = "stretch applied after the cuts (astropy.visualization)"
MIN_CUT = "lower cut: data units, or a percentile like '0.5%' (default 0.5%)"
MAX_CUT = "upper cut: data units, or a percentile like '99.5%' (default 99.5%)"
EPOCH = "survey epoch, e.g. VLASS '2.1'; selects among the configured surveys of that epoch"
SURVEY = "a configured survey's name (default: the first configured)"
PROJECTION = "wcslib projection code: TAN (default), SIN, AIT, MOL, CAR, ZEA, STG, ..."


class RenderTilesRequest(_Body):
    """``POST /render/preview``: tiles in, PNG out."""

    tiles: list[TileUrl] = Field(min_length=1, description="HiPS tile URLs under a configured survey root")
    width: Pixels = Field(512, ge=1, description=WIDTH)
    height: Pixels = Field(512, ge=1, description=HEIGHT)
    colormap: Colormap = Field("viridis", description=COLORMAP)
    scale: Stretch = Field("linear", description=SCALE)
    minCut: Cut = Field(None, description=MIN_CUT)
    maxCut: Cut = Field(None, description=MAX_CUT)


class SnapshotRequest(RenderTilesRequest):
    """``POST /render/snapshot``: tiles in, PNG out, for the job runner (same fields)."""


class ManifestRequest(_Body):
    """``POST /v1/tile-manifest``."""

    ra: float = Field(ge=-360, le=360, description="field centre right ascension, ICRS [deg]")
    dec: float = Field(ge=-90, le=90, description="field centre declination, ICRS [deg]")
    fovDeg: float = Field(gt=0, le=360, description="field of view along the larger side [deg]")
    epoch: str | None = Field(None, max_length=32, description=EPOCH)
    survey: str | None = Field(None, max_length=128, description=SURVEY)
    width: Pixels = Field(
        512, ge=1, description=WIDTH + " of the render the manifest is for (sets the order)"
    )
    height: Pixels = Field(512, ge=1, description=HEIGHT)
    projection: Projection = Field("TAN", description=PROJECTION)


class ManifestTileModel(BaseModel):
    id: str = Field(description="'order/npix', e.g. '3/301'")
    url: str = Field(description="the tile's URL (NorderK/DirD/NpixN.ext)")
    healpixNside: int = Field(description="HEALPix NSIDE of the tile (2**order)")
    order: int = Field(description="HEALPix order of the tile")
    npix: int = Field(description="NESTED index of the tile at its order")


class ManifestResponse(BaseModel):
    survey: str = Field(description="the survey's configured name")
    epoch: str | None = Field(description="its epoch, when configured")
    order: int = Field(description="HiPS order chosen for the field (hips2fits rule)")
    tileWidth: int = Field(description="tile side [pixels]")
    frame: str = Field(description="the survey's frame: equatorial, galactic or ecliptic")
    tiles: list[ManifestTileModel] = Field(description="tiles covering the field, inside the survey's MOC")


class PreviewRequest(_Body):
    """``POST /v1/preview``: a field of a configured survey, as PNG or JPEG."""

    ra: float = Field(ge=-360, le=360, description="centre right ascension, ICRS [deg]")
    dec: float = Field(ge=-90, le=90, description="centre declination, ICRS [deg]")
    fovDeg: float = Field(gt=0, le=360, description="field of view along the larger side [deg]")
    format: Literal["png", "jpeg"] = Field(
        "png", description="png (no data transparent) or jpeg (no data black)"
    )
    width: Pixels = Field(512, ge=1, description=WIDTH)
    height: Pixels = Field(512, ge=1, description=HEIGHT)
    colormap: Colormap = Field("viridis", description=COLORMAP)
    epoch: str | None = Field(None, max_length=32, description=EPOCH)
    survey: str | None = Field(None, max_length=128, description=SURVEY)
    projection: Projection = Field("TAN", description=PROJECTION)
    rotation: float = Field(0.0, ge=-360, le=360, description="sky rotation, CROTA2 convention [deg]")
    scale: Stretch = Field("linear", description=SCALE)
    minCut: Cut = Field(None, description=MIN_CUT)
    maxCut: Cut = Field(None, description=MAX_CUT)


class WcsValidateRequest(_Body):
    """``POST /v1/wcs-validate``."""

    fitsHeader: dict[str, Any] = Field(
        description="FITS header keywords (NAXIS1/2, CTYPE1/2, CDELT1/2 or CD, CRVAL, CRPIX, ...)"
    )


class WcsValidateResponse(BaseModel):
    valid: bool = Field(description="true: wcslib accepts the header's celestial WCS")
    reprojected: dict[str, Any] | None = Field(
        description="what it describes (valid headers): projection, frame, centre (ra, dec) [deg], pixel "
        "scale [deg], image size [pixels], rotation [deg], the four corners (ra, dec) [deg]"
    )
    error: str | None = Field(None, description="why it is not valid, as a sentence about the header")
    field: str | None = Field(None, description="the keyword at fault, when one can be named")
    reason: str | None = Field(None, description="wcslib's or astropy's own words, when they gave a reason")


class ErrorBody(BaseModel):
    error: str = Field(description="short error class, e.g. 'invalid WCS', 'upstream unavailable'")
    detail: Any = Field(None, description="what was wrong: a message, or a list of {loc, msg, type}")
    field: str | None = Field(None, description="the request field (or FITS keyword) at fault")
    reason: str | None = Field(None, description="the underlying library's reason (wcslib, astropy)")


class SurveyInfo(BaseModel):
    """One configured survey, as ``GET /v1/surveys`` lists it."""

    name: str = Field(description="the survey's configured name (what `survey` takes)")
    epoch: str | None = Field(description="its epoch, when configured (what `epoch` takes)")
    aliases: list[str] = Field(description="other names it answers to; surveys sharing one are epochs of it")
    default: bool = Field(description="true for the survey used when a request names none")
    available: bool = Field(description="false when its properties cannot be read now (see detail)")
    detail: str | None = Field(None, description="why it is not available")
    title: str | None = Field(None, description="obs_title from its HiPS properties")
    frame: str | None = Field(None, description="HiPS frame: icrs, galactic or ecliptic")
    orderMin: int | None = Field(None, description="shallowest tile order (hips_order_min)")
    orderMax: int | None = Field(None, description="deepest tile order (hips_order)")
    tileWidth: int | None = Field(None, description="tile side [pixels]")
    colour: bool | None = Field(None, description="true for colour tiles (the colormap is ignored)")
    tileFormat: str | None = Field(
        None, description="the tile format renders read: fits (data values) or jpeg/png (pixel colours)"
    )
    initialRa: float | None = Field(None, description="suggested first view: right ascension, ICRS [deg]")
    initialDec: float | None = Field(None, description="suggested first view: declination, ICRS [deg]")
    initialFovDeg: float | None = Field(None, description="suggested first field of view [deg]")


class SurveyList(BaseModel):
    """``GET /v1/surveys``: the survey catalogue, in configuration order (the first is the default)."""

    surveys: list[SurveyInfo]
