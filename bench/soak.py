"""Bounded load and soak run on loopback: N clients, a fixed number of requests.

Mixed endpoints with panning fields; prints success rate, p50/p99, and the RSS of every
Ray process before and after, grouped by role, with a verdict on memory growth.

    python bench/soak.py --clients 8 --requests 10000
    python bench/soak.py --short          # 1000 requests
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.service.loopback import StaticHips  # noqa: E402
from tests.service.serve_harness import ServeApp  # noqa: E402
from tests.shared_dir import SHARED_DIR  # noqa: E402

HIPS = SHARED_DIR / "data" / "hips"


def ray_rss_mib() -> dict[str, float]:
    """RSS [MiB] of this host's Ray processes, by role and process (``role#pid``)."""
    groups: dict[str, float] = collections.defaultdict(float)
    for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            title = proc.info["name"] or ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::"):
            role = title.split(".")[0]
        elif "raylet" in cmd or "gcs_server" in cmd or "dashboard" in cmd or "log_monitor" in cmd:
            role = next(r for r in ("raylet", "gcs_server", "dashboard", "log_monitor") if r in cmd)
        else:
            continue
        groups[f"{role}#{proc.pid}"] += proc.info["memory_info"].rss / 2**20
    return dict(groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--short", action="store_true", help="1000 requests")
    args = parser.parse_args(argv)
    total = 1000 if args.short else args.requests
    upstream = StaticHips(HIPS)
    app = ServeApp(
        {
            "surveys": [{"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"}],
            "build_sample_survey": False,
        }
    )
    rng = np.random.default_rng(11)
    centres = rng.uniform(-1.5, 1.5, size=(total, 2))
    kinds = rng.choice(["preview", "manifest", "validate", "snapshot"], size=total, p=[0.6, 0.2, 0.1, 0.1])
    tile = f"{upstream.url}/cds-dss2-red/Norder3/Dir0/Npix304.fits"
    header = {"NAXIS1": 64, "NAXIS2": 64, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0,
              "CRVAL2": 20.0, "CRPIX1": 32.5, "CRPIX2": 32.5, "CDELT1": -1e-3, "CDELT2": 1e-3}  # fmt: skip

    def one(i: int) -> tuple[int, float]:
        ra, dec = 266.4 + centres[i, 0], -28.9 + centres[i, 1]
        field = {"ra": ra, "dec": dec, "fovDeg": 2.0, "width": 256, "height": 256}
        t0 = time.perf_counter()
        try:
            if kinds[i] == "preview":
                r = app.client.post("/v1/preview", json=field)
            elif kinds[i] == "manifest":
                r = app.client.post("/v1/tile-manifest", json=field)
            elif kinds[i] == "validate":
                r = app.client.post("/v1/wcs-validate", json={"fitsHeader": header})
            else:
                r = app.client.post("/render/snapshot", json={"tiles": [tile], "width": 256, "height": 256})
            status = r.status_code
        except Exception:
            status = 0
        return status, time.perf_counter() - t0

    try:
        # Warm up under the same concurrency, so autoscaled replicas exist before "before".
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(min(400, total))))
        time.sleep(5)
        before = ray_rss_mib()
        # The run in quarters, RSS read after each: a leak keeps climbing, warm-up levels off.
        quarters, results = [], []
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            for q in range(4):
                results += pool.map(one, range(q * total // 4, (q + 1) * total // 4))
                quarters.append(ray_rss_mib())
        elapsed = time.perf_counter() - t0
        time.sleep(2)
        after = ray_rss_mib()
    finally:
        app.close()
        upstream.stop()
    ok = sum(1 for s, _ in results if s == 200)
    lat = np.array([d for _, d in results]) * 1e3
    print(f"# soak: {total} requests, {args.clients} clients, {elapsed:.1f} s ({total / elapsed:.1f} req/s)")
    print(f"success {ok}/{total} = {100 * ok / total:.2f} %   p50 {np.percentile(lat, 50):.1f} ms   "
          f"p99 {np.percentile(lat, 99):.1f} ms")  # fmt: skip
    print(f"{'process':<48}{'RSS before MiB':>16}{'after MiB':>12}{'change':>10}")
    for role in sorted(set(before) | set(after)):
        b, a = before.get(role, 0.0), after.get(role, 0.0)
        print(f"{role:<48}{b:16.1f}{a:12.1f}{a - b:+10.1f}")
    # Growth of the processes alive throughout (new replicas from autoscaling are listed, not counted).
    common = set(before).intersection(after, *quarters)
    growth = sum(after[k] - before[k] for k in common)
    print(f"RSS change of the {len(common)} processes alive throughout: {growth:+.1f} MiB")
    totals = [sum(q[k] for k in common) for q in quarters]
    print("their total RSS after each quarter of the run [MiB]: " + ", ".join(f"{t:.1f}" for t in totals))
    # Flat: the second half adds under 2 % (warm-up, allocator arenas and caches fill the first).
    second_half = totals[-1] - totals[1]
    verdict = "flat" if second_half < 0.02 * totals[1] else "GROWING"
    print(f"over {total} requests: {verdict} (second half {second_half:+.1f} MiB)")
    return 0 if ok / total >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
