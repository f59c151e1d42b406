"""The disk tier's budget is the limit of its directory, for every replica sharing it.

On Kubernetes the directory is an ``emptyDir`` with a ``sizeLimit`` that ``statvfs`` cannot
see: the filesystem shows the node's free space, so only the configured budget keeps the pod
from being evicted. These tests run on a filesystem with far more free space than the budget.
"""

from __future__ import annotations

import multiprocessing
import random
import shutil

from deployments.disk_cache import DiskTileCache

BUDGET = 64 * 1024


def _on_disk(directory) -> int:
    return sum(p.stat().st_size for p in directory.glob("*/*.tile"))


def test_free_space_is_far_larger_than_the_budget(tmp_path):
    assert shutil.disk_usage(tmp_path).free > 100 * BUDGET


def test_two_replicas_on_one_directory_share_one_budget(tmp_path):
    # Two fetch replicas on one node: each used to count only its own writes (2x the budget).
    a, b = DiskTileCache(tmp_path, BUDGET), DiskTileCache(tmp_path, BUDGET)
    for i in range(200):
        (a if i % 2 else b).put(f"tile-{i}", bytes([i % 256]) * 1500)
        assert _on_disk(tmp_path) <= BUDGET
    assert a.usage() == b.usage() == _on_disk(tmp_path)
    assert a.counters["evictions"] + b.counters["evictions"] > 0
    # The most recent tiles are the ones kept (LRU), whichever replica wrote them.
    assert a.get("tile-199") is not None and b.get("tile-198") is not None and a.get("tile-0") is None


def test_a_hit_keeps_a_tile_across_replicas(tmp_path):
    a, b = DiskTileCache(tmp_path, BUDGET), DiskTileCache(tmp_path, BUDGET)
    a.put("hot", b"h" * 1000)
    for i in range(300):
        b.put(f"cold-{i}", b"c" * 1000)
        if i % 20 == 0:
            assert a.get("hot") == b"h" * 1000  # read through the other replica: still recent
    assert b.get("hot") is not None and b.get("cold-0") is None


def _writer(directory: str, seed: int, n: int, out) -> None:
    rng = random.Random(seed)
    cache = DiskTileCache(directory, BUDGET)
    worst = 0
    for i in range(n):
        cache.put(f"k{rng.randrange(400)}", rng.randbytes(rng.randrange(200, 6000)))
        if i % 10 == 0:
            with cache._locked():  # a consistent view: no writer is mid-rename
                worst = max(worst, sum(size for _, size, _ in cache._scan()))
    out.put(worst)


def test_processes_writing_at_once_never_pass_the_budget(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), seed, 300, out)) for seed in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    worst = max(out.get(timeout=5) for _ in procs)
    assert 0.5 * BUDGET < worst <= BUDGET
    assert _on_disk(tmp_path) <= BUDGET
    assert not list(tmp_path.glob("*/*.tmp"))
    assert DiskTileCache(tmp_path, BUDGET).usage() == _on_disk(tmp_path)


def test_a_smaller_budget_after_a_restart_is_applied_at_once(tmp_path):
    big = DiskTileCache(tmp_path, BUDGET)
    for i in range(60):
        big.put(f"k{i}", b"x" * 1000)
    assert _on_disk(tmp_path) > BUDGET // 2
    small = DiskTileCache(tmp_path, BUDGET // 4)
    assert _on_disk(tmp_path) <= BUDGET // 4 == small.max_bytes
    assert small.get("k59") is not None and small.get("k0") is None


def test_a_ledger_that_drifted_is_corrected(tmp_path):
    cache = DiskTileCache(tmp_path, BUDGET)
    for i in range(20):
        cache.put(f"k{i}", b"x" * 1000)
    (tmp_path / ".bytes").write_text("garbage")
    assert cache.usage() == _on_disk(tmp_path) == 20_000
    for p in list(tmp_path.glob("*/*.tile"))[:5]:  # removed by hand: the ledger over-counts
        p.unlink()
    for i in range(100):
        cache.put(f"n{i}", b"y" * 1000)
    assert cache.usage() == _on_disk(tmp_path) <= BUDGET
