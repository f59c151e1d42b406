"""Overload: capacity with 8 clients, then 96 clients for a fixed time, through HTTP on loopback.

Starts the real Serve application (serve_config.yaml) with a loopback HTTP upstream serving CDS
DSS2 tiles (or measures a running one: ``--url``), warms the tiles, then:

1. capacity: 8 clients panning ``/v1/preview`` 512x512 PNG (a new centre every request) for a
   fixed time: renders answered per second;
2. overload: 96 clients doing the same for a fixed time. A client that is refused waits what
   ``Retry-After`` says (as the portal's caller does), then goes on. Meanwhile a probe reads
   ``/healthz`` and ``/readyz`` twice a second;
3. capacity again, as in 1.

Prints goodput (200s answered within the caller's 5 s timeout, per second) and its ratio to the
capacity, the slowest answer, every status seen with its latency, the refusals (latency,
``Retry-After``), and the health probes, each against the targets of issue 14.

The capacity is measured before and after the overload, and the goodput is compared with their
mean: this machine's cores are shared, and their speed drifts within minutes (the CPU that all
processes together spend per good answer, printed per phase, differed by 42 % between the two
8-client phases of one run). One capacity phase measured before the overload would compare the
overload with a machine that may no longer be there.

    python bench/overload.py            # full: 15 s + 30 s + 15 s
    python bench/overload.py --short    # CI: 6 s + 12 s + 6 s
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import proc_cpu  # noqa: E402  (bench/, beside this file)

from tests.service.loopback import StaticHips  # noqa: E402
from tests.service.serve_harness import ServeApp, load_config  # noqa: E402
from tests.shared_dir import SHARED_DIR  # noqa: E402

HIPS = SHARED_DIR / "data" / "hips"
CENTRE = (266.4, -28.9)
CALLER_TIMEOUT_S = 5.0  # the portal's caller gives up after this (docs/design.md)
#: The probes: the two of issue 14's target, then for reference where a probe's time goes:
#: /livez (the ingress answers at once) and the front's own health route (HAProxy; no replica at all).
PROBED = ("/healthz", "/readyz", "/livez", "/-/healthz")
TARGETED = ("/healthz", "/readyz")


@dataclass
class Outcome:
    status: int  # 0: no HTTP answer (connection error)
    seconds: float
    retry_after: str | None = None
    error: str = ""
    app_s: float | None = None  # Server-Timing "app": the time inside the ingress [s]
    decided_s: float | None = None  # Server-Timing "decided": a refusal's decision, after arrival [s]
    sent_at: float = 0.0  # when it was sent, after the phase began [s]


@dataclass
class Phase:
    clients: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed: float = 0.0
    started: float = 0.0  # time.perf_counter() at the phase's start
    client_cpu_s: float = 0.0  # CPU time the load generator (this process) spent [s]
    cpu_by_role: dict[str, float] = field(default_factory=dict)  # CPU of every process of the cluster [s]
    # (s into the phase, lag [s]) of the load generator's own event loop
    loop_lag: list[tuple[float, float]] = field(default_factory=list)

    def lag_during(self, start: float, seconds: float) -> float:
        """The load generator's own longest event-loop lag while a request was out [s]: time
        that its measured latency owes to the client, not to the service."""
        end = start + seconds
        return max((lag for at, lag in self.loop_lag if at >= start and at - lag <= end), default=0.0)

    def by_status(self) -> dict[int, list[Outcome]]:
        out: dict[int, list[Outcome]] = {}
        for o in self.outcomes:
            out.setdefault(o.status, []).append(o)
        return dict(sorted(out.items()))

    def good(self) -> int:
        return sum(1 for o in self.outcomes if o.status == 200 and o.seconds <= CALLER_TIMEOUT_S)


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


async def _client(
    http: aiohttp.ClientSession, stop_at: float, phase: Phase, rng: np.random.Generator, body
):
    while time.perf_counter() < stop_at:
        ra, dec = CENTRE[0] + rng.uniform(-1.0, 1.0), CENTRE[1] + rng.uniform(-1.0, 1.0)
        t0 = time.perf_counter()
        try:
            async with http.post("/v1/preview", json={**body, "ra": ra, "dec": dec}) as r:
                data = await r.read()
            outcome = Outcome(r.status, time.perf_counter() - t0, r.headers.get("retry-after"))
            timing = r.headers.get("server-timing", "")
            if "decided;dur=" in timing:
                outcome.decided_s = float(timing.split("decided;dur=", 1)[1].split(",")[0]) / 1e3
            if "app;dur=" in timing:
                outcome.app_s = float(timing.rsplit("app;dur=", 1)[1].split(",")[0]) / 1e3
            if r.status != 200:
                outcome.error = data[:2000].decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = Outcome(0, time.perf_counter() - t0, error=type(exc).__name__)
        outcome.sent_at = t0 - phase.started
        phase.outcomes.append(outcome)
        if outcome.status in (429, 503) and outcome.retry_after and outcome.retry_after.isdigit():
            await asyncio.sleep(min(float(outcome.retry_after), max(stop_at - time.perf_counter(), 0.0)))
        elif outcome.status != 200:
            await asyncio.sleep(0.1)  # no advice: a short pause, as a polite client does


async def _watch_loop(phase: Phase, stop_at: float, tick_s: float = 0.005) -> None:
    """Record the load generator's event-loop lags over 10 ms (its own GC, parsing a burst of answers)."""
    while time.perf_counter() < stop_at:
        asked = time.perf_counter()
        await asyncio.sleep(tick_s)
        now = time.perf_counter()
        if now - asked - tick_s > 0.01:
            phase.loop_lag.append((now - phase.started, now - asked - tick_s))


