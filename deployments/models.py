"""Request and response bodies of the HTTP contract (field names exactly as NestJS sends them)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Stretch = Literal["linear", "sqrt", "log", "asinh", "power"]


def _cut(v: float | str | None) -> float | str | None:
    if v is None:
        return v
    if isinstance(v, str):
        s = v.strip()
        body = s[:-1] if s.endswith("%") else s
        try:
            x = float(body)
        except ValueError:
            raise ValueError("must be a number in data units or a percentile such as '99.5%'") from None
        if not math.isfinite(x) or (s.endswith("%") and not 0 <= x <= 100):
            raise ValueError("percentile must be within 0%..100%")
        return s
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return float(v)


#: A cut: a number in data units, or a percentile string such as "99.5%".
Cut = Annotated[float | str | None, AfterValidator(_cut)]


class _Body(BaseModel):
    # NaN/inf are refused at parse time: they would otherwise reach the sky maths.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RenderTilesRequest(_Body):
    """``POST /render/preview``: tiles in, PNG out."""

    tiles: list[str] = Field(min_length=1, description="HiPS tile URLs under a configured survey root")
    width: int = Field(512, ge=1, description="output width [pixels]")
    height: int = Field(512, ge=1, description="output height [pixels]")
    colormap: str = Field("viridis", max_length=64, description="matplotlib colormap name; `_r` reverses")
    scale: Stretch = Field("linear", description="stretch applied after the cuts")
    minCut: Cut = Field(None, description="lower cut: data units, or a percentile like '0.5%'")
    maxCut: Cut = Field(None, description="upper cut: data units, or a percentile like '99.5%'")


class SnapshotRequest(_Body):
    """``POST /render/snapshot``: tiles in, PNG out, for the job runner."""

    tiles: list[str] = Field(min_length=1)
    width: int = Field(512, ge=1)
    height: int = Field(512, ge=1)
    colormap: str = Field("viridis", max_length=64)
    scale: Stretch = "linear"
    minCut: Cut = None
    maxCut: Cut = None


class ManifestRequest(_Body):
    """``POST /v1/tile-manifest``."""

    ra: float = Field(ge=-360, le=360, description="field centre right ascension, ICRS [deg]")
    dec: float = Field(ge=-90, le=90, description="field centre declination, ICRS [deg]")
    fovDeg: float = Field(gt=0, le=360, description="field of view along the larger side [deg]")
    epoch: str | None = Field(None, max_length=32, description="survey epoch, e.g. VLASS '2.1'")
    survey: str | None = Field(None, max_length=128, description="a configured survey name")
    width: int = Field(512, ge=1)
    height: int = Field(512, ge=1)
    projection: str = Field("TAN", max_length=8)


class ManifestTileModel(BaseModel):
    id: str
    url: str
    healpixNside: int
    order: int
    npix: int


class ManifestResponse(BaseModel):
    survey: str
    epoch: str | None
    order: int
    tileWidth: int
    frame: str
    tiles: list[ManifestTileModel]


class PreviewRequest(_Body):
    """``POST /v1/preview``: a field of a configured survey, as PNG or JPEG."""

    ra: float = Field(ge=-360, le=360, description="centre right ascension, ICRS [deg]")
    dec: float = Field(ge=-90, le=90, description="centre declination, ICRS [deg]")
    fovDeg: float = Field(gt=0, le=360, description="field of view along the larger side [deg]")
    format: Literal["png", "jpeg"] = "png"
    width: int = Field(512, ge=1)
    height: int = Field(512, ge=1)
    colormap: str = Field("viridis", max_length=64)
    epoch: str | None = Field(None, max_length=32)
    survey: str | None = Field(None, max_length=128)
    projection: str = Field("TAN", max_length=8, description="wcslib projection code")
    rotation: float = Field(0.0, ge=-360, le=360, description="sky rotation, CROTA2 convention [deg]")
    scale: Stretch = "linear"
    minCut: Cut = None
    maxCut: Cut = None


class WcsValidateRequest(_Body):
    """``POST /v1/wcs-validate``."""

    fitsHeader: dict[str, Any] = Field(description="FITS header keywords (NAXIS1/2, CTYPE, CRVAL, ...)")


class WcsValidateResponse(BaseModel):
    valid: bool
    reprojected: dict[str, Any]


class ErrorBody(BaseModel):
    error: str
    detail: Any = None
