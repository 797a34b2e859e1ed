"""``RetryPolicy``: an immutable value that says what is retried and how long to wait, compiled to tenacity.

The compiled ``tenacity.Retrying`` speaks tenacity's own terms: ``retry_if_result`` with the
policy's predicate, a wait strategy that returns the server's wait or the back-off, and
``stop_after_attempt | stop_on_long_wait | stop_before_budget``. The budget is measured on the
call's own clock (the one the tests inject), which is why it is a small strategy here rather
than tenacity's ``stop_before_delay``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, FrozenSet, Optional

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._log import logger
from .classify import Outcome
from .error_types import ErrorType

#: Error types retried by default: everything that can heal by itself.
TRANSIENT: FrozenSet[ErrorType] = frozenset({
    ErrorType.RATE_LIMIT, ErrorType.SERVER_TIMEOUT, ErrorType.API_ERROR, ErrorType.BAD_GATEWAY,
    ErrorType.SERVICE_UNAVAILABLE, ErrorType.GATEWAY_TIMEOUT, ErrorType.OVERLOADED, ErrorType.CONNECTION,
    ErrorType.TIMEOUT, ErrorType.TRUNCATED_RESPONSE, ErrorType.INVALID_RESPONSE, ErrorType.PROVIDER_ERROR,
})
#: Codes inside a 200-with-error that mean "try again".
TRANSIENT_CODES: FrozenSet[int] = frozenset({408, 429, 500, 502, 503, 504, 524, 529})


def _check_number(name: str, value: Any, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """What to retry and how long to wait; immutable (derive variants with :meth:`replace`).

    Waits come from the server when it names one (``Retry-After``, ``retry-after-ms``,
    ``X-RateLimit-Reset``, the error body): that wait is a floor. Else exponential back-off with
    jitter: ``backoff_base * 2**(n-1)``, capped at ``backoff_max``, times a random factor in
    ``[1 - jitter, 1]``. A wait longer than ``max_wait_seconds`` is not slept: the call returns
    the failure at once (its ``rate_limit_wait_seconds`` says how long). ``max_elapsed_seconds``
    bounds the whole call: waits at the shared gate and between attempts count against it, and
    each attempt's timeout is cut to what is left. ``retry_unanswered=False`` never resends a
    request that was sent but not answered (a read timeout, a dropped connection), since the
    server may have finished and billed it. ``max_read_timeouts`` (default 2: one resend) caps the
    attempts of one streamed call that were sent and then timed out before their first delta
    (no event for ``timeout_seconds``): each may be a whole generation the provider went on with
    and billed, and a provider stalled twice in a row rarely answers the third time (the openai
    SDK sends at most 3 attempts for any failure; 8 stalls of 300 s would hold a call 40 minutes).
    ``RetryPolicy(max_attempts=1)`` never retries.

    ``max_attempts`` counts the attempts the server processed. A refusal (see :func:`is_refusal`: a
    429, a 529, a 503 with a named wait, or a request the shared back-off did not send) did no work
    and costs nothing, so while retrying is
    on and ``max_elapsed_seconds`` bounds the call, refusals are bounded by that time instead:
    under load shedding every prompt is answered, and a server that refuses forever ends each
    call after ``max_elapsed_seconds``. Without ``max_elapsed_seconds``, refusals count as attempts.
    """

    max_attempts: int = 8
    backoff_base: float = 0.2
    backoff_max: float = 10.0
    jitter: float = 0.5
    max_wait_seconds: float = 120.0
    max_elapsed_seconds: Optional[float] = 900.0
    retry_on: FrozenSet[str] = field(default=TRANSIENT)
    retry_402_with_retry_after: bool = True
    retry_unanswered: bool = True
    max_read_timeouts: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if isinstance(self.max_read_timeouts, bool) or not isinstance(self.max_read_timeouts, int) \
                or self.max_read_timeouts < 1:
            raise ValueError(f"max_read_timeouts must be an integer >= 1, got {self.max_read_timeouts!r}")
        for name in ("backoff_base", "backoff_max", "max_wait_seconds"):
            _check_number(name, getattr(self, name))
        _check_number("jitter", self.jitter)
        if self.jitter > 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.max_elapsed_seconds is not None:
            _check_number("max_elapsed_seconds", self.max_elapsed_seconds, positive=True)
        object.__setattr__(self, "retry_on", frozenset(ErrorType(kind) for kind in self.retry_on))

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
        if kind is None or outcome.final:
            return False
        if kind == ErrorType.INSUFFICIENT_CREDITS:
            return self.retry_402_with_retry_after and outcome.retry_after is not None
        if kind not in self.retry_on or (outcome.unanswered and not self.retry_unanswered):
            return False
        if kind == ErrorType.PROVIDER_ERROR:
            return outcome.exit_code in TRANSIENT_CODES
        return True

    def backoff(self, attempt: int, rng: Optional[random.Random] = None) -> float:
        """The back-off before attempt ``attempt + 1`` when the server named no wait."""
        base = float(min(self.backoff_max, self.backoff_base * (2 ** min(64, max(0, attempt - 1)))))
        if not self.jitter:
            return base
        return base * (1.0 - self.jitter * (rng or random).random())

    def wait_for(self, outcome: Outcome, attempt: int, rng: Optional[random.Random] = None) -> tuple[float, str]:
        """The wait after ``outcome`` (the ``attempt``-th), and where it came from."""
        if outcome.retry_after is not None:
            return outcome.retry_after, outcome.retry_source or "server"
        return self.backoff(attempt, rng), "backoff"


class Interrupted(Exception):
    """A wait was cancelled (a run is being stopped)."""


def interruptible_sleep(cancel: Optional[threading.Event],
                        sleep: Callable[[float], None] = time.sleep) -> Callable[[float], None]:
    """A sleep that returns early, raising ``Interrupted``, when ``cancel`` is set."""
    if cancel is None:
        return sleep

    def wait(seconds: float) -> None:
        if cancel.wait(seconds):
            raise Interrupted()
    return wait


class Activity:
    """How many calls of a backend are waiting to retry right now (shown by progress bars)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retrying = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.retrying += delta


