"""Every row of the outcome table, with ``responses`` (unit level, one attempt each)."""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from typing import Any

import pytest
import requests
import responses

from openrouter_sync import OpenRouterBackend, RetryPolicy

URL = "https://openrouter.ai/api/v1/chat/completions"
SUCCESS = {
    "id": "gen-1783514921-TROS1tEcjn0rUb5bt99Q", "object": "chat.completion", "created": 1783514921,
    "model": "openai/gpt-4o-mini", "provider": "OpenAI",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello there!"}}],
    "usage": {"prompt_tokens": 15, "completion_tokens": 6, "total_tokens": 21, "cost": 0.0000057915,
              "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2}},
}


@pytest.fixture
def b(env_key: str) -> OpenRouterBackend:
    return OpenRouterBackend(model="minimax/minimax-m1-80k", retry_policy=RetryPolicy(max_attempts=1))


def err(code: int, message: str, **metadata: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}, "user_id": "user_1"}
    if metadata:
        body["error"]["metadata"] = metadata
    return body


@responses.activate
def test_success(b: OpenRouterBackend) -> None:
    responses.post(URL, json=SUCCESS, headers={"X-Generation-Id": "gen-h"})
    r = b.execute("hi")
    assert (r.success, r.exit_code, r.error_type, r.stdout, r.stderr) == (True, 0, None, "Hello there!", "")
    assert r.model == "openai/gpt-4o-mini"  # the model the response names
    assert (r.input_tokens, r.output_tokens, r.tokens_used) == (15, 6, 21)
    assert r.cost == pytest.approx(0.0000057915)
    assert (r.finish_reason, r.generation_id, r.provider) == ("stop", "gen-1783514921-TROS1tEcjn0rUb5bt99Q", "OpenAI")
    assert (r.cached_tokens, r.reasoning_tokens, r.attempts) == (3, 2, 1)
    sent = json.loads(responses.calls[0].request.body)
    assert sent == {"model": "minimax/minimax-m1-80k", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 16384, "temperature": 0.7}
    assert len(responses.calls) == 1


@responses.activate
def test_success_without_usage_and_null_content(b: OpenRouterBackend) -> None:
    body = {"id": "gen-2", "model": "x/y", "choices": [{"finish_reason": "stop", "message": {"content": None}}]}
    responses.post(URL, json=body)
    r = b.execute("hi")
    assert r.success and r.stdout == ""
    assert (r.input_tokens, r.output_tokens, r.tokens_used, r.cost) == (None, None, None, None)


def _retry_after_date(seconds: int) -> str:
    return formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(("headers", "body", "expected"), [
    ({"Retry-After": "30"}, err(429, "Rate limit exceeded"), 30.0),
    ({"Retry-After": "1.5"}, err(429, "Rate limit exceeded"), 1.5),
    ({}, err(429, "Rate limit exceeded, retry after 60 seconds"), 60.0),
    ({}, err(429, "Too many requests. Please try again in 2 minutes."), 120.0),
    ({}, {**err(429, "slow down"), "retry_after_seconds": 7}, 7.0),
    ({}, err(429, "Rate limit exceeded"), None),
])
@responses.activate
def test_rate_limited(b: OpenRouterBackend, headers: dict, body: dict, expected: Any) -> None:
    responses.post(URL, status=429, json=body, headers=headers)
    r = b.execute("hi")
    assert (r.success, r.exit_code, r.error_type, r.rate_limited) == (False, 429, "rate_limit", True)
    assert r.rate_limit_wait_seconds == (pytest.approx(expected) if expected is not None else None)
    assert "429" in r.error_message
    assert len(responses.calls) == 1


@responses.activate
def test_rate_limited_http_date(b: OpenRouterBackend) -> None:
    responses.post(URL, status=429, json=err(429, "later"), headers={"Retry-After": _retry_after_date(90)})
    r = b.execute("hi")
    assert 85 <= r.rate_limit_wait_seconds <= 91


