"""The rate estimator: send times and outcomes in, the server's rate out. Pure functions, no clock.

The measurement rests on one fact about a token bucket (and any limiter that refills at a steady
rate): right after it refuses a request it is empty. Between two refused sends ``t1 < t2`` the
requests it accepted are exactly what it refilled in between, give or take one:
``accepted = rate * (t2 - t1) ± 1``. So ``accepted / (t2 - t1)`` is the rate, independent of
whether the server's hints are whole seconds, dates or missing.

Two things would spoil it, and callers exclude them with ``since``:

- time the client itself spent held back by a gate that ran its full length: a bucket refills
  only up to its burst, so an idle second would read as "the server accepted few requests" (the
  measurement must never count the client's own waiting);
- a stretch that starts before the limit changed (the latest stretch long enough is used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

PENDING = 0  #: sent, no answer yet
ACCEPTED = 1  #: answered, not a 429 (errors included: the limiter let it through)
LIMITED = 2  #: refused with a 429 by this limiter
OTHER = 3  #: refused by another limiter: says nothing about this one

Record = Sequence[float]  # (sent_at, outcome, ...)

MIN_SPAN = 0.4  # seconds: a stretch this long measures within a few percent at tens of requests a second
SHORT_SPAN = 0.1  # shorter stretches are too noisy to trust
MIN_ACCEPTED = 5  # and a stretch with fewer accepted requests too


@dataclass(frozen=True)
class Measurement:
    """What the server accepted between two refusals: ``accepted`` requests in ``span`` seconds."""

    rate: float
    accepted: int
    span: float
    refused_inside: int = 0  #: refusals strictly between the two ends (0: the server was never shown to be saturated)

    @property
    def saturated(self) -> bool:
        """Whether refusals throughout showed the server full (else the client may have sent less
        than it would take, and the rate is only a floor)."""
        return self.refused_inside >= max(1, self.accepted // 5)



def measure(records: Sequence[Record], end: float, since: float = float("-inf")) -> Optional[Measurement]:
    """The server's rate from the refused send at ``end`` back to an earlier refused send.

    ``records`` are (sent_at, outcome, ...) in send order. Only sends after ``since`` count.
    The start is the latest refused send at least ``MIN_SPAN`` seconds and ``MIN_ACCEPTED``
    accepted requests before ``end`` (the most recent stretch long enough to be precise), else
    the latest one at least ``SHORT_SPAN`` before. None when there is no such stretch.
    """
    accepted = 0
    inside = 0
    fallback: Optional[Measurement] = None
    for record in reversed(records):
        t, outcome = record[0], record[1]
        if t > end:
            continue
        if t < since:
            break
        if outcome == ACCEPTED:
            accepted += 1
        elif outcome == LIMITED and t < end:
            span = end - t
            if span >= MIN_SPAN and accepted >= MIN_ACCEPTED:
                return Measurement(accepted / span, accepted, span, inside)
            if span >= SHORT_SPAN and fallback is None:
                fallback = Measurement(accepted / span, accepted, span, inside)
            inside += 1
    return fallback


def unanswered_before(records: Iterable[Record], end: float) -> bool:
    """Whether a send at or before ``end`` still waits for its answer (then a measurement would be early)."""
    return any(record[1] == PENDING and record[0] <= end for record in records)


def let_through(records: Iterable[Record], start: float, end: float) -> int:
    """Sends in ``[start, end)`` not refused by this limiter (accepted or still unanswered)."""
    return sum(1 for record in records if start <= record[0] < end and record[1] in (ACCEPTED, PENDING))