def is_refusal(outcome: Outcome) -> bool:
    """Whether the server (or the shared back-off) refused the request without processing it: a
    429, a 529 (overloaded), a 503 that names when to come back, or a request not sent at all. (A
    503 without a wait may be lasting, e.g. no provider meets the routing requirements.) A wait of
    zero (``Retry-After: 0``, a date already past) is no refusal: it counts as an attempt."""
    if outcome.retry_after is not None and outcome.retry_after <= 0:
        return False  # "come back now" again and again: counted, or retries would storm a dead server
    if outcome.status is None:
        return outcome.error_type == ErrorType.RATE_LIMIT and not outcome.sent
    return outcome.status in (429, 529) or (outcome.status == 503 and outcome.retry_after is not None)


class CallClock:
    """What the compiled policy needs to know of the running call: when it started, on which clock,
    and how many of its attempts were refusals (``is_refusal``).

    The attempt function receives it as its first argument, so tenacity's strategies find it in
    ``retry_state.args[0]``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = clock()
        self.refused = 0

    def elapsed(self) -> float:
        return self.clock() - self.started


class wait_server_or_backoff(wait_base):
    """The server's wait when it named one, else the policy's exponential back-off."""

    def __init__(self, policy: RetryPolicy, rng: Optional[random.Random] = None) -> None:
        self.policy, self.rng = policy, rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome: Outcome = retry_state.outcome.result()  # type: ignore[union-attr]
        return self.policy.wait_for(outcome, retry_state.attempt_number, self.rng)[0]


class stop_after_processed(stop_base):
    """Stop after ``max_attempts`` attempts, not counting refusals when ``refusals_free``."""

    def __init__(self, max_attempts: int, refusals_free: bool) -> None:
        self.max_attempts, self.refusals_free = max_attempts, refusals_free

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        call: CallClock = retry_state.args[0]
        refused = call.refused if self.refusals_free else 0
        return retry_state.attempt_number - refused >= self.max_attempts


class stop_on_long_wait(stop_base):
    """Stop when the next wait would be longer than ``max_wait`` seconds."""

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return retry_state.upcoming_sleep > self.max_wait


class stop_before_budget(stop_base):
    """Stop when sleeping the next wait would pass the call's budget (on the call's own clock)."""

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        call: CallClock = retry_state.args[0]
        return call.elapsed() + retry_state.upcoming_sleep >= self.budget


class log_retry:
    """tenacity's ``before_sleep``: one warning per retry, with the wait and where it came from."""

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def __call__(self, retry_state: tenacity.RetryCallState) -> None:
        outcome: Outcome = retry_state.outcome.result()  # type: ignore[union-attr]
        call: CallClock = retry_state.args[0]
        logger.warning("retry %d after %s: waiting %.2fs (%s); %d of %d attempts used (refusals are free)",
                       retry_state.attempt_number + 1, _label(outcome), retry_state.upcoming_sleep,
                       outcome.retry_source or "backoff", retry_state.attempt_number - call.refused,
                       self.max_attempts)


def _give_up(retry_state: tenacity.RetryCallState) -> Outcome:
    outcome: Outcome = retry_state.outcome.result()  # type: ignore[union-attr]
    logger.warning("giving up after %d attempt(s): %s; the next wait would have been %.1fs",
                   retry_state.attempt_number, _label(outcome), retry_state.upcoming_sleep)
    return outcome


def compile_policy(policy: RetryPolicy, rng: Optional[random.Random] = None) -> tenacity.Retrying:
    """The tenacity ``Retrying`` that runs attempts under ``policy``.

    Call ``retrying.copy(sleep=...)(attempt, call, ...)``: ``attempt(call, ...)`` returns an
    ``Outcome`` and ``call`` is a ``CallClock``. Exceptions (network errors are outcomes, not
    exceptions) are never retried and propagate. When retrying stops, the last outcome is returned.
    """
    free = policy.max_attempts > 1 and policy.max_elapsed_seconds is not None
    stop = stop_after_processed(policy.max_attempts, free) | stop_on_long_wait(policy.max_wait_seconds)
    if policy.max_elapsed_seconds is not None:
        stop = stop | stop_before_budget(policy.max_elapsed_seconds)
    return tenacity.Retrying(
        retry=tenacity.retry_if_result(policy.is_retryable),
        wait=wait_server_or_backoff(policy, rng),
        stop=stop,
        before_sleep=log_retry(policy.max_attempts),
        retry_error_callback=_give_up,
        reraise=True,
    )


def _label(outcome: Outcome) -> str:
    status = f"HTTP {outcome.status}" if outcome.status is not None else "network error"
    return f"{status} ({outcome.error_type})"
