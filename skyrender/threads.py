"""Row-chunked parallelism for the compiled kernels.

The numba kernels release the GIL (``nogil=True``), so plain Python threads run them on
several cores. Threads rather than numba's ``parallel=True``: numba's default threading
layer (workqueue) aborts the process when two threads enter a parallel region at once,
and a Serve replica renders several requests concurrently.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import lru_cache

__all__ = [
    "MIN_ROWS_PER_CHUNK",
    "resolve_threads",
    "row_chunks",
    "run_row_chunks",
]

#: Fewer rows than this per chunk are not worth a thread hand-off.
MIN_ROWS_PER_CHUNK = 32


def resolve_threads(num_threads: int) -> int:
    """Threads to use: ``num_threads``, or every core the process may run on when 0."""
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    if num_threads == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    return num_threads


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(2, resolve_threads(0)), thread_name_prefix="skyrender")


def row_chunks(n_rows: int, num_threads: int) -> list[tuple[int, int]]:
    """Split ``range(n_rows)`` into at most ``num_threads`` contiguous ``(start, stop)`` runs."""
    k = max(1, min(resolve_threads(num_threads), n_rows // MIN_ROWS_PER_CHUNK))
    bounds = [n_rows * i // k for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def run_row_chunks(
    fn: Callable[[int, int], None], n_rows: int, num_threads: int, chunks_per_thread: int = 1
) -> None:
    """Call ``fn(start, stop)`` over row chunks, in parallel when more than one chunk.

    ``fn`` must write disjoint outputs per chunk. Each thread, the calling one included, takes
    the next chunk when it is done with one, so a busy pool never leaves the caller idle. With
    ``chunks_per_thread`` > 1 the rows are cut finer: a thread slowed by other work on its core
    (Ray's own processes, another render) then does less, rather than holding up the call.
    """
    threads = resolve_threads(num_threads)
    chunks = row_chunks(n_rows, threads * max(1, chunks_per_thread))
    if len(chunks) == 1:
        fn(*chunks[0])
        return
    pending = iter(chunks)
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                chunk = next(pending, None)
            if chunk is None:
                return
            fn(*chunk)

    futures = [_pool().submit(drain) for _ in range(min(threads, len(chunks)) - 1)]
    try:
        drain()
    finally:
        wait(futures)  # the chunks the pool took are done, or failed, before anything returns
    for f in futures:
        f.result()
