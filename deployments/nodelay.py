"""TCP_NODELAY on every TCP connection the replicas' HTTP servers accept, on asyncio's loop too.

Serve's direct-ingress server listens on ``socket.socket(AF_INET, SOCK_STREAM)``, whose
protocol number is 0, and asyncio (CPython 3.11) sets TCP_NODELAY on an accepted socket
only when its protocol number is IPPROTO_TCP. Without it, an answer written in two pieces
(headers, then body) waits for the caller's delayed ACK: ~40 ms on every small answer.
uvloop sets it on every TCP socket; this makes asyncio do the same.
"""

from __future__ import annotations

import asyncio.base_events
import socket

__all__ = ["set_tcp_nodelay_on_accept"]


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket after all (proto given wrongly): leave it
            pass


def set_tcp_nodelay_on_accept() -> None:
    """Make asyncio's transports set TCP_NODELAY on any TCP socket (idempotent)."""
    asyncio.base_events._set_nodelay = _set_nodelay  # type: ignore[attr-defined]
