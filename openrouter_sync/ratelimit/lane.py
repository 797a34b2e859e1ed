"""One lane: the controller for one scope (the key, a model, the ``:free`` family).

A lane joins a gate, a pacer and the rate estimator, and decides how the *other* requests hold
off after a 429 (the request that got it waits the server's wait itself, in the caller's code).

The pacing rate:

- The first 429 gives a guess: the requests the server let through in the last second, never
  above ``1 / wait`` for a wait under a second (a token bucket's wait is at most one token's
  interval). When the answers of that burst are in, the guess is raised to what the server let
  through per answer time (exactly a concurrency limit's rate; too high for a bucket, which the
  next 429 measures down). A guess doubles every ``PROBE_DOUBLING`` seconds without a 429.
- Each later 429 *event* (a 429 to a request sent after the last reaction; the rest of its burst
  is old news) halves the rate at once. When every request sent before it has its answer, the
  estimator measures the server's rate (:mod:`.estimator`) and the lane paces ``MARGIN`` below
  it. When nothing much was refused inside the stretch measured, the client may have sent less
  than the server would take, so the measurement is only a floor: after a guess the rate is at
  least ``PEAK_SHARE`` of the guess that drew the refusal; after a rise (a measurement ``ROSE``
  times the last one) it is the geometric mean of the measurement and the rate that drew it
  (except near the end of a batch, below).
- A measured rate holds for ``CRUISE_HOLD`` seconds, then doubles every ``CRUISE_DOUBLING``
  seconds until the next 429, so a raised limit is found; far above any demand, pacing stops.
  The hold is short (a quarter of a second): on a steady limit each growth step meets it with one
  429 event, about one a second (one every 1.7 s with a hold of a second), and a raised limit is
  found up to three quarters of a second sooner.
  Near the end of a batch (the work left, declared by the runner, would go within ``END_SPAN``
  named waits) it stops growing: a refused step would cost its request that wait, and it would
  finish last (``hold_growth``).

The gate. A wait the server names bounds the others' wait from above; it is not a measurement
(a whole-second ``Retry-After: 1`` may mean 20 ms). A wait no longer than about two pacing
intervals simply holds everyone. A longer one lets one *probe* through early (after two pacing
intervals, and at least ``PROBE_SHARE`` of the wait):

- the probe accepted: the wait was coarse, the gate opens;
- the probe refused: the rest of the wait is real; the gate runs its full length.

Twice coarse in a row: later 429s shut no gate at all (pacing alone; every fourth event probes
again). Twice exact in a row (a fixed window that ends when the server says): gates run their
full length, pacing gives way to them, and once as many requests went as the server let
through in the last window, the rest go one at a time, so that only one request learns where
the next window ends (already after the first refused probe of a wait of a second or more, with
what went through before it as the window's size; an accepted one-at-a-time request means a new
window began, and the count starts again). No gate holds the others longer than ``max_gate``
seconds, and time spent held by a gate that ran its full length never enters a measurement.

Fixed windows with waits in whole seconds (``Retry-After: 2``, the true wait rounded up) only say
that the window ends within the second before the named end. A refused probe of such a wait (a
second or more) already makes a window likely: the gate then probes where windows end in practice,
just after (``WINDOW_SLACK``) a whole second of the wall clock (windows aligned to the epoch) or a
whole number of seconds after the lane's first send (windows counted from a client's first
request), and, while the 429s so far are under a fifth of the window's size, at evenly spread
points before them (a window on neither kind of whole second), then in the middle of what is left
(``_window_until``). Windows are whole seconds long, so once one end is known (the grid: where the
probe that went through bet it was, or its send if it went late) every later end lies whole
seconds on, and a wait in whole seconds names it exactly. Once a window's worth went, the rest are
held to the next whole second after the last end (not sent at once: a request refused more than a
second before the end is told a wait that ends up to a second after it, and in the last window it
finishes last); the one request let go there is accepted (a window of a second) or told the end;
after that the window's length is known and the gate runs to each next end
(``_hold_for_next_window``), with no pacing: the window's gates govern. A window's count is only
what went through in one window (a share of what other clients left, who may stop; or a token
bucket whose refusals happened to look like a window), so a second before an end requests go on
one at a time, each accepted one in a row twice as many more the window takes as the one before
(1, 2, 4: a count far too low is found in a few answer times), until one is refused (its own
wait ends just after the end); after each refused one in a row a window more goes without, up to
every fourth (``_budget_probe_at``). A window is never taken to be longer than a second more than
the longest wait named (``_plausible_length``). A request sent after a window's gate opened and
refused before half the window's count went refutes the window (a sliding log or counter frees its
slots one by one): the lane assumes no window again (``_refuted``).
A length guessed from windows that seem counted from the first request is tried once: one
request goes at the next end, the rest when no refusal came back in time for it.
When the first probe of the first wait (whole seconds) goes through, a window may have ended
right after the first refusals (the run began late in it): the count starts again at the probe,
with what went before as the window's size and the probe's send as an end, and a window's worth
going quickly with no refusal leads to that hold; a refusal or a slow window's worth (a bucket)
drops it (``_straddled``).
Refusals that narrow a window's end to where no point of the grid lies drop it, and so does a
coarse wait. Not with processes sharing the lane (they know neither this grid nor this
hold), nor after a wait longer than ``max_gate`` (a gate cut short may open before the window's
end, and miscount its size): then the one request goes at once.

A wait under a second that ends on a whole second of the wall clock (``on_second``) is an
HTTP-date's grain, not a token's interval: it caps no guess.

Concurrency limits (hint-less 429s at about the same number of requests held by the server):
see ``_concurrency``. Under a cap, requests wait in line for a slot (first come, first served);
the line lives here, each request's place in ``Throttle.acquire``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

from . import estimator as est
from .gate import Gate
from .pacer import Pacer

MIN_RATE = 0.02  # requests per second: never slower than one per 50 s
UNLIMITED = 5000.0  # a rate above this paces nothing
MARGIN = 0.97  # pace this much below a measured rate
DECREASE = 0.5  # an event cuts the rate at once to this share, before its measurement
PROBE_DOUBLING = 0.1  # seconds for a guessed rate to double while no 429 comes
CRUISE_HOLD = 0.25  # seconds a measured rate holds before it grows (a raised limit is found sooner)
CRUISE_DOUBLING = 1.0  # seconds for a measured rate to double after that
PROBE_SHARE = 0.1  # the probe goes after this share of the named wait at the earliest
PEAK_SHARE = 0.5  # after a guess: at least this share of the guess that drew the refusal
CAP_MIN = 6  # a concurrency limit is only recognised at this many requests held or more
CAP_HOLD = 0.2  # seconds after a refused step up of the cap before the next; doubles with each refused in a row
CAP_HOLD_MAX = 3.2  # ... up to this
CAP_SLOW_PATH = 0.2  # a 429 that takes this share of an answer time or more: the path delays answers
CAP_LOOK = 0.002  # seconds: how soon the first in line for a slot under a cap looks again when its answer is late
CAP_STRIKES = 4  # this many 429s in a row at a cap that had not grown: not a concurrency limit, the cap goes
CAP_KEEP = 0.5  # a 429 at this share of the cap or more lowers the cap to it; well under it, the cap goes
LONG_GATE = 1.0  # seconds: measurements never span a full gate this long
WINDOW_PRECISION = 0.05  # seconds: probes narrow a window's end down to this
WINDOW_SLACK = 0.02  # seconds: a probe or gate for a predicted window end goes this much after it
SCAN_SHARE = 5  # the 429s at a window's first end, probes included, stay under this share of its size
BUDGET_SKIP_MAX = 3  # after this many budget probes refused in a row, every fourth window probes
WINDOW_MIN = 3  # a fixed window lets at least this many through at once (a bucket refusing exactly, one)
STRADDLE_PACE = 3.0  # after a coarse first probe, a window's worth must go within this many times the first one's time
END_SPAN = 1.5  # near a batch's end: the work left goes within this many named waits at the learned rate
ROSE = 1.25  # a measurement this much above the last one: the limit rose
HORIZON = 10.0  # seconds of send history kept
MAX_RECORDS = 4096
_NEVER = float("-inf")
FOREIGN = 1.0  # a fifth field in a record: another process's refusal, adopted (see ``adopt_refusal``)


class Lane:
    """Gate, pacer and adaptive rate for one scope. Not thread-safe: the ``Throttle`` holds the lock."""

    def __init__(self, name: str, adaptive: bool = True) -> None:
        self.name = name
        self.adaptive = adaptive
        self.gate = Gate()
        self.pacer = Pacer()
        self.fixed_interval = 0.0
        self.rate_limited_count = 0
        self.epoch = 0  # bumped when a gate shuts or the rate drops: planned sends re-plan
        self.latencies: Deque[float] = deque(maxlen=64)
        self._records: Deque[List[float]] = deque()  # [sent_at, outcome, in flight when it went, shared seq]
        self.in_flight = 0
        # Requests in ``acquire`` (kept by ``forget``): those that took a send slot ahead under a cap,
        # and the line for a slot under a cap (place -> when that request looks again).
        self.reserved = 0
        self.waiting: Dict[int, float] = {}
        self._places = 0
        self.wall_offset = 0.0  # wall-clock time minus this lane's clock, as of the latest 429
        self.unnumbered_share = 1.0  # all processes' sends per send of this one, for sends made before sharing began
        self.max_gate = math.inf  # the longest a gate may hold the others, as of the latest 429
        self.forget()

    def forget(self) -> None:
        """Drop everything learned (rate, gate, hint statistics), keep the fixed rate and counts."""
        self.gate = Gate()
        self.pacer.restart(_NEVER)
        self.rate: Optional[float] = None
        self.measured = False
        self.grow_from = _NEVER
        self.exactness = 0  # > 0: the server's waits proved exact; < 0: proved coarse
        self.events = 0
        self.last_reaction = _NEVER
        self.pending_event: Optional[float] = None
        self.refine_guess = False  # the guess waits for its burst's answers to be raised
        self.event_peak: Optional[float] = None  # the highest rate the events of a pending measurement cut
        self.last_measured: Optional[float] = None
        self.guess_cap = UNLIMITED  # a first guess never exceeds 1 / (a wait under a second)
        self.interval_wait: Optional[float] = None  # the last wait, when it may be one token's interval
        self.barrier = _NEVER  # measurements start after this (the end of a gate that ran its length)
        self.cap: Optional[int] = None  # a concurrency limit found: at most this many in flight
        self.cap_since = _NEVER
        self.cap_grew = True  # the cap grew since the last 429 at it (else that 429 refused the cap itself)
        self.cap_strikes = 0  # 429s in a row that refused the cap itself
        self.cap_hold = 0.0  # seconds after the last 429 at the cap before it may grow
        self.cap_stepped = False  # the cap grew a step that no request at its new edge proved yet
        self.path_time: Optional[float] = None  # how long the latest 429 took to come back (the path's round trip)
        self.refused_at: Deque[float] = deque(maxlen=2)  # when the last two hint-less 429 events came
        self.window_budget: Optional[int] = None
        self.window_lo, self.window_hi = _NEVER, float("inf")  # where the current window's end lies
        self.window_probes = 0
        self.window_point: Optional[float] = None  # the window end the current window gate (or its probe) bets on
        self.window_grid: Optional[float] = None  # a window's end (or just after it): later ones lie whole seconds on
        self.whole_waits = False  # the latest wait was in whole seconds
        self.refusal_wait: Optional[float] = None  # the latest wait named with a 429 (what a refused step costs)
        self.longest_wait = 0.0  # the longest wait named with a 429 (a window is at most a second longer)
        self.growth_held = False  # near the end of a batch: the rate does not grow (``hold_growth``)
        self.capped = False  # the latest wait was longer than ``max_gate``
        self.was_capped = False  # some wait was: a gate that opened early may have miscounted a window
        self.first_sent: Optional[float] = None  # the first send since the lane was made or reset
        self.first_refused: Optional[float] = None  # the first 429 since then
        self.window_length: Optional[float] = None  # whole seconds between window ends, once known
        self.window_tentative = False  # ... or only guessed (windows counted from the first request)
        self.window_holding = False  # the gate holds for the next window's end (``_hold_for_next_window``)
        self.budget_probing = False  # ... and lets budget probes through first (``_budget_probe_at``)
        self.budget_refusals = 0  # budget probes refused in a row
        self.windowless = False  # a window's model was refuted here: no fixed window (``_refuted``)
        self.budget_step = 1  # how many more a window takes after its next budget probe goes through
        self.budget_skip = 1  # windows before the next budget probe (the first with a known end goes without)
        self.admitted_in_window = 0  # sent since the last barrier
        self.through_in_window = 0  # of those, not refused
        self.straddle_from: Optional[float] = None  # a coarse first probe that perhaps began a window (``_straddled``)
        self.straddle_by = _NEVER  # ... and by when a window's worth must go after its send
        self._records.clear()
        self.epoch += 1

    # ----- what it says now -----
    def current_rate(self, now: float) -> Optional[float]:
        """The adaptive rate now (growth applied), or None when nothing is paced. Under a
        concurrency cap as well (two limits at once: a rate and a cap), and then on a path that
        delays answers (``slow_path``) never above ``MARGIN`` below the cap per answer time."""
        rate = self._grown_rate(now)
        cap = self.current_cap(now)
        latency = self.typical_latency()
        if cap is not None and latency > 0.0 and self.slow_path():
            return min(rate or UNLIMITED, cap / latency * MARGIN)
        return rate

    def _grown_rate(self, now: float) -> Optional[float]:
        rate = self.rate
        if rate is None:
            return None
        quiet = now - self.grow_from
        if self.measured:
            quiet -= CRUISE_HOLD
            doubling = CRUISE_DOUBLING
        else:
            doubling = PROBE_DOUBLING
        if quiet > 0.0 and not self.growth_held:
            rate *= 2.0 ** min(40.0, quiet / doubling)
        return None if rate > UNLIMITED else rate

    def hold_growth(self, now: float, left: Optional[int]) -> None:
        """Near the end of a batch, stop the rate growing: while the ``left`` requests still to come
        (None: not known) would go within ``END_SPAN`` times the wait the server named with its
        latest 429, at the learned rate. A growth step that a 429 answers costs its request that
        wait (a whole second for ``Retry-After: 1``), more than the step can gain there, and that
        request would finish last. A measured rate only (a guess still has to find the server's
        rate). The rate falls back to what went through in the last half second (none of it
        refused yet), never below the measured rate nor above the grown one: growth is planned
        ahead in send slots, so the grown rate may not have been sent at all. Once more work is
        declared (or none is), it grows on from there."""
        cost = self.refusal_wait
        hold = (left is not None and self.rate is not None and self.measured and cost is not None
                and self.cap is None and left < END_SPAN * self.rate * cost)
        if hold == self.growth_held:
            return
        rate = self.current_rate(now)
        self.growth_held = hold
        if rate is None or self.rate is None:
            return
        if hold:
            rate = max(self.rate, min(rate, 2.0 * est.let_through(self._records, now - 0.5, now)))
        self.rate = rate
        self.grow_from = max(self.grow_from, now - (CRUISE_HOLD if self.measured else 0.0))

    def interval(self, now: float) -> float:
        rate = self.current_rate(now)
        return max(self.fixed_interval, 1.0 / rate if rate else 0.0)

    def typical_latency(self) -> float:
        """The median time an accepted answer took lately (0 before any)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2]

    def budget_spent(self) -> bool:
        """A window's worth went since the last exact gate: the rest go one at a time."""
        return self.window_budget is not None and self.admitted_in_window >= self.window_budget

    def unhindered(self, now: float) -> bool:
        """Nothing here holds a request back now: no rate, fixed pace, cap, window count, shut gate
        or pending reservation (a request may go at once, with nothing to plan)."""
        return (self.rate is None and self.fixed_interval == 0.0 and self.cap is None and self.window_budget is None
                and self.gate.until <= now and self.pacer.interval == 0.0 and self.pacer.next_slot <= now)

    # ----- the send side -----
    def current_cap(self, now: float) -> Optional[int]:
        """The concurrency cap now (None: none)."""
        return self.cap

    def slow_path(self) -> bool:
        """Whether the latest 429 took ``CAP_SLOW_PATH`` of an answer time or more to come back: the
        server answers a 429 at once, so the path delays answers, and the server frees a slot well
        before the client sees its answer (the number in flight overstates what the server holds)."""
        return self.path_time is not None and self.path_time >= CAP_SLOW_PATH * self.typical_latency()

    def _cap_proved(self, sent_at: float, in_flight: int, now: float) -> None:
        """An accepted request that went with the cap full proves the cap: it grows by one (at
        most one step per answer time, as only a request sent at the new cap proves it), once
        ``cap_hold`` seconds passed since the last 429 at the cap (none after a step that held)."""
        if self.cap is None or in_flight < 0 or sent_at < self.cap_since:
            return
        if in_flight + 1 >= self.cap and now - self.cap_since >= self.cap_hold:
            if self.cap_stepped:  # the last step held: the next may follow at once
                self.cap_hold = 0.0
            self.cap += 1
            self.cap_grew = self.cap_stepped = True

    def ahead(self, place: Optional[int], now: float) -> int:
        """How many requests in line for a slot under the cap come before the one at ``place``
        (before one not in line: all) and are due (they look again by ``now``; one still asleep
        takes no slot from a request that is here)."""
        count = 0
        for other, look in self.waiting.items():
            if other == place:
                break
            count += look <= now
        return count

    def full(self, now: float, place: Optional[int] = None) -> bool:
        """Whether the concurrency cap leaves no slot for this request (at ``place`` in line): the
        requests in flight, those due before it in line and, on a quick path, those that took a send
        slot fill it. On a slow path a send slot is kept even over the cap (see ``_concurrency``)."""
        cap = self.current_cap(now)
        if cap is None:
            return False
        slow = self.slow_path()
        return self.in_flight + (0 if slow else self.reserved) + self.ahead(place, now) >= cap

    def queue(self, place: Optional[int], now: float) -> int:
        """Wait in line for a slot under the cap (at its end for a request not yet in it): the
        place, with when it should look again (``next_free``)."""
        if place is None:
            self._places += 1
            place = self._places
        self.waiting[place] = self.next_free(now, self.ahead(place, now))
        return place

    def leave(self, place: int) -> None:
        self.waiting.pop(place, None)

    def next_free(self, now: float, ahead: int = 0) -> float:
        """When a slot under the cap should free for a request with ``ahead`` requests due before
        it in line: the answer of the request in flight that many places after the oldest (one
        answer time later for each full round of them). When that answer is late, the first in
        line looks again within ``CAP_LOOK``, the others a tenth of an answer time later (2 to 50 ms)."""
        latency = self.typical_latency()
        again = CAP_LOOK if ahead == 0 else min(0.05, max(0.002, latency / 10.0))
        pending: List[float] = []
        for record in reversed(self._records):  # the latest first: what is in flight went lately
            if len(pending) >= self.in_flight:
                break
            if record[1] == est.PENDING:
                pending.append(record[0])
        if not pending:
            return now + again
        rounds, index = divmod(ahead, len(pending))
        return max(pending[-1 - index] + latency * (1 + rounds), now + again)

    def last_sent(self) -> float:
        """When this lane's latest request went (-inf: none kept)."""
        return self._records[-1][0] if self._records else _NEVER

    def sent(self, sent_at: float, seq: Optional[int] = None) -> None:
        """A request went; ``seq``: its number among the sends of every process sharing this lane."""
        self._records.append([sent_at, est.PENDING, float(self.in_flight), -1.0 if seq is None else float(seq)])
        self.in_flight += 1
        self.admitted_in_window += 1
        self.through_in_window += 1
        if self.first_sent is None:
            self.first_sent = sent_at
        if len(self._records) > MAX_RECORDS:
            self._records.popleft()
        if self.straddle_from is not None and not self.window_holding and sent_at > self.straddle_by:
            self._drop_straddle(sent_at)  # too slow for a window's worth: a bucket
        # (Not when processes share this lane: the others know neither this grid nor this gate yet. Nor
        # after a gate cut short by ``max_gate``: it may open before the window's end, and then what
        # was sent before the end counts as the window's size, so a hold would come too soon.)
        if seq is None and self.window_grid is not None and self.whole_waits and self.adaptive \
                and not self.was_capped and self.budget_spent() and self.gate.until <= sent_at:
            self._hold_for_next_window(sent_at)

    def adopt(self, rate: Optional[float], measured: bool, grow_from: float, now: float,
              reacted: float = _NEVER, exactness: Optional[int] = None) -> None:
        """Take over the rate another process set (through the shared state): its measurement,
        its cut on a 429 event, or its guess, with the time of its last reaction (a 429 to a
        request sent before that is part of a burst already handled). Like a rate set here, it
        paces the reservations made from now on (the shared chain of slots restarts, and with it
        the reservations of every process, only when the process that cut the rate restarts it)."""
        self.rate = None if rate is None else max(MIN_RATE, float(rate))
        self.measured = measured and rate is not None
        self.grow_from = grow_from
        self.pending_event, self.event_peak = None, None
        self.last_reaction = max(self.last_reaction, reacted)
        if exactness is not None:
            self.exactness = exactness

    def adopt_refusal(self, sent_at: float, seq: int) -> None:
        """Another process's send (number ``seq`` among all sends) was refused at ``sent_at``:
        one controller would have seen it. It ends and starts measurements like a refusal of this
        process (right after any refusal a bucket is empty) and counts among the refusals that
        show the server saturated; it is never counted as sent from here (see ``share_scale``)."""
        records = self._records
        index = len(records)
        while index and records[index - 1][0] > sent_at:
            index -= 1
        if index == 0 and records:
            return  # older than anything kept
        records.insert(index, [sent_at, est.LIMITED, -1.0, float(seq), FOREIGN])
        if len(records) > MAX_RECORDS:
            records.popleft()

    def recent_refusals(self, limit: int, within: float = 2.0) -> List[List[float]]:
        """This process's latest refused sends that carry a shared number: ``[sent_at, seq]``, the
        newest last, at most ``limit`` of them, no older than ``within`` seconds before the last send."""
        records = self._records
        found: List[List[float]] = []
        for record in reversed(records):
            if len(found) >= limit or record[0] < records[-1][0] - within:
                break
            if len(record) == 4 and record[1] == est.LIMITED and record[3] >= 0:
                found.append([record[0], record[3]])
        found.reverse()
        return found

    def share_scale(self, start: float, end: float) -> float:
        """All processes' sends per send of this one in ``[start, end]`` (1 when not shared): what
        this process measured is its share of what the server took. Sends made before this process
        began sharing carry no number: for them, ``unnumbered_share`` (the processes sharing then).

        Counted strictly between the first and the last send in the range (by their numbers
        among all sends): a measurement runs from one refused send to another, and those two
        ends, which it never counts as accepted, may be this process's or (adopted) another's;
        counting them would weigh this process's share by the ends."""
        own = 0
        lo = hi = -1.0
        for record in self._records:
            if start <= record[0] <= end and record[3] >= 0:
                seq = record[3]
                lo = seq if lo < 0 else min(lo, seq)
                hi = max(hi, seq)
                own += len(record) <= 4
        ends = sum(1 for r in self._records if r[3] in (lo, hi) and len(r) <= 4 and start <= r[0] <= end)
        between = own - ends
        if hi <= lo or between <= 0:
            return self.unnumbered_share if own < 2 else max(1.0, (hi - lo + 1.0) / own)
        return max(1.0, (hi - lo - 1.0) / between)

    # ----- the answer side -----
    def _resolve(self, sent_at: float, outcome: int) -> int:
        """Record an answer; the number of requests that were in flight when it went (-1: unknown)."""
        self.in_flight = max(0, self.in_flight - 1)
        for record in reversed(self._records):
            if record[0] == sent_at and record[1] == est.PENDING:
                record[1] = outcome
                return int(record[2])
        return -1

    def _trim(self, now: float) -> None:
        records = self._records
        keep_after = now - HORIZON
        if self.pending_event is not None:
            keep_after = min(keep_after, self.pending_event - HORIZON)
        while records and records[0][0] < keep_after:
            records.popleft()

    def answered(self, sent_at: float, now: float) -> None:
        """A request through this lane got an answer that is not a 429 (or no answer at all)."""
        in_flight = self._resolve(sent_at, est.ACCEPTED)
        self._cap_proved(sent_at, in_flight, now)
        self.latencies.append(max(0.0, now - sent_at))
        gate = self.gate
        if gate.probe_sent == sent_at and self.budget_probing:
            self._budget_grew(now)
        elif gate.probe_sent == sent_at:
            if gate.trusted and gate.until > sent_at and self.window_point is not None and self.whole_waits:
                # The window ended by the time this probe went (see ``_found_end`` for which time is the grid).
                self._found_end(sent_at, self.window_point)
                self.rate, self.measured, self.pending_event = None, False, None  # its gates govern
                self.pacer.restart(now)
            if gate.trusted:
                self.straddle_from = None  # the probe at a window's end answered: the window's count was right
            if gate.until > now:
                if not gate.trusted:  # the probe went through before the named wait was over: it was coarse
                    first = self.exactness == 0 and self.events == 1
                    self.exactness = self.exactness - 1 if self.exactness <= 0 else 0
                    self.window_grid = self.window_length = None
                    if first:
                        self._straddled(sent_at)
                gate.open(now)  # (in a fixed window: the next window began)
                self.grow_from = max(self.grow_from, now)
            else:
                gate.free_probe()
                if self.budget_spent():  # more went than the last window took: a new one began
                    self.admitted_in_window = self.through_in_window = 0
        self._settle(now)

    def refused_elsewhere(self, sent_at: float, now: float) -> None:
        """Another lane's limiter refused a request that went through this lane."""
        self._resolve(sent_at, est.OTHER)
        if self.gate.probe_sent == sent_at:
            self.gate.free_probe()
        self._settle(now)

    def refused(self, sent_at: Optional[float], now: float, wait: Optional[float], max_gate: float,
                on_second: bool = False, wall_offset: float = 0.0) -> None:
        """A 429 from this lane's limiter; ``wait`` is the server's (None, or > 0). ``on_second``: the
        wait ends on a whole second of the wall clock (an HTTP-date's grain, not a token's interval).
        ``wall_offset``: wall-clock time minus ``now`` (fixed windows start on whole wall seconds)."""
        self.rate_limited_count += 1
        self.wall_offset, self.max_gate = wall_offset, max_gate
        if self.first_refused is None:
            self.first_refused = now
        self.refusal_wait = wait
        if wait is not None:
            self.longest_wait = max(self.longest_wait, wait)
            self.whole_waits = _whole(wait)
            self.capped = wait > max_gate  # the gate ends at the cap, not where the window ends
            self.was_capped = self.was_capped or self.capped
        self.interval_wait = None if on_second or wait is None or wait >= 1.0 else wait
        if sent_at is None:
            sent_at = now
        in_flight = self._resolve(sent_at, est.LIMITED)
        self.path_time = now - sent_at
        self._refuted(sent_at)
        self.through_in_window -= 1
        hold = None if wait is None else min(wait, max_gate)
        gate = self.gate
        was_probe = gate.probe_sent == sent_at
        if was_probe:
            gate.free_probe()
            if self.budget_probing:  # the window was full: its end is named; the next probe waits longer
                self.budget_refusals += 1
                self.budget_step = 1
                self.budget_skip = min(self.budget_refusals, BUDGET_SKIP_MAX)
        if self.straddle_from is not None:
            if was_probe:
                self.straddle_from = None
            elif sent_at >= self.straddle_from:  # refused after the coarse probe: no window began there
                self._drop_straddle(now)
        if not self.adaptive:
            if hold is not None:
                if gate.until > now:
                    gate.extend(now + hold, now + (wait or 0.0))
                else:
                    gate.shut(now + hold, None, True, now + (wait or 0.0))
                self.epoch += 1
            return
        if sent_at <= self.last_reaction:
            self._old_news(now, wait, hold)
        elif not (hold is None and self._concurrency(in_flight, now)):
            self._react(sent_at, now, wait, hold, was_probe)
        if wait is not None and self.gate.until > now:
            self.gate.named_until = max(self.gate.named_until, now + wait)
        self._settle(now)

    def _straddled(self, sent_at: float) -> None:
        """The first probe of the first wait went through early: a bucket's coarse wait, or a fixed
        window whose first end came right after its refusals (the run began late in a window). A
        window's count would then run on over two windows: it starts again at the probe, what went
        before it is taken as the window's size, and the probe's send as where the window ended
        (a wait in whole seconds of a second or more: the end lies after the refusals, and by the
        probe). When that many went since, with no refusal and within ``STRADDLE_PACE`` times the
        first 429's time after the first send (a window takes them as fast as they come; a bucket
        only at its rate), the rest are held for the next end (``_hold_for_next_window``), whose
        probe's answer settles it. A refusal of a request sent after the probe (a bucket empties at
        once), or a window's worth not gone in that time, drops all this."""
        if not (self.adaptive and self.whole_waits and not self.was_capped and self.window_budget is None):
            return
        admitted = through = 0
        for record in reversed(self._records):
            if record[0] < sent_at:
                break
            if len(record) <= 4:  # this process's sends (adopted refusals carry a fifth field)
                admitted += 1
                through += record[1] != est.LIMITED
        before = self.through_in_window - through
        first, refused = self.first_sent, self.first_refused
        if before < WINDOW_MIN or first is None or refused is None:
            return
        self.straddle_by = sent_at + STRADDLE_PACE * (refused - first)
        self.window_budget = before
        self.admitted_in_window, self.through_in_window = admitted, through
        self.window_grid = self.straddle_from = sent_at

    def _drop_straddle(self, now: float) -> None:
        """What ``_straddled`` took for a window was not one: its count, its end and any hold go."""
        self.straddle_from = self.window_grid = self.window_budget = None
        if self.window_holding:
            self.window_holding = False
            self.gate.open(now)

    def _refuted(self, sent_at: float) -> None:
        """A fixed window takes its whole count from its start: a request sent after a window's gate
        opened, refused before half the count went through, refutes the window's model (a sliding
        log or counter frees its slots one by one, as they were used). Then no window is assumed
        here again (until ``forget``): its rules would hold requests to ends that are not there."""
        budget = self.window_budget
        if budget is None or not self.gate.trusted or self.gate.until > sent_at or self.gate.probe_sent == sent_at \
                or self.through_in_window > budget // 2:
            return
        self.windowless, self.window_holding = True, False
        self.window_budget = self.window_grid = self.window_length = None

    def _concurrency(self, in_flight: int, now: float) -> bool:
        """A hint-less 429: whether it shows a concurrency limit (then the cap handles it).

        Two 429 events in a row with about the same number held by the server when they came
        (within one, at least ``CAP_MIN``; see ``_held_at``) set a cap of the smaller. A cap is a
        hard limit: requests wait in line for a slot (first come, first served), and an answer
        frees one. On a slow path (``slow_path``: 429s come back late, so answers do too) it paces
        instead, at the cap per answer time, and a request whose send slot comes goes even over
        the cap: the server has likely freed slots whose answers are on their way.

        The client counts a request in flight until it sees the answer, which may be after the
        server freed its slot, so the cap that fits may be above the server's limit: the cap grows
        by one whenever a request sent with it full is accepted (``_cap_proved``). For what a 429
        under a cap does, see ``_refused_at_cap``."""
        if in_flight < 0:
            return False
        if self.cap is not None:
            return self._refused_at_cap(self.cap, in_flight, now)
        self.refused_at.append(now)
        if len(self.refused_at) < 2:
            return False
        history = [self._held_at(t) for t in self.refused_at]
        if abs(history[0] - history[1]) > 1 or min(history) < CAP_MIN:
            return False
        self.cap, self.cap_since, self.cap_grew, self.cap_strikes = min(history), now, True, 0
        self.cap_hold, self.cap_stepped = 0.0, False
        self.rate, self.measured, self.pending_event, self.event_peak = None, False, None, None
        self.last_reaction = now
        self.pacer.restart(now)  # reservations made at a guessed rate no longer apply
        self.epoch += 1
        return True

    def _refused_at_cap(self, cap: int, in_flight: int, now: float) -> bool:
        """A hint-less 429 event under a cap; whether the cap stays.

        Right after a step up, it refuses that step: the cap goes back to the level proved (not
        to the number in flight when the refused request went: requests sent at one moment reach
        the server in any order, so one sent with fewer in flight may be the one refused), and
        the next step waits ``CAP_HOLD`` seconds, twice as long after each refused step in a row
        (up to ``CAP_HOLD_MAX``), so a cap that already fits costs a few 429s a run. Otherwise a
        429 at the cap's edge, or at ``CAP_KEEP`` of it or more, lowers the cap to the number in
        flight (never raises it). One well under it, or the ``CAP_STRIKES``-th in a row at a cap
        that had not grown (the cap itself refused: a rate limit), means the limit is not (only)
        a concurrency limit, and the cap goes."""
        at_edge = in_flight >= cap - 1 or (in_flight >= CAP_MIN and in_flight >= CAP_KEEP * cap)
        self.cap_strikes = 0 if self.cap_grew else self.cap_strikes + 1
        self.cap_grew = False
        lowered = min(in_flight, cap)
        if self.cap_stepped:
            self.cap_hold, self.cap_stepped = min(max(CAP_HOLD, 2.0 * self.cap_hold), CAP_HOLD_MAX), False
            lowered = cap - 1
        if at_edge and self.cap_strikes < CAP_STRIKES:
            self.cap, self.cap_since = max(1, lowered), now
            self.last_reaction = now
            return True
        self.cap = None
        self.refused_at.clear()
        return False

    def _held_at(self, refused: float) -> int:
        """How many requests the server held when a 429 came at ``refused``: those sent within an
        answer time before it that it did not refuse (counted once they are answered; the
        requests of a first burst reach the server in any order, so the number in flight when
        the refused one went says less)."""
        return est.let_through(self._records, refused - self.typical_latency(), refused + 1e-9)

    def _old_news(self, now: float, wait: Optional[float], hold: Optional[float]) -> None:
        """A 429 to a request sent before the last reaction: part of a burst already handled."""
        if self.rate is not None and not self.measured and self.interval_wait is not None:
            self.guess_cap = min(self.guess_cap, 1.0 / self.interval_wait)
            self.rate = max(MIN_RATE, min(self.rate, self.guess_cap))
        gate = self.gate
        if hold is None or wait is None or gate.until <= now:
            return
        self._narrow(now, hold)  # the refusals of one burst narrow down where the wait ends
        if gate.trusted and self.window_budget is not None:  # a fixed window
            stale = gate.probe_at is None or gate.probe_at <= self.window_lo  # none, or it would surely be refused
            if gate.probe_sent is None and gate.probe_free(now) and stale:
                until, gate.probe_at = self._window_until()
                gate.until = min(gate.until, until)
                if gate.probe_at is not None and gate.probe_at >= gate.until:
                    gate.probe_at = None
            else:
                gate.until = min(gate.until, self.window_hi)
        else:
            gate.extend(min(now + hold, self.window_hi), now + wait)

    def _react(self, sent_at: float, now: float, wait: Optional[float], hold: Optional[float],
               was_probe: bool) -> None:
        self.events += 1
        self.last_reaction = now
        self.epoch += 1
        if was_probe and hold is not None:
            self.exactness = self.exactness + 1 if self.exactness >= 0 else 0
        windowed = self.gate.trusted and self.gate.until > now and was_probe
        # a probe at a predicted window end (``_hold_for_next_window``)
        gridded = windowed and self.whole_waits and not self.capped and self.window_grid is not None
        if hold is not None and hold >= LONG_GATE and (self.exactness >= 2 or gridded) and not self.windowless \
                and (self.through_in_window >= WINDOW_MIN or windowed):
            # The server's waits are exact and it takes requests in batches (a fixed window): its
            # gate governs, not pacing. What it let through since the last such gate is its window.
            if self.through_in_window >= WINDOW_MIN:
                self.window_budget = self.through_in_window
            self.rate, self.measured, self.pending_event = None, False, None
            self._window_gate(now, hold, fresh=not windowed)
            self.pacer.restart(now)
            return
        current = self.current_rate(now)
        if self.rate is None or current is None:
            self.rate = self._first_guess(now, wait)
            self.measured = False
            self.refine_guess = True
        else:
            self.rate = max(MIN_RATE, current * DECREASE)
            self.event_peak = current if self.event_peak is None else max(self.event_peak, current)
        self.grow_from = now
        self.pending_event = sent_at
        self.pacer.restart(now + 1.0 / self.rate)
        if hold is None:
            return
        if not was_probe:
            self.window_lo, self.window_hi, self.window_probes = _NEVER, float("inf"), 0
            self._narrow(now, hold)
        probe_delay = max(2.0 / self.rate, PROBE_SHARE * hold)
        coarse = self.exactness <= -2 and self.events % 4 != 0
        if hold <= 1.5 * probe_delay:
            self.gate.shut(now + hold, None, trusted=False)  # a short wait: everyone waits it out
        elif was_probe:  # the probe was refused: the rest of the wait is real
            self._narrow(now, hold)
            if hold >= LONG_GATE and self.through_in_window >= WINDOW_MIN and not self.windowless:
                self.window_budget = self.through_in_window  # perhaps a window: what it took
            if hold >= LONG_GATE and self.whole_waits and not self.capped and self.window_budget is not None:
                until, probe_at = self._window_until()  # perhaps a window: probe where its end likely is
                self._full_gate(until, True, now, probe_at=probe_at)
            else:
                self._full_gate(min(now + hold, self.window_hi), False, now)
        elif not coarse:
            self.gate.shut(now + hold, now + probe_delay, trusted=False)
            self.grow_from = now + probe_delay

    def _window_gate(self, now: float, hold: float, fresh: bool) -> None:
        """Shut until a fixed window's end. A wait in whole seconds is rounded up (``Retry-After``
        never sends a client back early), so the end lies in ``(now + hold - 1, now + hold]``; the
        refusals of one window narrow that down, and probes (``_window_until``) find it."""
        if fresh:
            self.window_lo, self.window_hi, self.window_probes = _NEVER, float("inf"), 0
        self._narrow(now, hold)
        until, probe_at = self._window_until()
        self._full_gate(until, True, now, probe_at=probe_at)

    def _window_until(self) -> Tuple[float, Optional[float]]:
        """Where a window gate ends and when its probe goes (None: none), for a window end in
        ``(window_lo, window_hi]`` (``window_point``: the end it bets on).

        Fixed windows are whole seconds long, so once one end is known (``window_grid``) every
        later one lies a whole number of seconds on: a wait in whole seconds (an interval one
        second long) then names it exactly, and the gate runs to it (``WINDOW_SLACK`` after, for
        a server a little behind). Otherwise the gate runs to ``window_hi`` and a probe goes
        first where windows usually end: on a whole second of the wall clock (windows counted
        from the epoch) or a whole number of seconds after this lane's first send (windows
        counted from a client's first request), the earlier first, each preceded by evenly
        spread probes while 429s are left for them (``_scan_point``); then, while probes are
        left, at the middle of the interval (``_window_probe``). A refused probe only raises
        ``window_lo``; its own request's wait (a floor) then ends within a second after the window's
        end, in the next window. An accepted one opens the gate, and the end it found becomes the
        grid (``_found_end``).
        A gate that runs its full length ends at or after the window's end: its end is the grid."""
        lo, hi = self.window_lo, self.window_hi
        if self.capped:  # the interval ends at the cap: no end to find or bet on
            self.window_point = None
            return hi, self._window_probe()
        point = self._grid_point(lo, hi)
        if point is not None:
            self._end_after_hold(point)
            self.window_point = self.window_grid = point
            return point + WINDOW_SLACK, None
        for candidate in sorted(self._candidates(lo)):
            if candidate + WINDOW_SLACK < hi:
                scan = self._scan_point(lo, hi)
                if scan is not None and scan < candidate:
                    self.window_point = scan
                    return hi, scan
                self.window_point = candidate
                return hi, candidate + WINDOW_SLACK
        probe_at = self._window_probe()
        self.window_point = hi if probe_at is None else probe_at
        if probe_at is None and self.whole_waits and hi - lo < 1.0:
            self.window_grid = hi
        return hi, probe_at

    def _scan_point(self, lo: float, hi: float) -> Optional[float]:
        """The next of the probes left, spread evenly over ``(lo, hi)``, for a window that ends on
        neither kind of whole second (the caller sends it only when it comes before the next likely
        end); None when none is left or the stretch is short. The probes left: the window's size
        over ``SCAN_SHARE`` in 429s, less every 429 so far. A refused one costs its own request a
        wait that ends in the next window, never more."""
        left = (self.window_budget or 0) // SCAN_SHARE - self.rate_limited_count
        width = hi - lo
        if left <= 0 or width <= 4 * WINDOW_PRECISION:
            return None
        return lo + width / (left + 1)

    def _candidates(self, lo: float) -> List[float]:
        """The first times after ``lo`` where a window likely ends: a whole second of the wall
        clock, and a whole number of seconds after this lane's first send."""
        found = [math.floor(lo + self.wall_offset + 1e-9) + 1.0 - self.wall_offset]
        if self.first_sent is not None:
            found.append(self.first_sent + math.floor(lo - self.first_sent + 1e-9) + 1.0)
        return found

    def _found_end(self, sent_at: float, bet: float) -> None:
        """A window ended by ``sent_at``, when a probe that bet on an end at ``bet`` went through: the
        grid is the bet when the probe went on time (within ``WINDOW_SLACK`` after it, as probes
        go), else the send (a late probe proves only its own send, and a grid set early would send
        requests too soon). When the bet was a whole number of seconds after the first
        send, the probe went on time, and the first 429 came within a second of that send, windows
        are perhaps counted from the first request, and that many seconds long (not when the first
        send was itself on a whole second of the wall clock: windows aligned to the epoch would end
        there too). That length is tentative: the next end gets a probe (``_hold_for_next_window``),
        since a window on neither kind of whole second may have ended anywhere before the bet.
        After a hold for the next end, the seconds from the last end are the window's length."""
        first, refused = self.first_sent, self.first_refused
        on_time = sent_at - bet <= WINDOW_SLACK + 1e-3
        if self.window_grid is None and first is not None and refused is not None and refused - first < 1.0 \
                and on_time and abs((first + self.wall_offset + 0.5) % 1.0 - 0.5) > 2 * WINDOW_SLACK:
            seconds = bet - first
            if seconds >= 1.0 - 1e-6 and _whole(seconds) and self._plausible_length(seconds):
                self.window_length, self.window_tentative = float(round(seconds)), True
        elif self.window_tentative and self.window_grid is not None and on_time:
            self.window_tentative = False  # the probe at the predicted end went through on time
        self._end_after_hold(sent_at)
        self.window_grid, self.window_point = (bet if on_time else sent_at), None

    def _plausible_length(self, seconds: float) -> bool:
        """Whether a fixed window may be ``seconds`` long: at most a second longer than the longest
        wait the server named. A window's first refusals come early in it, with waits close to its
        length; a token bucket names a second or so, and the seconds between the ends its probes
        happened to find are no window (a window that long would hold a window's count for that long)."""
        return seconds <= self.longest_wait + 1.0 + 1e-6

    def _end_after_hold(self, end: float) -> None:
        """A window end found (``end``) ends any hold for it (``_hold_for_next_window``); when it lies a
        second or more after the last end, the whole seconds between them are the window's length."""
        if self.window_holding and self.window_grid is not None and self.window_length is None \
                and end - self.window_grid >= 1.0 and self._plausible_length(end - self.window_grid):
            self.window_length, self.window_tentative = float(round(end - self.window_grid)), False
        self.window_holding = False

    def _grid_point(self, lo: float, hi: float) -> Optional[float]:
        """The window end in ``(lo, hi]`` (within ``WINDOW_SLACK`` after it) that lies whole seconds
        from ``window_grid``; None without a grid or a wait in whole seconds. A grid no point of
        which falls there was wrong: it goes."""
        grid = self.window_grid
        if grid is None or not self.whole_waits or not hi - lo <= 1.0 + WINDOW_SLACK:
            return None
        point = grid + math.floor(hi + WINDOW_SLACK - grid + 1e-9)
        if point > lo + 1e-9:
            return point
        self.window_grid = self.window_length = None
        return None

    def _hold_for_next_window(self, now: float) -> None:
        """A window's worth went, and window ends are known (``window_grid``): hold the rest, and
        let one request go just after the next whole second from the grid (a window may be one
        second long). Accepted, a window began there, the gate opens, and a window's worth goes.
        Refused, its wait (whole seconds) names the window's end, which lies a whole number of
        seconds from the grid: the gate runs exactly to it, and that request's own wait, which
        the server rounded up from just under a whole second, ends right at it too. (Sent at once,
        it would be told to wait up to a second past the end: in the last window, it finishes last.)
        Once the window's length is known, the gate runs to the next end, and its budget probes
        (``_budget_probe_at``) go first, a second before it; a guessed length's one request at the
        end goes only in a window without them. The pacing of a measured rate stops: the window's
        gates govern (paced, the request meant to go at the next end went after the gate had opened,
        so the end was never found)."""
        grid = self.window_grid
        if grid is None:
            return
        length = self.window_length
        if length is not None:  # the next end is known: everyone waits for it
            point = grid + length * (math.floor((now - grid + WINDOW_SLACK) / length + 1e-9) + 1.0)
            if point + WINDOW_SLACK - now > self.max_gate:
                return  # no gate holds the others that long: the one request goes at once, as without a grid
            probe_at = self._budget_probe_at(point, now)
            if self.window_tentative and probe_at is None:  # a guessed length: one first, the rest unless refused
                self.window_lo, self.window_hi, self.window_probes = now, point, 0
                self.window_point = point
                settle = max(WINDOW_SLACK / 4, 1.5 * (self.path_time or 0.0))  # time enough for a refusal to come back
                self._full_gate(point + WINDOW_SLACK + settle, True, now, probe_at=point + WINDOW_SLACK)
            else:
                self.window_lo, self.window_hi, self.window_probes = point - WINDOW_SLACK, point, 0
                self.window_point = point
                if not self.window_tentative:
                    self.window_grid = point
                self._full_gate(point + WINDOW_SLACK, True, now, probe_at=probe_at)
                self.budget_probing = probe_at is not None
        else:
            point = grid + math.floor(now - grid + WINDOW_SLACK + 1e-9) + 1.0
            if point + 1.0 - now > self.max_gate:
                return
            self.window_lo, self.window_hi, self.window_probes = now, point, 0
            self.window_point = point
            self.window_holding = True
            self._full_gate(point + 1.0, True, now, probe_at=point + WINDOW_SLACK)
        self.rate, self.measured, self.pending_event = None, False, None  # the window's gates govern, not pacing
        self.epoch += 1

    def _budget_probe_at(self, end: float, now: float) -> Optional[float]:
        """When the hold for the window that ends at ``end`` lets its first budget probe go (None:
        this window lets none, ``budget_skip``). A window's count is what went through in an
        earlier one: a share of what other clients left, or a window that was no window (a token
        bucket whose 429s happened to name the probes' ends), and a hold that never sends past it
        would keep that count for good. So, a second before the end, requests go on one at a time:
        one accepted is more the window takes (``_budget_grew``); one refused names the end,
        and its own wait, rounded up to the second, ends just after it, where the rest go. After
        each refused in a row, one more window goes without (up to ``BUDGET_SKIP_MAX``), so a
        window whose count is right costs a 429 every few windows."""
        if self.budget_skip > 0:
            self.budget_skip -= 1
            return None
        return max(now, end - 1.0 + WINDOW_SLACK)

    def _budget_grew(self, now: float) -> None:
        """A budget probe went through before the window's end: the window takes ``budget_step`` more
        than its count: one for the first probe accepted in a row, twice as many for each next (a
        count seen is a floor, found the way a rate is, by doubling; the probe itself is not counted
        in the next window's). The next request probes at once."""
        self.window_budget = (self.window_budget or 0) + self.budget_step
        self.budget_step *= 2
        self.admitted_in_window = max(0, self.admitted_in_window - 1)
        self.through_in_window = max(0, self.through_in_window - 1)
        self.budget_refusals = 0
        gate = self.gate
        gate.free_probe()
        if gate.until > now:
            gate.probe_at = now

    def _narrow(self, now: float, hold: float) -> None:
        whole = _whole(hold)
        lo, hi = (now + hold - 1.0 if whole else now + hold), now + hold
        if max(lo, self.window_lo) > min(hi, self.window_hi):  # inconsistent: start afresh
            self.window_lo, self.window_hi = lo, hi
        else:
            self.window_lo, self.window_hi = max(lo, self.window_lo), min(hi, self.window_hi)

    def _window_probe(self) -> Optional[float]:
        """When to probe for the window's start: the middle of where it may be, while probes are
        left (each refused one is a 429: a window of N requests affords N // 40, one before its
        size is known) and the place is not yet known to ``WINDOW_PRECISION``."""
        allowed = 1 if self.window_budget is None else self.window_budget // 40
        if self.window_hi - self.window_lo <= WINDOW_PRECISION or self.window_probes >= allowed:
            return None
        self.window_probes += 1
        return (self.window_lo + self.window_hi) / 2.0

    def _full_gate(self, until: float, trusted: bool, now: float, probe_at: Optional[float] = None) -> None:
        """A gate that runs its full length (or until its probe is accepted); window counts start
        again at its end, and so do rate measurements when it is long (a bucket may fill up
        meanwhile, and the client's own wait must not read as a slow server)."""
        self.gate.shut(until, probe_at, trusted=trusted)
        if until - now >= LONG_GATE:
            self.barrier = until
        self.grow_from = until
        self.admitted_in_window = self.through_in_window = 0
        self.budget_probing = False

    def _first_guess(self, now: float, wait: Optional[float]) -> float:
        through = est.let_through(self._records, now - 1.0, now + 1e-9) * self.share_scale(now - 1.0, now)
        self.guess_cap = UNLIMITED if self.interval_wait is None else 1.0 / self.interval_wait
        # A client that sent little says little about the server: a sub-second wait (one token's
        # interval) is then the better guess, so a lone call told "0.1 s" is not paced at 1 a second.
        floor = 1.0 if self.interval_wait is None else self.guess_cap
        return max(MIN_RATE, min(max(floor, through), self.guess_cap))

    def _settle(self, now: float) -> None:
        """Measure a pending event once every request sent before it has its answer."""
        if self.rate is not None and self.current_rate(now) is None:
            self.rate, self.measured = None, False  # grown far past any demand: pacing stops
        pending = self.pending_event
        if pending is None or est.unanswered_before(self._records, pending):
            self._trim(now)
            return
        self.pending_event = None
        if self.refine_guess:
            self.refine_guess = False
            self._refine_guess(pending, now)
        measured = est.measure(self._records, pending, self.barrier)
        self._trim(now)
        if measured is None or measured.accepted < 4 or self.rate is None:
            return
        scale = self.share_scale(pending - measured.span, pending)
        rate = measured.rate * scale
        peak, self.event_peak = self.event_peak, None
        if peak is not None and not measured.saturated and peak > rate:
            # Little was refused inside the stretch: the client may have sent less than the server
            # would take (a concurrency limit, or a bucket that filled up, wastes what is not used),
            # so the measurement is a floor, and the rate that drew the refusal a ceiling. That
            # matters after a guess that grew from below, and when the limit rose (the measurement
            # is well above the last one); otherwise the measurement stands. Not near the end of a
            # batch, where the rate no longer grows: a rate above the new limit would draw a 429 there,
            # and its request, told to wait, would finish last.
            if not self.measured:
                rate = max(rate, PEAK_SHARE * peak)
            elif self.last_measured is not None and rate > ROSE * self.last_measured and not self.growth_held:
                rate = math.sqrt(rate * peak)
        self.last_measured = measured.rate * scale
        self.rate = max(MIN_RATE, rate * MARGIN)
        self.measured = True
        self.grow_from = max(self.grow_from, now)

    def _refine_guess(self, event_sent: float, now: float) -> None:
        """Raise the first guess, once its burst's answers are in, to what the server let through
        per answer time (never above the cap a short wait set)."""
        latency = self.typical_latency()
        if self.rate is None or latency <= 0.0:
            return
        through = est.let_through(self._records, event_sent - 1.0, event_sent + 1e-9) \
            * self.share_scale(event_sent - 1.0, event_sent)
        self.rate = max(self.rate, min(self.guess_cap, through / max(latency, 0.005)))

    def status_rate(self, now: float) -> Optional[float]:
        rate = self.current_rate(now)
        if self.fixed_interval:
            fixed = 1.0 / self.fixed_interval
            rate = fixed if rate is None else min(rate, fixed)
        return rate


def _whole(wait: float) -> bool:
    """Whether a wait is a whole number of seconds (perhaps rounded up from less)."""
    return abs(wait - round(wait)) < 1e-6


def finite_positive(value: Optional[float]) -> Optional[float]:
    """``value`` when it is a usable wait (finite and > 0), else None."""
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0.0 else None