async def _run(url: str, clients: int, seconds: float, body: dict, seed: int) -> Phase:
    phase = Phase(clients, seconds)
    # aiohttp (its C HTTP parser): 1.6-2.7 ms of this process's CPU per request, against 3.0-5.8 ms
    # with httpx. The load generator stands for callers on other machines; here it shares the 2
    # cores, and under overload (refusals, Retry-After waits) it took twice its share per good
    # answer, CPU that the service's goodput then lacked.
    connector = aiohttp.TCPConnector(limit=clients + 8)
    timeout = aiohttp.ClientTimeout(total=60.0)
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as http:
        before = proc_cpu.snapshot()
        cpu0 = time.process_time()
        start = phase.started = time.perf_counter()
        rngs = [np.random.default_rng(seed + i) for i in range(clients)]
        watch = asyncio.create_task(_watch_loop(phase, start + seconds))
        # The load generator's own garbage collections would count as the service's latency (a
        # client on another machine has none of them): none during the phase, one after it.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            stop_at = start + seconds
            await asyncio.gather(*(_client(http, stop_at, phase, rngs[i], body) for i in range(clients)))
            await watch
        finally:
            gc.enable()
            gc.unfreeze()
        phase.elapsed = time.perf_counter() - start  # until the last answer: late ones count against us
        phase.client_cpu_s = time.process_time() - cpu0
        phase.cpu_by_role = proc_cpu.cpu_by_role(before, proc_cpu.snapshot())
    return phase


def _before_the_service() -> None:
    """Run this process before the service's on the shared cores, where permitted (root).

    The load generator and the probes stand for callers on other machines: on this one they
    share the 2 cores with the service, and the time they wait for a core would count as the
    service's latency. Their CPU is the same either way (it is reported). Without the
    privilege, nothing changes and the lags reported say how much they waited.
    """
    try:  # (Linux: the calling thread, and the threads it starts from now on)
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    except (OSError, AttributeError):
        pass


