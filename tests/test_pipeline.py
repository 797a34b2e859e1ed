"""The attempt pipeline on an injected clock: retries, waits, budgets and timeouts without wall-clock time.

``responses`` stands in for the network (it replaces the transport adapter), and the clock only
moves when the pipeline sleeps, so every figure below is exact.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import responses

from openrouter_sync.call import Pipeline
from openrouter_sync.request import CallSpec
from openrouter_sync.retry import RetryPolicy
from openrouter_sync.throttle import Throttle
from openrouter_sync.transport import Transport

URL = "https://api.test/v1"
COMPLETION = {"id": "gen-1", "model": "m/x", "choices": [{"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": "hi"}}], "usage": {"prompt_tokens": 1,
              "completion_tokens": 1}}


class FakeClock:
    """Time that passes only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def make(policy: RetryPolicy, clock: FakeClock) -> Pipeline:
    throttle = Throttle(clock=clock, adaptive=False)
    transport = Transport(URL, {"Content-Type": "application/json"})
    return Pipeline(transport, lambda key: throttle, policy, clock=clock, sleep=clock.sleep)


def spec(timeout: float = 30.0) -> CallSpec:
    return CallSpec("m/x", 0.5, 10, timeout, ({"role": "user", "content": "q"},), {})


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    payload = COMPLETION if body is None and status == 200 else body or {"error": {"code": status, "message": "no"}}
    return {"method": "POST", "url": URL + "/chat/completions", "status": status, "headers": headers or {},
            "body": json.dumps(payload)}


POLICY = RetryPolicy(backoff_base=0.5, backoff_max=4.0, jitter=0.0)


@responses.activate
def test_a_named_wait_is_slept_then_the_answer_returned() -> None:
    clock = FakeClock()
    responses.add(**reply(429, headers={"Retry-After": "2"}))
    responses.add(**reply())
    record = make(POLICY, clock).run(spec(), "key")
    result = record.to_result(spec())
    assert result.success and result.attempts == 2
    assert clock.slept == [2.0] and result.retry_wait_seconds == 2.0
    assert len(responses.calls) == 2


@responses.activate
def test_backoff_without_a_named_wait_and_the_attempt_cap() -> None:
    clock = FakeClock()
    for _ in range(4):
        responses.add(**reply(503))
    record = make(POLICY.replace(max_attempts=4), clock).run(spec(), "key")
    assert record.outcome.error_type == "service_unavailable" and record.attempts == 4
    assert clock.slept == [0.5, 1.0, 2.0]


@responses.activate
def test_a_wait_over_max_wait_returns_at_once_with_the_wait() -> None:
    clock = FakeClock()
    responses.add(**reply(429, headers={"Retry-After": "500"}))
    result = make(POLICY, clock).run(spec(), "key").to_result(spec())
    assert result.rate_limited and result.rate_limit_wait_seconds == 500.0
    assert clock.slept == [] and len(responses.calls) == 1


@responses.activate
def test_the_budget_stops_retrying_before_it_would_be_passed() -> None:
    clock = FakeClock()
    for _ in range(5):
        responses.add(**reply(503, headers={"Retry-After": "2"}))
    record = make(POLICY.replace(max_elapsed_seconds=5.0), clock).run(spec(), "key")
    assert clock.slept == [2.0, 2.0] and record.attempts == 3  # a third wait would end at 6 s > 5 s


@responses.activate
def test_each_attempt_timeout_is_cut_to_the_budget_left() -> None:
    clock = FakeClock()
    responses.add(**reply(503, headers={"Retry-After": "3"}))
    responses.add(**reply())
    make(POLICY.replace(max_elapsed_seconds=5.0), clock).run(spec(timeout=4.0), "key")
    _connect, read = responses.calls[1].request.req_kwargs["timeout"]
    assert read <= 2.0 + 1e-6  # 5 s budget - 3 s already waited


@responses.activate
def test_non_retryable_and_200_with_error() -> None:
    clock = FakeClock()
    responses.add(**reply(400))
    assert make(POLICY, clock).run(spec(), "key").attempts == 1
    responses.add(**reply(200, body={"choices": [{"finish_reason": "error", "error": {"code": 502, "message": "x"},
                                                   "message": {"content": "part"}}]}))
    responses.add(**reply())
    record = make(POLICY, clock).run(spec(), "key")
    assert record.outcome.ok and record.attempts == 2


@responses.activate
def test_network_errors_become_outcomes() -> None:
    clock = FakeClock()
    responses.add(responses.POST, URL + "/chat/completions", body=requests.exceptions.ConnectionError("refused"))
    record = make(RetryPolicy.never(), clock).run(spec(), "key")
    result = record.to_result(spec())
    assert (result.error_type, result.exit_code) == ("connection", 503)
    assert result.stderr.startswith("Connection error: ")


@responses.activate
def test_a_redirect_is_never_followed() -> None:
    clock = FakeClock()
    responses.add(responses.POST, URL + "/chat/completions", status=302, headers={"Location": "https://evil.test/"})
    result = make(POLICY, clock).run(spec(), "key").to_result(spec())
    assert (result.error_type, result.exit_code, result.attempts) == ("redirect", 302, 1)
    assert "evil.test" in result.error_message and len(responses.calls) == 1


def test_bad_option_values_raise_before_anything_is_sent() -> None:
    bad = CallSpec("m/x", 0.5, 10, 5.0, ({"role": "user", "content": "q"},), {"top_p": float("nan")})
    with pytest.raises(ValueError, match="top_p"):
        make(POLICY, FakeClock()).run(bad, "key")


def test_backends_for_one_endpoint_and_key_share_one_throttle() -> None:
    from openrouter_sync import OpenRouterBackend

    a = OpenRouterBackend(base_url=URL, api_key="sk-or-v1-shared-0123456789")
    b = OpenRouterBackend(base_url=URL + "/", api_key="sk-or-v1-shared-0123456789", model="other/model")
    other_key = OpenRouterBackend(base_url=URL, api_key="sk-or-v1-other-0123456789")
    own = OpenRouterBackend(base_url=URL, api_key="sk-or-v1-shared-0123456789", share_throttle=False)
    assert a.throttle is b.throttle
    assert other_key.throttle is not a.throttle and own.throttle is not a.throttle
    mine = Throttle()
    assert OpenRouterBackend(base_url=URL, api_key="k" * 20, throttle=mine).throttle is mine
    assert "shared-0123456789" not in repr(a.throttle) + repr(a.throttle.status())


def test_a_backend_applies_its_pacing_options_to_the_throttle_it_uses() -> None:
    from openrouter_sync import OpenRouterBackend

    key = "sk-or-v1-pacing-0123456789"
    paced = OpenRouterBackend(base_url=URL + "/paced", api_key=key, requests_per_minute=120, adaptive_rate=False)
    assert paced.throttle.requests_per_minute == 120.0 and paced.throttle.adaptive is False
    assert OpenRouterBackend(base_url=URL + "/paced", api_key=key).throttle is paced.throttle  # shared, as set
    mine = Throttle()
    OpenRouterBackend(base_url=URL, api_key=key, throttle=mine, requests_per_minute=30)
    assert mine.requests_per_minute == 30.0 and mine.adaptive is True
    untouched = OpenRouterBackend(base_url=URL + "/untouched", api_key=key)
    assert untouched.throttle.requests_per_minute is None and untouched.throttle.adaptive is True
