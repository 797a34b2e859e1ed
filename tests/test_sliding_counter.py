"""The sliding window counter (``limiters.SlidingCounter``) and its greedy oracle: its wait is exact
in floats on a clock that reads like epoch time, its oracle is bounded and quick, and the client
answers every prompt against it in the simulator."""

from __future__ import annotations

import math
import random
import time
from fractions import Fraction

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from limiters import SlidingCounter, counter_sends, draw, ideal
from ratesim import EPOCH, simulate

CASES = settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
WINDOWS = st.one_of(st.sampled_from([0.5, 1.0, 2.0, 5.0, 60.0]), st.floats(0.05, 100.0))


def counter(limit: int, window: float, start: float, index: int, prev: int, cur: int) -> SlidingCounter:
    server = SlidingCounter(limit, window, "exact", start=start)
    server.index, server.prev, server.cur = index, prev, cur
    return server


def true_wait(limit: int, window: float, prev: int, cur: int, elapsed: float) -> float:
    """The wait in real numbers, from the counts in the request's window and its elapsed part."""
    n, w, p, c, e = (Fraction(x) for x in (limit, window, prev, cur, elapsed))
    if c < n and p > 0 and w * (1 - (n - c) / p) < w:
        return float(max(Fraction(0), w * (1 - (n - c) / p) - e))
    return float(w - e + max(Fraction(0), w * (1 - n / c)))  # the next window, whose prev is cur


@CASES
@given(limit=st.integers(1, 400), window=WINDOWS, shift=st.floats(0.0, 1e5), stale=st.integers(0, 2),
       data=st.data())
def test_a_request_sent_after_the_wait_is_admitted_and_not_a_float_before(
        limit: int, window: float, shift: float, stale: int, data: st.DataObject) -> None:
    """The exact wait at t, for any counts: a request at t + wait is admitted, one a float earlier is
    not (the wait is the first time, not a time after it), and the wait is the closed form's."""
    count = st.one_of(st.integers(0, limit), st.integers(max(0, limit - 3), limit))  # often full or nearly
    prev, cur = data.draw(count, label="prev"), data.draw(count, label="cur")
    start = EPOCH + shift
    probe = SlidingCounter(limit, window, "exact", start=start)
    index = probe.window_of(start) + data.draw(st.integers(0, 50), label="window")
    lead = probe.base + index * window  # that window's start, about
    t = data.draw(st.one_of(st.floats(lead - 1e-6, lead + 1e-6), st.floats(lead, lead + window),
                            st.floats(lead + window - 1e-6, lead + window)), label="t")
    t = max(t, start)
    index = min(index, probe.window_of(t)) - stale  # counts from a window before t's too
    answer = counter(limit, window, start, index, prev, cur).handle(t, "m")
    event("admitted" if answer.status == 200 else "refused")
    if answer.status == 200:
        return
    wait = answer.wait
    assert wait is not None and wait > 0.0
    assert (t + wait) - t == wait  # the two are close: the sum is the time, exactly
    assert counter(limit, window, start, index, prev, cur).handle(t + wait, "m").status == 200
    before = math.nextafter(t + wait, -math.inf)
    if before >= t:
        assert counter(limit, window, start, index, prev, cur).handle(before, "m").status == 429
    i, p, c = probe.rolled(t, index, prev, cur)
    assert abs(wait - true_wait(limit, window, p, c, probe.elapsed(t, i))) <= 4 * math.ulp(t) + 1e-9 * window


