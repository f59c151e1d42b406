"""Load shedding where the stages and the ingress meet Serve: guards, the admission gate, metrics, logs.

* `StageGuard` (one per stage replica) records how long a request waited for the stage, drops it
  when its deadline has passed or the stage's measured time no longer fits before it (`Shed`),
  and measures the stage's service time (`ServiceClock`) for the report sent back.
* `AdmissionGate` (one per ingress replica) fixes each request's deadline, admits or refuses it
  from the estimate (`AdmissionControl`), takes the stages' reports back, and turns a `Shed`
  into the metrics and the log line that say why.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .admission import AdmissionControl, Decision, ServiceClock, StageReport, work_units
from .config import OverloadConfig
from .deadline import Budget, Deadline, Shed, deadline_from_headers
from .telemetry import observe_estimate, observe_late_answer, observe_queue_wait, observe_shed

__all__ = [
    "AdmissionGate",
    "Admitted",
    "ArrivalHold",
    "StageGuard",
    "StageRun",
    "shed_from_backpressure",
    "yield_cpu",
]

log = logging.getLogger("ray.serve")
shed_log = logging.getLogger("ray.serve.skyrender.shed")


def _replica_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return f"pid{os.getpid()}"


@dataclass
class StageRun:
    """One request's pass through a stage; ``report`` is set when it completes."""

    started: float
    queue_wait_s: float
    report: StageReport | None = None


class StageGuard:
    """A stage replica's deadline check and service clock.

    Parameters
    ----------
    stage : str
        ``fetch``, ``compose`` or ``encode``.
    check_need : bool
        Also drop a request when the stage's measured time for it no longer fits before its
        deadline (else only when the deadline has passed).
    """

    def __init__(self, stage: str, check_need: bool = True):
        self.stage, self.check_need = stage, check_need
        self.clock = ServiceClock(stage, _replica_name())

    def enter(self, budget: Budget | None, ready_at: float | None = None) -> StageRun:
        """Start a request, or raise `Shed` when it can no longer finish in time.

        Parameters
        ----------
        budget : Budget or None
            The request's deadline and size (None: calls without one, e.g. health checks).
        ready_at : float, optional
            When the previous stage finished (Unix time) [s]; default: when the ingress sent it.
        """
        if budget is None:
            return StageRun(self.clock.begin(), 0.0)
        waited = time.time() - (ready_at if ready_at is not None else budget.sent_at)
        observe_queue_wait(self.stage, waited)
        # An idle replica computes whatever its estimate says: the estimate may be stale (a cold
        # start, a starved machine), and computing is what refreshes it. Busy, it trusts it.
        trust = self.check_need and self.clock.ongoing > 0
        budget.deadline.check(self.stage, self.clock.needed_s(budget.work) if trust else 0.0)
        return StageRun(self.clock.begin(), waited)

    def leave(self, run: StageRun, budget: Budget | None) -> StageReport:
        """The request completed: measure it and make its report."""
        seconds = self.clock.end(run.started, budget.work if budget is not None else 0.0)
        run.report = self.clock.report(run.queue_wait_s, seconds)
        return run.report

    def abandon(self) -> None:
        """The request failed inside the stage: count it out without a sample."""
        self.clock.abandon()


def yield_cpu(niceness: int) -> None:
    """Run this process's threads at ``niceness`` (if higher than now): bulk compute yields the cores.

    On a node whose cores are saturated, the ingress and Serve's proxy must still get the CPU
    for a few milliseconds to refuse a request or answer a health probe; the compose and encode
    stages give way to them. Raising one's own niceness needs no privilege. Threads started
    later (render pools) inherit it from the thread that starts them.
    """
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError:  # the thread ended meanwhile, or no /proc: nothing to do
            pass


def shed_from_backpressure(exc: BaseException, estimate_s: float, remaining_s: float) -> Shed | None:
    """A Serve queue-limit refusal (``BackPressureError``) as a `Shed`, else None."""
    from ray.serve.exceptions import BackPressureError

    if not isinstance(exc, BackPressureError):
        return None
    return Shed("queue", "queue_full", math.ceil(max(estimate_s, 1.0)), estimate_s, remaining_s)


@dataclass
class ArrivalHold:
    """The place counted for a request let in on arrival until its route admits it
    (`AdmissionGate.refuse_on_arrival`, `AdmissionGate.release`)."""

    work: float  # [Mpx]
    estimate_s: float = 0.0  # the typical render's estimate on arrival [s]
    held_at: float = field(default_factory=time.monotonic)
    released: bool = False


@dataclass
class Admitted:
    """A render the gate let in: hand ``budget`` to the stages, then call `AdmissionGate.finish`."""

    request_id: str
    decision: Decision
    budget: Budget
    admitted_at: float = field(default_factory=time.monotonic)
    done: bool = False


