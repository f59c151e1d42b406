"""The HTTP contract stated exactly: JSON Schemas the OpenAPI document shows *and* the service
validates with, so a request the document allows is accepted and one it forbids is refused
with a 4xx naming the field.

* Closed sets are enums generated from the core (projections a field can use, stretches,
  matplotlib's colormaps, formats, frames); cuts have a pattern.
* The configured limits (``limits:`` in serve_config.yaml) become maxima in the document:
  width, height, field of view, tile lists, FITS header size (`document_limits`).
* FITS headers have a schema built from the core's keyword rules (`header_schema`):
  required keywords, value types per keyword, keyword syntax.
* hips2fits' query (either a field or a ``wcs``) is one JSON Schema (`hips2fits_schema`);
  the query string or form is coerced to it and validated with it (`validate_hips2fits`).
* Every operation documents its error answers (`document_errors`).

Pure: no Ray; the app installs `install_openapi`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from skyrender.display import STRETCHES
from skyrender.geometry import FIELD_PROJECTIONS, MIN_PIXEL_SCALE_DEG
from skyrender.wcsinfo import INTEGER_KEYWORDS, MAX_HEADER_SIDE, NUMERIC_KEYWORDS, STRING_KEYWORDS

__all__ = [
    "CUT_PATTERN",
    "HIPS2FITS_FIELD",
    "NUMBER_TEXT",
    "TILE_URL_PATTERN",
    "colormap_names",
    "header_errors",
    "header_schema",
    "hips2fits_schema",
    "install_openapi",
    "validate_hips2fits",
]


def _named_colours() -> list[str]:
    from matplotlib import colors

    names = [*colors.BASE_COLORS, *colors.CSS4_COLORS]
    return [n for n in dict.fromkeys(names) if re.fullmatch(r"[a-z]+", n)]


# Regular expressions are written for both Python and ECMA 262 (OpenAPI's dialect): no
# inline flags, [0-9] rather than \d (Python's \d also matches other scripts' digits).

#: A decimal number as text: "12", "-0.5", "1e-3" (two exponent digits: always finite).
NUMBER_TEXT = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,2})?"
_PERCENT = r"(?:100(?:\.0*)?|[0-9]{1,2}(?:\.[0-9]*)?|\.[0-9]+)%"
#: A cut as text: a number in data units, or a percentile within 0..100 ending in "%".
CUT_PATTERN = rf"^(?:{NUMBER_TEXT}|{_PERCENT})$"
#: A HiPS tile URL (http or https, order 0..29), in ASCII as URLs are sent (non-ASCII
#: percent-encoded): every regex engine then agrees on what matches.
TILE_URL_PATTERN = (
    r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%!$&'()*+,;=:@-]*)*"
    r"/Norder(?:[0-9]|[12][0-9])/Dir[0-9]{1,20}/Npix[0-9]{1,20}\.(?:fits|jpg|jpeg|png)$"
)
#: A colour: '#rrggbb', or one of matplotlib's named colours (CSS4 names and the single
#: letters), listed so that every engine agrees.
COLOUR_PATTERN = (
    "^(?:#[0-9a-fA-F]{6}|" + "|".join(sorted(_named_colours(), key=lambda n: (-len(n), n))) + ")$"
)  # noqa: E501

#: FITS keyword syntax (up to 8 of A-Z 0-9 - _), or "" for blank cards.
FITS_KEYWORD = r"^[A-Z0-9_-]{0,8}$"
#: Printable ASCII, as a FITS card value holds.
_FITS_TEXT = {"type": "string", "pattern": "^[ -~]*$", "maxLength": 68}

#: Frame, longitude and latitude CTYPE prefixes of the frames a render header may use.
_CELESTIAL_PAIRS = (("icrs", "RA--", "DEC-"), ("galactic", "GLON", "GLAT"), ("ecliptic", "ELON", "ELAT"))

#: hips2fits' field parameters: all of them, or a ``wcs``.
HIPS2FITS_FIELD = ("width", "height", "projection", "fov", "ra", "dec")
#: Output formats hips2fits takes (jpg and jpeg are the same).
HIPS2FITS_FORMATS = ("fits", "jpg", "jpeg", "png")
#: Frames of a hips2fits field.
HIPS2FITS_FRAMES = ("icrs", "galactic")


@lru_cache(maxsize=1)
def colormap_names() -> tuple[str, ...]:
    """Every colormap name matplotlib knows (``_r`` reversed ones included), sorted."""
    import matplotlib

    return tuple(sorted(matplotlib.colormaps))


def cut_schema(description: str) -> dict[str, Any]:
    """A cut: a number in data units, or a percentile string such as "99.5%"."""
    return {
        "anyOf": [{"type": "number"}, {"type": "string", "pattern": CUT_PATTERN}],
        "description": description,
    }


# -- FITS headers ----------------------------------------------------------------------------


def _ecma(pattern: str) -> str:
    return pattern.replace(r"\d", "[0-9]")


def header_schema(max_side: int = MAX_HEADER_SIDE, max_keys: int = 500, *, render: bool = False) -> dict:
    """JSON Schema of a FITS header given as JSON (keyword → value).

    Parameters
    ----------
    max_side : int
        Largest NAXIS1/NAXIS2 [pixels].
    max_keys : int
        Most keywords a header may have.
    render : bool
        The stricter form a render needs (hips2fits' ``wcs``): CTYPE1/CTYPE2 a longitude
        and latitude of one frame in one projection a header can use without parameters,
        CRVAL2 a latitude, non-zero CDELT within ±180 deg.

    Notes
    -----
    Required: NAXIS1, NAXIS2, CTYPE1, CTYPE2 and a scale (CDELT1 and CDELT2, or a CD
    matrix element), as `skyrender.wcsinfo` requires them.
    """
    number = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": f"^{NUMBER_TEXT}$"}]}
    integer = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[-+]?[0-9]+$"}]}
    naxis = {"type": "integer", "minimum": 1, "maximum": max_side, "description": "image side [pixels]"}
    properties: dict[str, Any] = {
        "NAXIS1": {**naxis, "description": "image width [pixels]"},
        "NAXIS2": {**naxis, "description": "image height [pixels]"},
        "CTYPE1": {**_FITS_TEXT, "description": "longitude axis type, e.g. RA---TAN, GLON-AIT"},
        "CTYPE2": {**_FITS_TEXT, "description": "latitude axis type, e.g. DEC--TAN, GLAT-AIT"},
        "CRVAL1": {**number, "description": "longitude of the reference point [deg]"},
        "CRVAL2": {**number, "description": "latitude of the reference point [deg]"},
        "CRPIX1": {**number, "description": "reference pixel x (1-based)"},
        "CRPIX2": {**number, "description": "reference pixel y (1-based)"},
        "CDELT1": {**number, "description": "pixel scale along x [deg]"},
        "CDELT2": {**number, "description": "pixel scale along y [deg]"},
        "COMMENT": {"anyOf": [_FITS_TEXT, {"type": "array", "items": _FITS_TEXT}]},
        "HISTORY": {"anyOf": [_FITS_TEXT, {"type": "array", "items": _FITS_TEXT}]},
    }
    schema: dict[str, Any] = {
        "type": "object",
        "description": "FITS header keywords (upper case, up to 8 characters) with JSON values",
        "required": ["NAXIS1", "NAXIS2", "CTYPE1", "CTYPE2"],
        "anyOf": [
            {"required": ["CDELT1", "CDELT2"], "title": "CDELT scales"},
            *({"required": [k], "title": "a CD matrix"} for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")),
        ],
        "properties": properties,
        "patternProperties": {
            _ecma(NUMERIC_KEYWORDS): number,
            _ecma(INTEGER_KEYWORDS): integer,
            _ecma(STRING_KEYWORDS): _FITS_TEXT,
        },
        "additionalProperties": {"anyOf": [_FITS_TEXT, {"type": "number"}, {"type": "boolean"}]},
        "propertyNames": {"pattern": FITS_KEYWORD},
        "maxProperties": max_keys,
    }
    if render:
        scale = {
            "type": "number",
            "anyOf": [
                {"minimum": MIN_PIXEL_SCALE_DEG, "maximum": 180},
                {"minimum": -180, "maximum": -MIN_PIXEL_SCALE_DEG},
            ],
        }
        properties.update(
            CRVAL1={"type": "number", "minimum": -360, "maximum": 360, "description": "[deg]"},
            CRVAL2={"type": "number", "minimum": -90, "maximum": 90, "description": "[deg]"},
            CRPIX1={"type": "number", "minimum": -1e6, "maximum": 1e6},
            CRPIX2={"type": "number", "minimum": -1e6, "maximum": 1e6},
            CDELT1={**scale, "description": "pixel scale along x [deg], non-zero"},
            CDELT2={**scale, "description": "pixel scale along y [deg], non-zero"},
        )
        scales = schema.pop("anyOf")
        cd_scales = {
            "required": ["CD1_1", "CD2_2"],
            "title": "a CD matrix (CD1_1 and CD2_2)",
            "properties": {"CD1_1": scale, "CD2_2": scale},
        }
        schema["allOf"] = [
            {
                "description": "a pixel scale: CDELT1 and CDELT2, or a CD matrix with CD1_1 and CD2_2",
                "anyOf": [scales[0], cd_scales],
            },
            {
                # wcslib refuses RA---TAN with DEC--SIN or with GLAT-TAN: one branch per pair.
                "description": "CTYPE1/CTYPE2: the longitude and latitude of one frame (RA/DEC, GLON/GLAT, "
                "ELON/ELAT) in one projection a header can use without parameters: "
                + ", ".join(FIELD_PROJECTIONS),
                "anyOf": [
                    {
                        "title": f"{code} in {name}",
                        "properties": {
                            "CTYPE1": {"const": f"{lon}-{code}"},
                            "CTYPE2": {"const": f"{lat}-{code}"},
                        },
                    }
                    for name, lon, lat in _CELESTIAL_PAIRS
                    for code in FIELD_PROJECTIONS
                ],
            },
        ]
    return schema


def _validator(schema: Mapping[str, Any]):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema)


def _where(error: Any) -> str | None:
    """The keyword/parameter an error is about: its path, or a missing required name."""
    if error.path:
        return str(list(error.path)[0])
    if error.validator == "required":
        m = re.match(r"'([^']+)' is a required property", error.message)
        if m:
            return m.group(1)
    return None


def _say(error: Any) -> str:
    """One sentence for a JSON Schema error (jsonschema's message, made about the field)."""
    where = _where(error)
    if error.validator in ("anyOf", "oneOf"):
        described = error.schema.get("description") if isinstance(error.schema, dict) else None
        titles = [s.get("title") for s in error.validator_value if isinstance(s, dict) and s.get("title")]
        need = described or (f"one of: {'; '.join(titles)}" if titles else "")
        if need:
            return f"{where}: needs {need}" if where else f"needs {need}"
    if error.validator == "maxProperties":
        count = len(error.instance) if isinstance(error.instance, Mapping) else "too many"
        return f"{where + ': ' if where else ''}{count} keywords; the limit is {error.validator_value}"
    message = error.message
    if len(message) > 300:
        message = message[:300] + "..."
    return f"{where}: {message}" if where and not message.startswith(f"'{where}'") else message


def _order(error: Any) -> tuple:
    # Size first (a 5000-keyword header is refused for its size, not its first missing key).
    return (error.validator != "maxProperties", len(error.path), str(list(error.path)))


def header_errors(header: Any, schema: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """(keyword, sentence) for each way ``header`` breaks ``schema`` (empty: it conforms)."""
    errors = sorted(_validator(schema).iter_errors(header), key=_order)
    return [(_where(e), _say(e)) for e in errors]


@lru_cache(maxsize=8)
def _header_schema_cached(max_keys: int) -> dict[str, Any]:
    return header_schema(MAX_HEADER_SIDE, max_keys)


def check_fits_header(header: Mapping[str, Any], limits: Any, name: str) -> None:
    """422 naming the keyword when ``header`` breaks the document's FITS header schema."""
    from .errors import ApiError

    problems = header_errors(dict(header), _header_schema_cached(limits.max_header_keys))
    if problems:
        detail = [
            {"loc": ["body", name, *([key] if key else [])], "msg": msg, "type": "schema"}
            for key, msg in problems
        ]
        field = f"{name}.{problems[0][0]}" if problems[0][0] else name
        raise ApiError(422, "invalid request body", detail, field=field)


# -- hips2fits ---------------------------------------------------------------------------------


def hips2fits_schema(limits: Any) -> dict[str, Any]:
    """JSON Schema of a hips2fits query (query string or form, values coerced to their types).

    Parameters
    ----------
    limits : deployments.config.LimitsConfig
        Maxima for width, height and the field of view.
    """
    side = max(limits.max_width, limits.max_height)
    projections = [*FIELD_PROJECTIONS, *(p.lower() for p in FIELD_PROJECTIONS)]
    properties: dict[str, Any] = {
        "hips": {"type": "string", "minLength": 1, "maxLength": 256, "description": "survey name or HiPS ID"},
        "width": {"type": "integer", "minimum": 1, "maximum": limits.max_width, "description": "[pixels]"},
        "height": {"type": "integer", "minimum": 1, "maximum": limits.max_height, "description": "[pixels]"},
        "projection": {"enum": projections, "description": "wcslib projection code"},
        "fov": {
            "type": "number",
            "minimum": limits.min_fov_deg,
            "maximum": limits.max_fov_deg,
            "description": "field of view along the larger side [deg]",
        },
        "ra": {"type": "number", "minimum": -360, "maximum": 360, "description": "centre, ICRS [deg]"},
        "dec": {"type": "number", "minimum": -90, "maximum": 90, "description": "centre, ICRS [deg]"},
        "coordsys": {"enum": list(HIPS2FITS_FRAMES), "description": "frame of the projection (default icrs)"},
        "rotation_angle": {"type": "number", "minimum": -360, "maximum": 360, "description": "[deg]"},
        "wcs": {
            **header_schema(side, limits.max_header_keys, render=True),
            "description": "FITS header (JSON) with NAXIS1/NAXIS2: the output WCS, instead of the field",
        },
        "format": {"enum": list(HIPS2FITS_FORMATS), "description": "output format (default fits)"},
        "min_cut": {"type": "string", "pattern": CUT_PATTERN, "description": "value, or percent (0.5%)"},
        "max_cut": {"type": "string", "pattern": CUT_PATTERN, "description": "value, or percent (99.5%)"},
        "stretch": {"enum": list(STRETCHES), "description": "default linear"},
        "cmap": {"enum": list(colormap_names()), "description": "matplotlib colormap (default Greys_r)"},
    }
    return {
        "type": "object",
        "properties": properties,
        "required": ["hips"],
        "anyOf": [
            {"required": list(HIPS2FITS_FIELD), "title": "a field: " + ", ".join(HIPS2FITS_FIELD)},
            {"required": ["wcs"], "title": "a wcs"},
        ],
    }


#: Any decimal number a client may print (three exponent digits: 1e-300 is a number too).
_ANY_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?"


def _coerce(value: str, schema: Mapping[str, Any]) -> Any:
    """A query-string value as the type its schema names (left as text when it is not one)."""
    kind = schema.get("type")
    if kind in ("integer", "number") and re.fullmatch(_ANY_NUMBER, value):
        number = float(value)
        if not math.isfinite(number):
            return value
        if kind == "integer":
            return int(number) if number.is_integer() else value
        return number
    if kind == "object":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def validate_hips2fits(params: Mapping[str, str], schema: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """(parameter, sentence) for each way a hips2fits query breaks ``schema``."""
    props = schema["properties"]
    typed = {k: _coerce(v, props[k]) if k in props else v for k, v in params.items()}
    errors = sorted(_validator(schema).iter_errors(typed), key=_order)
    out = []
    for e in errors:
        where = _where(e)
        if where == "wcs" and len(e.path) > 1:
            where = f"wcs.{list(e.path)[1]}"
        out.append((where, _say(e)))
    return out


def form_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The form of ``POST /hips2fits`` as the document states it: the field's parameters.

    A form cannot carry a JSON object as one field in OpenAPI tooling (generators flatten
    it), so ``wcs`` is described in words; the service takes it as in GET.
    """
    props = {k: v for k, v in schema["properties"].items() if k != "wcs"}
    return {"type": "object", "properties": props, "required": ["hips", *HIPS2FITS_FIELD]}


def hips2fits_parameters(schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenAPI query parameters of ``GET /hips2fits``: the field's, each with its schema.

    ``wcs`` (a JSON FITS header that replaces the six field parameters, as astroquery's
    ``query_with_wcs`` sends it) is described in the operation's text: query parameters
    cannot say "these six, or that one", and a JSON object inside a query string is not
    something OpenAPI tools generate reliably. The service validates it with the same
    schema (`header_schema` with ``render=True``).
    """
    out = []
    for name, prop in schema["properties"].items():
        if name == "wcs":
            continue
        out.append(
            {
                "name": name,
                "in": "query",
                "required": name == "hips" or name in HIPS2FITS_FIELD,
                "description": prop.get("description", ""),
                "schema": {k: v for k, v in prop.items() if k != "description"},
            }
        )
    return out


WCS_NOTE = (
    "\n\nInstead of the six field parameters (width, height, projection, fov, ra, dec), a `wcs` "
    "parameter may give the output WCS as a JSON FITS header with NAXIS1/NAXIS2 (what astroquery's "
    "`query_with_wcs` sends): CTYPE1/CTYPE2 a longitude/latitude pair of one frame in one projection "
    "without parameters, CDELT1/CDELT2 (or CD1_1/CD2_2) within ±180 deg and non-zero, NAXIS1/NAXIS2 "
    "within the width/height limits."
)


# -- the document ------------------------------------------------------------------------------

#: ``openapi_extra`` of an image route: the document gets its ETag, Cache-Control,
#: If-None-Match and 304/412 (the render chain answers them; see `deployments.http_cache`).
CACHEABLE: dict[str, Any] = {"x-cacheable": True}

#: The body of every error answer except under /hips2fits.
ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}
HIPS2FITS_ERROR = {
    "type": "object",
    "title": "Hips2FitsError",
    "required": ["title", "description"],
    "properties": {
        "title": {"type": "string", "description": "short error class, e.g. 'Invalid parameter'"},
        "description": {"type": "string", "description": "what was wrong"},
    },
}
ERROR_BODY_SCHEMA = {
    "type": "object",
    "title": "ErrorBody",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "short error class, e.g. 'invalid WCS'"},
        "detail": {"description": "what was wrong: a message, or a list of {loc, msg, type} field errors"},
        "field": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "the request field (or FITS keyword) at fault, when one is",
        },
        "reason": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "the underlying library's own reason (wcslib, astropy), when useful",
        },
    },
}

