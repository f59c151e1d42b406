"""Deadlines and the admission estimator, as plain objects (no Ray: the app tests are in test_overload)."""

from __future__ import annotations

import pickle
import time
from email.utils import formatdate

import pytest

from deployments.admission import MIN_WORK, AdmissionControl, ServiceClock, StageReport, work_units
from deployments.deadline import Deadline, InvalidDeadline, Shed, deadline_from_headers

NOW = 1_764_446_400.0


def test_default_deadline_from_the_config():
    d = deadline_from_headers({}, default_s=4.0, max_s=10.0, now=NOW)
    assert (d.start, d.expires, d.source) == (NOW, NOW + 4.0, "config")
    assert d.remaining(NOW + 1.5) == pytest.approx(2.5)
    assert not d.expired(NOW + 3.9) and d.expired(NOW + 4.0)


def test_relative_and_absolute_headers_bounded_by_the_config():
    d = deadline_from_headers({"request-timeout": "2.5"}, 4.0, 10.0, now=NOW)
    assert d.expires == NOW + 2.5 and d.source == "Request-Timeout"
    d = deadline_from_headers({"request-timeout": "60"}, 4.0, 10.0, now=NOW)
    assert d.expires == NOW + 10.0  # the caller may not hold us longer than the config allows
    d = deadline_from_headers({"x-request-deadline": str(NOW + 3)}, 4.0, 10.0, now=NOW)
    assert d.expires == NOW + 3 and d.source == "X-Request-Deadline"
    iso = "2025-11-29T20:00:01.5Z"
    d = deadline_from_headers({"x-request-deadline": iso}, 4.0, 10.0, now=1764446400.0)
    assert d.expires == pytest.approx(1764446401.5)
    d = deadline_from_headers({"x-request-deadline": formatdate(NOW + 2, usegmt=True)}, 4.0, 10.0, now=NOW)
    assert d.expires == NOW + 2
    both = {"x-request-deadline": str(NOW + 1), "request-timeout": "3"}
    assert deadline_from_headers(both, 4.0, 10.0, now=NOW).expires == NOW + 1  # the earlier wins


def test_a_past_deadline_is_kept_and_is_expired():
    d = deadline_from_headers({"x-request-deadline": str(NOW - 5)}, 4.0, 10.0, now=NOW)
    assert d.expired(NOW) and d.remaining(NOW) == -5
    assert deadline_from_headers({"request-timeout": "0"}, 4.0, 10.0, now=NOW).expired(NOW)


@pytest.mark.parametrize(
    "headers",
    [
        {"request-timeout": "soon"},
        {"request-timeout": "-1"},
        {"request-timeout": "nan"},
        {"request-timeout": "inf"},
        {"x-request-deadline": "tomorrow"},
        {"x-request-deadline": "2025-11-29T20:00:00"},  # no time zone: ambiguous
        {"x-request-deadline": "inf"},
    ],
)
def test_unreadable_headers_are_invalid(headers):
    with pytest.raises(InvalidDeadline):
        deadline_from_headers(headers, 4.0, 10.0, now=NOW)


def test_check_drops_what_cannot_finish():
    d = Deadline(NOW, NOW + 1.0)
    d.check("compose", 0.5, now=NOW + 0.2)
    with pytest.raises(Shed) as late:
        d.check("compose", 2.5, now=NOW + 0.2)
    assert late.value.reason == "would_miss_deadline" and late.value.retry_after_s == 2
    with pytest.raises(Shed) as gone:
        d.check("encode", now=NOW + 1.2)
    assert gone.value.reason == "deadline_passed" and gone.value.remaining_s == pytest.approx(-0.2)


def test_shed_and_deadline_cross_process_boundaries():
    shed = Shed("compose", "deadline_passed", 3, 1.25, -0.5)
    back = pickle.loads(pickle.dumps(shed))
    assert back.as_dict() == shed.as_dict() and str(back) == str(shed)
    d = Deadline(NOW, NOW + 4, "Request-Timeout")
    assert pickle.loads(pickle.dumps(d)) == d


