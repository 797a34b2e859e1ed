"""RetryPolicy: an immutable value; what is retried; where waits come from; budgets; logging."""

from __future__ import annotations

import dataclasses
import logging
import random
import time

import pytest

from openrouter_sync import OpenRouterBackend, RetryPolicy
from openrouter_sync.classify import Outcome
from openrouter_sync.testing import FakeOpenRouter, Reply

FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.02, max_wait_seconds=2.0)


def test_policy_is_an_immutable_value() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 3  # type: ignore[misc]
    assert policy == RetryPolicy()
    assert hash(policy) == hash(RetryPolicy())
    assert policy.replace(max_attempts=2).max_attempts == 2 and policy.max_attempts == 8
    assert RetryPolicy.never() == RetryPolicy(max_attempts=1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_attempts": 0}, "max_attempts"), ({"backoff_base": -1}, "backoff_base"),
    ({"jitter": 2}, "jitter"), ({"max_elapsed_seconds": 0}, "max_elapsed_seconds"),
    ({"max_wait_seconds": -1}, "max_wait_seconds"),
])
def test_policy_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=5.0, jitter=0.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(backoff_base=1.0, backoff_max=5.0, jitter=0.5)
    rng = random.Random(1)
    draws = [jittered.backoff(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in draws) and len(set(draws)) > 100


RETRIED = ["rate_limit", "server_timeout", "api_error", "bad_gateway", "service_unavailable", "gateway_timeout",
           "overloaded", "connection", "timeout", "truncated_response", "invalid_response"]
NOT_RETRIED = ["bad_request", "authentication", "moderation", "not_found", "payload_too_large", "unprocessable",
               "configuration", "http_error"]


@pytest.mark.parametrize("kind", RETRIED)
def test_retried_by_default(kind: str) -> None:
    assert RetryPolicy().is_retryable(Outcome(kind, 500))


@pytest.mark.parametrize("kind", NOT_RETRIED)
def test_not_retried_by_default(kind: str) -> None:
    assert not RetryPolicy().is_retryable(Outcome(kind, 400))


def test_402_only_with_retry_after_and_200_errors_by_code() -> None:
    policy = RetryPolicy()
    assert not policy.is_retryable(Outcome("insufficient_credits", 402))
    assert policy.is_retryable(Outcome("insufficient_credits", 402, retry_after=2.0))
    assert policy.is_retryable(Outcome("provider_error", 502))
    assert not policy.is_retryable(Outcome("provider_error", 400))
    assert not RetryPolicy(retry_on=frozenset({"timeout"})).is_retryable(Outcome("api_error", 500))


@pytest.mark.parametrize(("headers", "body", "source"), [
    ({"Retry-After": "0.05"}, None, "retry-after"),
    ({"retry-after-ms": "50"}, None, "retry-after-ms"),
    ({}, {"error": {"code": 429, "message": "slow"}, "retry_after_seconds": 0.05}, "body"),
    ({}, {"error": {"code": 429, "message": "slow"}}, "backoff"),
])
def test_each_wait_source_is_used_and_logged(fake: FakeOpenRouter, key: str, caplog: pytest.LogCaptureFixture,
                                             headers: dict, body: object, source: str) -> None:
    caplog.set_level(logging.WARNING, logger="openrouter_sync")
    fake.script(Reply(429, headers, body), Reply())
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=FAST, adaptive_rate=False) as b:
        r = b.execute("x")
    assert r.success and r.attempts == 2
    retry_lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("retry ")]
    assert len(retry_lines) == 1
    assert f"({source})" in retry_lines[0] and "HTTP 429" in retry_lines[0] and retry_lines[0].startswith("retry 2 ")
    assert "0 of 8 attempts used (refusals are free)" in retry_lines[0]


def test_too_long_a_wait_returns_at_once(fake: FakeOpenRouter, key: str) -> None:
    fake.script(Reply(429, {"Retry-After": str(9 * 3600)}, {"error": {"code": 429, "message": "per-day limit"}}))
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=RetryPolicy(max_wait_seconds=1),
                           share_throttle=False) as b:
        start = time.monotonic()
        r = b.execute("x")
        assert time.monotonic() - start < 1.0
        assert (r.error_type, r.rate_limited, r.attempts) == ("rate_limit", True, 1)
        assert r.rate_limit_wait_seconds == pytest.approx(9 * 3600, abs=2)
        # The shared gate holds the others back, but never for more than max_gate_seconds (60 s):
        # a call that cannot wait that long is refused unsent, told how long the gate stays shut.
        again = b.execute("y")
        assert again.error_type == "rate_limit" and 50 < again.rate_limit_wait_seconds <= 60
        assert fake.request_count == 1 and b.throttle.status().blocked
        # The gate can be seen and reset in public: then the call goes out at once.
        b.throttle.reset()
        assert b.execute("z").success and fake.request_count == 2


def test_total_budget_is_respected(fake: FakeOpenRouter, key: str) -> None:
    fake.script(*[Reply(503) for _ in range(20)])
    policy = RetryPolicy(max_attempts=20, backoff_base=0.2, backoff_max=0.2, jitter=0, max_elapsed_seconds=0.5)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy) as b:
        start = time.monotonic()
        r = b.execute("x")
    assert r.error_type == "service_unavailable"
    assert time.monotonic() - start < 0.9
    assert 2 <= r.attempts <= 3


def test_attempts_and_waits_are_recorded(fake: FakeOpenRouter, key: str) -> None:
    fake.script(Reply(500), Reply(502), Reply())
    policy = RetryPolicy(backoff_base=0.05, backoff_max=0.05, jitter=0)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy) as b:
        r = b.execute("x")
    assert r.success and r.attempts == 3
    assert r.retry_wait_seconds == pytest.approx(0.1, abs=0.02)