def _probe_loop(url: str, stop, results) -> None:
    """The probe process: ``/healthz`` and ``/readyz`` every 0.5 s until ``stop`` is set."""
    _before_the_service()
    samples: dict[str, list[tuple[int, float, float, str]]] = {path: [] for path in PROBED}
    with httpx.Client(base_url=url, timeout=30.0) as http:
        while not stop.is_set():
            for path, out in samples.items():
                t0 = time.perf_counter()
                try:
                    r = http.get(path)
                    status, timing = r.status_code, r.headers.get("server-timing", "")
                except httpx.HTTPError:
                    status, timing = 0, ""
                out.append((status, time.perf_counter() - t0, t0, timing))
            stop.wait(0.5)
    results.put(samples)


class HealthProbe:
    """Reads ``/healthz`` and ``/readyz`` every 0.5 s from its own process and connection.

    Its own process, as Kubernetes' and the portal's probes are: in this one the 96 clients'
    event loop would hold the GIL and add its own delays to the probes' times.
    """

    def __init__(self, url: str):
        ctx = multiprocessing.get_context("spawn")
        self._stop, self._results = ctx.Event(), ctx.Queue()
        self._process = ctx.Process(target=_probe_loop, args=(url, self._stop, self._results), daemon=True)
        # (status, seconds, time.perf_counter() when sent: one clock for every process here)
        self.samples: dict[str, list[tuple[int, float, float, str]]] = {path: [] for path in PROBED}

    def __enter__(self) -> HealthProbe:
        self._process.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.samples = self._results.get(timeout=60)
        self._process.join(timeout=10)