def test_service_clock_measures_busy_time_per_work():
    clock = ServiceClock("compose", "r1", alpha=1.0)
    # One at a time: the service time is a request's duration.
    t = clock.begin(now=0.0)
    assert clock.end(t, 1.0, now=0.2) == pytest.approx(0.2)
    assert clock.service_s_per_work == pytest.approx(0.2)
    assert clock.latency_s_per_work == pytest.approx(0.2)
    # Four sharing the replica, each taking 0.8 s and finishing 0.2 s apart: 0.2 s per request.
    clock = ServiceClock("compose", "r1", alpha=0.5)
    starts = [clock.begin(now=0.0) for _ in range(4)]
    for i, s in enumerate(starts):
        clock.end(s, 1.0, now=0.8 + 0.2 * i)
    total_gap = 0.8 + 0.2 * 3
    assert clock.service_s_per_work == pytest.approx(total_gap / 4, rel=0.5)
    assert clock.latency_s_per_work > clock.service_s_per_work
    # What a request of that size took lately; a size never measured is not guessed at.
    assert 0.8 <= clock.needed_s(1.0) <= 1.4
    assert clock.needed_s(1.3) == clock.needed_s(1.0) and clock.needed_s(16.0) == 0.0
    assert clock.ongoing == 0
    assert work_units(10, 10) == MIN_WORK and work_units(1000, 1000) == 1.0


def _reports(compose_s=0.1, encode_s=0.01, fetch_s=0.005, replicas=("c1",)):
    out = [StageReport("fetch", "f1", fetch_s, fetch_s), StageReport("encode", "e1", encode_s, encode_s)]
    out += [StageReport("compose", r, compose_s, compose_s * 4) for r in replicas]
    return out


def test_admission_admits_until_the_deadline_then_refuses_with_retry_after():
    ac = AdmissionControl(margin_s=0.1, model_min_in_flight=1)
    # Nothing measured: admitted.
    first = ac.decide(1.0, 4.0, now=0.0)
    assert first.admit and first.estimate_s == 0.0
    ac.done(1.0, now=0.0)
    ac.observe(_reports(), now=0.0)
    admitted = []
    while True:
        d = ac.decide(1.0, 4.0, now=1.0)
        if not d.admit:
            break
        admitted.append(d)
    # The model: compose is the bottleneck at 10 Mpx/s, counted at half; crossing 0.415 s; 4 s deadline.
    assert d.basis == "compose"
    assert 16 <= len(admitted) <= 19
    assert d.estimate_s + 0.1 > 4.0 and d.retry_after_s >= 1
    # A second compose replica measured apart does not double the model (they may share the
    # cores); the measured completion rate says what they do together.
    ac.observe(_reports(replicas=("c1", "c2")), now=1.0)
    assert not ac.decide(1.0, 4.0, now=1.0).admit
    ac.observe(_reports(replicas=("c1", "c2"), compose_s=0.05), now=1.0)  # a faster replica
    assert ac.decide(1.0, 4.0, now=1.0).admit
    # The work ahead leaves (failed: not counted as throughput): admitted again.
    for _ in admitted:
        ac.done(1.0, now=1.0)
    assert ac.in_flight == 1 and ac.decide(1.0, 4.0, now=1.0).admit
    # A replica not heard from for a while stops counting.
    assert ac.estimate(1.0, now=100.0) == (0.0, "")


def test_an_expired_request_is_refused_even_when_idle():
    ac = AdmissionControl()
    d = ac.decide(1.0, -0.1)
    assert not d.admit and d.retry_after_s == 1 and ac.in_flight == 0


def test_while_busy_the_measured_completion_rate_decides():
    """The model says 10 Mpx/s, but only 2 Mpx/s complete (the cores are shared): the rate wins."""
    ac = AdmissionControl(window_s=2.0, min_completions=4)
    ac.observe(_reports(), now=0.0)
    for _ in range(10):
        assert ac.decide(1.0, 4.0, now=0.0).admit
    for i in range(4):  # 4 Mpx in 2 s
        ac.done(1.0, completed=True, now=0.5 * (i + 1))
    assert ac.measured_rate(now=2.0) == pytest.approx(2.0)
    estimate, basis = ac.estimate(1.0, now=2.0)
    assert basis == "measured" and estimate == pytest.approx((6 + 1) / 2.0)
    refused = ac.decide(1.0, 3.0, now=2.0)
    assert not refused.admit and refused.retry_after_s == 1  # 3.5 + 0.1 - 3.0 s over
    # Idle again: the window starts over; the rate measured with a queue answers meanwhile.
    for _ in range(6):
        ac.done(1.0, now=2.0)
    assert ac.in_flight == 0 and ac.measured_rate(now=2.0) is None
    assert ac.estimate(1.0, now=2.0) == (pytest.approx(0.5), "capacity")


