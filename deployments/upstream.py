"""Fetching tiles from upstream HiPS servers, safely (no Ray here: plain asyncio + httpx).

Tile URLs come from callers, so every URL is checked against the configured survey roots
(scheme, host, port, path prefix) before any connection, and again at every redirect.
Local-directory roots are configured by the operator only; their files are read from disk.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from skyrender.errors import SkyRenderError

__all__ = [
    "FetchConfig",
    "NoUsableTiles",
    "RootPolicy",
    "SurveyRoot",
    "TileFetcher",
    "TileNotFound",
    "TileTooLarge",
    "URLNotAllowed",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class UpstreamError(Exception):
    """Base class of fetch failures that are the upstream's fault (5xx-worthy)."""


class URLNotAllowed(SkyRenderError):
    """The URL is not under a configured survey root (403)."""


class TileNotFound(Exception):
    """The upstream has no such tile (404/410, or no such file): the area is uncovered."""


class UpstreamUnavailable(UpstreamError):
    """Connection refused, DNS failure, or every attempt failed to connect."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the timeouts or the request deadline."""


class UpstreamHTTPError(UpstreamError):
    """The upstream answered an error status (after retries for 5xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # crosses Ray process boundaries: keep both arguments
        return type(self), (self.status, self.args[0])


class NoUsableTiles(UpstreamError):
    """Every tile of a render was broken (corrupt, truncated, wrong type, too large)."""


class TileTooLarge(UpstreamError):
    """The tile is larger than the per-tile byte limit."""


@dataclass(frozen=True)
class FetchConfig:
    """Every knob of the fetcher: ``upstream:`` in serve_config.yaml (same names, [s] and
    counts), plus the per-tile byte limit and how many redirects to follow."""

    connect_timeout_s: float
    read_timeout_s: float
    retries: int
    backoff_s: float
    per_host_concurrency: int
    probe_cache_s: float
    request_deadline_s: float
    max_tile_bytes: int
    max_redirects: int = 3  # not an operator's knob: HiPS servers redirect once at most

    @classmethod
    def from_settings(cls, upstream: Mapping[str, Any], **extra: Any) -> FetchConfig:
        """Built from the ``upstream`` settings (extra keys ignored) and ``extra``."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in upstream.items() if k in names}, **extra)


@dataclass(frozen=True)
class SurveyRoot:
    """A configured root: an http(s) prefix or a local directory."""

    raw: str
    scheme: str = ""
    host: str = ""
    port: int = 0
    prefix: str = ""
    directory: Path | None = None

    @classmethod
    def parse(cls, root: str) -> SurveyRoot:
        if root.startswith(("http://", "https://")):
            parts = urlsplit(root)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            prefix = posixpath.normpath(unquote(parts.path or "/")).rstrip("/") + "/"
            return cls(root, parts.scheme, (parts.hostname or "").lower(), port, prefix.replace("//", "/"))
        return cls(root, directory=Path(root).resolve())


class RootPolicy:
    """Accepts only locations under the configured roots."""

    def __init__(self, roots: list[str]):
        self.roots = [SurveyRoot.parse(r) for r in roots]

    def check(self, location: str) -> str:
        """The location, normalised, if it is under a root; `URLNotAllowed` otherwise."""
        if location.startswith(("http://", "https://")):
            return self._check_url(location)
        if "://" in location or location.startswith("file:"):
            raise URLNotAllowed(f"scheme not allowed: {location[:100]!r}")
        return self._check_path(location)

    def _check_url(self, url: str) -> str:
        if "\\" in url or any(ord(c) < 33 for c in url):
            raise URLNotAllowed("backslashes and control characters are not allowed in tile URLs")
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise URLNotAllowed(f"malformed URL: {exc}") from None
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise URLNotAllowed("URLs with user info are not allowed")
        if parts.fragment:
            raise URLNotAllowed("URL fragments are not allowed")
        decoded = unquote(parts.path)
        path = posixpath.normpath(decoded)
        if decoded.endswith("/"):
            path += "/"
        host = (parts.hostname or "").lower()
        for root in self.roots:
            if root.directory is not None:
                continue
            if (parts.scheme, host, port) == (root.scheme, root.host, port) and port == root.port:
                if (path + "/").startswith(root.prefix) or path.startswith(root.prefix):
                    query = f"?{parts.query}" if parts.query else ""
                    netloc = host if port in (80, 443) and parts.port is None else f"{host}:{port}"
                    return f"{parts.scheme}://{netloc}{path}{query}"
        raise URLNotAllowed(f"{url[:200]} is not under a configured survey root")

    def _check_path(self, location: str) -> str:
        path = Path(location)
        if not path.is_absolute():
            raise URLNotAllowed("local tile paths must be absolute")
        real = Path(os.path.realpath(path))
        for root in self.roots:
            if root.directory is not None and (real == root.directory or root.directory in real.parents):
                return str(real)
        raise URLNotAllowed(f"{location[:200]} is not under a configured survey directory")


