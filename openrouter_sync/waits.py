"""How long the server asks us to wait: parsed from headers and error bodies."""

from __future__ import annotations

import re
import time
from typing import Any, Mapping, Optional, Tuple

MAX_SANE_WAIT = 2 * 86400.0  # anything longer is treated as this (a daily limit resets within a day)

_TEXT_WAIT = re.compile(
    r"(?:retry|try again)\s*(?:after|in)?\s*:?\s*(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)?\b",
    re.IGNORECASE,
)


def _unit_seconds(unit: str) -> float:
    if unit in ("ms", "millisecond", "milliseconds"):
        return 0.001
    if unit.startswith("h"):
        return 3600.0
    if unit.startswith("m"):
        return 60.0
    return 1.0


def _as_float(value: float) -> float:
    """A JSON number as a float; an integer too large for one is as good as infinite."""
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def _clamp(seconds: float) -> float:
    if seconds != seconds:  # NaN
        return 0.0
    return min(max(seconds, 0.0), MAX_SANE_WAIT)


def parse_retry_after(value: str, now: Optional[float] = None) -> Optional[float]:
    """Seconds from a ``Retry-After`` value: delay seconds (fractions allowed) or an HTTP-date."""
    value = value.strip()
    if not value:
        return None
    try:
        return _clamp(float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # only for the rare HTTP-date form

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return _clamp(when.timestamp() - now)


def parse_reset(value: str, now: Optional[float] = None) -> Optional[float]:
    """Seconds until an ``X-RateLimit-Reset`` value: epoch ms, epoch seconds, or a delay in seconds."""
    try:
        number = float(value.strip())
    except ValueError:
        return parse_retry_after(value, now)
    now = time.time() if now is None else now
    if number > 1e11:  # epoch milliseconds
        return _clamp(number / 1000.0 - now)
    if number > 1e9:  # epoch seconds
        return _clamp(number - now)
    return _clamp(number)


def _header(headers: Mapping[str, Any], name: str) -> Optional[str]:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, val in headers.items():
            if key.lower() == lowered:
                value = val
                break
    return None if value is None else str(value)


def wait_from_headers(headers: Mapping[str, Any], now: Optional[float] = None) -> Optional[Tuple[float, str]]:
    """The wait a set of headers asks for, with its source, or None."""
    value = _header(headers, "Retry-After")
    if value is not None:
        seconds = parse_retry_after(value, now)
        if seconds is not None:
            return seconds, "retry-after"
    value = _header(headers, "retry-after-ms")
    if value is not None:
        try:
            return _clamp(float(value) / 1000.0), "retry-after-ms"
        except ValueError:
            pass
    remaining = _header(headers, "X-RateLimit-Remaining")
    reset = _header(headers, "X-RateLimit-Reset")
    if reset is not None and remaining is not None and remaining.strip() in ("0", "0.0"):
        seconds = parse_reset(reset, now)
        if seconds is not None:
            return seconds, "x-ratelimit-reset"
    return None


def wait_from_text(text: str) -> Optional[float]:
    """A wait stated in prose: "retry after 60 seconds", "try again in 2 minutes", "retry in 1.5s"."""
    match = _TEXT_WAIT.search(text)
    if not match:
        return None
    return _clamp(float(match.group(1)) * _unit_seconds((match.group(2) or "s").lower()))


def wait_from_body(data: Any, now: Optional[float] = None) -> Optional[Tuple[float, str]]:
    """The wait an error body asks for: ``retry_after_seconds``, ``metadata.headers``, or its text."""
    if not isinstance(data, dict):
        return None
    error: dict[str, Any] = data["error"] if isinstance(data.get("error"), dict) else {}
    metadata: dict[str, Any] = error["metadata"] if isinstance(error.get("metadata"), dict) else {}
    for holder in (data, error, metadata):
        for key in ("retry_after_seconds", "retry_after"):
            value = holder.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return _clamp(_as_float(value)), "body"
    inner = metadata.get("headers")
    if isinstance(inner, dict):
        found = wait_from_headers(inner, now)
        if found is not None:
            return found[0], "body-headers"
    for text in (error.get("message"), metadata.get("raw")):
        if isinstance(text, str):
            seconds = wait_from_text(text)
            if seconds is not None:
                return seconds, "body-text"
    return None