def test_a_slow_upstream_is_not_a_capacity_limit():
    """Fetch waits on upstreams concurrently: its time is latency, not throughput."""
    ac = AdmissionControl(model_min_in_flight=1)
    ac.observe(_reports(fetch_s=60.0), now=0.0)  # a fetch stage that waited 3 s for 0.05 Mpx
    assert ac.decide(0.05, 4.0, now=0.0).admit
    d = ac.decide(0.05, 4.0, now=0.0)
    assert d.admit and d.basis == "compose"


def test_a_failed_request_does_not_count_as_service_time():
    clock = ServiceClock("fetch", "f1", alpha=1.0)
    slow = clock.begin(now=0.0)
    fast = clock.begin(now=0.0)
    clock.abandon(now=3.0)  # the slow one fails after 3 s
    del slow
    clock.end(fast, 1.0, now=3.1)
    assert clock.service_s_per_work == pytest.approx(0.1)


def test_the_model_does_not_refuse_at_low_load():
    """Service times measured one render at a time are latencies: a few in flight are always let in."""
    ac = AdmissionControl(model_min_in_flight=8)
    ac.observe(_reports(compose_s=30.0), now=0.0)  # 1.5 s per tiny render, as on a starved machine
    assert all(ac.decide(0.05, 4.0, now=0.0).admit for _ in range(8))
    refused = ac.decide(0.05, 4.0, now=0.0)
    assert not refused.admit and refused.basis == "compose"


def test_an_idle_stage_computes_whatever_its_stale_estimate_says():
    """A cold first render measured at 19 s must not lock that size out for good."""
    import time

    from deployments.deadline import Budget
    from deployments.shedding import StageGuard

    guard = StageGuard("compose")
    first = guard.enter(None)
    guard.clock.end(first.started, 0.26, now=first.started + 19.0)
    now = time.time()
    budget = Budget(Deadline(now, now + 10.0), 0.26, now)
    guard.enter(budget)  # idle: computed (and measured again)
    with pytest.raises(Shed) as shed:  # busy now: the 19 s estimate is trusted
        guard.enter(budget)
    assert shed.value.reason == "would_miss_deadline"


def test_after_a_quiet_spell_the_capacity_measured_with_a_queue_decides():
    """A burst after a pause is admitted by the last rate measured with a queue, not the model."""
    ac = AdmissionControl(window_s=2.0, min_completions=4, saturated_in_flight=4, seed=1)
    ac.observe(_reports(compose_s=0.01), now=0.0)  # the model would say 100 Mpx/s
    for _ in range(8):
        assert ac.decide(1.0, 4.0, now=0.0).admit
    for i in range(8):  # 8 Mpx in 2 s with a queue: 4 Mpx/s
        ac.done(1.0, completed=True, now=0.25 * (i + 1))
        if i == 3:
            assert ac.estimate(1.0, now=1.0)[1] == "measured"  # remembered: 4 in flight
    assert ac.in_flight == 0
    # Ten seconds later a burst: 4 Mpx/s x (4 s x (1 - headroom) - margin) fit, not 100 Mpx/s' worth.
    admitted = 0
    while ac.decide(1.0, 4.0, now=12.0).admit:
        admitted += 1
    assert admitted == 15  # (15 + 1) / 4 = 4 s > 3.9 s
    refused = ac.decide(1.0, 4.0, now=12.0)
    assert refused.basis == "capacity" and refused.retry_after_s >= 1


