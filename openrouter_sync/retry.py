"""``RetryPolicy``: an immutable value that says what is retried and how long to wait, compiled to tenacity."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, FrozenSet, Optional

import tenacity

from . import errors as E
from ._log import logger
from .classify import Outcome

#: Error types retried by default: everything that can heal by itself.
TRANSIENT: FrozenSet[str] = frozenset({
    E.RATE_LIMIT, E.SERVER_TIMEOUT, E.API_ERROR, E.BAD_GATEWAY, E.SERVICE_UNAVAILABLE,
    E.GATEWAY_TIMEOUT, E.OVERLOADED, E.CONNECTION, E.TIMEOUT, E.TRUNCATED_RESPONSE,
    E.INVALID_RESPONSE, E.PROVIDER_ERROR,
})
#: Codes inside a 200-with-error that mean "try again".
TRANSIENT_CODES: FrozenSet[int] = frozenset({408, 429, 500, 502, 503, 504, 524, 529})


@dataclass(frozen=True)
class RetryPolicy:
    """What to retry and how long to wait; immutable (derive variants with :meth:`replace`).

    Waits come from the server when it names one (``Retry-After``, ``retry-after-ms``,
    ``X-RateLimit-Reset``, the error body), else from exponential back-off with jitter:
    ``backoff_base * 2**(n-1)``, capped at ``backoff_max``, times a random factor in
    ``[1 - jitter, 1]``. A wait longer than ``max_wait_seconds`` is not slept: the call returns
    the failure at once (its ``rate_limit_wait_seconds`` says how long). ``max_elapsed_seconds``
    bounds the whole call, waits included. ``RetryPolicy(max_attempts=1)`` never retries.
    """

    max_attempts: int = 8
    backoff_base: float = 0.2
    backoff_max: float = 10.0
    jitter: float = 0.5
    max_wait_seconds: float = 120.0
    max_elapsed_seconds: Optional[float] = 900.0
    retry_on: FrozenSet[str] = field(default=TRANSIENT)
    retry_402_with_retry_after: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("backoff_base", "backoff_max", "max_wait_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.max_elapsed_seconds is not None and self.max_elapsed_seconds <= 0:
            raise ValueError(f"max_elapsed_seconds must be > 0 or None, got {self.max_elapsed_seconds!r}")
        object.__setattr__(self, "retry_on", frozenset(self.retry_on))

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(max_attempts=1)

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def is_retryable(self, outcome: Outcome) -> bool:
        """Whether this outcome is worth another attempt (ignoring attempt counts and budgets)."""
        kind = outcome.error_type
        if kind is None:
            return False
        if kind == E.INSUFFICIENT_CREDITS:
            return self.retry_402_with_retry_after and outcome.retry_after is not None
        if kind not in self.retry_on:
            return False
        if kind == E.PROVIDER_ERROR:
            return outcome.exit_code in TRANSIENT_CODES
        return True

    def backoff(self, attempt: int, rng: Optional[random.Random] = None) -> float:
        """The back-off before attempt ``attempt + 1`` when the server named no wait."""
        base = float(min(self.backoff_max, self.backoff_base * (2 ** max(0, attempt - 1))))
        if not self.jitter:
            return base
        draw = (rng or random).random()
        return base * (1.0 - self.jitter * draw)

    def wait_for(self, outcome: Outcome, attempt: int, rng: Optional[random.Random] = None) -> tuple[float, str]:
        """The wait after ``outcome`` (the ``attempt``-th), and where it came from."""
        if outcome.retry_after is not None:
            return outcome.retry_after, outcome.retry_source or "server"
        return self.backoff(attempt, rng), "backoff"


class CallState:
    """Book-keeping for one call across its attempts."""

    __slots__ = ("started", "cancel", "sleep", "waited", "planned_wait", "wait_source", "give_up_wait", "activity")

    def __init__(self, cancel: Optional[threading.Event] = None, activity: Optional[Activity] = None) -> None:
        self.started = time.monotonic()
        self.activity = activity
        self.cancel = cancel
        self.sleep = interruptible_sleep(cancel)
        self.waited = 0.0
        self.planned_wait = 0.0
        self.wait_source = ""
        self.give_up_wait: Optional[float] = None


_local = threading.local()


class Activity:
    """How many calls of a backend are waiting to retry right now (shown by progress bars)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retrying = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.retrying += delta


