"""Every source of a server-named wait, and the clamping of silly values."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from openrouter_sync.waits import (
    MAX_SANE_WAIT,
    parse_reset,
    parse_retry_after,
    wait_from_body,
    wait_from_headers,
    wait_from_text,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("value", "expected"), [
    ("30", 30.0), ("1.5", 1.5), ("0", 0.0), ("-5", 0.0), ("99999999", MAX_SANE_WAIT), ("soon", None), ("", None),
    (formatdate(NOW + 120, usegmt=True), 120.0), (formatdate(NOW - 50, usegmt=True), 0.0),
])
def test_retry_after(value: str, expected: object) -> None:
    got = parse_retry_after(value, now=NOW)
    assert got == (pytest.approx(expected, abs=1) if expected is not None else None)


@pytest.mark.parametrize(("value", "expected"), [
    (str(int((NOW + 40) * 1000)), 40.0),  # epoch milliseconds
    (str(int(NOW + 40)), 40.0),  # epoch seconds
    ("12", 12.0),  # a delay
    (str(int((NOW - 10) * 1000)), 0.0),  # in the past
])
def test_reset(value: str, expected: float) -> None:
    assert parse_reset(value, now=NOW) == pytest.approx(expected, abs=0.01)


def test_header_precedence() -> None:
    both = {"Retry-After": "3", "retry-after-ms": "1500", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9"}
    assert wait_from_headers(both, NOW) == (3.0, "retry-after")
    assert wait_from_headers({"retry-after-ms": "1500"}, NOW) == (1.5, "retry-after-ms")
    reset = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int((NOW + 7) * 1000))}
    assert wait_from_headers(reset, NOW) == (pytest.approx(7.0), "x-ratelimit-reset")
    assert wait_from_headers({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "9"}, NOW) is None
    assert wait_from_headers({}, NOW) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("Rate limit exceeded, retry after 60 seconds", 60.0),
    ("Please try again in 2 minutes.", 120.0),
    ("retry in 1.5s", 1.5),
    ("retry after 250ms", 0.25),
    ("try again in 3 hours", 3 * 3600.0),
    ("Retry after: 10", 10.0),
    ("temporarily rate-limited upstream. Please retry shortly", None),
])
def test_text(text: str, expected: object) -> None:
    assert wait_from_text(text) == expected


def test_body_sources() -> None:
    assert wait_from_body({"error": {"message": "x"}, "retry_after_seconds": 4}) == (4.0, "body")
    assert wait_from_body({"error": {"message": "x", "metadata": {"retry_after_seconds": 2.5}}}) == (2.5, "body")
    reset = str(int((time.time() + 30) * 1000))
    inner = {"error": {"code": 429, "message": "Rate limit exceeded: free-models-per-day",
                       "metadata": {"headers": {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0",
                                                "X-RateLimit-Reset": reset}}}}
    seconds, source = wait_from_body(inner)  # type: ignore[misc]
    assert 28 < seconds <= 30 and source == "body-headers"
    raw = {"error": {"message": "Provider returned error", "metadata": {"raw": "slow down, retry after 12 seconds"}}}
    assert wait_from_body(raw) == (12.0, "body-text")
    assert wait_from_body({"error": {"message": "nothing here"}}) is None
    assert wait_from_body("not a dict") is None