def test_retry_after_spreads_the_refused_over_the_completions():
    """Refused faster than renders complete: the advised wait grows so that retries meet places."""
    ac = AdmissionControl(window_s=2.0, min_completions=4, seed=2)
    ac.observe(_reports(), now=0.0)
    ac._capacity = 2.0  # 2 renders of 1 Mpx per second
    for _ in range(7):
        assert ac.decide(1.0, 4.0, now=0.0).admit  # 3.5 s of work ahead: full
    first = ac.decide(1.0, 4.0, now=0.0)
    assert not first.admit and first.retry_after_s == 1  # 0.1 s over: at least a second
    advised = [ac.decide(1.0, 4.0, now=0.0).retry_after_s for _ in range(40)]
    # Places one completion (0.5 s) apart: the 41st refusal's is 1 + 40 x 0.5 = 21 s away: the cap.
    assert advised[-1] == 10 and all(1 <= a <= 10 for a in advised)
    assert sorted(advised) == advised or len(set(advised)) > 2  # it grows with the refusals


def test_requests_refused_together_are_told_to_come_back_apart():
    """Retry-After counts whole seconds: a wave refused in one moment would come back in one
    moment again, whatever its places; each return slot takes two at most."""
    ac = AdmissionControl(window_s=2.0, min_completions=4, seed=3)
    ac.observe(_reports(), now=0.0)
    ac._capacity = 40.0  # renders complete 40 a second: the places are 25 ms apart
    while ac.decide(1.0, 4.0, now=0.0).admit:
        pass
    advised = [ac.decide(1.0, 4.0, now=0.01 * i).retry_after_s for i in range(12)]  # 12 in 0.12 s
    assert all(1 <= a <= 10 for a in advised)
    slots = [int((0.01 * i + a) / 0.25) for i, a in enumerate(advised)]  # when each comes back
    assert max(slots.count(slot) for slot in slots) <= 2
    assert len(set(advised)) >= 6
    # More refused than the slots up to the cap hold: the least taken, still within the cap.
    more = [ac.decide(1.0, 4.0, now=0.2).retry_after_s for _ in range(60)]
    assert all(1 <= a <= 10 for a in more)


def test_health_answers_do_not_wait_for_a_busy_stage():
    """The last answer is reported at once (refreshed in the background once a second old); only
    with no recent one is a busy stage given a short patience; ``live`` waits for the stage."""
    import asyncio

    from deployments import health

    async def scenario():
        answers = health._LastAnswers()
        asked = []

        async def quick():
            asked.append("quick")
            return {"renders": len(asked)}

        async def stuck():
            asked.append("stuck")
            await asyncio.sleep(30)

        def fallback(exc):
            return {"error": str(exc)}

        loop = asyncio.get_running_loop()
        first = await answers.get("compose", quick, 5.0, fallback)
        assert first == {"renders": 1} and asked == ["quick"]
        # Fresh: reported at once, with its age, and the stage is not asked again.
        again = await answers.get("compose", stuck, 5.0, fallback)
        assert again["renders"] == 1 and "age_s" in again and asked == ["quick"]
        # Two seconds old: still reported at once, while the stage is asked in the background.
        at, value = answers._last["compose"]
        answers._last["compose"] = (at - 2.0, value)
        t0 = loop.time()
        stale = await answers.get("compose", stuck, 5.0, fallback)
        assert stale["renders"] == 1 and stale["age_s"] >= 2.0 and loop.time() - t0 < 0.01
        await asyncio.sleep(0.01)
        assert asked == ["quick", "stuck"]
        # A minute old (the stage busy all along): the last one after the short patience.
        answers._last["compose"] = (at - 60.0, value)
        t0 = loop.time()
        old = await answers.get("compose", stuck, 5.0, fallback)
        assert old["age_s"] >= 60.0 and 0.04 <= loop.time() - t0 < 1.0
        # Live: asked now, and waited for.
        assert await answers.get("compose", quick, 5.0, fallback, live=True) == {"renders": 3}
        for task in answers._pending.values():
            task.cancel()

    asyncio.run(scenario())


