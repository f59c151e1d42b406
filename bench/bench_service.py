"""Latency and throughput of the running service through HTTP on loopback.

Starts the real Serve application (serve_config.yaml) with a loopback HTTP upstream
serving CDS tiles and an empty JIT cache, and times the start: when the application is
RUNNING, when ``/readyz`` turns 200, and the first ``/v1/preview`` after that (COLD START:
fresh replicas, no compiled kernels on disk, tiles never fetched; ``--cold-starts N`` more
fresh starts give its p50). Then it measures per endpoint p50/p95/p99, cold (tiles never fetched)
and warm previews, PANNING (a new centre every request, tiles warm: what a viewer does),
and 512² snapshot throughput with 8 concurrent clients. In the same run it times a
hips2fits-style peer (astropy WCS pixel_to_world + cdshealpix bilinear + numpy gather,
CDS's method) on the same 1024x768 field, for the ratio. For panning and the snapshot
throughput it prints the CPU a request costs summed over every process of the cluster
(`proc_cpu`), by process: on 2 cores that sum bounds the throughput.

    python bench/bench_service.py           # full
    python bench/bench_service.py --short   # CI
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import peers  # noqa: E402  (bench/ is on sys.path when run as a script)
import proc_cpu  # noqa: E402

from tests.service.loopback import StaticHips  # noqa: E402
from tests.service.serve_harness import ServeApp  # noqa: E402
from tests.shared_dir import SHARED_DIR  # noqa: E402

HIPS = SHARED_DIR / "data" / "hips"
CENTRE = (266.4, -28.9)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3


def timed(fn, n: int, stages: dict[str, list[float]] | None = None, expect: int = 200) -> list[float]:
    """Wall times [s] of ``n`` calls answering ``expect``; ``stages`` collects Server-Timing [ms]."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        response = fn(i)
        out.append(time.perf_counter() - t0)
        assert response.status_code == expect, response.text[:300]
        if stages is not None:
            for entry in response.headers.get("server-timing", "").split(","):
                name, _, dur = entry.strip().partition(";dur=")
                if dur:
                    stages.setdefault(name, []).append(float(dur))
            stages.setdefault("total", []).append(out[-1] * 1e3)
    return out


def stage_row(stages: dict[str, list[float]]) -> None:
    """Medians of the stages, the handoffs, the ingress's own work and HTTP + the front (HAProxy)."""
    med = {k: float(np.median(v)) for k, v in stages.items()}
    parts = [f"{k} {med[k]:.1f}" for k in ("fetch", "compose", "encode") if k in med]
    if "chain" in med:
        hops = med["chain"] - sum(med.get(k, 0.0) for k in ("fetch", "compose", "encode"))
        parts.append(f"handoffs between stages {hops:.1f}")
        # Each hand-off (Server-Timing hop-*): ingress → fetch → compose → encode → ingress.
        hop_names = {"hop-fetch": "to fetch", "hop-compose": "to compose", "hop-encode": "to encode",
                     "hop-back": "back"}  # fmt: skip
        each = [f"{label} {med[k]:.1f}" for k, label in hop_names.items() if k in med]
        if each:
            parts.append("(" + ", ".join(each) + ")")
    parts.append(f"ingress {med['app'] - med.get('chain', 0.0):.1f}")
    parts.append(f"HTTP+front {med['total'] - med['app']:.1f}")
    print(f"{'':<4}p50 ms: " + "; ".join(parts))


def cpu_row(before: proc_cpu.CpuSnapshot, requests: int) -> None:
    """CPU per request [ms] summed over every process of the cluster, and its biggest parts.

    On 2 cores, concurrent throughput is bounded by this sum (40 renders/s needs <= 50 ms).
    """
    spent = proc_cpu.cpu_by_role(before, proc_cpu.snapshot())
    total = sum(spent.values())
    parts = [f"{role} {s / requests * 1e3:.1f}" for role, s in spent.items() if s / requests >= 0.3e-3]
    print(f"{'':<4}CPU ms/request {total / requests * 1e3:.1f}: " + "; ".join(parts))


def row(name: str, times: list[float], target: str = "") -> None:
    print(f"{name:<44}{pct(times, 50):9.1f}{pct(times, 95):9.1f}{pct(times, 99):9.1f}   {target}")


