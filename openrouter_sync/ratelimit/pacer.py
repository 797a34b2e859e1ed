"""The pacer: send slots one interval apart, so that a rate is kept and a wait never ends in a stampede."""

from __future__ import annotations

_NEVER = float("-inf")


class Pacer:
    """Hands out send times at least ``interval`` seconds apart (an interval of 0 paces nothing)."""

    __slots__ = ("next_slot", "interval", "restarts")

    def __init__(self) -> None:
        self.next_slot = _NEVER
        self.interval = 0.0  # the longest interval of the reservations made since the last restart
        self.restarts = 0

    def earliest(self, t: float) -> float:
        """The earliest slot at or after ``t``."""
        return max(t, self.next_slot)

    def commit(self, start: float, interval: float) -> None:
        """A request takes the slot at ``start``; the next one is ``interval`` later."""
        self.interval = max(self.interval, interval)
        if interval > 0.0:
            self.next_slot = max(self.next_slot, start + interval)

    def restart(self, at: float) -> None:
        """Forget the reservations made so far (the rate changed); the next slot is ``at``."""
        self.next_slot = at
        self.interval = 0.0
        self.restarts += 1

    def stale(self, interval: float) -> bool:
        """Whether the reservations were made at a much slower pace than ``interval`` (the rate rose)."""
        return self.next_slot > _NEVER and interval < 0.7 * self.interval
