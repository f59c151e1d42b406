"""Admission control: measure what each stage costs, estimate a newcomer's wait, admit or refuse.

Two halves, no Ray here:

* `ServiceClock`, in every stage replica: the replica's service time per unit of work while it
  is busy (busy time between completions, divided by the work completed: with four renders
  sharing the cores this is a quarter of one render's wall time), and one request's time in
  the stage. Each answer carries a `StageReport`.
* `AdmissionControl`, in the ingress: from the reports, each stage's throughput (the sum over
  its live replicas of 1 / service time); the bottleneck's throughput drains the work already
  admitted, then the newcomer crosses the stages. A request whose estimated finish is after
  its deadline is refused at once, with a ``Retry-After`` from the same estimate. The estimate
  is corrected by how far the past ones missed (an EWMA of actual / estimated), which also
  covers what one ingress replica cannot see: other ingress replicas sharing the stages.

Work is counted in megapixels of output (compose and encode cost grows with the pixels), with a
floor so that tiny renders still count for their fixed costs.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

__all__ = ["AdmissionControl", "Decision", "ServiceClock", "StageReport", "work_units"]

#: Work of the smallest request [megapixels]: below this a render's fixed costs dominate.
MIN_WORK = 0.05


def work_units(width: int, height: int) -> float:
    """Work of a render of ``width`` x ``height`` pixels [megapixels, at least `MIN_WORK`]."""
    return max(width * height / 1e6, MIN_WORK)


@dataclass(frozen=True)
class StageReport:
    """What a stage replica measured, sent back with its answer.

    Attributes
    ----------
    stage : str
        ``fetch``, ``compose`` or ``encode``.
    replica : str
        The replica's id (the ingress counts a stage's live replicas from these).
    service_s_per_work : float
        The replica's busy time per megapixel completed [s/Mpx] (EWMA); 0 before any.
    latency_s_per_work : float
        One request's time in the stage per megapixel [s/Mpx] (EWMA); 0 before any.
    queue_wait_s : float
        How long this request waited between the previous stage's end and this one's start [s].
    seconds : float
        This request's time in the stage [s].
    """

    stage: str
    replica: str
    service_s_per_work: float
    latency_s_per_work: float
    queue_wait_s: float = 0.0
    seconds: float = 0.0


class ServiceClock:
    """A stage replica's measured service time (thread-safe: sync stages run in Serve's threads).

    Parameters
    ----------
    stage, replica : str
        Names for the reports.
    alpha : float
        EWMA weight of a new sample.
    """

    def __init__(self, stage: str, replica: str, alpha: float = 0.1):
        self.stage, self.replica, self.alpha = stage, replica, alpha
        self.ongoing = 0
        self._mark: float | None = None  # start of the current busy stretch, or the last completion in it
        self._gap = 0.0  # EWMA of busy seconds between completions
        self._work = 0.0  # EWMA of work per completion [Mpx]
        self._latency = 0.0  # EWMA of one request's seconds per Mpx
        self._samples = 0
        self._lock = threading.Lock()

    def begin(self, now: float | None = None) -> float:
        """A request starts; returns its start time (``time.monotonic``) for `end`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.ongoing == 0:
                self._mark = now
            self.ongoing += 1
        return now

    def end(self, started: float, work: float, now: float | None = None) -> float:
        """A request started at ``started`` with ``work`` megapixels ends; returns its seconds."""
        now = time.monotonic() if now is None else now
        work = max(work, MIN_WORK)
        seconds = now - started
        with self._lock:
            gap = now - (self._mark if self._mark is not None else started)
            self.ongoing = max(self.ongoing - 1, 0)
            self._mark = now if self.ongoing else None
            a = self.alpha if self._samples else 1.0
            self._gap += a * (gap - self._gap)
            self._work += a * (work - self._work)
            self._latency += a * (seconds / work - self._latency)
            self._samples += 1
        return seconds

    def abandon(self, now: float | None = None) -> None:
        """A request that `begin` counted ended without completing (it failed): no sample."""
        with self._lock:
            self.ongoing = max(self.ongoing - 1, 0)
            if not self.ongoing:
                self._mark = None

    @property
    def service_s_per_work(self) -> float:
        """Busy seconds per megapixel completed (0 before any completion)."""
        return self._gap / self._work if self._work > 0 else 0.0

    @property
    def latency_s_per_work(self) -> float:
        """One request's seconds in the stage per megapixel (0 before any)."""
        return self._latency

    def needed_s(self, work: float) -> float:
        """The time this stage is expected to take for ``work`` megapixels [s] (0 before any)."""
        return self._latency * max(work, MIN_WORK)

    def report(self, queue_wait_s: float = 0.0, seconds: float = 0.0) -> StageReport:
        return StageReport(
            self.stage, self.replica, self.service_s_per_work, self.latency_s_per_work, queue_wait_s, seconds
        )