_ERRORS = {
    400: "invalid input: the message names the field",
    403: "a tile URL outside the configured survey roots",
    404: "unknown survey (or file)",
    413: "request body over the configured limit",
    422: "the request does not conform to this document: detail lists each field",
    431: "too many request header fields",
    502: "upstream returned errors or unusable tiles",
    503: "upstream unavailable, or the service is overloaded (Retry-After says when to retry)",
    504: "upstream too slow",
}


def _error_response(status: int, hips2fits: bool) -> dict[str, Any]:
    schema = HIPS2FITS_ERROR if hips2fits else ERROR_BODY_REF
    return {"description": _ERRORS.get(status, "error"), "content": {"application/json": {"schema": schema}}}


def document_errors(spec: dict[str, Any]) -> None:
    """Every operation documents the error answers it can give, each with its body schema."""
    spec.setdefault("components", {}).setdefault("schemas", {}).setdefault("ErrorBody", ERROR_BODY_SCHEMA)
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            hips2fits = path.startswith("/hips2fits")
            statuses = {431, 503}
            if method in ("post", "put", "patch"):
                statuses |= {413}
            if op.get("requestBody"):
                statuses |= {400, 422}  # 400: a body that is not JSON (or not a form)
            if op.get("parameters"):
                statuses |= {400 if hips2fits else 422}
            for status in list(op["responses"]):
                code = int(status) if str(status).isdigit() else None
                if code is not None and code >= 400:
                    statuses.add(code)
            for status in sorted(statuses):
                response = op["responses"].setdefault(str(status), {})
                response.setdefault("description", _ERRORS.get(status, "error"))
                response["content"] = _error_response(status, hips2fits)["content"]