class TileFetcher:
    """Pooled, bounded, retrying tile fetcher."""

    def __init__(self, policy: RootPolicy, config: FetchConfig):
        self.policy = policy
        self.config = config
        c = self.config
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(c.read_timeout_s, connect=c.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=4 * c.per_host_concurrency,
                max_keepalive_connections=2 * c.per_host_concurrency,
            ),
            follow_redirects=False,
            headers={"User-Agent": "skyrender/0.1 (HiPS renderer)"},
        )
        self._per_host: dict[str, asyncio.Semaphore] = {}
        self._probes: dict[str, tuple[float, tuple[bool, str]]] = {}

    async def fetch(self, location: str) -> bytes:
        """Bytes of a tile (URL under an http root, or a file under a local root)."""
        checked = self.policy.check(location)
        if not checked.startswith(("http://", "https://")):
            return await asyncio.to_thread(self._read_file, checked)
        try:
            return await asyncio.wait_for(self._fetch_url(checked), timeout=self.config.request_deadline_s)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{checked}: no answer within {self.config.request_deadline_s:.1f} s"
            ) from None

    def _read_file(self, path: str) -> bytes:
        try:
            size = os.path.getsize(path)
        except OSError:
            raise TileNotFound(path) from None
        if size > self.config.max_tile_bytes:
            raise TileTooLarge(f"{path}: {size} bytes, limit {self.config.max_tile_bytes}")
        try:
            return Path(path).read_bytes()
        except OSError:
            raise TileNotFound(path) from None

    async def _fetch_url(self, url: str) -> bytes:
        c = self.config
        host = urlsplit(url).netloc
        sem = self._per_host.setdefault(host, asyncio.Semaphore(c.per_host_concurrency))
        last: Exception | None = None
        for attempt in range(c.retries + 1):
            if attempt:
                await asyncio.sleep(c.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                async with sem:
                    return await self._get_following(url)
            except httpx.ConnectError as exc:
                last = UpstreamUnavailable(f"{host}: cannot connect ({exc or type(exc).__name__})")
            except httpx.TimeoutException as exc:
                last = UpstreamTimeout(f"{host}: {type(exc).__name__}")
            except UpstreamHTTPError as exc:
                if exc.status < 500:
                    raise
                last = exc
            except httpx.HTTPError as exc:
                last = UpstreamUnavailable(f"{host}: {type(exc).__name__}: {exc}")
        assert last is not None
        raise last

    async def _get_following(self, url: str) -> bytes:
        for _ in range(self.config.max_redirects + 1):
            async with self._client.stream("GET", url) as response:
                if response.status_code in (301, 302, 303, 307, 308):
                    target = response.headers.get("location", "")
                    url = self.policy.check(str(httpx.URL(url).join(target)))
                    continue
                if response.status_code in (404, 410):
                    raise TileNotFound(url)
                if response.status_code != 200:
                    raise UpstreamHTTPError(response.status_code, f"{url}: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.config.max_tile_bytes:
                    raise TileTooLarge(f"{url}: {declared} bytes, limit {self.config.max_tile_bytes}")
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > self.config.max_tile_bytes:
                        raise TileTooLarge(f"{url}: over {self.config.max_tile_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise UpstreamHTTPError(310, f"{url}: too many redirects")

    async def probe(self, root: str) -> tuple[bool, str]:
        """Is ``<root>/properties`` reachable? Cached for ``probe_cache_s`` seconds."""
        now = time.monotonic()
        cached = self._probes.get(root)
        if cached and now - cached[0] < self.config.probe_cache_s:
            return cached[1]
        try:
            url = self.policy.check(f"{root.rstrip('/')}/properties")
            response = await asyncio.wait_for(
                self._client.get(url), timeout=self.config.connect_timeout_s + self.config.read_timeout_s
            )
            result = (response.status_code == 200, f"HTTP {response.status_code}")
        except (httpx.HTTPError, TimeoutError, URLNotAllowed) as exc:
            result = (False, f"{type(exc).__name__}: {exc}".rstrip(": "))
        self._probes[root] = (now, result)
        return result

    async def aclose(self) -> None:
        await self._client.aclose()