def test_readiness_reports_the_controllers_last_answer_while_it_asks_again(monkeypatch):
    import asyncio

    from deployments import readiness as mod

    calls = []

    def serve_status(states=("RUNNING",)):
        calls.append(time.monotonic())
        time.sleep(0.3)  # a busy controller
        return mod.StagesStatus(True, "RUNNING", {"Compose": {"RUNNING": len(calls)}})

    monkeypatch.setattr(mod, "_serve_status", serve_status)

    async def scenario():
        r = mod.Readiness(started=time.time())
        first = await r.stages(5.0)  # nothing known: waits for it
        assert first.replicas == {"Compose": {"RUNNING": 1}} and len(calls) == 1
        assert await r.stages(5.0) is first  # within the second: no question
        r._cached = (r._cached[0] - 2.0, first)  # two seconds old: reported, and asked again
        t0 = time.monotonic()
        assert await r.stages(5.0) is first
        assert time.monotonic() - t0 < 0.2
        await asyncio.sleep(0.5)
        assert len(calls) == 2 and (await r.stages(5.0)).replicas == {"Compose": {"RUNNING": 2}}
        r._cached = (r._cached[0] - 60.0, r._cached[1])  # too old to report: waits for the answer
        assert (await r.stages(5.0)).replicas == {"Compose": {"RUNNING": 3}}

    asyncio.run(scenario())


def test_estimates_are_calibrated_by_what_admitted_renders_took():
    """Renders that take twice their estimate (a busy machine pausing) make the next estimates longer."""
    ac = AdmissionControl(seed=3)
    ac._capacity = 4.0  # Mpx/s
    estimate, basis = ac.estimate(1.0)
    assert basis == "capacity" and estimate == pytest.approx(0.25)
    for _ in range(40):
        ac.calibrate(1.0, 2.0)
    assert ac.bias == pytest.approx(2.0, rel=0.05)
    assert ac.estimate(1.0)[0] == pytest.approx(0.5, rel=0.05)
    ac.calibrate(0.01, 5.0)  # no queue: says nothing
    assert ac.bias == pytest.approx(2.0, rel=0.05)
    for _ in range(60):
        ac.calibrate(1.0, 0.1)  # far faster than estimated: bounded below
    assert ac.bias == pytest.approx(0.7, rel=0.05)


def test_refusal_on_arrival_counts_the_usual_wait_to_reach_the_route():
    """Under overload a request waits to be parsed and routed; on arrival that wait is counted."""
    ac = AdmissionControl(seed=4)
    ac._capacity = 1.0  # Mpx/s
    assert ac.decide(1.0, 4.0).admit  # typical work 1 Mpx; 1 in flight
    assert ac.refuse_typical(4.0) is None  # (1 + 1) / 1 = 2 s fits in 3.9 s
    for _ in range(30):
        ac.observe_route_delay(2.5)  # the loop is slow: 2.5 s from arrival to the route
    refused = ac.refuse_typical(4.0)
    assert refused is not None and refused.estimate_s == pytest.approx(2.0 + 2.5, rel=0.02)
    assert refused.retry_after_s >= 1


def test_requests_let_in_on_arrival_hold_their_place_until_their_route():
    """A burst's requests are checked on arrival before any reaches its route: each must count
    the ones let in before it, or all pass and most are refused later, after their bodies."""
    from deployments.config import OverloadConfig
    from deployments.shedding import AdmissionGate, ArrivalHold

    gate = AdmissionGate(OverloadConfig(headroom=0.0, margin_s=0.1))
    ac = gate.control
    ac._capacity = 1.0  # Mpx/s
    deadline = deadline_from_headers({}, 4.0, 10.0)
    first = gate.admit("r0", deadline, 1000, 1000)  # typical work 1 Mpx; 1 in flight
    # On arrival 10 % more is kept free: 0.9 * 4 - 0.1 = 3.5 s usable. (1 ahead + 1 held + 1)
    # / 1 Mpx/s = 3 s fits; a third would take 4 s: refused.
    holds = [gate.refuse_on_arrival(deadline) for _ in range(3)]
    assert [type(h) for h in holds] == [ArrivalHold, ArrivalHold, Shed]
    assert ac.held == 2 and ac.held_work == pytest.approx(2.0)
    # The first held reaches its route: its hold becomes its admission (same estimate, admitted).
    admitted = gate.admit("r1", deadline, 1000, 1000, hold=holds[0])
    assert admitted.decision.admit and ac.held == 1 and ac.in_flight == 2
    # The second ends before its route (an invalid body): its place is freed, once.
    gate.release(holds[1])
    gate.release(holds[1])
    assert ac.held == 0 and ac.held_work == 0.0
    gate.finish(first, completed=True)
    assert isinstance(gate.refuse_on_arrival(deadline), ArrivalHold)
    # Admission off: nothing is held (and nothing refused before the deadline).
    off = AdmissionGate(OverloadConfig(admission=False))
    off.admit("r", deadline, 1000, 1000)
    assert off.refuse_on_arrival(deadline) is None and off.control.held == 0


