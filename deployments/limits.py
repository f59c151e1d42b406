"""Request limits, all enforced here (from ``limits:`` in serve_config.yaml).

The HTTP-level ones (body size, header count) are an ASGI middleware reading the limits
from ``app.state.limits``; the render-level ones (image size, field of view, tiles, FITS
header keys) are functions the routes call before any work.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from skyrender.errors import SkyRenderError
from skyrender.geometry import OutputGeometry, make_geometry

from .config import LimitsConfig
from .errors import ApiError, error_response

#: The core's parameter names → the JSON fields of the render requests.
FIELD_NAMES = {"fov": "fovDeg", "rotation": "rotation", "projection": "projection", "dec": "dec", "ra": "ra"}

__all__ = [
    "FIELD_NAMES",
    "requested_size",
    "RequestLimits",
    "check_header_keys",
    "check_size",
    "check_tile_count",
    "field_geometry",
]


class RequestLimits:
    """Refuse bodies over ``max_body_bytes`` (413) and requests with too many header fields (431).

    A declared Content-Length is checked before the route runs; a chunked body (no
    length) is counted while it streams in, and the error is raised from ``receive`` as
    an HTTPException, which FastAPI's body reader passes on to the exception handlers.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits: LimitsConfig = getattr(scope["app"].state, "limits", None) or LimitsConfig()
        path = scope.get("path", "")
        headers = scope.get("headers", [])
        length = next((v.decode("latin-1") for k, v in headers if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            response = error_response(path, 413, f"limit {limits.max_body_bytes} bytes")
            await response(scope, receive, send)
            return
        if len(headers) > limits.max_request_headers:
            detail = f"{len(headers)} header fields; limit {limits.max_request_headers}"
            await error_response(path, 431, detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limits.max_body_bytes:
                    raise StarletteHTTPException(413, f"limit {limits.max_body_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


def check_size(
    limits: LimitsConfig, width: int, height: int, names: tuple[str, str] = ("width", "height")
) -> None:
    """400 unless ``width`` x ``height`` [pixels] is within the limits; the error names the field."""
    for name, value, limit in ((names[0], width, limits.max_width), (names[1], height, limits.max_height)):
        if value > limit:
            raise ApiError(
                400, "image too large", f"{name} {value} is over the limit of {limit} pixels", field=name
            )
    if width * height > limits.max_pixels:
        raise ApiError(
            400,
            "image too large",
            f"{width}x{height} = {width * height} pixels is over the limit of {limits.max_pixels}",
            field=names[0],
        )


def requested_size(body: Any, limits: LimitsConfig) -> tuple[int, int]:
    """(width, height) [pixels] of a request body; an omitted side's default is capped by its limit."""
    sides = []
    for name, limit in (("width", limits.max_width), ("height", limits.max_height)):
        value = getattr(body, name)
        sides.append(value if name in body.model_fields_set else min(value, limit))
    return sides[0], sides[1]


def field_geometry(
    limits: LimitsConfig,
    ra: float,
    dec: float,
    fov: float,
    width: int,
    height: int,
    projection: str = "TAN",
    rotation: float = 0.0,
    frame: str = "icrs",
) -> OutputGeometry:
    """The output geometry of a field (centre and fov [deg], size [pixels]) within the limits (400)."""
    check_size(limits, width, height)
    if fov > limits.max_fov_deg:
        raise ApiError(400, "field too wide", f"fovDeg {fov} exceeds {limits.max_fov_deg}", field="fovDeg")
    if fov < limits.min_fov_deg:
        raise ApiError(
            400, "field too narrow", f"fovDeg {fov} is below the minimum {limits.min_fov_deg}", field="fovDeg"
        )
    try:
        return make_geometry(
            ra, dec, fov, width, height, projection, rotation, frame,
            max_side=max(limits.max_width, limits.max_height), max_pixels=limits.max_pixels,
        )  # fmt: skip
    except SkyRenderError as exc:
        raise ApiError.of_input("invalid geometry", exc, FIELD_NAMES) from None


def check_tile_count(limits: LimitsConfig, count: int) -> None:
    """400 when a render would read more than ``max_tiles`` tiles."""
    if count > limits.max_tiles:
        raise ApiError(
            400, "too many tiles", f"{count} tiles; the limit is {limits.max_tiles}", field="tiles"
        )


def check_header_keys(limits: LimitsConfig, count: int) -> None:
    """400 when a FITS header has more than ``max_header_keys`` keywords."""
    if count > limits.max_header_keys:
        raise ApiError(
            400, "invalid WCS", f"{count} keywords; the limit is {limits.max_header_keys}", field="fitsHeader"
        )
