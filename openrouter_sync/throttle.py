"""One pace for every thread that talks to an endpoint.

A ``Throttle`` is shared by all threads (and all backends) that use the same base URL and key:

- a gate: when any call is told to wait (``Retry-After`` and friends), no thread sends until
  the wait is over;
- pacing: an optional fixed ``requests_per_minute``, and an adaptive rate that is learned from
  429s (each new 429 "event" re-estimates the server's rate from the answers accepted since the
  previous one) and recovers slowly while no 429 arrives. Threads leave the gate one slot apart,
  so a wait never ends in a stampede.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from typing import Callable, Deque, Optional, Tuple

Sleep = Callable[[float], None]

_MIN_RATE = 0.05  # requests per second: never slower than one per 20 s
_RECOVER_AFTER = 2.0  # seconds without a 429 before the learned rate starts to grow
_GROWTH_PER_SECOND = 0.10  # then it grows by 10% a second
_UNLIMITED = 500.0  # a learned rate above this many requests a second no longer paces anything


class Throttle:
    """Shared gate and pacer. ``acquire`` before each send; report each answer back."""

    def __init__(self, requests_per_minute: Optional[float] = None, *, adaptive: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be > 0, got {requests_per_minute}")
        self._clock = clock
        self._lock = threading.Lock()
        self._fixed_interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.adaptive = adaptive
        self._rate: Optional[float] = None  # learned requests per second; None: not limited yet
        self._blocked_until = 0.0
        self._next_slot = 0.0
        self._epoch = 0
        self._accepted = 0  # answers that were not 429, in all
        self._recent: Deque[float] = deque(maxlen=512)  # when the latest accepted answers came
        self._event_time = 0.0
        self._event_accepted = 0
        self._last_growth = 0.0
        self.rate_limited_count = 0

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
        """The adaptive rate in requests per second, or None while no 429 has been seen."""
        return self._rate

    def blocked_for(self) -> float:
        """Seconds until the gate opens (0 when open)."""
        return max(0.0, self._blocked_until - self._clock())

    def acquire(self, sleep: Sleep, max_wait: float) -> Tuple[Optional[int], float]:
        """Wait for this thread's turn to send.

        Returns ``(ticket, waited)``; the ticket goes back with the answer. When the gate stays
        shut for longer than ``max_wait`` seconds it does not wait: it returns ``(None, seconds)``.
        """
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                if self._blocked_until - now > max_wait:
                    return None, self._blocked_until - now
                start = max(now, self._blocked_until)
                interval = self._fixed_interval
                if self._rate is not None:
                    interval = max(interval, 1.0 / self._rate)
                if interval:
                    start = max(start, self._next_slot)
                    self._next_slot = start + interval
                ticket = self._epoch
                blocked_until = self._blocked_until
            delay = start - now
            if delay <= 0:
                return ticket, waited
            sleep(delay)
            waited += delay
            if self._blocked_until <= blocked_until:  # no new wait was ordered while we slept
                return ticket, waited

    def block(self, seconds: float) -> None:
        """Shut the gate for ``seconds`` (the server asked every client to wait)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    def on_answer(self, ticket: Optional[int]) -> None:
        """An answer that was not a 429 (it counts as accepted by the server)."""
        with self._lock:
            self._accepted += 1
            now = self._clock()
            self._recent.append(now)
            rate = self._rate
            if rate is None or not self.adaptive:
                return
            if now - self._event_time >= _RECOVER_AFTER:
                since = now - max(self._last_growth, self._event_time + _RECOVER_AFTER)
                if since > 0.1:
                    rate *= 1.0 + _GROWTH_PER_SECOND * since
                    self._rate = None if rate > _UNLIMITED else rate
                    self._last_growth = now

    def on_rate_limited(self, ticket: Optional[int], wait: Optional[float]) -> None:
        """A 429 (or another answer that orders a wait). ``wait`` is the server's, if it gave one."""
        with self._lock:
            now = self._clock()
            if wait is not None and wait > 0:
                self._blocked_until = max(self._blocked_until, now + wait)
            self.rate_limited_count += 1
            if not self.adaptive or ticket != self._epoch:
                return  # sent before the last adjustment: already accounted for
            self._epoch += 1
            self._rate = self._estimate(now, wait)
            self._event_time = now
            self._event_accepted = self._accepted
            self._last_growth = now
            self._next_slot = max(self._next_slot, self._blocked_until)

    def _estimate(self, now: float, wait: Optional[float]) -> float:
        rate = self._rate
        if rate is None:
            # First 429 (or the first since pacing was dropped): the server's hint (a token
            # bucket's wait is at most one token's interval) and what it accepted in the last
            # second; whichever is lower.
            candidates = []
            if wait is not None and 0.0 < wait < 1.0:
                candidates.append(1.0 / wait)
            recent = [t for t in self._recent if t > now - 1.0]
            if recent:
                elapsed = max(now - recent[0], 0.05)
                candidates.append(len(recent) / elapsed)
            if not candidates:
                candidates.append(1.0)
            return max(_MIN_RATE, min(candidates))
        accepted = self._accepted - self._event_accepted
        elapsed = now - self._event_time
        if elapsed >= 0.5 and accepted >= 5:
            # Between two 429 events the server's bucket went from empty to empty: what it
            # accepted in between is its sustained rate.
            measured = accepted / elapsed
            return max(_MIN_RATE, rate * 0.5, min(rate, measured) * 0.97)
        return max(_MIN_RATE, rate * 0.85)


_registry: "weakref.WeakValueDictionary[tuple[str, int], Throttle]" = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def shared_throttle(base_url: str, key: Optional[str]) -> Throttle:
    """The throttle for an endpoint and key, shared by every backend that uses them."""
    ident = (base_url.rstrip("/"), hash(key or ""))
    with _registry_lock:
        throttle = _registry.get(ident)
        if throttle is None:
            throttle = Throttle()
            _registry[ident] = throttle
        return throttle
