"""Request and response bodies of the multi-layer endpoints: composites and epoch comparison.

Every request describes one output field the way ``/v1/preview`` does (centre, field of
view, size, projection, rotation) and the layers to render on it; field names are the
portal's (camelCase, as NestJS sends them).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StringConstraints

from .contract import COLOUR_PATTERN
from .models import (
    COLORMAP,
    EPOCH,
    HEIGHT,
    MAX_CUT,
    MIN_CUT,
    PROJECTION,
    SCALE,
    WIDTH,
    Colormap,
    Cut,
    Pixels,
    Projection,
    Stretch,
    _Body,
    _whole,
)

#: A colour: a matplotlib named colour or '#rrggbb' (the document lists the names).
Colour = Annotated[str, StringConstraints(pattern=COLOUR_PATTERN)]


class _Field(_Body):
    """The output field, as ``/v1/preview`` has it."""

    ra: float = Field(ge=-360, le=360, description="centre right ascension, ICRS [deg]")
    dec: float = Field(ge=-90, le=90, description="centre declination, ICRS [deg]")
    fovDeg: float = Field(gt=0, le=360, description="field of view along the larger side [deg]")
    width: Pixels = Field(512, ge=1, description=WIDTH)
    height: Pixels = Field(512, ge=1, description=HEIGHT)
    projection: Projection = Field("TAN", description=PROJECTION)
    rotation: float = Field(0.0, ge=-360, le=360, description="sky rotation, CROTA2 convention [deg]")


class Layer(_Body):
    """One layer: a configured survey (and epoch) with its own display settings."""

    survey: str = Field(max_length=128, description="a configured survey's name or alias")
    epoch: str | None = Field(None, max_length=32, description=EPOCH)
    colormap: Colormap = Field("gray", description=COLORMAP)
    scale: Stretch = Field("linear", description=SCALE)
    minCut: Cut = Field(None, description=MIN_CUT)
    maxCut: Cut = Field(None, description=MAX_CUT)
    opacity: float = Field(
        1.0, ge=0, le=1, description="overlay mode: opacity of this layer over those before it (0..1)"
    )


class LuptonOptions(_Body):
    """Parameters of `astropy.visualization.make_lupton_rgb` (data units)."""

    minimum: list[float] | None = Field(
        None, min_length=3, max_length=3, description="black level of red, green, blue (default: each 0.5%)"
    )
    stretch: float | None = Field(
        None, gt=0, description="linear range of the asinh (default: the widest 0.5%..99.5% of the layers)"
    )
    q: float = Field(8.0, gt=0, description="asinh softening Q")


class ContourOptions(_Body):
    """Contour lines of the second layer (drawn over the first)."""

    levels: list[StrictFloat | StrictInt] = Field(
        min_length=1, max_length=32, description="contour levels: numbers, in `levelUnit`"
    )
    levelUnit: Literal["sigma", "data"] = Field(
        "sigma", description="sigma: multiples of the layer's robust noise (MAD x 1.4826); data: data units"
    )
    color: Colour = Field("white", description="line colour: a matplotlib colour name or '#rrggbb'")
    lineWidth: float = Field(1.5, gt=0, le=32, description="line width [output pixels]")


class CompositeRequest(_Field):
    """``POST /v1/composite``: several layers on one grid as one picture.

    * ``rgb``: three layers to red, green, blue, each with its own cuts and stretch;
    * ``lupton``: the same three, Lupton et al. (2004) asinh colour (``lupton`` options);
    * ``overlay``: each layer, colormapped, laid over the ones before it with its ``opacity``;
    * ``contours``: contours of the second layer over the first (``contours`` options);
      ``format: geojson`` returns the lines in ICRS (RA/Dec, degrees) instead.
    """

    # What the mode needs, said in the document (the route checks the same).
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                *(
                    {
                        "if": {"properties": {"mode": {"const": mode}}, "required": ["mode"]},
                        "then": {"properties": {"layers": {"minItems": count, "maxItems": count}}},
                    }
                    for mode, count in (("rgb", 3), ("lupton", 3), ("contours", 2))
                ),
                {
                    "if": {"properties": {"mode": {"const": "overlay"}}, "required": ["mode"]},
                    "then": {"properties": {"layers": {"minItems": 2}}},
                },
                {
                    "if": {"properties": {"mode": {"const": "contours"}}, "required": ["mode"]},
                    "then": {"required": ["contours"], "properties": {"contours": {"type": "object"}}},
                },
                {
                    "if": {"properties": {"format": {"const": "geojson"}}, "required": ["format"]},
                    "then": {"properties": {"mode": {"const": "contours"}}},
                },
            ]
        }
    )

    mode: Literal["rgb", "lupton", "overlay", "contours"] = Field(description="how the layers combine")
    layers: list[Layer] = Field(
        min_length=1, description="the layers, bottom first (the limit is configured)"
    )
    format: Literal["png", "jpeg", "geojson"] = Field(
        "png", description="png | jpeg; geojson only for contours"
    )
    lupton: LuptonOptions | None = Field(None, description="lupton mode: make_lupton_rgb parameters")
    contours: ContourOptions | None = Field(None, description="contours mode: levels and line style")


class _Epochs(_Field):
    survey: str = Field(max_length=128, description="a survey configured with several epochs (name or alias)")
    epochs: list[str] | None = Field(
        None,
        min_length=1,
        description="epochs to compare, earliest first (default: every configured epoch of the survey)",
        json_schema_extra={"uniqueItems": True},
    )


class DifferenceRequest(_Epochs):
    """``POST /v1/epochs/difference``: ``epochs[1] - epochs[0]`` on one grid."""

    epochs: list[str] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[earlier, later]: the answer is later minus earlier (default: the two latest epochs)",
        json_schema_extra={"uniqueItems": True},
    )
    format: Literal["png", "jpeg", "fits"] = Field(
        "png", description="png/jpeg picture, or float32 FITS with the WCS and both epochs in the header"
    )
    colormap: Colormap = Field("RdBu_r", description="diverging colormap, centred on zero")
    scale: Stretch = Field("linear", description=SCALE + ", applied symmetrically about zero")
    minCut: Cut = Field(None, description="lower cut (default: -maxCut)")
    maxCut: Cut = Field(None, description="upper cut (default: the 99.5% percentile of |difference|)")


class BlinkRequest(_Epochs):
    """``POST /v1/epochs/blink``: one frame per epoch, same cuts and stretch, looping."""

    format: Literal["apng", "gif"] = Field("apng", description="animated PNG or GIF")
    frameMs: Annotated[int, BeforeValidator(_whole)] = Field(
        700, ge=20, le=10_000, description="time each frame shows [ms]"
    )
    colormap: Colormap = Field("gray", description=COLORMAP)
    scale: Stretch = Field("linear", description=SCALE)
    minCut: Cut = Field(None, description=MIN_CUT + "; over all frames")
    maxCut: Cut = Field(None, description=MAX_CUT + "; over all frames")


class Position(_Body):
    """A circular aperture."""

    ra: float = Field(ge=-360, le=360, description="right ascension, ICRS [deg]")
    dec: float = Field(ge=-90, le=90, description="declination, ICRS [deg]")
    radiusArcsec: float = Field(gt=0, le=36_000, description="aperture radius [arcsec]")


class StatsRequest(_Epochs):
    """``POST /v1/epochs/stats``: per-epoch numbers for the field or an aperture."""

    position: Position | None = Field(
        None, description="restrict peaks and medians to this aperture (noise is always the field's)"
    )


class FieldNumbers(BaseModel):
    peak: float | None = Field(
        description="largest value (difference: farthest from the median) [data units]"
    )
    peakX: int = Field(description="its pixel column, 0-based, from the left")
    peakY: int = Field(description="its pixel row, 0-based, from the bottom (FITS order)")
    peakRa: float | None = Field(description="its right ascension, ICRS [deg]")
    peakDec: float | None = Field(description="its declination, ICRS [deg]")
    median: float | None = Field(description="median [data units]")
    noise: float | None = Field(description="robust noise of the whole field: MAD x 1.4826 [data units]")
    pixels: int = Field(description="pixels with data the peak and median were taken over")


class EpochNumbers(FieldNumbers):
    epoch: str = Field(description="the epoch")


class DifferenceNumbers(FieldNumbers):
    later: str = Field(description="the later epoch (minuend)")
    earlier: str = Field(description="the earlier epoch (subtrahend)")
    significance: float | None = Field(
        description="|peak change - median| / noise of the difference (null when the difference has no noise)"
    )


class StatsResponse(BaseModel):
    survey: str = Field(description="the survey as requested")
    epochs: list[EpochNumbers] = Field(description="numbers of each epoch, in the order asked")
    difference: DifferenceNumbers | None = Field(
        description="numbers of the last epoch minus the first (null for one epoch)"
    )
