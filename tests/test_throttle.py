"""The throttle through its public surface: unit tests on an injected clock, the pure pieces,
real threads, and two checks against the fake server. The controller's behaviour against whole
server models is judged in ``test_rate_simulator.py``."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import pytest

from openrouter_sync import OpenRouterBackend, RetryPolicy
from openrouter_sync.ratelimit import estimator as est
from openrouter_sync.ratelimit.gate import Gate
from openrouter_sync.ratelimit.pacer import Pacer
from openrouter_sync.testing import FakeOpenRouter
from openrouter_sync.throttle import ScopeStatus, Throttle, ThrottleStatus, Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


# ----- the basics -----
def test_open_gate_does_not_wait() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    ticket = t.acquire(clock.sleep, 60)
    assert ticket == Ticket(sent_at=100.0, waited=0.0, refused_for=0.0, scopes=())
    assert ticket.admitted
    t.on_answer(ticket)
    assert t.learned_rate is None and t.rate_limited_count == 0


def test_scopes_are_named_on_the_ticket() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    ticket = t.acquire(clock.sleep, 60, scopes=("model:a/b:free", "free", "free"))
    assert ticket.scopes == ("model:a/b:free", "free")
    with pytest.raises(ValueError, match="scope"):
        t.acquire(clock.sleep, 60, scopes=("",))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), -float("inf"), True])
def test_requests_per_minute_must_be_finite_and_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="requests_per_minute must be > 0"):
        Throttle(requests_per_minute=bad)
    t = Throttle()
    with pytest.raises(ValueError, match="requests_per_minute must be > 0"):
        t.set_requests_per_minute(bad)
    assert t.requests_per_minute is None


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_max_gate_seconds_must_be_finite_and_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="max_gate_seconds"):
        Throttle(max_gate_seconds=bad)


def test_fixed_pacing_spaces_sends_and_can_be_changed() -> None:
    clock = Clock()
    t = Throttle(requests_per_minute=120, clock=clock)
    starts = [t.acquire(clock.sleep, 60).sent_at for _ in range(5)]
    assert starts == pytest.approx([100.0, 100.5, 101.0, 101.5, 102.0])
    assert t.requests_per_minute == 120
    assert t.status().requests_per_minute == 120
    t.set_requests_per_minute(None)
    assert t.requests_per_minute is None


def test_a_named_wait_shuts_the_gate_for_everyone_when_not_adaptive() -> None:
    clock = Clock()
    t = Throttle(clock=clock, adaptive=False)
    first = t.acquire(clock.sleep, 60)
    t.on_rate_limited(first, 5.0)
    assert t.blocked_for() == 5.0
    assert t.rate_limited_count == 1
    ticket = t.acquire(clock.sleep, 60)
    assert ticket.waited == pytest.approx(5.0) and ticket.sent_at == pytest.approx(105.0)


def test_a_gate_longer_than_max_wait_is_not_waited() -> None:
    clock = Clock()
    t = Throttle(clock=clock, adaptive=False)
    t.on_rate_limited(t.acquire(clock.sleep, 60), 30.0)
    ticket = t.acquire(clock.sleep, 10)
    assert not ticket.admitted and ticket.sent_at is None
    assert ticket.refused_for == pytest.approx(30.0)
    assert clock.now == 100.0  # returned at once


def test_gates_are_capped() -> None:
    """A 429 naming a day holds the others at most max_gate_seconds: the request that got it handles it."""
    clock = Clock()
    t = Throttle(clock=clock, max_gate_seconds=60.0)
    t.on_rate_limited(t.acquire(clock.sleep, 120), 86400.0)
    assert 0 < t.blocked_for() <= 60.0
    ticket = t.acquire(clock.sleep, 120)
    assert ticket.admitted and ticket.waited <= 60.0


def test_gate_can_be_ignored_but_pacing_cannot() -> None:
    clock = Clock()
    t = Throttle(requests_per_minute=60, clock=clock, adaptive=False)
    t.on_rate_limited(t.acquire(clock.sleep, 60), 30.0)
    clock.now = 101.0
    first = t.acquire(clock.sleep, 60, gate=False)
    assert first.sent_at == 101.0 and first.waited == 0
    second = t.acquire(clock.sleep, 60, gate=False)
    assert second.sent_at == 102.0 and second.waited == pytest.approx(1.0)


@pytest.mark.parametrize("wait", [None, 0.0, -3.0, float("nan"), float("inf")])
def test_unusable_waits_shut_no_gate(wait: float) -> None:
    clock = Clock()
    t = Throttle(clock=clock, adaptive=False)
    t.on_rate_limited(t.acquire(clock.sleep, 60), wait)
    assert t.blocked_for() == 0.0 and t.rate_limited_count == 1


def test_a_whole_second_wait_is_probed_not_believed() -> None:
    """Retry-After: 1 from a bucket that refills every 20 ms: one probe goes early; accepted, the gate opens."""
    clock = Clock()
    t = Throttle(clock=clock)
    tickets = [t.acquire(clock.sleep, 60) for _ in range(20)]
    for ticket in tickets[:10]:
        t.on_answer(ticket)
    clock.now += 0.002
    for ticket in tickets[10:]:
        t.on_rate_limited(ticket, 1.0)
    assert t.blocked_for() == pytest.approx(1.0)
    probe = t.acquire(clock.sleep, 60)
    assert probe.admitted and probe.waited < 0.5  # the probe went long before the named second
    clock.now += 0.05
    t.on_answer(probe)
    assert t.blocked_for() == 0.0
    assert t.learned_rate is not None  # paced from now on


def test_a_refused_probe_makes_the_rest_of_the_wait_real() -> None:
    """A fixed window: the probe is refused too, so everyone waits the window out."""
    clock = Clock()
    t = Throttle(clock=clock)
    first = [t.acquire(clock.sleep, 60) for _ in range(12)]
    for ticket in first[:10]:
        t.on_answer(ticket)
    window_end = 110.0
    for ticket in first[10:]:
        t.on_rate_limited(ticket, window_end - clock.now)
    probe = t.acquire(clock.sleep, 60)
    assert probe.admitted and probe.sent_at is not None and probe.sent_at < window_end
    t.on_rate_limited(probe, window_end - clock.now)
    after = t.acquire(clock.sleep, 60)
    assert after.sent_at == pytest.approx(window_end)


def _whole_seconds(end: float, now: float) -> float:
    """``Retry-After`` in whole seconds (the true wait rounded up, at least 1) for a window ending at ``end``."""
    return float(max(1, math.ceil(end - now - 1e-9)))


def _first_window(t: Throttle, clock: Clock, end: float) -> Ticket:
    """10 requests through, 2 refused with whole seconds to ``end``, then the early probe refused too
    (so the wait is real, not a bucket's coarse second); the gate then holds the rest."""
    first = [t.acquire(clock.sleep, 60) for _ in range(12)]
    clock.now += 0.05
    for ticket in first[:10]:
        t.on_answer(ticket)
    for ticket in first[10:]:
        t.on_rate_limited(ticket, _whole_seconds(end, clock.now))
    probe = t.acquire(clock.sleep, 60)
    assert probe.admitted and probe.sent_at is not None and probe.sent_at < end - 1.0
    t.on_rate_limited(probe, _whole_seconds(end, clock.now))
    return probe


def _past_first_window(now: float, end: float) -> tuple[Throttle, Clock]:
    """A throttle on a clock reading ``now``, through ``_first_window`` for a window ending at ``end``."""
    clock = Clock()
    clock.now = now
    t = Throttle(clock=clock)
    _first_window(t, clock, end)
    return t, clock


def test_a_whole_second_windows_end_is_probed_on_a_whole_second_of_the_wall_clock() -> None:
    """A fixed window aligned to the epoch ends 1.63 s in; whole-second waits only say it ends within
    (0.15, 1.15] s... then (0.35, 1.35]... before the named end. Fixed windows start on whole seconds of
    the wall clock: one request goes just after the whole second, is accepted, and the gate opens
    there (it used to run to the named end, half a second late)."""
    end = 1_700_000_002.0
    t, clock = _past_first_window(1_700_000_000.37, end)  # the injected clock reads like wall time
    assert t.blocked_for() > 0.5
    probe = t.acquire(clock.sleep, 60)
    assert probe.sent_at == pytest.approx(end + 0.02, rel=0, abs=1e-4)
    clock.now += 0.05
    t.on_answer(probe)
    assert t.blocked_for() == 0.0
    assert t.acquire(clock.sleep, 60).waited == 0.0


def _past_two_windows(end: float) -> tuple[Throttle, Clock]:
    """Through ``_past_first_window`` (an epoch-aligned window of 10 ending at ``end``) and the
    window after it: its end found (the first window's count of 10 went, the one request after
    it is held to the next whole second, refused there with "1", so the window is 2 s long), and
    its 10 sent. The window's length is known from here on."""
    t, clock = _past_first_window(end - 1.63, end)
    probe = t.acquire(clock.sleep, 60)
    clock.now += 0.05
    t.on_answer(probe)
    window = [t.acquire(clock.sleep, 60) for _ in range(9)]  # with the probe, the 10 the first window took
    assert all(ticket.waited == 0.0 for ticket in window)
    clock.now += 0.05
    for ticket in window:
        t.on_answer(ticket)
    held = t.acquire(clock.sleep, 60)
    assert held.sent_at == pytest.approx(end + 1.0 + 0.02, rel=0, abs=1e-4)  # the next whole second after the end
    wait = _whole_seconds(end + 2.0, clock.now)
    assert wait == 1.0
    t.on_rate_limited(held, wait)
    after = t.acquire(clock.sleep, 60)
    assert after.sent_at == pytest.approx(end + 2.0 + 0.02, rel=0, abs=1e-4)
    t.on_answer(after)
    for ticket in [t.acquire(clock.sleep, 60) for _ in range(9)]:
        t.on_answer(ticket)
    return t, clock


def test_later_window_ends_are_predicted_whole_seconds_after_a_known_one() -> None:
    """After a window's end is known, a window's worth goes, and the one request after it is held to
    the next whole second after that end (not sent at once: refused 1.3 s before the end, it would
    be told "2" and wait 0.7 s past it). Refused there with "1", the end is the whole second after
    (the window is 2 s long): everyone waits exactly to it, and the window after is predicted
    without a probe (the first window with a known end sends no budget probe, see the next test)."""
    end = 1_700_000_002.0
    t, clock = _past_two_windows(end)
    nxt = t.acquire(clock.sleep, 60)  # the window's length is known: the next end
    assert nxt.sent_at == pytest.approx(end + 4.0 + 0.02, rel=0, abs=1e-4)
    assert t.rate_limited_count == 4


def test_a_window_that_takes_more_than_its_count_is_found_by_budget_probes() -> None:
    """A window's count is what went through in one window: a share of what other clients left
    (who may since have stopped), or a token bucket that looked like a window. A hold that never
    sent past it would keep it for good (a process held to 3 requests a window for minutes). A
    second before the end one request goes alone; accepted, the window takes one more, and the next
    goes at once, alone too, and counts two more when accepted (each accepted in a row doubles what
    the next counts, as a rate doubles while nothing is refused: a count far too low is found in a
    few answer times, not one request per answer time); refused, the rest wait for the end it names.
    The next window's count includes those accepted, and after a refused probe one window goes
    without. (The first window with a known end goes without too: a window's count is usually right.)"""
    end = 1_700_000_002.0
    t, clock = _past_two_windows(end)
    for ticket in [t.acquire(clock.sleep, 60) for _ in range(10)]:  # at the next end (end + 4), no probe before
        assert ticket.sent_at == pytest.approx(end + 4.0 + 0.02, rel=0, abs=1e-4)
        t.on_answer(ticket)
    end += 2.0
    grown = []
    for _ in range(2):
        probe = t.acquire(clock.sleep, 60)
        assert probe.sent_at == pytest.approx(max(clock.now, end + 3.0 + 0.02), rel=0, abs=1e-4)
        grown.append(probe.sent_at)
        clock.now += 0.05
        t.on_answer(probe)  # the window took it
    assert grown[1] - grown[0] == pytest.approx(0.05, abs=1e-4)  # the second at once after the first's answer
    last = t.acquire(clock.sleep, 60)
    assert last.sent_at == pytest.approx(end + 3.0 + 0.12, rel=0, abs=1e-4)
    clock.now += 0.004
    t.on_rate_limited(last, _whole_seconds(end + 4.0, clock.now))  # full
    window = [t.acquire(clock.sleep, 60) for _ in range(13)]  # 10 + 1 + 2 for the two probes it took
    assert all(ticket.sent_at == pytest.approx(end + 4.0 + 0.02, rel=0, abs=1e-4) for ticket in window)
    clock.now += 0.05
    for ticket in window:
        t.on_answer(ticket)
    held = t.acquire(clock.sleep, 60)  # no budget probe in this window: held to its end
    assert held.sent_at == pytest.approx(end + 6.0 + 0.02, rel=0, abs=1e-4)


def test_windows_counted_from_the_first_request_are_found_too() -> None:
    """Windows of 2 s counted from the client's first request (at 100.3): a probe just after the
    wall clock's whole second (102.0) is refused with "1", one just after 102.3 goes through; the
    window's length follows (2 s after the first request), so the next end (104.3) is where the
    next request goes. The length is a guess (see the next test): that request goes first, alone,
    and the others only when a refusal would have been back (1.5 times the last 429's round trip),
    so a wrong guess costs one 429, not one per request."""
    end = 102.3
    t, clock = _past_first_window(100.3, end)
    wall = t.acquire(clock.sleep, 60)
    assert wall.sent_at == pytest.approx(102.02)
    clock.now += 0.004
    t.on_rate_limited(wall, _whole_seconds(end, clock.now))
    probe = t.acquire(clock.sleep, 60)
    assert probe.sent_at == pytest.approx(end + 0.02)
    clock.now += 0.05
    t.on_answer(probe)
    assert t.blocked_for() == 0.0
    for ticket in [t.acquire(clock.sleep, 60) for _ in range(9)]:
        t.on_answer(ticket)
    first, second = t.acquire(clock.sleep, 60), t.acquire(clock.sleep, 60)  # both waiting at once
    assert first.sent_at == pytest.approx(end + 2.0 + 0.02)
    assert second.sent_at == pytest.approx(end + 2.0 + 0.02 + 1.5 * 0.004)


def test_a_window_length_guessed_from_the_first_request_is_tried_with_one_request() -> None:
    """Windows of 2 s that end 0.73 s after the first request (at 100.3), on neither kind of whole
    second: the probe just after the wall clock's second (101.02) is refused, the one a second after
    the first request (101.32) goes through, so windows seem counted from it and 1 s long. That is
    only a guess: at the next guessed end (102.3) one request goes first, and when it is refused the
    others wait for the end its wait names (103.03), instead of all going at once to be refused."""
    clock = Clock()
    clock.now = 100.3
    ends = [101.03 + 2.0 * k for k in range(4)]
    t = Throttle(clock=clock)

    def answer(ticket: Ticket) -> bool:
        assert ticket.sent_at is not None
        end = next(e for e in ends if e > ticket.sent_at)
        if ticket.sent_at < end - 2.0 + 1e-9 or sent_in[ends.index(end)] >= 10:
            t.on_rate_limited(ticket, _whole_seconds(end, clock.now))
            return False
        sent_in[ends.index(end)] += 1
        t.on_answer(ticket)
        return True

    sent_in = [10, 0, 0, 0]  # the first window's 10 are the burst below
    burst = [t.acquire(clock.sleep, 60) for _ in range(12)]
    clock.now += 0.05
    for ticket in burst[:10]:
        t.on_answer(ticket)
    for ticket in burst[10:]:
        t.on_rate_limited(ticket, _whole_seconds(ends[0], clock.now))
    probes = []
    while True:
        probe = t.acquire(clock.sleep, 60)
        probes.append(probe.sent_at)
        if answer(probe):
            break
    assert probes[-1] == pytest.approx(101.32)
    for _ in range(9):
        assert answer(t.acquire(clock.sleep, 60))
    first = t.acquire(clock.sleep, 60)
    assert first.sent_at == pytest.approx(102.32)  # the guessed end: one request ...
    clock.now += 0.002  # (a 429 is back in 2 ms)
    assert not answer(first)  # ... refused: the window is longer
    after = t.acquire(clock.sleep, 60)
    assert after.sent_at is not None and after.sent_at >= ends[1]  # the others wait for the end it names
    assert answer(after)
    assert t.rate_limited_count <= 5


def test_a_bucket_with_whole_second_waits_is_not_taken_for_a_window() -> None:
    """A token bucket says "1" too: its early probe is accepted, and nothing is held for whole seconds."""
    clock = Clock()
    clock.now = 1_700_000_000.37
    t = Throttle(clock=clock)
    tickets = [t.acquire(clock.sleep, 60) for _ in range(12)]
    clock.now += 0.05
    for ticket in tickets[:10]:
        t.on_answer(ticket)
    for ticket in tickets[10:]:
        t.on_rate_limited(ticket, 1.0)
    probe = t.acquire(clock.sleep, 60)
    clock.now += 0.05
    t.on_answer(probe)
    assert t.blocked_for() == 0.0
    sends = []
    for _ in range(20):
        ticket = t.acquire(clock.sleep, 60)
        sends.append(ticket.waited)
        t.on_answer(ticket)
    assert max(sends) < 0.2  # paced, never held to a whole second


@pytest.mark.parametrize("wait, grain", [(0.63, True), (0.237, False)])
def test_a_wait_ending_on_a_whole_second_is_a_dates_grain_not_a_tokens_interval(wait: float, grain: bool) -> None:
    """A bucket refusing with an HTTP-date rounded up: the wait (0.63 s here) ends on a whole
    second of the wall clock, so it says nothing about the refill interval and must not cap the
    first guess at 1 / wait. A fractional wait that does not end there still may."""
    clock = Clock()
    clock.now = 1_700_000_000.37  # the injected clock reads like wall time
    t = Throttle(clock=clock)
    tickets = [t.acquire(clock.sleep, 60) for _ in range(12)]
    for ticket in tickets[:10]:
        t.on_answer(ticket)
    clock.now += 0.002
    for ticket in tickets[10:]:
        t.on_rate_limited(ticket, wait)
    rate = t.learned_rate
    assert rate is not None
    assert (rate > 1.0 / wait + 1.0) is grain  # the guess (what went through in the last second) stands


# ----- concurrency caps -----
def test_a_concurrency_cap_grows_only_when_a_request_at_the_cap_is_accepted() -> None:
    """Two 429 events at 8 in flight set a cap of 8; it grows a step when a request sent with the
    cap full is accepted (after a short hold), never on time alone, and a 429 never raises it."""
    clock = Clock()
    t = Throttle(clock=clock)
    for _ in range(2):
        sent = [t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",)) for _ in range(9)]
        clock.now += 0.002
        t.on_rate_limited(sent[-1], None, "model:m")
        for ticket in sent[:-1]:
            clock.now += 0.001
            t.on_answer(ticket)
    lane = t._lanes["model:m"]
    assert lane.cap == 8
    clock.now += 5.0
    assert lane.current_cap(clock.now) == 8  # time alone grows nothing
    full = [t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",)) for _ in range(8)]
    clock.now += 0.05
    t.on_answer(full[-1])  # went with 7 in flight: the 8th, the cap full
    assert lane.cap == 9
    for ticket in full[:-1]:
        t.on_answer(ticket)
    assert lane.cap == 9  # sent under the cap's new edge: proves nothing more
    over = [t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",)) for _ in range(9)]
    t.on_rate_limited(over[-1], None, "model:m")  # refused with 8 in flight: the cap goes back to 8
    assert lane.cap == 8


def _capped_lane(cap: int = 8) -> tuple[Throttle, Clock, Any]:
    """A throttle whose lane ``model:m`` learned a cap of ``cap`` from two hint-less 429 events."""
    clock = Clock()
    t = Throttle(clock=clock)
    for _ in range(2):
        sent = [t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",)) for _ in range(cap + 1)]
        clock.now += 0.001
        t.on_rate_limited(sent[-1], None, "model:m")
        clock.now += 0.049
        for ticket in sent[:-1]:
            t.on_answer(ticket)
    lane = t._lanes["model:m"]
    assert lane.cap == cap
    return t, clock, lane


def test_a_first_burst_refused_out_of_order_still_shows_the_cap() -> None:
    """Requests of a first burst reach the server in any order: the first 429 may be for one sent
    with only 6 in flight while the server held 8. The cap counts what the server held (the
    requests it took around the refusal), not what was in flight when the refused one went."""
    clock = Clock()
    t = Throttle(clock=clock)
    burst = []
    for _ in range(12):
        burst.append(t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",)))
        clock.now += 0.001
    refused = [burst[6], *burst[9:]]  # the 7th went with 6 in flight; the server took the 8th and 9th first
    for ticket in refused:
        t.on_rate_limited(ticket, None, "model:m")
    clock.now += 0.05
    for ticket in burst:
        if ticket not in refused:
            t.on_answer(ticket)
    second = []
    for _ in range(9):
        second.append(t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",)))
    clock.now += 0.001
    t.on_rate_limited(second[-1], None, "model:m")  # the 9th, with 8 in flight
    assert t._lanes["model:m"].cap == 8


def test_a_refused_step_up_goes_back_one_step_and_waits_longer_each_time() -> None:
    """A 429 right after the cap grew refuses that step: the cap goes back to the level proved
    (not to the number in flight when the refused request went: requests sent together reach the
    server in any order), and the next step waits CAP_HOLD, twice as long after each refused one."""
    t, clock, lane = _capped_lane()
    holds = []
    for _ in range(3):
        clock.now += 5.0
        full = [t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",)) for _ in range(8)]
        clock.now += 0.05
        t.on_answer(full[-1])  # the 8th accepted: a step up to 9
        assert lane.cap == 9
        over = t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",))  # the 9th in flight
        t.on_rate_limited(full[-2], None, "model:m")  # one sent with 6 in flight reached the server after it
        assert lane.cap == 8
        holds.append(lane.cap_hold)
        for ticket in [*full[:-2], over]:
            t.on_answer(ticket)
    assert holds == [0.2, 0.4, 0.8]


def test_a_full_cap_keeps_requests_in_line_first_come_first_served() -> None:
    """A request that finds the cap full waits in line; a slot that frees goes to the first in
    line that is due, not to a request that comes later; a send slot taken counts as a slot."""
    t, clock, lane = _capped_lane(6)
    for _ in range(6):
        t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",))
    first = lane.queue(None, clock.now)
    assert lane.waiting[first] > clock.now  # it looks again when an answer is due
    lane.in_flight = 5
    clock.now = lane.waiting[first]
    assert not lane.full(clock.now, first) and lane.full(clock.now)  # the slot is the first's
    lane.leave(first)
    assert not lane.full(clock.now)
    lane.reserved = 1  # a request took a send slot a little ahead
    assert lane.full(clock.now)


def test_on_a_slow_path_the_cap_paces_and_a_send_slot_may_go_over_it() -> None:
    """429s that take a good share of an answer time mean answers come late too: the server freed
    slots the client still counts. The cap then paces at the cap per answer time and a send slot
    taken is kept even over the cap; on a quick path nothing is paced and the cap is a hard limit."""
    t, clock, lane = _capped_lane(6)
    assert lane.current_rate(clock.now) is None and not lane.slow_path()
    sent = [t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",)) for _ in range(6)]
    lane.reserved = 1
    assert lane.full(clock.now)
    lane.reserved = 0
    clock.now += 0.04  # a 429 back after 40 ms against 50 ms answers
    t.on_rate_limited(sent[-1], None, "model:m")
    assert lane.slow_path() and lane.cap == 5
    assert lane.current_rate(clock.now) == pytest.approx(5 / lane.typical_latency() * 0.97)
    t.on_answer(sent[0])
    lane.reserved = 1  # 4 in flight and a send slot taken: the cap's last slot is taken, yet one more may plan
    assert not lane.full(clock.now)


# ----- scopes -----
def test_a_free_quota_does_not_hold_paid_models() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    free = t.acquire(clock.sleep, 60, scopes=("model:x/y:free", "free"))
    t.on_rate_limited(free, 9 * 3600.0, scope="free")
    assert t.blocked_for("free") > 0 and t.blocked_for() == 0.0
    paid = t.acquire(clock.sleep, 60, scopes=("model:a/b",))
    assert paid.admitted and paid.waited == 0.0
    held = t.acquire(clock.sleep, 1.0, scopes=("model:x/z:free", "free"))
    assert not held.admitted and held.refused_for == pytest.approx(60.0)  # capped, not 9 h
    probe = t.acquire(clock.sleep, 60, scopes=("model:x/z:free", "free"))  # one may go early to look
    assert probe.admitted and probe.waited < 60.0
    t.on_rate_limited(probe, 9 * 3600.0 - clock.now + 100.0, scope="free")  # the quota is real
    after = t.acquire(clock.sleep, 120, scopes=("model:x/z:free", "free"))
    assert not after.admitted and after.refused_for > 8 * 3600  # refused at once: no one waits 9 h
    assert t.blocked_for("free") <= 60.0


def test_a_model_limit_does_not_hold_another_model() -> None:
    clock = Clock()
    t = Throttle(clock=clock, adaptive=False)
    t.on_rate_limited(t.acquire(clock.sleep, 60, scopes=("model:a/x",)), 20.0, scope="model:a/x")
    assert t.blocked_for("model:a/x") == pytest.approx(20.0)
    other = t.acquire(clock.sleep, 60, scopes=("model:b/y",))
    assert other.admitted and other.waited == 0.0
    same = t.acquire(clock.sleep, 60, scopes=("model:a/x",))
    assert same.waited == pytest.approx(20.0)


def test_a_key_wide_limit_holds_every_model() -> None:
    clock = Clock()
    t = Throttle(clock=clock, adaptive=False)
    t.on_rate_limited(t.acquire(clock.sleep, 60, scopes=("model:a/x",)), 3.0)
    assert t.acquire(clock.sleep, 60, scopes=("model:b/y",)).waited == pytest.approx(3.0)


# ----- status and reset -----
def test_status_is_a_frozen_snapshot_and_reset_forgets() -> None:
    clock = Clock()
    t = Throttle(clock=clock, adaptive=False)
    t.on_rate_limited(t.acquire(clock.sleep, 60, scopes=("model:a/x",)), 20.0, scope="model:a/x")
    t.on_rate_limited(t.acquire(clock.sleep, 60), 5.0)
    status = t.status()
    assert isinstance(status, ThrottleStatus)
    assert status.rate_limited_count == 2 and status.blocked
    model = status.scope("model:a/x")
    assert isinstance(model, ScopeStatus) and model.blocked_for == pytest.approx(20.0)
    assert model.rate_limited_count == 1
    key = status.scope()
    assert key is not None and key.scope == "key" and key.blocked_for == pytest.approx(5.0)
    assert status.scope("never-used") is None
    with pytest.raises(AttributeError):
        status.rate_limited_count = 0  # type: ignore[misc]
    t.reset("model:a/x")
    assert t.blocked_for("model:a/x") == 0.0 and t.blocked_for() == pytest.approx(5.0)
    t.reset()
    assert not t.status().blocked
    assert t.rate_limited_count == 2  # counts stay


def test_reset_forgets_a_learned_rate() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    tickets = [t.acquire(clock.sleep, 60) for _ in range(10)]
    t.on_rate_limited(tickets[-1], 0.05)
    assert t.learned_rate is not None
    assert t.status().scope() is not None
    t.reset("key")
    assert t.learned_rate is None


# ----- the registry -----
def test_registry_shares_per_endpoint_and_key() -> None:
    url, key = "https://example.invalid/api/v1", "sk-or-v1-registry-test"
    one = Throttle.for_endpoint(url, key)
    assert Throttle.for_endpoint(url, key) is one
    assert Throttle.for_endpoint(url + "/", key) is one
    assert Throttle.for_endpoint(url, key + "x") is not one
    assert Throttle.for_endpoint("https://other.invalid/api/v1", key) is not one
    assert key not in repr(one) and key not in repr(vars(one)) and key not in repr(Throttle._registry)


# ----- cancellation and threads -----
def test_a_sleep_that_raises_propagates_and_leaves_no_claim() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    tickets = [t.acquire(clock.sleep, 60) for _ in range(30)]
    clock.now += 0.002
    t.on_rate_limited(tickets[-1], 1.0)

    def cancelled(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        t.acquire(cancelled, 60)
    ticket = t.acquire(clock.sleep, 60)  # the probe the cancelled call had claimed is free again
    assert ticket.admitted and ticket.waited < 0.5


def test_threads_share_the_pace_and_the_lock_is_not_held_while_sleeping() -> None:
    t = Throttle(requests_per_minute=1200)  # one send every 50 ms
    sent: List[float] = []
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(t.acquire, time.sleep, 60) for _ in range(8)]
        time.sleep(0.1)
        started = time.monotonic()
        t.status()  # answers at once while the others sleep
        assert time.monotonic() - started < 0.05
        sent = sorted(f.result().sent_at or 0.0 for f in futures)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert min(gaps) >= 0.045


# ----- the pure pieces -----
def test_the_estimator_measures_a_bucket_between_two_refusals() -> None:
    """Sends every 10 ms to a bucket of 50/s: refused at 0 and 1 s, 50 accepted in between."""
    records = [(0.0, est.LIMITED)]
    accepted = {round(i * 0.02, 3) for i in range(1, 51)}
    for i in range(1, 100):
        t = round(i * 0.01, 3)
        records.append((t, est.ACCEPTED if t in accepted else est.LIMITED))
    records.append((1.0, est.LIMITED))
    measured = est.measure(records, 1.0)
    assert measured is not None and measured.rate == pytest.approx(50.0, rel=0.05)
    assert measured.saturated
    assert est.measure(records, 1.0, since=0.95) is None  # too short after the barrier


def test_the_estimator_counts_nothing_before_the_barrier_and_waits_for_answers() -> None:
    records = [(0.0, est.LIMITED), (0.5, est.ACCEPTED), (0.6, est.PENDING), (1.0, est.LIMITED)]
    assert est.unanswered_before(records, 1.0)
    assert not est.unanswered_before(records, 0.55)
    assert est.let_through(records, 0.0, 1.0) == 2
    assert est.measure(records, 1.0, since=0.2) is None


def test_gate_and_pacer() -> None:
    gate = Gate()
    assert gate.remaining(5.0) == 0.0
    gate.shut(10.0, probe_at=6.0, trusted=False)
    assert gate.remaining(5.0) == 5.0 and gate.probe_free(5.0)
    gate.claim_probe(busy_until=8.0)
    assert not gate.probe_free(7.0) and gate.probe_free(8.0)
    gate.open(7.0)
    assert gate.remaining(7.0) == 0.0 and gate.opened_early
    pacer = Pacer()
    assert pacer.earliest(1.0) == 1.0
    pacer.commit(1.0, 0.5)
    assert pacer.earliest(1.0) == 1.5
    assert pacer.stale(0.1) and not pacer.stale(0.45)
    pacer.restart(2.0)
    assert pacer.earliest(1.0) == 2.0 and not math.isinf(pacer.next_slot)


# ----- against the fake server -----
@pytest.mark.socket
def test_backends_for_one_endpoint_and_key_share_a_throttle(fake: FakeOpenRouter, key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url, api_key=key) as a, \
            OpenRouterBackend(base_url=fake.base_url, api_key=key, model="b/b") as b, \
            OpenRouterBackend(base_url=fake.base_url, api_key=key, share_throttle=False) as c:
        assert a.throttle is b.throttle is Throttle.for_endpoint(fake.base_url, key)
        assert c.throttle is not a.throttle


@pytest.mark.socket
def test_requests_per_minute_is_shared_by_threads(fake: FakeOpenRouter, key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, requests_per_minute=600,
                           share_throttle=False, retry_policy=RetryPolicy(max_attempts=1)) as b:
        start = time.monotonic()
        done = threading.Barrier(9)

        def call(prompt: str) -> bool:
            ok = b.execute(prompt).success
            done.wait()
            return ok

        with ThreadPoolExecutor(8) as pool:
            results = [pool.submit(call, f"p{i}") for i in range(8)]
            done.wait()
        elapsed = time.monotonic() - start
    assert all(r.result() for r in results)
    assert elapsed >= 0.65  # 8 sends, 0.1 s apart


# ----- shared between processes -----
CHILD = """
import json, sys, time
from openrouter_sync.throttle import Throttle
path, role, arg = sys.argv[1], sys.argv[2], float(sys.argv[3])
if role == "pace":
    t = Throttle.shared(path, requests_per_minute=arg)
    start_at = float(sys.argv[4])
    while time.monotonic() < start_at:
        time.sleep(0.001)
    sent = []
    for _ in range(10):
        ticket = t.acquire(time.sleep, 60)
        sent.append(ticket.sent_at)
        t.on_answer(ticket)
    print(json.dumps({"sent": sent, "cost": t.shared_cost()}))
elif role == "wait":
    t = Throttle.shared(path)
    ticket = t.acquire(time.sleep, 60)
    print(json.dumps({"waited": ticket.waited, "admitted": ticket.admitted}))
elif role == "hold-lock":
    from openrouter_sync.ratelimit.shared import SharedState
    with SharedState(path).locked():
        print("locked", flush=True)
        time.sleep(arg)
"""


def _child(*args: str, timeout: float = 20.0) -> Dict[str, Any]:
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.subprocess
def test_processes_share_one_pace(tmp_path: Path) -> None:
    """Three processes, 10 sends each, 1200/min between them all: the 30 sends take 29 intervals of
    50 ms, and no two go together (a process that wakes late from its sleep shortens the next gap,
    so each gap is checked against less than the interval; processes on their own would send at once)."""
    path = str(tmp_path / "pace.state")
    start_at = time.monotonic() + 1.5  # all three start together (monotonic time is machine-wide)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: _child(path, "pace", "1200", str(start_at)), range(3)))
    sent = sorted(t for r in results for t in r["sent"])
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert len(sent) == 30 and sent[-1] - sent[0] >= 29 * 0.05 * 0.97 and min(gaps) >= 0.02, gaps
    assert all(r["cost"] is not None and r["cost"] < 0.005 for r in results)  # per access to the file


@pytest.mark.subprocess
def test_a_process_killed_holding_the_lock_stops_no_one(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "kill.state")
    holder = subprocess.Popen([sys.executable, "-c", CHILD, path, "hold-lock", "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        waited = _child(path, "wait", "0")
        assert waited["admitted"] and time.monotonic() - started < 5.0  # the kernel released the lock
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_file_that_cannot_be_locked_falls_back_to_this_process(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    t = Throttle.shared(str(tmp_path / "nolock.state"), requests_per_minute=600)
    clock_start = time.monotonic()
    first, second = t.acquire(time.sleep, 60), t.acquire(time.sleep, 60)
    assert first.admitted and second.admitted and time.monotonic() - clock_start >= 0.09  # still paced, locally
    assert "cannot be locked" in caplog.text


def test_a_corrupt_or_stale_state_file_reads_as_empty(tmp_path: Path) -> None:
    from openrouter_sync.ratelimit.shared import SharedState

    path = tmp_path / "corrupt.state"
    path.write_text('{"next_slot": 1e30, "gate_until": "garbage", "base": 0')  # half-written
    state = SharedState(str(path))
    with state.locked() as content:
        assert content is not None and "next_slot" not in content
    path.write_text('{"next_slot": 1e30, "gate_until": 1e30, "gate_at": 1e30, "base": 12345.0}')  # before a reboot
    with state.locked() as content:
        assert content is not None and "gate_until" not in content
    t = Throttle.shared(str(path))
    ticket = t.acquire(time.sleep, 1.0)
    assert ticket.admitted and ticket.waited < 0.5


def test_the_environment_variable_shares_registry_throttles(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_SYNC_SHARED_STATE", str(tmp_path))
    throttle = Throttle.for_endpoint("https://env.invalid/api/v1", f"sk-env-{time.time_ns()}")
    assert throttle.shared_state is not None and throttle.shared_state.startswith(str(tmp_path))
    assert "sk-env" not in throttle.shared_state


@pytest.mark.parametrize("where", ["http://x/state", "reddis://cache:6379/0", "file:///tmp/x"])
def test_a_url_that_is_not_redis_is_refused_never_made_a_file(where: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not a Redis URL"):
        Throttle.shared(where)
    monkeypatch.setenv("OPENROUTER_SYNC_SHARED_STATE", where)
    with caplog.at_level("WARNING", logger="openrouter_sync"):
        throttle = Throttle.for_endpoint("https://typo.invalid/api/v1", f"sk-typo-{time.time_ns()}")
    assert throttle.shared_state is None and "not a Redis URL" in caplog.text
    assert throttle.acquire(time.sleep, 60).admitted
    assert list(tmp_path.iterdir()) == []  # no "http:" directory left behind


def test_the_shared_state_variable_names_a_directory_even_before_it_exists(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """One file per endpoint and key, in a directory created on first use (/run is empty after a boot)."""
    folder = tmp_path / "not-yet" / "openrouter"
    monkeypatch.setenv("OPENROUTER_SYNC_SHARED_STATE", str(folder))
    a = Throttle.for_endpoint("http://dir-test.invalid/v1", "key-A-0123456789")
    b = Throttle.for_endpoint("http://dir-test.invalid/v1", "key-B-0123456789")
    c = Throttle.for_endpoint("http://other-dir-test.invalid/v1", "key-A-0123456789")
    paths = {t.shared_state for t in (a, b, c)}
    assert len(paths) == 3 and all(p is not None and p.startswith(str(folder)) for p in paths)


def test_a_stopped_holder_of_the_state_file_lock_delays_a_call_at_most_a_second(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A process stopped (SIGSTOP, a debugger) while holding the flock: the others wait at most
    LOCK_WAIT once, then go on with their own state, and share again once the lock is free."""
    import fcntl
    import os

    path = tmp_path / "stopped.state"
    throttle = Throttle.shared(str(path))
    assert throttle.acquire(time.sleep, 1.0).admitted  # creates the file
    holder = os.open(path, os.O_RDWR)  # another open file description: as another process's lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with caplog.at_level("WARNING", logger="openrouter_sync"):
            started = time.monotonic()
            first = throttle.acquire(time.sleep, 1.0)
            throttle.on_answer(first)
            later = [throttle.acquire(time.sleep, 1.0) for _ in range(5)]
            elapsed = time.monotonic() - started
        assert first.admitted and all(t.admitted for t in later)
        assert elapsed < 2.0  # one wait of a second, then no more waits while it stays stopped
        assert caplog.text.count("waited") == 1
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    assert throttle.shared_state is not None and throttle.acquire(time.sleep, 1.0).admitted


def test_a_send_slot_beyond_the_callers_budget_is_refused_not_waited_for() -> None:
    """Pacing never outlasts a call's max_elapsed_seconds: the slot is not taken, the caller told."""
    clock = Clock()
    t = Throttle(requests_per_minute=60, clock=clock, adaptive=False)
    assert t.acquire(clock.sleep, 60).sent_at == 100.0
    refused = t.acquire(clock.sleep, 60, budget=0.5)
    assert not refused.admitted and refused.refused_for == pytest.approx(1.0) and clock.now == 100.0
    taken = t.acquire(clock.sleep, 60, budget=5.0)  # the refused request did not use up the slot
    assert taken.sent_at == pytest.approx(101.0)


def test_max_elapsed_seconds_bounds_the_wait_for_a_send_slot(env_key: str) -> None:
    from openrouter_sync import OpenRouterBackend, RetryPolicy
    from openrouter_sync.testing import FakeOpenRouter

    with FakeOpenRouter() as fake:
        backend = OpenRouterBackend(base_url=fake.base_url, requests_per_minute=30, share_throttle=False,
                                    retry_policy=RetryPolicy(max_elapsed_seconds=0.5))
        assert backend.execute("first").success
        started = time.monotonic()
        second = backend.execute("second")  # its slot is 2 s away
        assert time.monotonic() - started < 0.5
    assert not second.success and second.error_type == "rate_limit" and fake.request_count == 1


def test_a_wait_in_line_under_a_full_cap_ends_with_the_budget() -> None:
    """A request waiting for a slot under a full cap stops waiting when its budget is spent:
    it is refused, unsent, after about ``budget`` seconds (the slot never freed)."""
    t, clock, _ = _capped_lane(6)
    for _ in range(6):
        t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",))  # the cap is full; no answer ever comes
    start = clock.now
    ticket = t.acquire(clock.sleep, 60, gate=False, scopes=("model:m",), budget=0.5)
    assert not ticket.admitted and ticket.refused_for > 0
    assert 0.5 <= clock.now - start <= 0.5 + 1e-6