def _limit(prop: dict[str, Any], **bounds: Any) -> None:
    target = prop
    if "anyOf" in prop:  # Optional[...]: bound the non-null branch
        target = next((b for b in prop["anyOf"] if b.get("type") not in (None, "null")), prop)
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key.replace("exclusive", "").lower() in bounds:
            target.pop(key, None)
    target.update(bounds)
    # A default beyond the configured limit is the limit (`effective_default` does the same).
    if isinstance(prop.get("default"), (int, float)) and "maximum" in bounds:
        prop["default"] = effective_default(prop["default"], bounds["maximum"])


def effective_default(default: int | float, maximum: int | float) -> int | float:
    """A field's default under a configured maximum (512 pixels on a 256-pixel service is 256)."""
    return min(default, maximum)


def document_limits(spec: dict[str, Any], limits: Any) -> None:
    """The configured limits as maxima/minima of the request schemas' fields."""
    by_field = {
        "width": {"maximum": limits.max_width},
        "height": {"maximum": limits.max_height},
        "fovDeg": {"minimum": limits.min_fov_deg, "maximum": limits.max_fov_deg},
        "tiles": {"maxItems": limits.max_tiles},
    }
    if hasattr(limits, "max_layers"):
        by_field["layers"] = {"maxItems": limits.max_layers}
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        if not name.endswith("Request"):
            continue
        for field, prop in schema.get("properties", {}).items():
            if field in by_field:
                _limit(prop, **by_field[field])
            if field == "fitsHeader":
                schema["properties"][field] = {
                    **header_schema(MAX_HEADER_SIDE, limits.max_header_keys),
                    "description": prop.get("description", ""),
                }