def report(before: Phase, overload: Phase, after: Phase, probe: HealthProbe, deadline_s: float) -> None:
    rate_before, rate_after = before.good() / before.elapsed, after.good() / after.elapsed
    cap_rate = (rate_before + rate_after) / 2
    good_rate = overload.good() / overload.elapsed
    for name, ph, rate in (("before", before, rate_before), ("after", after, rate_after)):
        print(f"capacity {name} the overload, {ph.clients} clients, {ph.seconds:.0f} s: {rate:.1f} renders/s "
              f"({len(ph.outcomes)} requests; statuses {_counts(ph)})")  # fmt: skip
    print(f"capacity (mean of the two): {cap_rate:.1f} renders/s")
    n = len(overload.outcomes)
    print(f"overload, {overload.clients} clients, {overload.seconds:.0f} s: {n} requests, the last answered "
          f"after {overload.elapsed:.1f} s")  # fmt: skip
    phases = (("before", before), ("overload", overload), ("after", after))
    # The clients share the 2 cores with the service: what they take is not the service's.
    for name, ph in phases:
        share = ph.client_cpu_s / ph.elapsed
        print(f"  load generator ({name}, {ph.clients} clients): {share:.0%} of a core, "
              f"{ph.client_cpu_s / max(len(ph.outcomes), 1) * 1e3:.1f} ms CPU per request")  # fmt: skip
    for name, ph in phases:
        good = max(ph.good(), 1)
        parts = [kv for kv in sorted(ph.cpu_by_role.items(), key=lambda kv: -kv[1]) if kv[1] / good >= 5e-4]
        total_ms = sum(ph.cpu_by_role.values()) / good * 1e3
        print(f"  CPU per good answer, {name}, {ph.clients} clients: {total_ms:.1f} ms ("
              + ", ".join(f"{role} {sec / good * 1e3:.1f}" for role, sec in parts) + ")")  # fmt: skip
    ratio = good_rate / cap_rate if cap_rate else float("nan")
    print(f"  goodput (200 within {CALLER_TIMEOUT_S:.0f} s) {good_rate:.1f}/s = {ratio:.0%} of capacity"
          f" ({good_rate / rate_before:.0%} of the capacity before, {good_rate / rate_after:.0%} of after)"
          f"   target >= 90 %  [{'ok' if ratio >= 0.9 else 'MISSED'}]")  # fmt: skip
    per_s = np.zeros(int(overload.elapsed) + 1, dtype=int)
    for o in overload.outcomes:
        if o.status == 200 and o.seconds <= CALLER_TIMEOUT_S:
            per_s[int(o.sent_at + o.seconds)] += 1
    print(f"  good answers per second: {' '.join(str(int(c)) for c in per_s)}")
    answers = [o for o in overload.outcomes if o.status != 0]
    slowest = max((o.seconds for o in answers), default=0.0)
    late = sum(1 for o in answers if o.seconds > deadline_s + 1.0)
    print(f"  slowest answer {slowest:.2f} s; {late} answers later than deadline {deadline_s:.1f} s + 1 s"
          f"   target 0  [{'ok' if late == 0 else 'MISSED'}]")  # fmt: skip
    print(f"  {'status':>6} {'count':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}   example")
    for status, outs in overload.by_status().items():
        secs = [o.seconds for o in outs]
        example = next((o.error for o in outs if o.error), "")[:90]
        print(f"  {status:>6} {len(outs):>6} {ms(secs, 50):9.1f} {ms(secs, 99):9.1f} {ms(secs, 100):9.1f}   "
              f"{example}")  # fmt: skip
    refusals = [o for o in overload.outcomes if o.status in (429, 503)]
    with_ra = sum(1 for o in refusals if o.retry_after)
    p99 = ms([o.seconds for o in refusals], 99)
    verdict = "ok" if not refusals or (with_ra == len(refusals) and p99 <= 100) else "MISSED"
    advised = sorted({o.retry_after for o in refusals if o.retry_after})
    print(f"  refusals (503/429): {len(refusals)}, {with_ra} with Retry-After (values {advised[:8]}), "
          f"p99 {p99:.1f} ms   target all with Retry-After, p99 <= 100 ms  [{verdict}]")  # fmt: skip
    by_cause: dict[str, list[float]] = {}
    for o in refusals:
        by_cause.setdefault(_cause(o.error), []).append(o.seconds)
    for cause, secs in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        print(f"    {cause}: {len(secs)}, p50 {ms(secs, 50):.1f} ms, p99 {ms(secs, 99):.1f} ms")
    slow = sorted((o.sent_at, o.seconds) for o in refusals if o.seconds > 0.1)
    if slow:
        print(f"    over 100 ms: {len(slow)}, sent at (s into the phase) "
              + ", ".join(f"{at:.1f}" for at, _ in slow[:40]))  # fmt: skip
        lags = [overload.lag_during(at, secs) for at, secs in slow]
        print(f"      the load generator's own event loop lagged during them: max {max(lags) * 1e3:.0f} ms, "
              f"p50 {ms(lags, 50):.0f} ms")  # fmt: skip
    if overload.loop_lag:
        lags = [lag for _, lag in overload.loop_lag]
        print(f"    load generator's event-loop lags over 10 ms: {len(lags)}, max {max(lags) * 1e3:.0f} ms, "
              f"total {sum(lags):.2f} s")  # fmt: skip
    inside = [o.app_s for o in refusals if o.app_s is not None]
    if inside:
        print(f"    of which inside the ingress (Server-Timing app): p50 {ms(inside, 50):.1f} ms, "
              f"p99 {ms(inside, 99):.1f} ms; the rest is HTTP, Serve's proxy and the client")  # fmt: skip
    decided = [o.decided_s for o in refusals if o.decided_s is not None]
    if decided:
        print(f"    decided (Server-Timing decided: after arrival): p50 {ms(decided, 50):.1f} ms, "
              f"p99 {ms(decided, 99):.1f} ms")  # fmt: skip
    n504 = sum(1 for o in overload.outcomes if o.status == 504)
    verdict = "ok" if not n504 else "MISSED"
    print(f"  504s: {n504}   target 0 (the upstream here is a fast loopback server)  [{verdict}]")
    for path, samples in probe.samples.items():
        if not samples:
            continue
        statuses = sorted({s for s, _, _, _ in samples})
        secs = [t for _, t, _, _ in samples]
        if statuses == [404]:
            print(f"  {path}: not served by this version")
            continue
        worst = max(secs) * 1e3
        verdict = " (reference)"
        if path in TARGETED:
            verdict = f"   target <= 100 ms  [{'ok' if worst <= 100 else 'MISSED'}]"
        print(f"  {path}: {len(samples)} probes, statuses {statuses}, p50 {ms(secs, 50):.1f} ms, "
              f"max {worst:.1f} ms{verdict}")  # fmt: skip
        slow = [(t0 - overload.started, t, timing) for _, t, t0, timing in samples if t > 0.1]
        if slow:
            print("    over 100 ms (sent at s: took ms [server timing]): "
                  + ", ".join(f"{at:.1f}: {t * 1e3:.0f} [{timing}]" for at, t, timing in slow))  # fmt: skip