def hips2fits_method_ms(repeats: int) -> float:
    """CDS's method on the same decoded DSS2 tiles and 1024x768 field as the panning row."""
    from skyrender.decode import decode_tile
    from skyrender.geometry import make_geometry

    tiles = {}
    for path in (HIPS / "cds-dss2-red" / "Norder3" / "Dir0").glob("*.fits"):
        tiles[int(path.stem[4:])] = decode_tile(path.read_bytes())
    return peers.hips2fits_method_ms(tiles, 3, make_geometry(*CENTRE, 2.0, 1024, 768), "equatorial", repeats)


def start(upstream: StaticHips, sampling: str) -> tuple[ServeApp, dict[str, float]]:
    """A fresh application with an empty JIT cache, timed from the call until the first
    /v1/preview after /readyz turned 200 [s]; the field's tiles were never fetched."""
    import atexit
    import shutil
    import tempfile

    jit = tempfile.mkdtemp(prefix="skyrender-jit-")
    atexit.register(shutil.rmtree, jit, True)  # after the application has stopped using it
    t0 = time.perf_counter()
    app = ServeApp(
        {
            "surveys": [{"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"}],
            "build_sample_survey": False,
            "render": {"sampling": sampling, "jit_cache_dir": jit},
        }
    )
    timeline = {"application RUNNING": time.perf_counter() - t0}
    while (ready := app.client.get("/readyz")).status_code != 200:
        time.sleep(0.05)
    timeline["/readyz 200"] = time.perf_counter() - t0
    for step, seconds in ready.json()["timeline_s"].items():
        timeline[f"  ingress: {step} (after its start)"] = seconds
    field = {"ra": CENTRE[0], "dec": CENTRE[1], "fovDeg": 2.0, "width": 1024, "height": 768}
    t1 = time.perf_counter()
    first = app.client.post("/v1/preview", json=field)
    assert first.status_code == 200, first.text
    timeline["first /v1/preview"] = time.perf_counter() - t1
    return app, timeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI mode: fewer requests")
    parser.add_argument(
        "--sampling", choices=("grid", "exact"), default="grid", help="render.sampling of the service"
    )
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=None,
        help="extra fresh starts for the cold-start p50 (default 0 short, 2)",
    )
    args = parser.parse_args(argv)
    n = 15 if args.short else 60
    extra_starts = args.cold_starts if args.cold_starts is not None else (0 if args.short else 2)
    upstream = StaticHips(HIPS)
    firsts = []
    for _ in range(extra_starts):  # each a fresh cluster, empty JIT cache, tiles never fetched
        extra, timeline = start(upstream, args.sampling)
        extra.close()
        firsts.append(timeline["first /v1/preview"])  # each start has its own (empty) disk tier
    app, timeline = start(upstream, args.sampling)
    firsts.append(timeline["first /v1/preview"])
    http = app.client
    rng = np.random.default_rng(7)
    try:
        print(
            f"# skyrender service benchmark ({'short' if args.short else 'full'}), loopback, 2 cores, "
            f"render.sampling: {args.sampling}"
        )
        print("start-up timeline (fresh cluster, empty JIT cache) [s]:")
        for step, seconds in timeline.items():
            print(f"  {step:<50}{seconds:8.2f}")
        print(f"{'measurement':<44}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}   target")
        cold_ms = [f * 1e3 for f in firsts]
        print(
            f"{'COLD START first /v1/preview after /readyz':<44}{np.median(cold_ms):9.1f}{max(cold_ms):9.1f}"
            f"{'':9}   p50 <= 300 ({len(cold_ms)} fresh start{'s' if len(cold_ms) > 1 else ''}, 1024x768, "
            "tiles from upstream)"
        )
        # What any request costs before our handlers run: client, the front (HAProxy), the
        # ingress replica's HTTP server, FastAPI routing and our middleware (a JSON 404).
        for _ in range(5):  # first requests after start-up pay for imports and connections
            http.get("/no-such-path")
            http.post("/v1/tile-manifest", json={"ra": CENTRE[0], "dec": CENTRE[1], "fovDeg": 2.0})
        row(
            "GET unknown path (404: the front's floor)",
            timed(lambda i: http.get("/no-such-path"), n, expect=404),
        )
        manifest = {"ra": CENTRE[0], "dec": CENTRE[1], "fovDeg": 2.0, "width": 1024, "height": 768}
        stages: dict[str, list[float]] = {}
        row(
            "POST /v1/tile-manifest",
            timed(lambda i: http.post("/v1/tile-manifest", json=manifest), n, stages),
            "p50 <= 5",
        )
        stage_row(stages)
        header = {"NAXIS1": 512, "NAXIS2": 512, "CTYPE1": "RA---SIN", "CTYPE2": "DEC--SIN", "CRVAL1": 150.0,
                  "CRVAL2": 2.0, "CRPIX1": 256.5, "CRPIX2": 256.5, "CDELT1": -1e-4,
                  "CDELT2": 1e-4}  # fmt: skip
        validate = {"fitsHeader": header}
        stages = {}
        row(
            "POST /v1/wcs-validate",
            timed(lambda i: http.post("/v1/wcs-validate", json=validate), n, stages),
            "p50 <= 5",
        )
        stage_row(stages)

        # Cold: every request needs tiles not fetched before (one order-3 tile each, distinct).
        tile_files = sorted((HIPS / "cds-dss2-red" / "Norder3" / "Dir0").glob("*.fits"))
        cold_urls = [f"{upstream.url}/cds-dss2-red/Norder3/Dir0/{p.name}" for p in tile_files]

        def cold_snapshot(i):
            return http.post("/render/snapshot", json={"tiles": [cold_urls[i]], "width": 512, "height": 512})

        cold = timed(cold_snapshot, min(n, len(cold_urls)))
        row("cold snapshot 512x512 (tile from upstream)", cold, "p50 <= 300 (cold preview)")

        def preview(w, h, jitter, fov=2.0):
            def call(i):
                ra, dec = CENTRE[0] + rng.uniform(-jitter, jitter), CENTRE[1] + rng.uniform(-jitter, jitter)
                return http.post(
                    "/v1/preview", json={"ra": ra, "dec": dec, "fovDeg": fov, "width": w, "height": h}
                )

            return call

        timed(preview(1024, 768, 1.5), 10)  # warm the tiles around the centre
        row("panning /v1/preview 512x512 (warm tiles)", timed(preview(512, 512, 1.0), n))
        stages = {}
        before = proc_cpu.snapshot()
        panning = timed(preview(1024, 768, 1.0), n, stages)
        row("panning /v1/preview 1024x768 (warm tiles)", panning, "p50 <= 60")
        stage_row(stages)
        cpu_row(before, n)
        # The same chain with next to nothing to compute: 16x12 pixels at the same pixel scale
        # (same order, one or two tiles). What is left is the fixed cost of a render: HTTP,
        # the ingress, the Serve hops; no render can be faster than this.
        stages = {}
        floor = timed(preview(16, 12, 1.0, fov=2.0 * 16 / 1024), n, stages)
        row("panning /v1/preview 16x12 (the fixed cost)", floor)
        stage_row(stages)
        same = {"ra": CENTRE[0], "dec": CENTRE[1], "fovDeg": 2.0, "width": 1024, "height": 768}
        row("repeated /v1/preview 1024x768", timed(lambda i: http.post("/v1/preview", json=same), n))

        snap = {"tiles": cold_urls[:2], "width": 512, "height": 512}
        total = 40 if args.short else 200
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            # The pool's connections first, then the measured run.
            list(pool.map(lambda _: http.post("/render/snapshot", json=snap), range(16)))
            before, t0 = proc_cpu.snapshot(), time.perf_counter()
            codes = list(
                pool.map(lambda _: http.post("/render/snapshot", json=snap).status_code, range(total))
            )
        rate = total / (time.perf_counter() - t0)
        ok = codes.count(200)
        print(f"{'snapshots 512x512, 8 clients':<44}{rate:9.1f} req/s ({ok}/{total} ok)   target >= 40")
        cpu_row(before, total)
        peer = hips2fits_method_ms(3 if args.short else 5)
        print(f"{'hips2fits method, same 1024x768 field':<44}{peer:9.1f} ms (compute only, one core)")
        print(
            f"{'panning preview p50 vs CDS method':<44}{peer / pct(panning, 50):9.1f} x faster"
            f" (HTTP, PNG, warm tiles vs compute alone)   target >= 10"
        )
        print(
            f"{'  at most, with free stages':<44}{peer / pct(floor, 50):9.1f} x"
            f" (CDS method / the 16x12 render's p50: the chain's fixed cost alone)"
        )
    finally:
        app.close()
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