def document_conditional(spec: dict[str, Any]) -> None:
    """Cacheable operations (``x-cacheable``): If-None-Match, 304/412, ETag and Cache-Control."""
    what = "the response body"
    for item in spec.get("paths", {}).values():
        for method, op in item.items():
            if isinstance(op, dict) and op.pop("x-cacheable", False):
                _document_conditional(op, method, what)


def _document_conditional(op: dict[str, Any], method: str, what: str) -> None:
    headers = {
        "ETag": {"description": f"strong ETag of {what}", "schema": {"type": "string"}, "required": True},
        "Cache-Control": {"description": "how long it may be reused", "schema": {"type": "string"}},
    }
    ok = op["responses"].setdefault("200", {"description": what})
    ok["headers"] = {**ok.get("headers", {}), **headers}
    if method != "get":
        return  # a POST's answer is not a representation of its URL: no conditional request
    params = op.setdefault("parameters", [])
    if not any(p.get("name") == "If-None-Match" for p in params):
        params.append(
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "ETags of copies the caller holds: a match is a 304 without rendering",
                "schema": {"type": "string"},
            }
        )
    op["responses"]["304"] = {"description": "Not Modified: If-None-Match matched", "headers": headers}


def install_openapi(app: Any, limits: Any) -> None:
    """Make ``app.openapi()`` state the real constraints (built once per app, then cached)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        document_limits(spec, limits)
        schema = hips2fits_schema(limits)
        paths = spec.get("paths", {})
        if "get" in paths.get("/hips2fits", {}):
            paths["/hips2fits"]["get"]["parameters"] = hips2fits_parameters(schema)
            paths["/hips2fits"]["get"]["description"] = (
                paths["/hips2fits"]["get"].get("description", "") + WCS_NOTE
            )
        if "post" in paths.get("/hips2fits", {}):
            paths["/hips2fits"]["post"]["requestBody"] = {
                "required": True,
                "description": "the GET parameters as form fields; a `wcs` field (JSON, as in GET) "
                "replaces the six field parameters",
                "content": {"application/x-www-form-urlencoded": {"schema": form_schema(schema)}},
            }
        document_conditional(spec)
        document_errors(spec)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
