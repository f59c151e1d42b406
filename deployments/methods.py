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

from typing import Any

from starlette.routing import Match

from .errors import error_response

__all__ = ["MethodHandling", "allowed_methods"]

#: Order of methods in ``Allow`` (then alphabetical for anything else).
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: Any, scope: dict) -> list[str]:
    """Every method some route of ``app`` serves at ``scope``'s path ([] when no route has the path)."""
    methods: set[str] = set()
    for route in getattr(app, "routes", ()):
        route_methods = getattr(route, "methods", None)
        if not route_methods:
            continue  # websocket routes, mounts without methods
        probe = {**scope, "method": next(iter(route_methods))}
        match, _ = route.matches(probe)
        if match is Match.FULL:
            methods |= set(route_methods)
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
    """Methods a route declares itself at this path (a route may implement HEAD or OPTIONS)."""
    out: set[str] = set()
    for route in getattr(app, "routes", ()):
        for method in getattr(route, "methods", None) or ():
            if method in ("HEAD", "OPTIONS") and route.matches({**scope, "method": method})[0] is Match.FULL:
                out.add(method)
    return out


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
