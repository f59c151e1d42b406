"""Second cache tier: raw tile bytes on local disk (the pod's scratch volume).

The configured byte budget is the limit, for the whole directory: every fetch replica of a
node shares it, and a write that would pass the budget first evicts least-recently-used
tiles (file modification time is the recency: a hit touches the file). Free space on the
filesystem is no guide on Kubernetes (an ``emptyDir`` ``sizeLimit`` is invisible to
``statvfs``; passing it gets the pod evicted), so it is only a second line of defence.

The processes sharing the directory agree on its size through a ledger file updated under
an exclusive ``flock``; writes are atomic (temporary name, then rename, both under the lock)
and the directory itself is the index, so the cache survives a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("ray.serve")

#: An eviction frees down to this fraction of the budget, so a full cache rescans its
#: directory once per ~10 % of churn rather than on every write.
LOW_WATER = 0.9
_LEDGER = ".bytes"
_LOCK = ".lock"


class DiskTileCache:
    """LRU-by-bytes store of tile bytes under ``directory``, bounded by ``max_bytes`` (bytes).

    Safe for threads and for processes sharing the directory: the total never exceeds
    ``max_bytes``, whatever the number of instances (replicas) using it.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock_path = self.directory / _LOCK
        self._ledger = self.directory / _LEDGER
        self.counters = {"hits": 0, "misses": 0, "writes": 0, "evictions": 0, "errors": 0}
        with self._locked():
            # Under the lock no other writer is mid-write: any temporary file is a crash's leftover.
            for tmp in self.directory.glob("*/*.tmp"):
                tmp.unlink(missing_ok=True)
            held = sum(size for _, size, _ in self._scan())
            self._write_ledger(held)
            if held > self.max_bytes:  # the budget shrank since the last run
                held = self._evict_locked(held, self._low_water())
        self.bytes_held = held

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.tile"

    def _low_water(self) -> int:
        return int(self.max_bytes * LOW_WATER)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # One open file description per holder: flock then excludes threads and processes alike.
        with open(self._lock_path, "a+b") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _read_ledger(self) -> int:
        try:
            return int(self._ledger.read_text())
        except (OSError, ValueError):  # lost or torn: the directory is the truth
            return sum(size for _, size, _ in self._scan())

    def _write_ledger(self, held: int) -> None:
        tmp = self._ledger.with_name(f"{_LEDGER}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(str(held))
        os.replace(tmp, self._ledger)

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
        """Store ``data``, evicting least-recently-used tiles first if the budget needs it. Never raises."""
        if len(data) > self.max_bytes:
            return
        path = self._path(key)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with self._locked():
                held = self._read_ledger()
                try:
                    held -= path.stat().st_size  # replacing a tile frees its old bytes
                except OSError:
                    pass
                if held + len(data) > self.max_bytes:
                    held = self._evict_locked(held, min(self._low_water(), self.max_bytes - len(data)))
                try:
                    path.parent.mkdir(exist_ok=True)
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
                except OSError as exc:  # the filesystem filled before the budget: make room, go on
                    self.counters["errors"] += 1
                    log.warning("disk cache write failed (%s): evicting", exc)
                    tmp.unlink(missing_ok=True)
                    held = self._evict_locked(self._read_ledger(), self.max_bytes // 2)
                    self.bytes_held = held
                    return
                held += len(data)
                self._write_ledger(held)
                self.bytes_held = held
                self.counters["writes"] += 1
        except OSError as exc:  # the lock or ledger itself failed: the cache never fails a request
            self.counters["errors"] += 1
            log.warning("disk cache unavailable (%s)", exc)

    def _evict_locked(self, held: int, target: int) -> int:
        """Delete least-recently-used tiles until at most ``target`` bytes remain; the new total.

        The caller holds the lock. The scan also corrects a ledger that drifted (files
        removed by hand, a crash between a rename and the ledger update).
        """
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
        self._write_ledger(held)
        self.counters["evictions"] += removed
        return held

    def evict(self, target: int | None = None) -> int:
        """Delete least-recently-used tiles until at most ``target`` bytes (default: the budget) remain."""
        before = self.counters["evictions"]
        with self._locked():
            target = self.max_bytes if target is None else target
            self.bytes_held = self._evict_locked(self._read_ledger(), target)
        return self.counters["evictions"] - before

    def usage(self) -> int:
        """Bytes held in the directory by every process sharing it (the ledger)."""
        with self._locked():
            self.bytes_held = self._read_ledger()
        return self.bytes_held

    def stats(self) -> dict[str, int | str]:
        usage = shutil.disk_usage(self.directory)
        return {
            **self.counters,
            "bytes_held": self.usage(),
            "max_bytes": self.max_bytes,
            "directory": str(self.directory),
            "disk_free_bytes": usage.free,
        }


def disk_free_bytes(directory: str | os.PathLike) -> int:
    """Free bytes on the filesystem holding ``directory`` (created if missing)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(directory).free
