"""The gate: holds requests back until a time, and may let one probe through earlier."""

from __future__ import annotations

from typing import Optional

_NEVER = float("-inf")


class Gate:
    """Shut until ``until``. While shut, one request at a time may go early as a *probe* from
    ``probe_at`` on (None: no early probe); its answer tells whether the server's wait was coarse.

    ``trusted`` marks a gate that runs its full length on purpose (the server's waits proved exact).
    ``named_until`` is when the server said the wait ends, before any cap (``until`` is capped).
    """

    __slots__ = ("until", "named_until", "probe_at", "probe_busy_until", "probe_sent", "trusted", "opened_early")

    def __init__(self) -> None:
        self.until = 0.0
        self.named_until = 0.0
        self.probe_at: Optional[float] = None
        self.probe_busy_until = _NEVER
        self.probe_sent: Optional[float] = None
        self.trusted = False
        self.opened_early = False

    def remaining(self, now: float) -> float:
        """Seconds until the gate opens (0 when open)."""
        return max(0.0, self.until - now)

    def shut(self, until: float, probe_at: Optional[float], trusted: bool, named_until: Optional[float] = None) -> None:
        """Shut until ``until`` (replacing any earlier gate); the server named ``named_until`` (default ``until``)."""
        self.until = until
        self.named_until = max(until, named_until or until)
        self.probe_at = probe_at if probe_at is not None and probe_at < until else None
        self.probe_busy_until = _NEVER
        self.probe_sent = None
        self.trusted = trusted
        self.opened_early = False

    def extend(self, until: float, named_until: Optional[float] = None) -> None:
        """Keep the gate shut at least until ``until`` (a later refusal of the same burst)."""
        self.until = max(self.until, until)
        self.named_until = max(self.named_until, self.until, named_until or until)

    def open(self, now: float) -> None:
        """Open now (a probe was accepted, or the state was reset)."""
        if self.until > now:
            self.opened_early = True
        self.until = min(self.until, now)
        self.named_until = self.until
        self.probe_at = None
        self.free_probe()

    def probe_free(self, now: float) -> bool:
        """Whether a request arriving now may claim the probe."""
        return now >= self.probe_busy_until

    def claim_probe(self, busy_until: float) -> None:
        """A request takes the probe; no other may until its answer (or ``busy_until``)."""
        self.probe_busy_until = busy_until

    def free_probe(self) -> None:
        self.probe_busy_until = _NEVER
        self.probe_sent = None