def test_the_wait_is_exact_on_refused_states() -> None:
    """The same on 3000 refused states (seeded): full or nearly full counts, early in the window."""
    rng = random.Random(20240611)
    refused = 0
    for _ in range(3000):
        limit = rng.choice([1, 2, 3, 8, 10, 37, 100, 300])
        window = rng.choice([0.5, 1.0, 2.0, 5.0, rng.uniform(0.05, 100.0)])
        start = EPOCH + rng.uniform(0.0, 1e5)
        probe = SlidingCounter(limit, window, "exact", start=start)
        index = probe.window_of(start) + rng.randrange(40)
        t = max(start, probe.base + index * window + window * rng.random() ** 4)
        index = probe.window_of(t)
        prev, cur = rng.randint(limit // 2, limit), rng.randint(max(0, limit - 3), limit)
        answer = counter(limit, window, start, index, prev, cur).handle(t, "m")
        if answer.status == 200:
            continue
        refused += 1
        assert answer.wait is not None
        at = t + answer.wait
        assert counter(limit, window, start, index, prev, cur).handle(at, "m").status == 200
        before = math.nextafter(at, -math.inf)
        assert before < t or counter(limit, window, start, index, prev, cur).handle(before, "m").status == 429
        true = true_wait(limit, window, prev, cur, probe.elapsed(t, index))
        assert abs(answer.wait - true) <= 4 * math.ulp(t) + 1e-9 * window
    assert refused > 1500


@CASES
@given(limit=st.integers(1, 120), window=WINDOWS, shift=st.floats(0.0, 1e5), n=st.integers(1, 300),
       workers=st.integers(1, 64), latency=st.sampled_from([0.001, 0.01, 0.05, 0.2, 1.0]))
def test_the_oracle_is_within_its_bounds_and_quick(
        limit: int, window: float, shift: float, n: int, workers: int, latency: float) -> None:
    """Each window admits ``limit`` at most (its own count never passes it), so the n-th request is in
    the window ``ceil(n / limit) - 1`` after the start's at the earliest; the greedy admits one within
    a window and a float after a worker is free (the next window, whose own count is 0, admits just
    after its start), so never slower than ``n * (window + latency)``. Its sends replay against the
    counter: each is admitted, in order."""
    server = SlidingCounter(limit, window, "exact", start=EPOCH + shift)
    server.latency = latency
    began = time.perf_counter()
    best = ideal(server, n, workers)
    assert time.perf_counter() - began < 1.0
    first = server.start - (server.base + server.window_of(server.start) * window)  # into the first window
    low = max(math.ceil(n / workers) * latency, (math.ceil(n / limit) - 1) * window - first + latency)
    slack = n * math.ulp(server.start)  # each send is a time near 1.7e9, one rounding off
    assert best >= low - slack
    assert best >= (n - limit) / (limit / window) - window + latency - slack  # the rate's bound, a window off
    assert best <= n * (window + latency) + slack
    sends = counter_sends(server, n, workers)
    assert sends == sorted(sends) and len(sends) == n
    replay = SlidingCounter(limit, window, "exact", start=server.start)
    assert all(replay.handle(t, "m").status == 200 for t in sends)
    assert (server.index, server.prev, server.cur) == (server.window_of(server.start), 0, 0)  # untouched


def test_the_oracle_on_a_steady_window() -> None:
    """10 per second, the clock 0.37 s into a second: 10 at once, then one each tenth of a second
    from the next second on (the previous second's 10 weigh less and less)."""
    server = SlidingCounter(10, 1.0, "exact")
    server.latency = 0.05
    sends = [round(t - EPOCH, 6) for t in counter_sends(server, 25, 32)]
    assert sends == [0.0] * 10 + [round(0.63 + 0.1 * k, 6) for k in range(15)]
    assert abs(ideal(server, 25, 32) - (sends[-1] + 0.05)) < 1e-6


def test_the_sliding_family_draws_both_kinds() -> None:
    kinds = {type(draw(random.Random(seed), 150, "sliding")[1]).__name__ for seed in range(20)}
    assert kinds == {"SlidingCounter", "SlidingLog"}


INSTANCES = [(1, 20, 1.0, "exact", 0.05), (2, 40, 2.0, "whole", 0.1), (3, 8, 5.0, "exact", 0.2)]


def test_every_prompt_is_answered_on_a_sliding_counter() -> None:
    """Three instances, fixed seeds: no prompt lost, and no run beats the oracle."""
    for seed, limit, window, style, latency in INSTANCES:
        server = SlidingCounter(limit, window, style)
        server.latency = latency
        best = ideal(server, 150, 32)
        run = simulate(server, n=150, workers=32, seed=seed)
        assert run.failures == 0, (limit, window, style)
        assert len(run.finished_at) == 150
        assert best - 1e-6 <= run.makespan < 60 * best
