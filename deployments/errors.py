"""Every error answer of the service, mapped in one place.

Core and upstream exceptions (possibly wrapped by Ray, several levels deep) become an
`ApiError` through `api_error_of`; `install_error_handlers` renders every error the app
raises as ``{error, detail}`` JSON, or as hips2fits' ``{title, description}`` under
``/hips2fits`` (astroquery prints those two fields).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from skyrender.errors import InvalidWCSError, SkyRenderError
from skyrender.layers import LayerCoverageError

from . import upstream
from .contracts import TilesLost

__all__ = [
    "ApiError",
    "api_error_of",
    "error_response",
    "install_error_handlers",
    "is_replica_death",
    "message_of",
    "unwrap",
]

log = logging.getLogger("ray.serve")


class ApiError(Exception):
    """An error with its HTTP status, rendered as ``{error, detail}``.

    Parameters
    ----------
    status : int
        HTTP status.
    error : str
        Short error class, e.g. "invalid WCS" (the title under ``/hips2fits``).
    detail : Any
        What was wrong: a message, or a JSON-able structure.
    headers : Mapping or None
        Extra response headers (e.g. ``Retry-After``).
    field : str or None
        The request field (or FITS keyword) at fault.
    reason : str or None
        The underlying library's own reason (wcslib, astropy), kept apart from ``detail``.
    """

    def __init__(
        self,
        status: int,
        error: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        field: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail
        self.headers = dict(headers or {})
        self.field, self.reason = field, reason

    @classmethod
    def of_input(cls, error: str, exc: SkyRenderError, fields: Mapping[str, str] | None = None) -> ApiError:
        """400 for a core error, naming the request's field (core names mapped by ``fields``)."""
        field = exc.field
        if field is not None and fields:
            field = fields.get(field, field)
        return cls(400, error, str(exc), field=field, reason=exc.reason)


#: Exception class → (status, error): the first match wins, so subclasses come first.
_MAPPING: tuple[tuple[type[BaseException], int, str], ...] = (
    (upstream.URLNotAllowed, 403, "tile URL not allowed"),
    (upstream.NoUsableTiles, 502, "no usable tiles"),
    (upstream.UpstreamUnavailable, 503, "upstream unavailable"),
    (TilesLost, 503, "service unavailable"),
    (upstream.UpstreamTimeout, 504, "upstream timeout"),
    (upstream.UpstreamHTTPError, 502, "upstream error"),
    (upstream.TileTooLarge, 502, "upstream tile too large"),
    # A layer with no data in the field: nothing there to find, not a malformed request.
    (LayerCoverageError, 404, "outside coverage"),
    (InvalidWCSError, 400, "invalid WCS"),
    (SkyRenderError, 400, "invalid request"),
)

#: Names for the errors Starlette raises itself; others take the HTTP reason phrase.
_HTTP_ERRORS = {413: "request body too large", 431: "too many header fields"}


def api_error_of(exc: BaseException) -> ApiError:
    """The `ApiError` for a core or upstream exception, looking inside Ray's wrappers.

    A replica that died under the request is a 503 (worth a retry); anything else is a
    bug and is re-raised.
    """
    inner = unwrap(exc)
    if isinstance(inner, ApiError):
        return inner
    for cls, status, error in _MAPPING:
        if isinstance(inner, cls):
            field = getattr(inner, "field", None)
            return ApiError(
                status, error, message_of(inner), field=field, reason=getattr(inner, "reason", None)
            )
    if is_replica_death(exc):
        return ApiError(503, "service unavailable", "a worker replica died; retry")
    raise exc


def is_replica_death(exc: BaseException) -> bool:
    """A stage's replica died under the request (killed, OOM, node lost), or tiles were lost
    with their node between stages: worth one retry."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    # Serve re-raises a dead upstream stage's error as a RayServeException whose
    # ``__cause__`` holds the ActorDiedError: look down the whole chain.
    lost = (ActorDiedError, ActorUnavailableError, RayActorError, TilesLost)
    return any(isinstance(e, lost) for e in _chain(exc))


def _chain(exc: BaseException):
    """``exc`` and every exception it wraps (Ray's ``cause``, Python's ``__cause__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__


def unwrap(exc: BaseException) -> BaseException:
    """The original exception inside Ray's wrappers (RayTaskError keeps it as ``cause``)."""
    for _ in range(5):
        inner = getattr(exc, "cause", None)
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc = inner
    return exc


def message_of(exc: BaseException) -> str:
    """The one-line message of an exception (Ray's wrapped errors carry a traceback)."""
    cause = getattr(exc, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def error_response(
    path: str,
    status: int,
    detail: Any,
    headers: Mapping[str, str] | None = None,
    error: str | None = None,
    *,
    field: str | None = None,
    reason: str | None = None,
) -> JSONResponse:
    """``{error, detail, field?, reason?}``; hips2fits' own ``{title, description}`` under ``/hips2fits``."""
    if error is None:
        try:
            error = _HTTP_ERRORS.get(status) or HTTPStatus(status).phrase.lower()
        except ValueError:
            error = "error"
    if path.startswith("/hips2fits"):
        text = detail if isinstance(detail, str) else json.dumps(detail)
        if field and field not in text:
            text = f"{field}: {text}"
        content = {"title": error[:1].upper() + error[1:], "description": text}
    else:
        content = {"error": error, "detail": detail}
        if field is not None:
            content["field"] = field
        if reason is not None:
            content["reason"] = reason
    return JSONResponse(status_code=status, content=content, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render `ApiError`, routing errors (404/405/413) and validation errors (422) as JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            request.url.path,
            exc.status,
            exc.detail,
            exc.headers,
            exc.error,
            field=exc.field,
            reason=exc.reason,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", [])), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return error_response(request.url.path, 422, detail, error="invalid request body")