def test_a_503_naming_no_wait_is_an_attempt_and_a_signal_for_its_model(fake: FakeOpenRouter, key: str) -> None:
    """A 503 without ``Retry-After`` may be lasting (no provider meets the routing requirements), so
    it counts as an attempt; it is also a load shed by the model's provider, so it slows that
    model's scope, and not the key's."""
    fake.script(Reply(503), Reply())
    policy = RetryPolicy(backoff_base=0.05, backoff_max=0.05, jitter=0)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy, share_throttle=False) as b:
        r = b.execute("x")
        scopes = {s.scope: s for s in b.throttle.status().scopes}
    assert r.success and r.attempts == 2
    model = next(name for name in scopes if name.startswith("model:"))
    assert scopes[model].rate_limited_count == 1 and scopes["key"].rate_limited_count == 0
    assert 0.05 <= r.retry_wait_seconds < 1.5


def test_exhausted_retries_return_the_last_failure(fake: FakeOpenRouter, key: str) -> None:
    # max_attempts counts what the server processed: the 529 between (a refusal) is not one of them.
    fake.script(Reply(500), Reply(529), Reply(502), Reply(500))
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.01)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy) as b:
        r = b.execute("x")
    assert (r.error_type, r.exit_code, r.attempts) == ("api_error", 500, 4)
    assert fake.request_count == 4


@pytest.mark.parametrize("status", [429, 503, 529])
def test_refusals_are_bounded_by_time_not_by_attempts(fake: FakeOpenRouter, key: str, status: int) -> None:
    # A server that sheds load refuses many times before it takes a request: none of that is lost.
    fake.script(*[Reply(status, {"Retry-After": "0.01"}) for _ in range(12)])
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.01)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy, share_throttle=False) as b:
        r = b.execute("x")
    assert r.success and r.attempts == 13 and fake.request_count == 13


@pytest.mark.parametrize("status, error_type", [(429, "rate_limit"), (503, "service_unavailable")])
def test_a_server_that_refuses_forever_ends_each_call_in_max_elapsed_seconds(
        fake: FakeOpenRouter, key: str, status: int, error_type: str) -> None:
    """Refusals do not use up ``max_attempts``: a 429's wait holds the scope's gate, so the call retries
    until ``max_elapsed_seconds``; a 503's (a load shed) slows the model's pace instead, and once the
    next paced send lies beyond the time left the call ends with the server's answer."""
    fake.script(*[Reply(status, {"Retry-After": "0.02"}) for _ in range(2000)])
    policy = RetryPolicy(max_attempts=3, max_elapsed_seconds=1.0)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy, share_throttle=False) as b:
        start = time.monotonic()
        r = b.execute("x")
    assert r.error_type == error_type and r.attempts > (3 if status == 429 else 1), r.attempts
    assert time.monotonic() - start < 2.5  # the budget, and a loaded machine's slack


def test_without_max_elapsed_seconds_refusals_count_as_attempts(fake: FakeOpenRouter, key: str) -> None:
    fake.script(*[Reply(503, {"Retry-After": "0.01"}) for _ in range(10)])
    policy = RetryPolicy(max_attempts=3, max_elapsed_seconds=None)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy, share_throttle=False) as b:
        r = b.execute("x")
    assert r.error_type == "service_unavailable" and r.attempts == 3 and fake.request_count == 3


def test_no_retry_policy_means_one_request_each(fake: FakeOpenRouter, key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=RetryPolicy(max_attempts=1)) as b:
        for reply in (Reply(429, {"Retry-After": "0.01"}), Reply(500), Reply(503), Reply(reset=True),
                      Reply(truncate=True), Reply(200, {}, "error200")):
            fake.reset_counts()
            fake.script(reply)
            assert not b.execute("x").success
            assert fake.request_count == 1


def test_ctrl_c_during_a_wait_returns_at_once(fake: FakeOpenRouter, key: str) -> None:
    import os
    import signal
    import threading
    fake.script(Reply(503, {"Retry-After": "30"}))
    with OpenRouterBackend(base_url=fake.base_url, api_key=key) as b:
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            b.execute("x")
        assert time.monotonic() - start < 1.5
        timer.cancel()


def test_a_new_policy_takes_effect(fake: FakeOpenRouter, key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url, api_key=key) as b:
        b.retry_policy = RetryPolicy(max_attempts=1)
        fake.script(Reply(503), Reply())
        assert b.execute("x").exit_code == 503 and fake.request_count == 1
        with pytest.raises(TypeError, match="RetryPolicy"):
            b.retry_policy = 3  # type: ignore[assignment]


def test_a_call_that_ends_unsent_at_the_gate_reports_what_the_server_said(fake: FakeOpenRouter, key: str) -> None:
    # The last attempts were held at the shared gate (not sent) when the budget ran out: the result
    # is the server's own last answer (a 503), not a 429 it never sent.
    fake.script(*[Reply(503, {"Retry-After": "0.3"}) for _ in range(50)])
    policy = RetryPolicy(max_attempts=3, max_elapsed_seconds=1.0)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy, share_throttle=False) as b:
        r = b.execute("x")
    assert (r.error_type, r.exit_code) == ("service_unavailable", 503) and "503" in (r.error_message or "")


def test_a_refusal_saying_come_back_now_counts_as_an_attempt(fake: FakeOpenRouter, key: str) -> None:
    # Retry-After: 0 again and again is a server that is down, not one shedding load: no storm.
    fake.script(*[Reply(503, {"Retry-After": "0"}) for _ in range(50)])
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.01)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy, share_throttle=False) as b:
        r = b.execute("x")
    assert r.error_type == "service_unavailable" and fake.request_count == 3