def test_a_burst_into_an_idle_service_is_checked_on_arrival_after_its_first_request():
    """Into an idle service the first arrival passes whatever the estimate; the ones arriving
    with it, before it reaches its route, count it as in flight and are checked."""
    ac = AdmissionControl(margin_s=0.1)
    ac._capacity = 1.0  # Mpx/s, from an earlier burst
    ac.typical_work = 1.0
    passed = 0
    while ac.refuse_typical(4.0) is None:
        ac.hold(1.0)
        passed += 1
    assert passed == 3  # 0.9 * 4 - 0.1 = 3.5 s usable: 1, 2 and 3 s fit, 4 s does not
    # The route keeps only the headroom (here none): the held reach it and are all admitted.
    for _ in range(passed):
        ac.unhold(1.0)
        assert ac.decide(1.0, 4.0).admit


def test_a_request_that_waited_its_turn_on_arrival_is_admitted_as_decided_there():
    """Once it has waited for its turn, what was ahead of it has gone and what the gate
    counts came after it: its route admits it with its arrival's estimate (calibrated from
    its arrival), refusing it only if its deadline has passed."""
    from deployments.config import OverloadConfig
    from deployments.shedding import AdmissionGate, ArrivalHold

    gate = AdmissionGate(OverloadConfig(headroom=0.0, margin_s=0.1))
    gate.control._capacity = 1.0  # Mpx/s
    deadline = deadline_from_headers({}, 4.0, 10.0)
    gate.admit("r0", deadline, 1000, 1000)  # 1 Mpx in flight
    first = gate.refuse_on_arrival(deadline)
    assert isinstance(first, ArrivalHold) and first.estimate_s == pytest.approx(2.0, rel=0.02)
    later = gate.refuse_on_arrival(deadline)  # arrived after it; 3 s fits the 3.5 s usable
    assert isinstance(later, ArrivalHold)
    # Its route, now: r0 + the later hold + itself = 3 Mpx ahead. Without its turn it would be
    # weighed again (and, with more arrivals behind it, refused); with it, it is let through.
    admitted = gate.admit("r1", deadline, 1000, 1000, 0.5, first, turn_taken=True)
    assert admitted.decision.admit and admitted.decision.estimate_s == first.estimate_s
    assert admitted.admitted_at == first.held_at and first.released
    assert gate.control.in_flight == 2 and gate.control.held == 1
    past = deadline_from_headers({}, 0.0, 10.0)
    gate.release(later)
    hold = gate.refuse_on_arrival(deadline)
    with pytest.raises(Shed) as refused:
        gate.admit("r2", past, 1000, 1000, None, hold, turn_taken=True)
    assert refused.value.reason == "deadline_passed"