@responses.activate
def test_rate_limited_reset_inside_metadata(b: OpenRouterBackend) -> None:
    reset = str(int((time.time() + 40) * 1000))
    body = err(429, "Rate limit exceeded: free-models-per-day",
               headers={"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    responses.post(URL, status=429, json=body)
    assert 38 <= b.execute("hi").rate_limit_wait_seconds <= 41


@pytest.mark.parametrize(("status", "error_type"), [
    (400, "bad_request"), (401, "authentication"), (402, "insufficient_credits"), (503, "service_unavailable"),
    (500, "api_error"), (403, "moderation"), (404, "not_found"), (408, "server_timeout"),
    (413, "payload_too_large"), (422, "unprocessable"), (502, "bad_gateway"), (504, "gateway_timeout"),
    (524, "gateway_timeout"), (529, "overloaded"), (418, "http_error"), (599, "api_error"),
])
@responses.activate
def test_http_errors(b: OpenRouterBackend, status: int, error_type: str) -> None:
    responses.post(URL, status=status, json=err(status, f"server says {status}"))
    r = b.execute("hi")
    assert (r.success, r.exit_code, r.error_type, r.rate_limited) == (False, status, error_type, False)
    assert str(status) in r.error_message
    assert f"server says {status}" in r.error_message  # the server's own message, not a raw dump
    assert '{"error"' not in r.error_message
    assert len(responses.calls) == 1


@responses.activate
def test_moderation_names_reasons(b: OpenRouterBackend) -> None:
    responses.post(URL, status=403, json=err(403, "Input flagged", reasons=["violence", "hate"],
                                               flagged_input="some bad text", provider_name="OpenAI"))
    r = b.execute("hi")
    assert r.error_type == "moderation"
    assert "violence" in r.error_message and "hate" in r.error_message and "some bad text" in r.error_message


@responses.activate
def test_upstream_raw_message_is_quoted(b: OpenRouterBackend) -> None:
    responses.post(URL, status=502, json=err(502, "Provider returned error", raw="upstream exploded",
                                               provider_name="Alibaba"))
    r = b.execute("hi")
    assert "Provider returned error" in r.error_message and "Alibaba" in r.error_message
    assert "upstream exploded" in r.error_message


@responses.activate
def test_error_page_that_is_not_json(b: OpenRouterBackend) -> None:
    responses.post(URL, status=502, body="<html><h1>502 Bad Gateway</h1></html>", content_type="text/html")
    r = b.execute("hi")
    assert (r.error_type, r.exit_code) == ("bad_gateway", 502)
    assert "502 Bad Gateway" in r.error_message


@responses.activate
def test_200_with_top_level_error(b: OpenRouterBackend) -> None:
    responses.post(URL, json=err(502, "Provider returned error"))
    r = b.execute("hi")
    assert (r.success, r.error_type, r.exit_code) == (False, "provider_error", 502)
    assert "Provider returned error" in r.error_message


@responses.activate
def test_200_with_finish_reason_error_keeps_partial(b: OpenRouterBackend) -> None:
    body = {"id": "gen-3", "model": "a/b", "choices": [{
        "finish_reason": "error", "error": {"code": 502, "message": "Provider disconnected mid-stream"},
        "message": {"role": "assistant", "content": "partial ans"}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
    responses.post(URL, json=body)
    r = b.execute("hi")
    assert (r.success, r.error_type, r.exit_code, r.stdout) == (False, "provider_error", 502, "partial ans")
    assert "Provider disconnected mid-stream" in r.error_message
    assert r.tokens_used == 6


@responses.activate
def test_200_not_json(b: OpenRouterBackend) -> None:
    responses.post(URL, body="<html>maintenance</html>", content_type="text/html")
    r = b.execute("hi")
    assert (r.success, r.error_type) == (False, "invalid_response")
    assert "not JSON" in r.error_message


@responses.activate
def test_200_truncated_json(b: OpenRouterBackend) -> None:
    text = json.dumps(SUCCESS)
    responses.post(URL, body=text[: len(text) // 2], content_type="application/json")
    r = b.execute("hi")
    assert (r.success, r.error_type) == (False, "truncated_response")


@responses.activate
def test_200_without_choices(b: OpenRouterBackend) -> None:
    responses.post(URL, json={"id": "x", "model": "a/b"})
    assert b.execute("hi").error_type == "invalid_response"


@responses.activate
def test_connection_failure(b: OpenRouterBackend) -> None:
    responses.post(URL, body=requests.exceptions.ConnectionError("refused"))
    r = b.execute("hi")
    assert (r.success, r.exit_code, r.error_type) == (False, 503, "connection")
    assert r.stderr.startswith("Connection error: ")


@pytest.mark.parametrize("exc", [requests.exceptions.ReadTimeout("slow"), requests.exceptions.ConnectTimeout("x")])
@responses.activate
def test_timeout(b: OpenRouterBackend, exc: Exception) -> None:
    responses.post(URL, body=exc)
    r = b.execute("hi")
    assert (r.success, r.exit_code, r.error_type, r.exit_reason) == (False, 408, "timeout", "timeout")


@responses.activate
def test_non_network_exception_is_reraised(b: OpenRouterBackend) -> None:
    responses.post(URL, body=RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        b.execute("hi")
    assert len(responses.calls) == 1


@responses.activate
def test_bad_inputs_are_clear_errors(b: OpenRouterBackend) -> None:
    with pytest.raises(TypeError, match="prompt must be a string"):
        b.execute(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        b.execute("")
    with pytest.raises(ValueError, match="timeout_seconds must be > 0"):
        b.execute("x", timeout_seconds=0)
    with pytest.raises(ValueError, match="unknown option 'tempreature'"):
        b.execute("x", tempreature=1)
    assert len(responses.calls) == 0


@responses.activate
def test_raise_for_error(b: OpenRouterBackend) -> None:
    from openrouter_sync.errors import AuthenticationError, OpenRouterError, RateLimitError
    responses.post(URL, status=401, json=err(401, "bad key"))
    responses.post(URL, status=429, json=err(429, "slow"), headers={"Retry-After": "9"})
    with pytest.raises(AuthenticationError) as info:
        b.execute("a").raise_for_error()
    assert info.value.result.exit_code == 401
    with pytest.raises(RateLimitError) as info2:
        b.execute("b").raise_for_error()
    assert isinstance(info2.value, OpenRouterError) and info2.value.result.rate_limit_wait_seconds == 9