def _cause(body: str) -> str:
    """``stage/reason`` of a refusal's JSON body (see deployments/deadline.py), or its error."""
    try:
        detail = json.loads(body).get("detail")
    except ValueError:
        return "unreadable body"
    if isinstance(detail, dict):
        return f"{detail.get('stage')}/{detail.get('reason')}"
    return str(detail)[:60]


def _counts(phase: Phase) -> dict[int, int]:
    return {s: len(o) for s, o in phase.by_status().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI mode: 6 s + 12 s + 6 s")
    parser.add_argument("--url", help="measure a running service instead of starting one")
    parser.add_argument("--survey", default=None, help="survey to render (with --url; default: its first)")
    parser.add_argument("--clients", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=None, help="length of the overload phase")
    parser.add_argument(
        "--deployments",
        type=json.loads,
        default=None,
        help="settings over serve_config.yaml's, by deployment (JSON), "
        'e.g. \'{"Ingress": {"max_ongoing_requests": 100}}\'',
    )
    args = parser.parse_args(argv)
    cap_s, over_s = (6.0, 12.0) if args.short else (15.0, 30.0)
    over_s = args.seconds or over_s
    args_cfg = load_config()["applications"][0]["args"]
    deadline_s = float(args_cfg.get("overload", {}).get("deadline_s", CALLER_TIMEOUT_S))
    upstream = app = None
    if args.url:
        url, survey = args.url.rstrip("/"), args.survey
    else:
        upstream = StaticHips(HIPS)
        survey = "dss2-red"
        app = ServeApp({"surveys": [{"name": survey, "url": f"{upstream.url}/cds-dss2-red"}],
                        "build_sample_survey": False}, deployments=args.deployments)  # fmt: skip
        url = app.url
    body = {"fovDeg": 2.0, "width": 512, "height": 512, "format": "png"}
    if survey:
        body["survey"] = survey
    try:
        print(f"# overload benchmark ({'short' if args.short else 'full'}), loopback, 2 cores shared with "
              f"other engineers' work; deadline {deadline_s:.1f} s")  # fmt: skip
        warm = {**body, "width": 1024, "height": 768, "fovDeg": 3.5}
        with httpx.Client(base_url=url, timeout=60.0) as http:
            for _ in range(3):  # the tiles around the centre, and every kernel, warm
                http.post("/v1/preview", json={**warm, "ra": CENTRE[0], "dec": CENTRE[1]})
        _before_the_service()  # after the service started: its processes do not inherit it
        asyncio.run(_run(url, 8, 2.0, body, seed=1))  # warm the replicas' measurements
        before = asyncio.run(_run(url, 8, cap_s, body, seed=100))
        time.sleep(1.0)
        with HealthProbe(url) as probe:
            overload = asyncio.run(_run(url, args.clients, over_s, body, seed=1000))
        time.sleep(1.0)
        after = asyncio.run(_run(url, 8, cap_s, body, seed=200))
        report(before, overload, after, probe, deadline_s)
    finally:
        if app is not None:
            app.close()
        if upstream is not None:
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
