"""A loopback HiPS upstream that misbehaves on purpose, by path prefix.

``/<mode>/<survey>/<path>`` serves ``<root>/<survey>/<path>`` after applying ``mode`` to
tile requests (``properties`` and ``Moc.fits`` are always served as they are):

* ``ok``: as is;                ``slow``: sleep ``delay_s`` first;
* ``err``: always HTTP 500;     ``flaky``: HTTP 503 for the first ``flaky_failures`` requests of a path;
* ``corrupt``: garbage bytes;   ``truncated``: the first half of the file;
* ``bomb``: a FITS header claiming 100000 x 100000 pixels;
* ``redirect``: 302 to the same path on another loopback host (off-root);
* ``mixed``: tiles with an odd ``Npix`` are garbage, the others as is (good and broken tiles
  in one survey).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

BOMB_FITS = (
    "".join(
        f"{card:<80}"
        for card in [
            "SIMPLE  = T",
            "BITPIX  = -32",
            "NAXIS   = 2",
            "NAXIS1  = 100000",
            "NAXIS2  = 100000",
            "END",
        ]
    )
    .encode()
    .ljust(2880, b" ")
)


class MisbehavingHips:
    def __init__(self, root: Path, *, delay_s: float = 8.0, flaky_failures: int = 2):
        self.root = Path(root)
        self.delay_s = delay_s
        self.flaky_failures = flaky_failures
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                with outer._lock:
                    outer.counts[path] = outer.counts.get(path, 0) + 1
                    seen = outer.counts[path]
                parts = path.lstrip("/").split("/", 2)
                if len(parts) < 3:
                    return self._send(404)
                mode, survey, rest = parts
                file = outer.root / survey / rest
                if ".." in rest or not file.is_file():
                    return self._send(404)
                data = file.read_bytes()
                if rest in ("properties", "Moc.fits") or mode == "ok":
                    return self._send(200, data)
                if mode == "slow":
                    time.sleep(outer.delay_s)
                    return self._send(200, data)
                if mode == "err":
                    return self._send(500, b"internal error")
                if mode == "flaky":
                    return self._send(503, b"busy") if seen <= outer.flaky_failures else self._send(200, data)
                if mode == "mixed":
                    odd = int(rest.rsplit("Npix", 1)[-1].split(".")[0] or 0) % 2 if "Npix" in rest else 0
                    return self._send(200, b"SIMPLE  =" + bytes(range(256)) * 8 if odd else data)
                if mode == "corrupt":
                    return self._send(200, b"SIMPLE  =" + bytes(range(256)) * 8)
                if mode == "truncated":
                    return self._send(200, data[: len(data) // 2])
                if mode == "bomb":
                    return self._send(200, BOMB_FITS)
                if mode == "redirect":
                    port = self.server.server_address[1]
                    return self._send(302, headers={"Location": f"http://127.0.0.2:{port}{path}"})
                return self._send(404)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def requests_for(self, fragment: str) -> int:
        return sum(n for p, n in self.counts.items() if fragment in p)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