@dataclass(frozen=True)
class Decision:
    """An admission decision and the estimate behind it.

    Attributes
    ----------
    admit : bool
    estimate_s : float
        Estimated time to finish the request if admitted now [s] (0 when nothing is measured yet).
    remaining_s : float
        Time before the request's deadline [s].
    retry_after_s : int
        When refused: whole seconds until the work ahead has drained enough.
    ahead_work : float
        Work admitted and not finished at this ingress [Mpx].
    bottleneck : str
        The stage with the lowest throughput ("" before any measurement).
    """

    admit: bool
    estimate_s: float
    remaining_s: float
    retry_after_s: int = 0
    ahead_work: float = 0.0
    bottleneck: str = ""
    raw_estimate_s: float = 0.0  # before the correction: what `done` compares the actual time with

    def as_dict(self) -> dict[str, object]:
        return {
            "estimate_s": round(self.estimate_s, 4),
            "remaining_s": round(self.remaining_s, 4),
            "retry_after_s": self.retry_after_s,
            "ahead_mpx": round(self.ahead_work, 4),
            "bottleneck": self.bottleneck,
        }


@dataclass
class _Stage:
    replicas: dict[str, tuple[float, float]] = field(default_factory=dict)  # replica -> (s/Mpx, seen at)
    latency: float = 0.0  # s/Mpx, the latest report's


class AdmissionControl:
    """The ingress's estimator (one per ingress replica; not thread-safe: call from its event loop).

    Parameters
    ----------
    stages : tuple[str, ...]
        The stages a render crosses.
    margin_s : float
        Time kept free before the deadline for the answer's way back [s].
    replica_ttl_s : float
        A replica not heard from for this long no longer counts [s].
    alpha : float
        EWMA weight of a new correction sample.
    """

    def __init__(
        self,
        stages: tuple[str, ...] = ("fetch", "compose", "encode"),
        margin_s: float = 0.1,
        replica_ttl_s: float = 30.0,
        alpha: float = 0.2,
    ):
        self.stages = {name: _Stage() for name in stages}
        self.margin_s, self.replica_ttl_s, self.alpha = margin_s, replica_ttl_s, alpha
        self.ahead_work = 0.0
        self.in_flight = 0
        self.correction = 1.0  # EWMA of actual / estimated finish times

    # -- measurements ----------------------------------------------------------------------

    def observe(self, reports: list[StageReport], now: float | None = None) -> None:
        """Take the stages' reports from a finished request."""
        now = time.monotonic() if now is None else now
        for r in reports:
            stage = self.stages.get(r.stage)
            if stage is None:
                continue
            if r.service_s_per_work > 0:
                stage.replicas[r.replica] = (r.service_s_per_work, now)
            if r.latency_s_per_work > 0:
                stage.latency = r.latency_s_per_work

    def _throughput(self, now: float) -> tuple[float, str]:
        """The bottleneck stage's throughput [Mpx/s] and its name; (inf, "") before measurements."""
        best, name = math.inf, ""
        for stage_name, stage in self.stages.items():
            live = [s for s, seen in stage.replicas.values() if now - seen <= self.replica_ttl_s and s > 0]
            if not live:
                continue
            rate = sum(1.0 / s for s in live)
            if rate < best:
                best, name = rate, stage_name
        return best, name

    def estimate(self, work: float, now: float | None = None) -> tuple[float, str]:
        """Estimated seconds to finish ``work`` megapixels admitted now (uncorrected), and the bottleneck."""
        now = time.monotonic() if now is None else now
        rate, bottleneck = self._throughput(now)
        if not bottleneck:
            return 0.0, ""
        crossing = sum(stage.latency for stage in self.stages.values()) * max(work, 0.0)
        return self.ahead_work / rate + crossing, bottleneck

    # -- decisions -------------------------------------------------------------------------

    def decide(self, work: float, remaining_s: float, now: float | None = None) -> Decision:
        """Admit (and count) ``work`` megapixels with ``remaining_s`` before their deadline, or refuse."""
        raw, bottleneck = self.estimate(work, now)
        estimate = self.correction * raw
        ahead = self.ahead_work
        if remaining_s <= 0:
            return Decision(False, estimate, remaining_s, 1, ahead, bottleneck, raw)
        # With nothing in flight the request is admitted whatever the (possibly stale) estimate
        # says: the stages still drop it if they cannot finish it, and it refreshes the measures.
        if estimate + self.margin_s > remaining_s and self.in_flight > 0:
            # The work ahead must drain by (estimate - remaining) before a newcomer fits.
            retry = max(1, math.ceil(estimate + self.margin_s - remaining_s))
            return Decision(False, estimate, remaining_s, retry, ahead, bottleneck, raw)
        self.ahead_work += work
        self.in_flight += 1
        return Decision(True, estimate, remaining_s, 0, ahead, bottleneck, raw)

    def done(self, work: float, decision: Decision, actual_s: float | None = None) -> None:
        """An admitted request has left (answered, failed or dropped).

        ``actual_s``, the request's time from admission to its answer, corrects later
        estimates when the request completed normally.
        """
        self.ahead_work = max(self.ahead_work - work, 0.0)
        self.in_flight = max(self.in_flight - 1, 0)
        if actual_s is not None and decision.raw_estimate_s > 0.05:
            ratio = min(max(actual_s / decision.raw_estimate_s, 0.5), 4.0)
            self.correction += self.alpha * (ratio - self.correction)