def _sleep(seconds: float) -> None:
    """tenacity's sleep: the running call's own (interruptible) sleep, counted as "retrying"."""
    activity = getattr(_local, "activity", None)
    if activity is not None:
        activity.add(1)
    try:
        getattr(_local, "sleep", time.sleep)(seconds)
    finally:
        if activity is not None:
            activity.add(-1)


class Interrupted(Exception):
    """A retry wait was cancelled (a run is being stopped)."""


def interruptible_sleep(cancel: Optional[threading.Event]) -> Callable[[float], None]:
    """A sleep that returns early, raising ``Interrupted``, when ``cancel`` is set."""
    if cancel is None:
        return time.sleep
    def sleep(seconds: float) -> None:
        if cancel.wait(seconds):
            raise Interrupted()
    return sleep


def _state_of(retry_state: tenacity.RetryCallState) -> CallState:
    return retry_state.args[0]  # type: ignore[no-any-return]


def compile_policy(policy: RetryPolicy, rng: Optional[random.Random] = None) -> tenacity.Retrying:
    """Build the tenacity ``Retrying`` that runs attempts under ``policy``.

    Call it as ``retrying(attempt, state)`` with a fresh ``CallState``: ``attempt(state)``
    returns an ``Outcome``. Exceptions (not network errors, which are outcomes) are never
    retried and propagate. When retrying stops, the last outcome is returned. One compiled
    object serves every thread (tenacity keeps its per-call state thread-local).
    """
    state_of = _state_of

    def should_retry(retry_state: tenacity.RetryCallState) -> bool:
        if retry_state.outcome is None or retry_state.outcome.failed:
            return False
        outcome: Outcome = retry_state.outcome.result()
        if not policy.is_retryable(outcome):
            return False
        if retry_state.attempt_number >= policy.max_attempts:
            return False
        state = state_of(retry_state)
        wait, source = policy.wait_for(outcome, retry_state.attempt_number, rng)
        if wait > policy.max_wait_seconds:
            state.give_up_wait = wait
            logger.warning("giving up: %s asks to wait %.1fs, more than max_wait_seconds=%g",
                           _label(outcome), wait, policy.max_wait_seconds)
            return False
        budget = policy.max_elapsed_seconds
        if budget is not None and time.monotonic() - state.started + wait > budget:
            logger.warning("giving up: %s; waiting %.1fs more would pass max_elapsed_seconds=%g",
                           _label(outcome), wait, budget)
            return False
        state.planned_wait, state.wait_source = wait, source
        return True

    def wait(retry_state: tenacity.RetryCallState) -> float:
        return state_of(retry_state).planned_wait

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        state = state_of(retry_state)
        outcome: Outcome = retry_state.outcome.result()  # type: ignore[union-attr]
        state.waited += state.planned_wait
        _local.sleep, _local.activity = state.sleep, state.activity
        logger.warning("retry %d/%d after %s: waiting %.2fs (%s)", retry_state.attempt_number + 1,
                       policy.max_attempts, _label(outcome), state.planned_wait, state.wait_source)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=should_retry,
        before_sleep=before_sleep,
        sleep=_sleep,
        retry_error_callback=lambda retry_state: retry_state.outcome.result(),  # type: ignore[union-attr]
        reraise=True,
    )


def _label(outcome: Outcome) -> str:
    status = f"HTTP {outcome.status}" if outcome.status is not None else "network error"
    return f"{status} ({outcome.error_type})"