def test_a_render_let_in_waits_for_its_turn_before_its_body_is_read():
    """`ShedOnArrival` takes the render's turn before the app reads anything: a burst's renders
    that must wait cost the ingress nothing until their turn, and the route sees it taken."""
    import asyncio
    from types import SimpleNamespace

    from deployments.arrival import ShedOnArrival
    from deployments.config import OverloadConfig
    from deployments.shedding import AdmissionGate
    from deployments.turns import RenderTurns

    gate = AdmissionGate(OverloadConfig())
    gate.control._capacity = 10.0  # Mpx/s: everything fits
    gate.admit("r0", deadline_from_headers({}, 4.0, 10.0), 512, 512)  # a typical size is known
    chain = SimpleNamespace(gate=gate, turns=RenderTurns(1))
    app_state = SimpleNamespace(services=SimpleNamespace(chain=chain))
    reached: list[tuple[str, dict]] = []
    release_first = asyncio.Event()

    async def route(scope: dict, receive, send) -> None:
        reached.append((scope["path"], dict(scope["state"])))
        if len(reached) == 1:
            await release_first.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = ShedOnArrival(route)

    def scope() -> dict:
        app = SimpleNamespace(state=app_state)
        return {"type": "http", "method": "POST", "path": "/v1/preview", "headers": [], "app": app}

    async def receive() -> dict:
        raise AssertionError("the middleware itself reads no body")

    async def send(message: dict) -> None:
        pass

    async def scenario() -> None:
        first = asyncio.create_task(middleware(scope(), receive, send))
        second = asyncio.create_task(middleware(scope(), receive, send))
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(reached) == 1 and chain.turns.waiting == 1  # the second waits before the app
        assert reached[0][1]["turn_taken"] and gate.control.held == 2
        release_first.set()
        await asyncio.gather(first, second)
        assert len(reached) == 2 and reached[1][1]["turn_taken"]
        assert chain.turns.in_progress == 0 and gate.control.held == 0  # both given back

    asyncio.run(scenario())


def test_render_turns_go_in_arrival_order_and_never_exceed_the_limit():
    import asyncio

    from deployments.turns import RenderTurns

    async def scenario() -> tuple[list[int], int, int]:
        turns = RenderTurns(2)
        order: list[int] = []
        peak = 0

        async def render(i: int) -> None:
            nonlocal peak
            give_back = await turns.take(5.0)
            assert give_back is not None
            peak = max(peak, turns.in_progress)
            order.append(i)
            await asyncio.sleep(0.01)
            give_back()

        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(render(i)))
            await asyncio.sleep(0)  # each arrives after the one before
        await asyncio.gather(*tasks)
        return order, peak, turns.in_progress

    order, peak, left = asyncio.run(scenario())
    assert order == list(range(8))
    assert peak == 2
    assert left == 0


def test_a_render_waiting_past_its_deadline_or_cancelled_gives_up_its_place():
    import asyncio

    from deployments.turns import RenderTurns

    async def scenario() -> None:
        turns = RenderTurns(1, stall_s=60.0)
        first = await turns.take(1.0)
        assert first is not None
        assert await turns.take(0.02) is None  # the deadline comes first
        assert await turns.take(0.0) is None
        waiter = asyncio.create_task(turns.take(5.0))
        await asyncio.sleep(0.01)
        assert turns.waiting == 1
        waiter.cancel()  # the client went away
        await asyncio.gather(waiter, return_exceptions=True)
        assert turns.waiting == 0
        late = asyncio.create_task(turns.take(5.0))
        await asyncio.sleep(0.01)
        first()  # handed to the one still waiting, not to those that left
        second = await late
        assert second is not None and turns.in_progress == 1
        second()
        second()  # a second give-back of the same turn changes nothing
        assert turns.in_progress == 0
        unlimited = RenderTurns(0)
        assert all([await unlimited.take(0.0) is not None for _ in range(100)])

    asyncio.run(scenario())


def test_a_render_stalled_on_its_upstream_stops_holding_back_the_others():
    """A turn held past ``stall_s`` (cold tiles from a slow server) no longer counts: the
    render waiting behind it goes on without waiting for it to end."""
    import asyncio
    import time

    from deployments.turns import RenderTurns

    async def scenario() -> tuple[float, int, int]:
        turns = RenderTurns(1, stall_s=0.1)
        slow = await turns.take(1.0)
        assert slow is not None
        t0 = time.monotonic()
        warm = await turns.take(5.0)  # waits ~0.1 s, not until `slow` ends
        waited = time.monotonic() - t0
        assert warm is not None
        both = turns.in_progress
        moving = turns.moving()
        slow()
        warm()
        return waited, both, moving

    waited, both, moving = asyncio.run(scenario())
    assert 0.05 <= waited < 1.0, waited
    assert both == 2 and moving == 1


