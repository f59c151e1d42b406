"""`deployments.nodelay`: asyncio's servers set TCP_NODELAY on sockets Serve creates with protocol 0."""

from __future__ import annotations

import asyncio
import socket

import pytest

from deployments import nodelay


def _accepted_nodelay() -> int:
    """TCP_NODELAY of the server side of one connection to a server listening as Serve's does."""

    async def main() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # as ray.serve's http_util: proto 0
        sock.bind(("127.0.0.1", 0))
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            value = await asyncio.wait_for(seen, 5)
            writer.close()
        return value

    return asyncio.run(main())  # the tests' default policy: asyncio's own loop, as the replicas run


@pytest.fixture
def restore_nodelay():
    import asyncio.base_events as base_events

    original = base_events._set_nodelay
    yield
    base_events._set_nodelay = original


def test_accepted_connections_get_tcp_nodelay(restore_nodelay) -> None:
    """Without it an answer written in two pieces waits for the caller's delayed ACK (~40 ms)."""
    nodelay.set_tcp_nodelay_on_accept()
    assert _accepted_nodelay() != 0
    nodelay.set_tcp_nodelay_on_accept()  # idempotent
    assert _accepted_nodelay() != 0
