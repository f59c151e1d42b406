"""Second cache tier: raw tile bytes on local disk (the pod's scratch volume).

Byte budget with LRU eviction (file modification time is the recency: a hit touches the
file), atomic writes (write to a temporary name, then rename), and it survives a restart
because the directory itself is the index. A full disk evicts and carries on: the cache
never fails a request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

log = logging.getLogger("ray.serve")


class DiskTileCache:
    """LRU-by-bytes store of tile bytes under ``directory``; thread-safe within a process.

    Several processes may share the directory (fetch replicas on one node): every file
    is complete or absent (atomic renames), and eviction re-reads the directory.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self.counters = {"hits": 0, "misses": 0, "writes": 0, "evictions": 0, "errors": 0}
        self.bytes_held = sum(size for _, size, _ in self._scan())

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.tile"

    def _scan(self) -> list[tuple[Path, int, float]]:
        out = []
        for path in self.directory.glob("*/*.tile"):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((path, st.st_size, st.st_mtime))
        return out

    def get(self, key: str) -> bytes | None:
        """The bytes stored for ``key``, or None; a hit refreshes its recency."""
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)
        except OSError:
            self.counters["misses"] += 1
            return None
        self.counters["hits"] += 1
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data``; evict least-recently-used files past the budget. Never raises."""
        if len(data) > self.max_bytes:
            return
        path = self._path(key)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:  # disk full or read-only: make room once, then give up quietly
            self.counters["errors"] += 1
            log.warning("disk cache write failed (%s): evicting", exc)
            tmp.unlink(missing_ok=True)
            self.evict(target=self.max_bytes // 2)
            return
        with self._lock:
            self.counters["writes"] += 1
            self.bytes_held += len(data)
            over = self.bytes_held > self.max_bytes
        if over:
            self.evict()

    def evict(self, target: int | None = None) -> int:
        """Delete least-recently-used files until at most ``target`` bytes (default: the budget) remain."""
        target = self.max_bytes if target is None else target
        with self._lock:
            files = sorted(self._scan(), key=lambda f: f[2])
            held = sum(size for _, size, _ in files)
            removed = 0
            for path, size, _ in files:
                if held <= target:
                    break
                try:
                    path.unlink()
                except OSError:
                    continue
                held -= size
                removed += 1
            self.bytes_held = held
            self.counters["evictions"] += removed
        return removed

    def stats(self) -> dict[str, int | str]:
        usage = shutil.disk_usage(self.directory)
        return {
            **self.counters,
            "bytes_held": self.bytes_held,
            "max_bytes": self.max_bytes,
            "directory": str(self.directory),
            "disk_free_bytes": usage.free,
        }


def disk_free_bytes(directory: str | os.PathLike) -> int:
    """Free bytes on the filesystem holding ``directory`` (created if missing)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(directory).free