class AdmissionGate:
    """The ingress's side: deadlines, admission, and the accounting of what was shed.

    Parameters
    ----------
    config : OverloadConfig
    """

    def __init__(self, config: OverloadConfig):
        self.config = config
        self.control = AdmissionControl(margin_s=config.margin_s, headroom=config.headroom)

    def deadline(
        self, headers: Mapping[str, str], arrived_at: float | None = None, default_s: float | None = None
    ) -> Deadline:
        """The request's deadline (`InvalidDeadline` for an unreadable header: a 400).

        ``arrived_at``: when the request arrived (Unix time) [s], default now; ``default_s``: the
        deadline when the caller gives none [s], default ``deadline_s``.
        """
        default = self.config.deadline_s if default_s is None else default_s
        return deadline_from_headers(headers, default, self.config.max_deadline_s, arrived_at)

    def admit(
        self,
        request_id: str,
        deadline: Deadline,
        width: int,
        height: int,
        waited_s: float | None = None,
        hold: ArrivalHold | None = None,
        turn_taken: bool = False,
    ) -> Admitted:
        """Admit a render of ``width`` x ``height`` pixels, or raise `Shed` (stage ``ingress``).

        ``waited_s``: how long the request took from its arrival to here [s] (refusals on
        arrival count on it). ``hold``: its place held since arrival, released here (the
        decision counts its own work instead). ``turn_taken``: the request let in on arrival
        has waited there for its turn among the renders in progress (`deployments.turns`):
        what was ahead of it has gone, and those counted now came after it, so it is
        admitted as decided on arrival (unless its deadline has passed; the stages still
        drop what they cannot finish in time).
        """
        if hold is not None:
            self.release(hold)
        if waited_s is not None:
            self.control.observe_route_delay(waited_s)
        work = work_units(width, height)
        remaining = deadline.remaining()
        if turn_taken and hold is not None and remaining > 0:
            decision = self.control.admit_held(work, hold.estimate_s, remaining)
            return Admitted(request_id, decision, Budget(deadline, work, time.time()), hold.held_at)
        decision = self.control.decide(work, remaining)
        if decision.estimate_s > 0:
            observe_estimate(decision.estimate_s)
        if not decision.admit and (self.config.admission or remaining <= 0):
            if remaining <= 0:
                shed = Shed("ingress", "deadline_passed", 1, decision.estimate_s, remaining)
            else:
                retry = decision.retry_after_s
                shed = Shed("ingress", "would_miss_deadline", retry, decision.estimate_s, remaining)
            shed.decision = decision  # type: ignore[attr-defined]  # for the log line
            raise shed
        if not decision.admit:  # admission off: count it in anyway, the stages still drop late work
            decision = self.control.decide(work, math.inf)
        return Admitted(request_id, decision, Budget(deadline, work, time.time()))

    def refuse_on_arrival(self, deadline: Deadline) -> Shed | ArrivalHold | None:
        """A `Shed` (stage ``arrival``) when a render of the typical size would be refused now;
        else the `ArrivalHold` counting its place until its route decides (None before any
        admission, or with admission off). Release the hold with `release` if the request ends
        before its route's admission.

        Decided from the headers alone, before the body is read and parsed: under overload the
        refusals are most requests, and each must cost the ingress next to nothing.
        """
        if not self.config.admission and deadline.remaining() > 0:
            return None
        decision = self.control.refuse_typical(deadline.remaining())
        if decision is None:
            typical = self.control.typical_work
            if typical is None or not self.config.admission:
                return None
            estimate, _ = self.control.estimate(typical)
            self.control.hold(typical)
            return ArrivalHold(typical, estimate + self.control.route_delay_s)
        reason = "deadline_passed" if decision.remaining_s <= 0 else "would_miss_deadline"
        shed = Shed("arrival", reason, decision.retry_after_s, decision.estimate_s, decision.remaining_s)
        shed.decision = decision  # type: ignore[attr-defined]  # for the log line
        return shed

    def release(self, hold: ArrivalHold) -> None:
        """Free a place held on arrival (again: nothing)."""
        if not hold.released:
            hold.released = True
            self.control.unhold(hold.work)

    def finish(
        self,
        admitted: Admitted,
        reports: list[StageReport] | None = None,
        completed: bool = False,
        overran: bool = False,
    ) -> None:
        """The render has left: free its place; learn from its reports; count it if completed.

        ``overran``: it was given up on, or dropped by a stage, because its deadline came first.
        A completed or overrun render calibrates the estimate that admitted it.
        """
        if admitted.done:
            return
        admitted.done = True
        if reports:
            self.control.observe(reports)
        if completed or overran:
            self.control.calibrate(admitted.decision.estimate_s, time.monotonic() - admitted.admitted_at)
        self.control.done(admitted.budget.work, completed)
        if completed and admitted.budget.deadline.expired():
            observe_late_answer()

    def record_shed(self, request_id: str, endpoint: str, shed: Shed, deadline: Deadline | None) -> dict:
        """Count a dropped request and write its one log line; returns the fields for the response."""
        observe_shed(endpoint, shed.stage, shed.reason)
        record = {"request_id": request_id, "endpoint": endpoint, **shed.as_dict()}
        decision = getattr(shed, "decision", None)
        if isinstance(decision, Decision):
            record.update(
                in_flight=self.control.in_flight,
                ahead_mpx=round(decision.ahead_work, 4),
                basis=decision.basis,
                bias=round(self.control.bias, 3),
            )
        if deadline is not None:
            record.update(deadline_s=round(deadline.budget_s, 3), deadline_source=deadline.source)
        shed_log.warning(json.dumps({"event": "shed", **record}, separators=(",", ":")))
        return record
