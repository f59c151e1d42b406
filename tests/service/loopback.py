"""A real HTTP server on loopback serving a folder of HiPS tile sets (the test upstream)."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Quiet(SimpleHTTPRequestHandler):
    counts: dict[str, int]

    def log_message(self, *args) -> None:  # keep test output readable
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.counts[self.path] = self.counts.get(self.path, 0) + 1
        super().do_GET()


class StaticHips:
    """Serve ``root`` on 127.0.0.1; `stop` and `start` again on the same port."""

    def __init__(self, root: Path, port: int = 0):
        self.root = Path(root)
        self.counts: dict[str, int] = {}
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        handler = functools.partial(type("H", (_Quiet,), {"counts": self.counts}), directory=str(self.root))
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def tile_requests(self) -> int:
        return sum(n for path, n in self.counts.items() if "/Npix" in path)
