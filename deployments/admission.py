"""Admission control: measure what each stage costs, estimate a newcomer's wait, admit or refuse.

Two halves, no Ray here:

* `ServiceClock`, in every stage replica: the replica's service time per unit of work while it
  is busy (busy time between completions, divided by the work completed: with four renders
  sharing the cores this is a quarter of one render's wall time), and one request's time in
  the stage. Each answer carries a `StageReport`.
* `AdmissionControl`, in the ingress: the work already admitted divided by the throughput is
  the time a newcomer would take. The throughput is the ingress's measured completion rate
  while it is busy, else the last rate it measured with a queue (the service's capacity), else,
  before any, the stages' model from their reports. A request whose estimated finish is after
  its deadline is refused at once, with a ``Retry-After`` saying when a place is likely free.

Work is counted in megapixels of output (compose and encode cost grows with the pixels), with a
floor so that tiny renders still count for their fixed costs.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["AdmissionControl", "Decision", "ServiceClock", "StageReport", "size_class", "work_units"]

#: Work of the smallest request [megapixels]: below this a render's fixed costs dominate.
MIN_WORK = 0.05
#: Estimates shorter than this [s] are not used to calibrate (they measure no queue).
_CALIBRATE_MIN_S = 0.25
#: Bounds of the calibration factor of the estimates.
_BIAS_RANGE = (0.7, 3.0)


def size_class(work: float) -> int:
    """Requests within a factor of two of each other in work share a class (for measured times)."""
    return int(math.floor(math.log2(max(work, MIN_WORK) / MIN_WORK)))


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
        self._by_size: dict[int, float] = {}  # size class -> EWMA of one request's seconds
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
            size = size_class(work)
            known = self._by_size.get(size)
            self._by_size[size] = seconds if known is None else known + self.alpha * (seconds - known)
            self._samples += 1
        return seconds

    def abandon(self, now: float | None = None) -> None:
        """A request that `begin` counted ended without completing (it failed): no sample."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.ongoing = max(self.ongoing - 1, 0)
            # The time it held is not service: the next completion's gap starts now.
            self._mark = now if self.ongoing else None

    @property
    def service_s_per_work(self) -> float:
        """Busy seconds per megapixel completed (0 before any completion)."""
        return self._gap / self._work if self._work > 0 else 0.0

    @property
    def latency_s_per_work(self) -> float:
        """One request's seconds in the stage per megapixel (0 before any)."""
        return self._latency

    def needed_s(self, work: float) -> float:
        """The time this stage took for requests of this size lately [s] (0 before any of that size).

        Measured per size class rather than extrapolated: small renders' fixed costs would
        make a big one look impossible, and a request never measured is never dropped for it.
        """
        return self._by_size.get(size_class(work), 0.0)

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
        Work admitted and not finished at this ingress, with the work held for requests let
        in on arrival and not yet at their routes [Mpx].
    basis : str
        What the estimate rests on: ``measured`` (the completion rate), the bottleneck stage
        (the stages' model), or "" (nothing measured yet).
    """

    admit: bool
    estimate_s: float
    remaining_s: float
    retry_after_s: int = 0
    ahead_work: float = 0.0
    basis: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "estimate_s": round(self.estimate_s, 4),
            "remaining_s": round(self.remaining_s, 4),
            "retry_after_s": self.retry_after_s,
            "ahead_mpx": round(self.ahead_work, 4),
            "basis": self.basis,
        }


@dataclass
class _Stage:
    replicas: dict[str, tuple[float, float]] = field(default_factory=dict)  # replica -> (s/Mpx, seen at)
    latency: float = 0.0  # s/Mpx, the latest report's


class AdmissionControl:
    """The ingress's estimator (one per ingress replica; not thread-safe: call from its event loop).

    The time a newcomer would take is the work ahead of it divided by the throughput, or the
    time to cross the stages when nothing is ahead. The throughput is the ingress's own
    completion rate over the last ``window_s`` while it has been busy all along (Little's law:
    the work in flight over the rate at which it leaves is the time spent inside, whether
    below or above capacity, and it covers what one replica cannot see: other ingress
    replicas sharing the stages, replicas sharing cores). Before such a window exists (the
    first second of a burst after a quiet spell) it is the last rate measured with a queue
    (``saturated_in_flight`` or more renders in flight: the service's capacity, not the
    callers' pace); before any, the stages' model: the bottleneck stage's fastest replica
    (replicas measured one render at a time may share the same cores, so their rates are
    not added up).

    A refused request's ``Retry-After`` is when a place is likely free for it: the time the
    work ahead needs to drain below its deadline, or, when more are being refused per second
    than renders complete, long enough to spread the retries over the completions (rounded
    up or down at random, so that refused callers do not come back in one wave).

    Parameters
    ----------
    stages : tuple[str, ...]
        The stages a render crosses (their times add up to the crossing time).
    capacity_stages : tuple[str, ...]
        The stages whose service time limits the throughput (CPU- or GPU-bound). The fetch
        stage is not one: it waits on upstreams concurrently, and its time says how slow an
        upstream is, not how many renders per second the service can make.
    margin_s : float
        Time kept free before the deadline for the answer's way back [s].
    replica_ttl_s : float
        A replica not heard from for this long no longer counts [s].
    window_s : float
        How far back the completion rate is measured [s].
    min_completions : int
        Completions the window needs before its rate is trusted.
    model_min_in_flight : int
        The model refuses nothing while fewer renders are in flight: a replica's service time
        measured with one render at a time is its latency, not its capacity (it may run several
        at once), and trusting it at low load would keep the load low for good.
    headroom : float
        Fraction of a request's time before its deadline kept free at admission for errors of
        the estimate (a burst's own connections slow the service a little): the stages drop
        what is late, which wastes the work done for it.
    arrival_slack : float
        Fraction of a request's time before its deadline kept free on arrival beyond
        ``headroom`` (see `refuse_typical`).
    saturated_in_flight : int
        A measured rate is remembered as the capacity only with this many renders in flight.
    max_retry_after_s : float
        Longest ``Retry-After`` advised [s].
    returns_per_slot : int
        Refused requests told to come back within the same ``return_slot_s`` at most, while
        a later whole second within ``max_retry_after_s`` has room (see `_retry_after`).
    return_slot_s : float
        Width of a return slot [s].
    seed : int or None
        Seed of the random rounding of ``Retry-After`` (tests).
    """

    def __init__(
        self,
        stages: tuple[str, ...] = ("fetch", "compose", "encode"),
        capacity_stages: tuple[str, ...] = ("compose", "encode"),
        margin_s: float = 0.1,
        replica_ttl_s: float = 30.0,
        window_s: float = 2.0,
        min_completions: int = 4,
        model_min_in_flight: int = 8,
        headroom: float = 0.0,
        arrival_slack: float = 0.05,
        saturated_in_flight: int = 4,
        max_retry_after_s: float = 10.0,
        returns_per_slot: int = 2,
        return_slot_s: float = 0.25,
        seed: int | None = None,
    ):
        self.stages = {name: _Stage() for name in stages}
        self.capacity_stages = capacity_stages
        self.margin_s, self.replica_ttl_s = margin_s, replica_ttl_s
        self.window_s, self.min_completions = window_s, min_completions
        self.model_min_in_flight = model_min_in_flight
        self.ahead_work = 0.0
        self.in_flight = 0
        self.held_work = 0.0  # work of requests let in on arrival, not yet at their route [Mpx]
        self.held = 0  # how many such requests
        self._busy_since: float | None = None  # when in_flight last went from 0 to 1
        self._completions: deque[tuple[float, float]] = deque()  # (time, work) of completed renders
        self.headroom, self.saturated_in_flight = headroom, saturated_in_flight
        self.arrival_slack = arrival_slack
        self.max_retry_after_s = max_retry_after_s
        self._capacity: float | None = None  # the last rate measured with a queue [Mpx/s]
        self._next_place = 0.0  # when the next refused request is told to come back (monotonic) [s]
        self.returns_per_slot, self.return_slot_s = returns_per_slot, return_slot_s
        # return slot (monotonic time // return_slot_s) -> refused requests told to come back in it
        self._returns: dict[int, int] = {}
        self._random = random.Random(seed)
        self.typical_work: float | None = None  # EWMA of admitted renders' work [Mpx]
        self.bias = 1.0  # EWMA of (actual time / estimate) of admitted renders: the estimate's calibration
        self.route_delay_s = 0.0  # EWMA of the time from a request's arrival to its route's admission [s]

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

    def _model_rate(self, now: float) -> tuple[float, str]:
        """The bottleneck stage's modelled throughput [Mpx/s] and its name; (inf, "") before measurements.

        A stage's throughput is its fastest live replica's: replicas may share cores, so
        their rates measured apart do not add up (the measured rate takes over within a window).
        """
        best, name = math.inf, ""
        for stage_name in self.capacity_stages:
            stage = self.stages[stage_name]
            live = [s for s, seen in stage.replicas.values() if now - seen <= self.replica_ttl_s and s > 0]
            if not live:
                continue
            rate = 1.0 / min(live)
            if rate < best:
                best, name = rate, stage_name
        return best, name

    def measured_rate(self, now: float | None = None) -> float | None:
        """Work completed per second over the last window while busy all along [Mpx/s], or None."""
        now = time.monotonic() if now is None else now
        while self._completions and self._completions[0][0] < now - self.window_s:
            self._completions.popleft()
        if self._busy_since is None:
            return None
        start = max(now - self.window_s, self._busy_since)
        done = [w for t, w in self._completions if t >= start]
        if now - start < 0.5 * self.window_s or len(done) < self.min_completions:
            return None
        return sum(done) / (now - start)

    def throughput(self, now: float | None = None) -> tuple[float, str]:
        """The throughput to plan with [Mpx/s] and its basis (``measured``, ``capacity``), or (0, "")."""
        now = time.monotonic() if now is None else now
        rate = self.measured_rate(now)
        if rate is not None and rate > 0:
            if self.in_flight >= self.saturated_in_flight:
                self._capacity = rate
            return rate, "measured"
        if self._capacity is not None:
            return self._capacity, "capacity"
        return 0.0, ""

    def estimate(self, work: float, now: float | None = None) -> tuple[float, str]:
        """Estimated seconds to finish ``work`` megapixels admitted now, and what the estimate rests on.

        The second item is ``measured`` (the completion rate), ``capacity`` (the last rate
        measured with a queue), the bottleneck stage's name (the model), or "" (nothing
        measured yet: 0 s). The work ahead includes the requests held on arrival (`hold`).
        """
        now = time.monotonic() if now is None else now
        crossing = sum(stage.latency for stage in self.stages.values()) * max(work, 0.0)
        ahead = self.work_ahead
        rate, basis = self.throughput(now)
        if rate > 0:
            return max(self.bias * (ahead + work) / rate, crossing), basis
        model, bottleneck = self._model_rate(now)
        if not bottleneck:
            return 0.0, ""
        # Half the modelled rate: it was measured under other loads (a burst of connections costs
        # the cores too), and over-admitting a burst costs more than refusing a little early.
        return ahead / (0.5 * model) + crossing, bottleneck

    # -- decisions -------------------------------------------------------------------------

    def decide(self, work: float, remaining_s: float, now: float | None = None) -> Decision:
        """Admit (and count) ``work`` megapixels with ``remaining_s`` before their deadline, or refuse."""
        now = time.monotonic() if now is None else now
        estimate, basis = self.estimate(work, now)
        ahead = self.work_ahead
        if remaining_s <= 0:
            return Decision(False, estimate, remaining_s, 1, ahead, basis)
        # With nothing in flight the request is admitted whatever the (possibly stale) estimate
        # says: the stages still drop it if they cannot finish it, and it refreshes the measures.
        floor = 1 if basis in ("measured", "capacity") else self.model_min_in_flight
        usable_s = (1.0 - self.headroom) * remaining_s - self.margin_s
        if estimate > usable_s and self.in_flight >= floor:
            # The work ahead must drain by (estimate - usable) before a newcomer fits.
            retry = self._retry_after(estimate - usable_s, work, now)
            return Decision(False, estimate, remaining_s, retry, ahead, basis)
        self._count_in(work, now)
        return Decision(True, estimate, remaining_s, 0, ahead, basis)

    def admit_held(self, work: float, estimate_s: float, remaining_s: float) -> Decision:
        """Admit (and count) ``work`` megapixels let in on arrival with ``estimate_s`` [s], without a
        new estimate: the request waited for its turn since, and the work counted now is behind it."""
        ahead = self.work_ahead
        self._count_in(work, time.monotonic())
        return Decision(True, estimate_s, remaining_s, 0, ahead, "arrival")

    def _count_in(self, work: float, now: float) -> None:
        self.ahead_work += work
        self.in_flight += 1
        if self.in_flight == 1:
            self._busy_since = now
        typical = self.typical_work
        self.typical_work = work if typical is None else typical + 0.1 * (work - typical)

    @property
    def work_ahead(self) -> float:
        """The work a newcomer waits for: admitted and not finished, and held on arrival [Mpx]."""
        return self.ahead_work + self.held_work

    def hold(self, work: float) -> None:
        """Count ``work`` Mpx ahead for a request let in on arrival, until it reaches its route.

        Requests arriving together in a burst are all checked on arrival before any of them
        is admitted at its route: without the hold each would see the same queue, all would
        pass, and most would then be refused at their routes, after their bodies were read
        (tens of milliseconds more per refusal under load). Undo with `unhold`.
        """
        self.held_work += work
        self.held += 1

    def unhold(self, work: float) -> None:
        """The held request reached its route's admission, or ended before it."""
        self.held = max(self.held - 1, 0)
        self.held_work = max(self.held_work - work, 0.0) if self.held else 0.0  # no drift from float sums

    def observe_route_delay(self, seconds: float) -> None:
        """A request reached its route's admission ``seconds`` after it arrived (reading and parsing
        its body, waiting for the event loop: under overload, a good part of its time)."""
        self.route_delay_s += 0.2 * (max(seconds, 0.0) - self.route_delay_s)

    def refuse_typical(self, remaining_s: float, now: float | None = None) -> Decision | None:
        """The refusal a render of the typical admitted size would get now, or None (nothing counted).

        For refusing on arrival, before a request's size is read: a render the size of
        those admitted lately that would be refused, once it has also waited the usual time
        to reach its route. None before any admission.

        Stricter than `decide` by ``arrival_slack``: under overload the work in flight stays at
        the admission threshold, so every arrival is borderline; with the same threshold at
        both checks, the moments lost reaching the route would refuse there many requests let
        in here, each after its body was read (the slow kind of refusal). The requests held
        (`hold`) count as in flight: a burst's first arrivals do not all pass as into an idle
        service.
        """
        if self.typical_work is None:
            return None
        now = time.monotonic() if now is None else now
        estimate, basis = self.estimate(self.typical_work, now)
        estimate += self.route_delay_s
        floor = 1 if basis in ("measured", "capacity") else self.model_min_in_flight
        usable_s = (1.0 - self.headroom - self.arrival_slack) * remaining_s - self.margin_s
        if remaining_s > 0 and (estimate <= usable_s or self.in_flight + self.held < floor):
            return None
        retry = 1 if remaining_s <= 0 else self._retry_after(estimate - usable_s, self.typical_work, now)
        return Decision(False, estimate, remaining_s, retry, self.work_ahead, basis)

    def _retry_after(self, excess_s: float, work: float, now: float) -> int:
        """Whole seconds until a refused request of ``work`` Mpx likely finds a place.

        At least ``excess_s`` (the work ahead must drain that much) and a second. The refused
        are given places one completion apart, in the order refused: they come back at the rate
        renders of this size complete instead of all at once (a wave that would be refused
        again, and would hold the ingress and Serve's proxy while health probes wait). Rounded
        at random between the neighbouring whole seconds; at most ``max_retry_after_s``.

        ``Retry-After`` counts whole seconds, so the requests refused within the same moment
        (a wave of returns, refused together) would come back together again at each whole
        second, however their places are spread. Each return slot (``return_slot_s``) takes
        at most ``returns_per_slot`` of them: the wave is spread over the following seconds.
        """
        rate, _ = self.throughput(now)
        if rate <= 0:
            rate, _ = self._model_rate(now)
        completions_per_s = rate / max(work, MIN_WORK) if math.isfinite(rate) and rate > 0 else 0.0
        # The first place no later than half the cap: at a burst's start the measured rate lags
        # and the excess can exceed the cap, which gave every refusal the cap (one wave).
        place = max(now + min(max(excess_s, 1.0), self.max_retry_after_s / 2), self._next_place)
        if completions_per_s > 0:
            self._next_place = place + 1.0 / completions_per_s
        wait_s = min(place - now, self.max_retry_after_s)
        whole = math.floor(wait_s)
        return self._free_return(max(1, whole + (1 if self._random.random() < wait_s - whole else 0)), now)

    def _free_return(self, retry_s: int, now: float) -> int:
        """``retry_s``, or the nearest later whole second (else earlier) whose return slot has room."""
        cap = max(int(self.max_retry_after_s), 1)
        retry_s = min(retry_s, cap)
        oldest = int(now / self.return_slot_s)
        if len(self._returns) > 4 * cap / self.return_slot_s:
            self._returns = {k: v for k, v in self._returns.items() if k >= oldest}
        candidates = [*range(retry_s, cap + 1), *range(retry_s - 1, 0, -1)]
        slots = [int((now + c) / self.return_slot_s) for c in candidates]
        free = [i for i, slot in enumerate(slots) if self._returns.get(slot, 0) < self.returns_per_slot]
        # Every slot full (more refused than the slots hold): the least taken.
        chosen = free[0] if free else min(range(len(slots)), key=lambda i: self._returns.get(slots[i], 0))
        self._returns[slots[chosen]] = self._returns.get(slots[chosen], 0) + 1
        return candidates[chosen]

    def calibrate(self, estimate_s: float, actual_s: float) -> None:
        """Learn from an admitted render how far off its estimate was.

        ``actual_s`` is its time from admission to its answer [s] (for one given up at its
        deadline, that time: a lower bound). Under overload the service runs slower than the
        rate measured a moment before (the burst's own connections and refusals cost the
        cores) and pauses now and then; the estimates are scaled by the ratio learnt here.
        Estimates under `_CALIBRATE_MIN_S` (no queue) say nothing about queueing and are skipped.
        """
        if estimate_s < _CALIBRATE_MIN_S or actual_s <= 0:
            return
        ratio = min(max(actual_s / estimate_s, _BIAS_RANGE[0]), _BIAS_RANGE[1])
        self.bias += 0.1 * (ratio - self.bias)

    def done(self, work: float, completed: bool = False, now: float | None = None) -> None:
        """An admitted request has left: answered (``completed``), failed or dropped."""
        now = time.monotonic() if now is None else now
        self.ahead_work = max(self.ahead_work - work, 0.0)
        self.in_flight = max(self.in_flight - 1, 0)
        if completed:
            self._completions.append((now, work))
        if self.in_flight == 0:
            self._busy_since = None
            self.ahead_work = 0.0  # no drift from float sums
