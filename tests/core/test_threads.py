"""Row-chunked threads: the same pixels as one thread, also under concurrent renders."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from skyrender.geometry import make_geometry
from skyrender.projection import pixel_lonlat
from skyrender.render import reproject
from skyrender.sampling import TileSet
from skyrender.threads import MIN_ROWS_PER_CHUNK, resolve_threads, row_chunks

from .tiles_on_disk import load_fits_tiles


@pytest.mark.parametrize("n_rows", [0, 1, 31, 64, 65, 768, 1001])
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_row_chunks_cover_every_row_once(n_rows, threads):
    chunks = row_chunks(n_rows, threads)
    rows = [r for a, b in chunks for r in range(a, b)]
    assert rows == list(range(n_rows))
    assert len(chunks) <= max(1, threads)
    if len(chunks) > 1:
        assert min(b - a for a, b in chunks) >= MIN_ROWS_PER_CHUNK


def test_resolve_threads():
    assert resolve_threads(3) == 3
    assert resolve_threads(0) >= 1
    with pytest.raises(ValueError):
        resolve_threads(-1)


@pytest.mark.parametrize("projection", ["TAN", "AIT"])
def test_projection_threads_give_identical_positions(projection):
    geom = make_geometry(266.4, -28.9, 360.0 if projection == "AIT" else 20.0, 517, 301, projection)
    one = pixel_lonlat(geom.wcs, 517, 301, wcs_frame="icrs", target_frame="galactic")
    three = pixel_lonlat(geom.wcs, 517, 301, wcs_frame="icrs", target_frame="galactic", num_threads=3)
    for a, b in zip(one, three, strict=True):
        assert np.array_equal(a, b)


@pytest.fixture(scope="module")
def planck(hips_dir):
    return TileSet.from_tiles(3, load_fits_tiles(hips_dir / "cds-planck-hfi143", 3), tile_width=256)


def test_threaded_renders_equal_one_thread_also_when_concurrent(planck):
    geoms = [make_geometry(266.4 + 0.7 * k, -28.9, 20.0, 640, 480) for k in range(4)]
    expected = [reproject(g, planck, "galactic") for g in geoms]
    assert np.isfinite(expected[0]).mean() > 0.5
    # Four renders at once, each split over every core, as a compose replica does.
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda g: reproject(g, planck, "galactic", num_threads=0), geoms))
    for e, g in zip(expected, got, strict=True):
        assert np.array_equal(e, g, equal_nan=True)


@pytest.mark.parametrize("n_rows", [1, 40, 768, 1537])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_finer_chunks_are_each_run_once_by_whichever_thread_is_free(n_rows, threads):
    """`run_row_chunks(..., chunks_per_thread=4)`: every row once, in chunks taken in turn;
    a thread held up on its first chunk leaves the rest to the others."""
    import threading
    import time

    from skyrender.threads import run_row_chunks

    seen = np.zeros(n_rows, dtype=np.int64)
    by_thread: dict[int, int] = {}
    lock = threading.Lock()
    first = threading.Event()

    def fn(a: int, b: int) -> None:
        if not first.is_set():
            first.set()
            time.sleep(0.05)  # this thread's core is busy for a while
        with lock:
            seen[a:b] += 1
            by_thread[threading.get_ident()] = by_thread.get(threading.get_ident(), 0) + 1

    run_row_chunks(fn, n_rows, threads, chunks_per_thread=4)
    assert (seen == 1).all()
    chunks = row_chunks(n_rows, threads * 4)
    assert sum(by_thread.values()) == len(chunks)
    if len(chunks) > 1 and threads > 1:  # the held-up thread did its one chunk; the others the rest
        assert len(by_thread) >= 2 and min(by_thread.values()) == 1


def test_an_error_in_a_chunk_reaches_the_caller():
    from skyrender.threads import run_row_chunks

    def fn(a: int, b: int) -> None:
        if a > 0:
            raise ValueError(f"rows {a}-{b}")

    with pytest.raises(ValueError, match="rows"):
        run_row_chunks(fn, 512, 2, chunks_per_thread=4)