def test_an_admitted_render_may_finish_past_our_deadline_but_not_past_the_callers():
    """Past the configured deadline (ours, below the caller's timeout) an admitted render still
    has ``answer_grace_s`` in the stages and the ingress; past a deadline the caller sent, not."""
    import asyncio
    from types import SimpleNamespace

    from starlette.requests import Request

    from deployments.config import AppConfig, OverloadConfig
    from deployments.errors import ApiError
    from deployments.render_chain import RenderChain

    config = AppConfig(overload=OverloadConfig(deadline_s=0.2, answer_grace_s=0.4))
    chain = RenderChain(config, None, None, None)

    def request(headers: list[tuple[bytes, bytes]]) -> Request:
        state = {"request_id": "r", "render": {}, "arrived_at": time.time()}
        scope = {"type": "http", "method": "POST", "path": "/v1/preview", "headers": headers}
        return Request({**scope, "state": state})

    budgets = []

    async def stages(budget, lost) -> SimpleNamespace:
        budgets.append(budget)
        await asyncio.sleep(0.3)  # finishes 0.1 s past the 0.2 s deadline
        return SimpleNamespace(reports=())

    answered = asyncio.run(chain.run(request([]), 64, 64, stages))
    assert answered.reports == ()
    with pytest.raises(ApiError) as refused:
        asyncio.run(chain.run(request([(b"request-timeout", b"0.2")]), 64, 64, stages))
    assert refused.value.status == 503 and refused.value.error == "deadline exceeded"
    assert refused.value.headers["Retry-After"] == "1"
    assert chain.gate.control.in_flight == 0  # both places freed
    # The stages work to the same deadline: ours plus the grace, the caller's as it is.
    ours, callers = (b.deadline for b in budgets)
    assert ours.budget_s == pytest.approx(0.6) and callers.budget_s == pytest.approx(0.2)


def test_only_a_configured_deadline_is_extended_for_work_taken_on():
    ours = deadline_from_headers({}, 4.0, 10.0, now=NOW)
    assert ours.extended(0.5) == Deadline(NOW, NOW + 4.5, "config")
    assert ours.extended(0.0) is ours
    callers = deadline_from_headers({"request-timeout": "3"}, 4.0, 10.0, now=NOW)
    assert callers.extended(0.5) is callers


def test_a_render_whose_tiles_came_from_the_cache_reports_that_time_for_the_fetch():
    """Read in the ingress, the tiles' time goes to the admission model as the fetch stage's
    latency; otherwise the last upstream fetch (seconds) would stand for every warm render."""
    import asyncio

    from deployments.config import AppConfig
    from deployments.contracts import TileRequest
    from deployments.deadline import Budget
    from deployments.render_chain import RenderChain

    class HeldCache:  # the cache actor's lookup: every tile held (none kept from an earlier one)
        def kept(self, keys):
            return None

        async def held(self, keys):
            await asyncio.sleep(0.002)
            return [f"ref:{k}" for k in keys]

    chain = RenderChain(AppConfig(), None, None, None)  # no stage is called: the tiles are held
    chain.cache = HeldCache()
    requests = [TileRequest(n, f"s/3/{n}.fits", f"http://h/Npix{n}.fits", "fits") for n in (4, 5)]
    budget = Budget(Deadline(NOW, NOW + 4.0, "config"), work=0.5, sent_at=NOW)
    fetched = asyncio.run(chain.tiles(requests, budget))
    assert fetched.tiles == {4: "ref:s/3/4.fits", 5: "ref:s/3/5.fits"}
    (report,) = fetched.reports
    assert report.stage == "fetch" and report.service_s_per_work == 0.0
    assert report.latency_s_per_work == pytest.approx(fetched.seconds / 0.5)
    assert fetched.via == "cache"
    ac = AdmissionControl()
    ac.observe([StageReport("fetch", "f1", 0.0, 4.0)])  # an upstream fetch: 2 s for 0.5 Mpx
    ac.observe(list(fetched.reports))
    assert ac.stages["fetch"].latency == report.latency_s_per_work < 0.1
