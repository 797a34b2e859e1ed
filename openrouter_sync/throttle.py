"""One pace for every thread that talks to an endpoint.

A ``Throttle`` is shared by all threads that use a backend (pass one ``Throttle`` to several
backends to share it across them, e.g. all backends on one account):

- a gate: when any call is told to wait (``Retry-After`` and friends), no thread sends until
  the wait is over;
- pacing: an optional fixed ``requests_per_minute``, and an adaptive rate learned from 429s.
  Threads leave in slots one interval apart, so the end of a wait is never a stampede.

How the adaptive rate is learned. Before any 429 nothing is paced. The first 429 sets a
first guess: a token bucket's wait is at most one token's interval, so ``1 / Retry-After``
(tightened by the other 429s of the same burst) bounds the server's rate; what it accepted in
the last second is another bound. Each later 429 "event" (a 429 to a request sent after the
last adjustment) measures the rate: between two 429 events the server went from "no capacity"
to "no capacity", so the requests it accepted of those sent in between, per second, are its
sustained rate. The new rate is 98% of the lower of that and the current one. While no 429
comes, a guessed rate doubles every second (probing) and a measured one creeps up 5% a second
(to follow a raised limit); far above any demand, pacing stops.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Optional, Tuple

Sleep = Callable[[float], None]

_MIN_RATE = 0.05  # requests per second: never slower than one per 20 s
# Growth while no 429 arrives, as (seconds of quiet before it starts, growth per second):
_PROBE = (0.2, 1.0)
_CRUISE = (1.5, 0.05)
_GRACE = 0.1  # a 429 to a request sent this soon after an adjustment is not a new event
_UNLIMITED = 500.0  # a learned rate above this many requests a second no longer paces anything
_MARGIN = 0.98  # pace this much below the measured rate, so the server's bucket is never quite empty


class Throttle:
    """Shared gate and pacer. ``acquire`` before each send; report each answer with its ticket."""

    def __init__(self, requests_per_minute: Optional[float] = None, *, adaptive: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be > 0, got {requests_per_minute}")
        self._clock = clock
        self._lock = threading.Lock()
        self._fixed_interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.adaptive = adaptive
        self._rate: Optional[float] = None  # learned requests per second; None: not limited
        self._measured = False  # whether the rate was measured, not guessed
        self._blocked_until = 0.0
        self._next_slot = 0.0
        self._generation = 0  # bumped when the rate drops: slots reserved before are void
        self._adjusted_at = -1e9  # when the rate last changed because of a 429
        self._last_growth = 0.0
        self._answered: Deque[float] = deque(maxlen=512)  # when recent accepted answers came
        self._accepted_sent: Deque[float] = deque(maxlen=2048)  # when accepted requests were sent
        self._latencies: Deque[float] = deque(maxlen=64)
        self._sends: Deque[float] = deque(maxlen=512)
        self._regime_start = 0.0  # when the server first pushed back (since pacing last started)
        self._first_guess_only = False  # the rate is still the first guess (later 429s of its burst may tighten it)
        self.rate_limited_count = 0

    # ----- configuration and introspection -----
    @property
    def requests_per_minute(self) -> Optional[float]:
        return 60.0 / self._fixed_interval if self._fixed_interval else None

    def set_requests_per_minute(self, value: Optional[float]) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"requests_per_minute must be > 0, got {value}")
        with self._lock:
            self._fixed_interval = 60.0 / value if value else 0.0

    @property
    def learned_rate(self) -> Optional[float]:
        """The adaptive rate in requests per second, or None while nothing is paced."""
        return self._rate

    def blocked_for(self) -> float:
        """Seconds until the gate opens (0 when open)."""
        return max(0.0, self._blocked_until - self._clock())

    # ----- the send side -----
    def acquire(self, sleep: Sleep, max_wait: float, gate: bool = True) -> Tuple[Optional[float], float]:
        """Wait for this thread's turn to send.

        Returns ``(ticket, waited)``; hand the ticket back with the answer. When the gate stays
        shut longer than ``max_wait`` seconds it does not wait: it returns ``(None, seconds)``.
        ``gate=False`` ignores the gate (the caller does not retry) but keeps the pacing.
        """
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                blocked_until = self._blocked_until if gate else 0.0
                if blocked_until - now > max_wait:
                    return None, blocked_until - now
                start = max(now, blocked_until)
                interval = self._fixed_interval
                if self._rate is not None:
                    interval = max(interval, 1.0 / self._rate)
                if interval:
                    start = max(start, self._next_slot)
                    self._next_slot = start + interval
                self._sends.append(start)
                generation = self._generation
            delay = start - now
            if delay <= 0:
                return start, waited
            sleep(delay)
            waited += delay
            # Go unless, while we slept, the gate shut again or the rate dropped (then queue anew).
            if (not gate or self._clock() >= self._blocked_until) and generation == self._generation:
                return start, waited

    def block(self, seconds: float) -> None:
        """Shut the gate for ``seconds`` (the server asked every client to wait)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    # ----- the answer side -----
    def on_answer(self, ticket: Optional[float]) -> None:
        """An answer that was not a 429: the server accepted the request."""
        with self._lock:
            now = self._clock()
            self._answered.append(now)
            if ticket is not None:
                self._accepted_sent.append(ticket)
                self._latencies.append(now - ticket)
            rate = self._rate
            if rate is None or not self.adaptive:
                return
            after, per_second = _CRUISE if self._measured else _PROBE
            quiet_since = self._adjusted_at + after
            if now >= quiet_since:
                since = now - max(self._last_growth, quiet_since)
                if since > 0.05:
                    rate *= 1.0 + per_second * since
                    self._last_growth = now
                    if rate > _UNLIMITED:
                        self._rate, self._measured = None, False
                    else:
                        self._rate = rate

    def on_rate_limited(self, ticket: Optional[float], wait: Optional[float]) -> None:
        """A 429. ``wait`` is the server's, if it named one."""
        with self._lock:
            now = self._clock()
            if wait is not None and wait > 0:
                self._blocked_until = max(self._blocked_until, now + wait)
            self.rate_limited_count += 1
            if not self.adaptive or ticket is None:
                return
            if ticket <= self._adjusted_at + _GRACE:
                # Sent before (or just after) the last adjustment: not news. But while the rate is
                # a first guess, a longer token-bucket wait tightens it.
                if self._rate is not None and self._first_guess_only and wait is not None and 0.0 < wait < 1.0:
                    self._rate = max(_MIN_RATE, min(self._rate, 1.0 / wait))
                return
            self._rate = self._estimate(now, ticket, wait)
            self._adjusted_at = now
            self._last_growth = now
            self._generation += 1
            self._next_slot = now  # void the old reservations; the gate, if shut, still comes first

    def _estimate(self, now: float, ticket: float, wait: Optional[float]) -> float:
        rate = self._rate
        if rate is None:
            return self._first_guess(now, wait)
        self._measured = True  # the server pushed back at this rate: it is an upper bound
        self._first_guess_only = False
        # While we send faster than the server accepts, what it accepted of the requests sent in
        # the last second (since its bucket first ran dry, and not so recently that their answers
        # may still be on the way) is its sustained rate.
        start = max(ticket - 1.0, self._regime_start)
        end = ticket - self._typical_latency() * 1.5
        if end - start >= 0.05:
            accepted = sum(1 for t in self._accepted_sent if start < t <= end)
            if accepted >= 3:
                measured = accepted / (end - start)
                if end - start < 0.5:  # a short window is noisy: only let it slow us down, gently
                    return max(_MIN_RATE, rate * 0.5, min(rate, measured) * _MARGIN)
                return max(_MIN_RATE, measured * _MARGIN)
        return max(_MIN_RATE, rate * 0.9)

    def _typical_latency(self) -> float:
        """The median time an accepted answer took lately (robust to a slow first connection)."""
        latencies = sorted(self._latencies)
        return latencies[len(latencies) // 2] if latencies else 0.0

    def _first_guess(self, now: float, wait: Optional[float]) -> float:
        self._regime_start = max(now, self._blocked_until)  # measurements start when sending resumes
        self._first_guess_only = True
        self._measured = False
        candidates = []
        if wait is not None and 0.0 < wait < 1.0:
            candidates.append(1.0 / wait)
            self._measured = True  # a bound from the server itself
        recent = [t for t in self._answered if t > now - 1.0]
        if len(recent) >= 5:
            candidates.append(len(recent) / max(now - recent[0], 0.05))
        if candidates:
            return max(_MIN_RATE, min(candidates))
        # Nothing to go on: the rate we were sending at, a guess that the next 429s correct.
        sent = [t for t in self._sends if t > now - 1.0]
        return max(1.0, len(sent) / max(0.1, now - sent[0])) if sent else 1.0
