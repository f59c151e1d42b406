"""HTTP method handling for every path: ``Allow``, ``OPTIONS``, ``HEAD`` (RFC 9110 §9.3.2, §9.3.7, §10.2.1).

Starlette answers a wrong method with the ``Allow`` of the *first* route whose path
matched, so a path served by two routes (``GET /hips2fits`` and ``POST /hips2fits``)
advertised only one of them, ``OPTIONS`` was a 405, and ``HEAD`` was refused where ``GET``
works. This middleware looks at every route of the app instead:

* ``OPTIONS``: 204 with ``Allow`` listing every method the path serves;
* ``HEAD``: served as ``GET`` without the body (same status and headers, conditional
  requests included);
* any other method the path does not serve: 405 with the same ``Allow``, in the service's
  error shape.
"""

from __future__ import annotations

import weakref
from typing import Any

from .errors import error_response

__all__ = ["MethodHandling", "allowed_methods"]

#: Order of methods in ``Allow`` (then alphabetical for anything else).
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


_Routes = list[tuple[Any, set[str]]]

#: `_routes` of each app, with the length of its route list when they were read: every request
#: asks, and walking the routes (~60 us) was ~3 % of the ingress's CPU under overload.
_ROUTES_SEEN: weakref.WeakKeyDictionary[Any, tuple[int, _Routes]] = weakref.WeakKeyDictionary()


def _routes(app: Any) -> _Routes:
    """(path regex, methods) of every HTTP route of ``app``, routers included (read once per app)."""
    top = getattr(app, "routes", ())
    try:
        seen = _ROUTES_SEEN.get(app)
    except TypeError:  # None, or not weakly referenceable: read every time
        seen = None
    if seen is not None and seen[0] == len(top):
        return seen[1]
    try:  # FastAPI >= 0.16x keeps included routers as groups; this walks into them
        from fastapi.routing import iter_route_contexts

        contexts: Any = iter_route_contexts(top)
    except ImportError:
        contexts = top
    out = []
    for route in contexts:
        regex, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and methods:
            out.append((regex, {m.upper() for m in methods}))
    try:
        _ROUTES_SEEN[app] = (len(top), out)
    except TypeError:
        pass
    return out


def _path(scope: dict) -> str:
    try:
        from starlette._utils import get_route_path

        return get_route_path(scope)
    except ImportError:
        return scope["path"]


def _methods_at(app: Any, scope: dict) -> set[str]:
    path = _path(scope)
    methods: set[str] = set()
    for regex, route_methods in _routes(app):
        if regex.match(path):
            methods |= route_methods
    return methods


def allowed_methods(app: Any, scope: dict) -> list[str]:
    """Every method some route of ``app`` serves at ``scope``'s path ([] when no route has the path)."""
    methods = _methods_at(app, scope)
    if not methods:
        return []
    if "GET" in methods:
        methods.add("HEAD")
    methods.add("OPTIONS")
    return sorted(methods, key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))


class MethodHandling:
    """ASGI middleware: ``OPTIONS`` and 405 with the path's full ``Allow``; ``HEAD`` as ``GET``."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        allowed = allowed_methods(scope.get("app"), scope)
        if not allowed:  # no such path: the router's 404
            await self.app(scope, receive, send)
            return
        allow = ", ".join(allowed)
        if method == "OPTIONS" and "OPTIONS" not in _served_explicitly(scope.get("app"), scope):
            await _empty(204, {"allow": allow})(scope, receive, send)
            return
        if method not in allowed:
            detail = f"{method} is not served at {scope['path']}; allowed: {allow}"
            await error_response(scope["path"], 405, detail, {"Allow": allow})(scope, receive, send)
            return
        if method == "HEAD":
            # Served by the GET route unless a route declares HEAD itself; never a body.
            explicit = "HEAD" in _served_explicitly(scope.get("app"), scope)
            await self.app(scope if explicit else {**scope, "method": "GET"}, receive, _without_body(send))
            return
        await self.app(scope, receive, send)


def _served_explicitly(app: Any, scope: dict) -> set[str]:
    """HEAD/OPTIONS when a route declares them itself at this path."""
    return _methods_at(app, scope) & {"HEAD", "OPTIONS"}


def _empty(status: int, headers: dict[str, str]):
    async def respond(scope: dict, receive: Any, send: Any) -> None:
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b""})

    return respond


def _without_body(send: Any):
    """``send`` for a HEAD answered by the GET route: headers as GET's, no body bytes."""

    async def head_send(message: dict) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return  # swallow streamed chunks; the last (empty) one ends the response
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return head_send
