"""The shared gate and pacer: unit tests on an injected clock, then threads against the fake server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from openrouter_sync import OpenRouterBackend, RetryPolicy, run_sheets
from openrouter_sync.testing import FakeOpenRouter, RateLimit, Reply, fake_reply
from openrouter_sync.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_open_gate_does_not_wait() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    ticket, waited = t.acquire(clock.sleep, 60)
    assert ticket == 100.0 and waited == 0


def test_told_wait_shuts_the_gate_for_everyone() -> None:
    clock = Clock()
    t = Throttle(clock=clock, adaptive=False)
    t.on_rate_limited(100.0, 5.0)
    assert t.blocked_for() == 5.0
    _, waited = t.acquire(clock.sleep, 60)
    assert waited == pytest.approx(5.0)
    t.block(3.0)
    _, waited = t.acquire(clock.sleep, 60)
    assert waited == pytest.approx(3.0)


def test_gate_longer_than_max_wait_is_not_waited() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    t.block(3600)
    ticket, remaining = t.acquire(clock.sleep, 60)
    assert ticket is None and remaining == pytest.approx(3600)
    assert clock.now == 100.0


def test_fixed_pacing_spaces_sends() -> None:
    clock = Clock()
    t = Throttle(requests_per_minute=120, clock=clock)
    starts = [t.acquire(lambda s: None, 60)[0] for _ in range(5)]
    assert starts == pytest.approx([100.0, 100.5, 101.0, 101.5, 102.0])
    with pytest.raises(ValueError, match="requests_per_minute must be > 0"):
        Throttle(requests_per_minute=0)


def test_adaptive_rate_slows_on_429_and_recovers() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    assert t.learned_rate is None
    for _ in range(10):  # a burst of answers in the last second
        clock.now += 0.05
        t.on_answer(clock.now - 0.01)
    t.on_rate_limited(clock.now - 0.01, 0.1)  # a token bucket: at most one token's interval
    first = t.learned_rate
    assert first is not None and first <= 10.0 + 1e-9
    # A 429 to a request sent before that adjustment is not a new event.
    t.on_rate_limited(clock.now - 0.02, None)
    assert t.learned_rate == first
    # Quiet: answers keep coming without 429s; a rate bounded by the server creeps back up.
    for _ in range(40):
        clock.now += 0.1
        t.on_answer(clock.now - 0.05)
    assert first < t.learned_rate < first * 1.5  # type: ignore[operator]


def test_a_guessed_rate_is_probed_upwards_quickly() -> None:
    clock = Clock()
    t = Throttle(clock=clock)
    for _ in range(4):
        t.acquire(clock.sleep, 60)
        clock.now += 0.25
    t.on_rate_limited(clock.now - 0.01, None)  # no hint: a guess from what was being sent
    guess = t.learned_rate
    assert guess is not None
    for _ in range(40):
        clock.now += 0.1
        t.on_answer(clock.now - 0.05)
    assert t.learned_rate is None or t.learned_rate > guess * 2


def test_measured_rate_converges_on_the_server_rate() -> None:
    """Simulated: a server accepting 20/s; the client paced at 40/s; then a 429 event."""
    clock = Clock()
    t = Throttle(clock=clock)
    t._rate, t._measured = 40.0, True
    t._regime_start = t._adjusted_at = clock.now
    for i in range(41):  # 2 seconds in which the server accepted 20 requests a second
        t.on_answer(clock.now + i * 0.05)
    clock.now += 2.0
    t._latencies.clear()
    t.on_rate_limited(clock.now, None)
    assert t.learned_rate == pytest.approx(20.0 * 0.98, rel=0.06)


def test_gate_can_be_ignored_but_pacing_cannot() -> None:
    clock = Clock()
    t = Throttle(requests_per_minute=60, clock=clock)
    t.block(30)
    first, waited = t.acquire(clock.sleep, 60, gate=False)
    assert first == 100.0 and waited == 0
    second, waited = t.acquire(clock.sleep, 60, gate=False)
    assert second == 101.0 and waited == pytest.approx(1.0)


@pytest.mark.socket
def test_one_429_delays_every_thread(fake: FakeOpenRouter, key: str) -> None:
    """Thread A is told to wait 0.6 s; threads B..E, sending after that, wait too."""
    fake.script(Reply(429, {"Retry-After": "0.6"}))
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, adaptive_rate=False) as b:
        first = b.execute("A")
        assert first.success and first.attempts == 2
    # The gate was shut when A got its 429; calls started meanwhile wait for it.
    fake.reset_counts()
    fake.script(Reply(429, {"Retry-After": "0.6"}))
    with OpenRouterBackend(base_url=fake.base_url, api_key=key + "x", adaptive_rate=False) as b:
        times: dict[str, float] = {}
        start = time.monotonic()

        def call(prompt: str) -> None:
            b.execute(prompt)
            times[prompt] = time.monotonic() - start

        a = threading.Thread(target=call, args=("A",))
        a.start()
        deadline = time.monotonic() + 2
        while b.throttle.blocked_for() == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert b.throttle.blocked_for() > 0.3
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(call, ["B", "C", "D", "E"]))
        a.join()
    assert all(times[p] >= 0.55 for p in "BCDE"), times
    assert fake.status_counts[429] == 1


@pytest.mark.socket
def test_requests_per_minute_is_shared_by_threads(fake: FakeOpenRouter, key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, requests_per_minute=600) as b:
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(b.execute, [f"p{i}" for i in range(8)]))
        elapsed = time.monotonic() - start
    assert all(r.success for r in results)
    assert elapsed >= 0.65  # 8 sends, 0.1 s apart


@pytest.mark.socket
def test_short_storm_loses_nothing(key: str) -> None:
    """60 prompts, 12 threads, a server allowing 40/s with burst 5: every prompt answered once, few 429s."""
    with FakeOpenRouter(rate_limit=RateLimit(rate=40, burst=5), latency=0.01) as server, \
            OpenRouterBackend(base_url=server.base_url, api_key=key,
                              retry_policy=RetryPolicy(max_attempts=20, max_wait_seconds=5)) as b:
        prompts = [f"storm {i}" for i in range(60)]
        results = run_sheets(b, prompts, max_workers=12)
        assert [r.stdout for r in results] == [fake_reply(p, b.model) for p in prompts]
        assert all(server.answers_per_prompt[p] == 1 for p in prompts)
        assert server.status_counts[429] <= 20


@pytest.mark.socket
def test_no_retry_policy_never_waits_for_the_gate(fake: FakeOpenRouter, key: str) -> None:
    """With retries off, a call right after a 429 that ordered a long wait still sends (one request) at once."""
    fake.script(Reply(429, {"Retry-After": "30"}), Reply(429, {"Retry-After": "3600"}))
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=RetryPolicy(max_attempts=1)) as b:
        start = time.monotonic()
        assert b.execute("a").exit_code == 429
        assert b.execute("b").exit_code == 429
        assert b.execute("c").success
        assert time.monotonic() - start < 1.0
    assert fake.request_count == 3


@pytest.mark.socket
def test_backends_can_share_a_throttle(fake: FakeOpenRouter, key: str) -> None:
    shared = Throttle()
    fake.script(Reply(429, {"Retry-After": "0.5"}))
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, throttle=shared, model="a/a") as one, \
            OpenRouterBackend(base_url=fake.base_url, api_key=key, throttle=shared, model="b/b") as two:
        assert one.throttle is two.throttle
        start = time.monotonic()
        assert one.execute("x").success  # waited 0.5 s
        assert shared.blocked_for() == 0
        shared.block(0.4)
        assert two.execute("y").success
        assert time.monotonic() - start >= 0.85
    with pytest.raises(TypeError, match="throttle"):
        OpenRouterBackend(throttle="no")  # type: ignore[arg-type]
