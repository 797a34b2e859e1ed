"""Random limiters from the families real APIs use, each with its oracle (the ideal makespan).

``draw(rng)`` picks a family and its parameters; every server speaks the simulator's ``Server``
interface (see ``ratesim``) and knows its ``ideal(n)``, computed as ``shared/RATE_LIMIT_ORACLES.md``
says: what a client that knew the limiter exactly would achieve.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from typing import Deque, List, Optional, Tuple

from ratesim import EPOCH, Answer, Concurrency, FixedWindow, Server, TokenBucket, parsed_wait

STYLES = ("exact", "whole", "http-date-up", "ms", "none", "body")


class SlidingLog(Server):
    """At most ``limit`` requests in any rolling ``window`` seconds; a refusal's wait runs until the
    oldest admitted request in the window leaves it."""

    def __init__(self, limit: int, window: float, style: str) -> None:
        self.limit, self.window, self.style = limit, window, style
        self.log: Deque[float] = deque()

    def handle(self, now: float, model: str) -> Answer:
        while self.log and self.log[0] <= now - self.window:
            self.log.popleft()
        if len(self.log) < self.limit:
            self.log.append(now)
            return self.ok()
        wait = self.log[0] + self.window - now
        return self.refuse(parsed_wait(self.style, wait, now), dated=self.style.startswith("http-date"))

    def ideal(self, n: int) -> float:
        return (math.ceil(n / self.limit) - 1) * self.window + self.latency


class SlidingCounter(Server):
    """The sliding window counter (Cloudflare's, the usual Redis recipe): windows of ``window``
    seconds aligned to the epoch; a request ``elapsed`` seconds into a window is admitted iff
    ``prev * (1 - elapsed / window) + cur < limit`` (``prev``: admitted in the previous window,
    ``cur``: so far in this one). A refusal's wait runs to the first time that would hold for one
    more request, the counts as they are (in this window, else in the next, where ``prev`` is
    ``cur``), in closed form, then made exact in floats: ``now + wait`` is the first float time
    the same predicate admits (see ``first_admit``).

    Times are absolute (about 1.7e9 s, a float's step there is 2.4e-7 s), but the predicate reads
    only the offset from ``base`` (exact: both are close) and the elapsed part of its window."""

    def __init__(self, limit: int, window: float, style: str, start: float = EPOCH) -> None:
        self.limit, self.window, self.style, self.start = limit, float(window), style, start
        self.base = math.floor(start / window) * window  # a window start, at or before ``start``
        self.index, self.prev, self.cur = self.window_of(start), 0, 0

    def window_of(self, t: float) -> int:
        """The index (from ``base``) of the window ``t`` lies in: ``i * window <= t - base`` (both
        as floats) and not ``(i + 1) * window``, so that the elapsed part is never negative."""
        rel = t - self.base
        i = math.floor(rel / self.window)
        for _ in range(4):  # the division's rounding is off by one at most
            if i * self.window > rel:
                i -= 1
            elif (i + 1) * self.window <= rel:
                i += 1
            else:
                break
        return i

    def elapsed(self, t: float, index: int) -> float:
        return (t - self.base) - index * self.window

    def rolled(self, t: float, index: int, prev: int, cur: int) -> Tuple[int, int, int]:
        """The counts ``(index, prev, cur)`` at ``t``, if nothing is admitted in between."""
        i = self.window_of(t)
        if i <= index:
            return index, prev, cur
        return (i, cur, 0) if i == index + 1 else (i, 0, 0)

    def admits(self, t: float, index: int, prev: int, cur: int) -> bool:
        """Whether a request at ``t`` is admitted, the counts being ``(index, prev, cur)`` before it."""
        index, prev, cur = self.rolled(t, index, prev, cur)
        return prev * (1.0 - self.elapsed(t, index) / self.window) + cur < self.limit

    def first_admit(self, t: float, index: int, prev: int, cur: int) -> float:
        """The first float time at or after ``t`` at which ``admits`` holds, the counts as they are."""
        if self.admits(t, index, prev, cur):
            return t
        index, prev, cur = self.rolled(t, index, prev, cur)
        # In this window (when the current count leaves room at all), else in the next one, whose
        # previous count is this one's: prev * (1 - e / window) < limit - cur, e > window * (1 - (limit - cur) / prev).
        for k, p, c in ((index, prev, cur), (index + 1, cur, 0)):
            if c >= self.limit:
                continue
            e = 0.0 if p == 0 else max(0.0, self.window * (1.0 - (self.limit - c) / p))
            if e >= self.window:
                continue
            at = self._settle(max(t, self.base + (k * self.window + e)), t, k, index, prev, cur)
            if at is not None:
                return at
        # Not reached (the next window admits just after its start): the one after, empty, admits.
        return self.base + (index + 2.5) * self.window

    def _settle(self, at: float, t: float, k: int, index: int, prev: int, cur: int) -> Optional[float]:
        """The first admitted float time in window ``k`` near the closed form's ``at``, never before
        ``t``; None if there is none. The predicate is monotone in the time within a window, so a
        few steps of one float each way settle it (the closed form is that close); loops are bounded."""
        step = max(1e-9, abs(at) * 1e-15)
        for j in range(80):
            if self.window_of(at) > k:
                return None
            if self.admits(at, index, prev, cur):
                break
            at = math.nextafter(at, math.inf) if j < 64 else at + step * 2.0 ** (j - 64)  # never spins
        else:
            return None
        for _ in range(64):
            before = math.nextafter(at, -math.inf)
            if before < t or self.window_of(before) != k or not self.admits(before, index, prev, cur):
                break
            at = before
        return at

    def handle(self, now: float, model: str) -> Answer:
        self.index, self.prev, self.cur = self.rolled(now, self.index, self.prev, self.cur)
        if self.admits(now, self.index, self.prev, self.cur):
            self.cur += 1
            return self.ok()
        wait = self.first_admit(now, self.index, self.prev, self.cur) - now  # exact: the two are close
        return self.refuse(parsed_wait(self.style, wait, now), dated=self.style.startswith("http-date"))

    def ideal(self, n: int) -> float:
        return _counter_greedy(self, n, n)


class Shedding(Server):
    """Load shedding: with ``limit`` requests in flight, more are refused with ``status`` (503 or 529)
    and ``Retry-After: retry_after`` (None: no header)."""

    def __init__(self, limit: int, status: int = 503, retry_after: Optional[float] = 1.0) -> None:
        self.limit, self.status, self.retry_after = limit, status, retry_after
        self.active = 0

    def handle(self, now: float, model: str) -> Answer:
        if self.active >= self.limit:
            return Answer(self.status, self.retry_after, None, self.refusal_latency)
        self.active += 1
        return self.ok()

    def finish(self, now: float) -> None:
        self.active -= 1

    def ideal(self, n: int) -> float:
        return math.ceil(n / self.limit) * self.latency


class CostBucket(Server):
    """A token-per-time limit: ``rate`` tokens a second, ``burst`` at once; prompt i costs ``costs[i]``."""

    def __init__(self, rate: float, burst: float, costs: List[float], style: str) -> None:
        self.rate, self.burst, self.costs, self.style = rate, burst, costs, style
        self.tokens, self.stamp, self.next = burst, EPOCH, 0

    def handle(self, now: float, model: str) -> Answer:
        # The cost of the next prompt in line (the simulator's clients send prompts in order, and a
        # refused prompt is the next one again soon): prompts of very different sizes either way.
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        cost = self.costs[self.next % len(self.costs)]
        if self.tokens >= cost:
            self.tokens -= cost
            self.next += 1
            return self.ok()
        return self.refuse(parsed_wait(self.style, (cost - self.tokens) / self.rate, now),
                           dated=self.style.startswith("http-date"))

    def ideal(self, n: int) -> float:
        total = sum(self.costs[i % len(self.costs)] for i in range(n))
        return max(0.0, total - self.burst) / self.rate + self.latency


class Both(Server):
    """Two limits at once: a request is admitted only when both admit it (the first is asked first,
    and an admit of the first is taken back when the second refuses)."""

    def __init__(self, first: Server, second: Server) -> None:
        self.first, self.second = first, second
        first.latency = second.latency = self.latency

    def handle(self, now: float, model: str) -> Answer:
        a = self.first.handle(now, model)
        if a.status != 200:
            return a
        b = self.second.handle(now, model)
        if b.status != 200:
            _take_back(self.first, now)
            return b
        return a

    def finish(self, now: float) -> None:
        self.first.finish(now)
        self.second.finish(now)

    def ideal(self, n: int) -> float:
        return max(self.first.ideal(n), self.second.ideal(n))


def _take_back(server: Server, now: float) -> None:
    if isinstance(server, TokenBucket):
        server.tokens += 1.0
    elif isinstance(server, Concurrency):
        server.active -= 1
    elif isinstance(server, SlidingLog):
        server.log.pop()
    elif isinstance(server, SlidingCounter):
        server.cur -= 1


class HeavyTail(Server):
    """``inner`` whose accepted answers take a lognormal time (median ``median``, shape ``sigma``)."""

    def __init__(self, inner: Server, median: float, sigma: float, seed: int) -> None:
        self.inner, self.median, self.sigma = inner, median, sigma
        self.rng = random.Random(seed)
        self.latency = median
        inner.latency = median

    def handle(self, now: float, model: str) -> Answer:
        answer = self.inner.handle(now, model)
        if answer.status == 200:
            answer.latency = self.median * math.exp(self.sigma * self.rng.gauss(0.0, 1.0))
        return answer

    def finish(self, now: float) -> None:
        self.inner.finish(now)

    def ideal(self, n: int) -> float:
        return self.inner.ideal(n)


def _latency(server: Server, latency: float) -> Server:
    server.latency = latency
    return server


FAMILIES = ("bucket", "window", "sliding", "inflight", "shedding", "cost", "changing", "two", "share", "heavy")


def ideal(server: Server, n: int, workers: int) -> float:
    """The oracle's makespan, and never less than ``n`` prompts take on ``workers`` workers. A fixed
    window's oracle assumes its first (partial) window takes its whole quota at once, which
    ``workers`` may not send before the window ends: that one is the greedy client with ``workers``."""
    if isinstance(server, FixedWindow):
        return _window_greedy(server, n, workers)
    if isinstance(server, SlidingCounter):
        return _counter_greedy(server, n, workers)
    return max(server.ideal(n), math.ceil(n / workers) * server.latency)


def _window_greedy(server: FixedWindow, n: int, workers: int) -> float:
    """When the last of ``n`` answers is in for a client whose ``workers`` each send the moment they
    are free and the window has room (the exact limiter known)."""
    free = [server.start] * workers  # clock values at which each worker is free
    counts: dict[int, int] = {}
    end = server.start
    for _ in range(n):
        while True:
            t = heapq.heappop(free)
            index = server.index(t)  # as the server counts (a window of any length, in floats)
            if counts.get(index, 0) < server.limit:
                break
            heapq.heappush(free, server.end(index))
        counts[index] = counts.get(index, 0) + 1
        heapq.heappush(free, t + server.latency)
        end = max(end, t + server.latency)
    return end - server.start + server.delay


def _counter_greedy(server: SlidingCounter, n: int, workers: int) -> float:
    """When the last of ``n`` answers is in for a client whose ``workers`` each send the moment they
    are free and the sliding window counter admits it (see ``counter_sends``)."""
    sends = counter_sends(server, n, workers)
    return max(sends) + server.latency - server.start + server.delay if sends else 0.0


def counter_sends(server: SlidingCounter, n: int, workers: int) -> List[float]:
    """The greedy client's sends (absolute times, in order): a worker sends the moment it is free
    and the counter admits (``first_admit``: exact in floats, so a worker put back to that time is
    admitted then, unless another took the room first). Between two admissions each worker is put
    back once at most: the loop is bounded by that. The counter's state is not touched."""
    free = [server.start] * workers  # absolute times at which each worker is free
    index, prev, cur = server.window_of(server.start), 0, 0
    sends: List[float] = []
    budget = n * (workers + 2) + 16
    known: Tuple[Tuple[int, int, int], float] = ((index - 1, -1, -1), -math.inf)  # the last first_admit
    for _ in range(n):
        while True:
            budget -= 1
            if budget < 0:
                raise RuntimeError(f"sliding counter oracle did not settle: {server.limit}/{server.window}s")
            t = heapq.heappop(free)
            index, prev, cur = server.rolled(t, index, prev, cur)
            if server.admits(t, index, prev, cur):
                break
            # refused at t, so the first admission at or after t is the one found from an earlier
            # t of the same counts (no float admits between the two)
            if known[0] != (index, prev, cur) or t > known[1]:
                known = ((index, prev, cur), server.first_admit(t, index, prev, cur))
            heapq.heappush(free, known[1])
        cur += 1
        sends.append(t)
        heapq.heappush(free, t + server.latency)
    return sends


def draw(rng: random.Random, n: int, family: Optional[str] = None) -> Tuple[str, Server]:
    """A random limiter from ``family`` (None: any), its parameters drawn so that the limit binds."""
    family = family or rng.choice(FAMILIES)
    latency = rng.choice([0.05, 0.1, 0.2])
    style = rng.choice(STYLES)
    rate = rng.uniform(5.0, 60.0)
    if family == "bucket":
        return family, _latency(TokenBucket(rate, rng.choice([1, 5, 20, 100]), style), latency)
    if family == "window":  # whole seconds mostly, and a quarter of any length (a real server's may drift)
        window = rng.choice([1.0, 2.0, 5.0, rng.uniform(0.5, 6.0)])
        limit = max(8, int(rate * window))
        return family, _latency(FixedWindow(limit, window, rng.choice(["exact", "whole", "http-date-up"]),
                                            offset=rng.uniform(0.0, window)), latency)
    if family == "sliding":  # a sliding log or, half the time, a sliding window counter
        window = rng.choice([1.0, 2.0, 5.0])
        limit, style = max(8, int(rate * window)), rng.choice(["exact", "whole"])
        kind = SlidingCounter if rng.random() < 0.5 else SlidingLog
        return family, _latency(kind(limit, window, style), latency)
    if family == "inflight":
        return family, _latency(Concurrency(rng.randint(2, 16)), latency)
    if family == "shedding":
        return family, _latency(Shedding(rng.randint(2, 16), rng.choice([503, 529]), rng.choice([1.0, None])), latency)
    if family == "cost":
        costs = [rng.choice([50, 200, 1000, 4000]) * rng.uniform(0.5, 1.5) for _ in range(n)]
        mean = sum(costs) / n
        burst = max(max(costs), mean * rng.choice([2, 10, 40]))  # the largest prompt fits at all
        return family, _latency(CostBucket(rate * mean, burst, costs, style), latency)
    if family == "changing":
        low, high = sorted((rng.uniform(5.0, 30.0), rng.uniform(30.0, 60.0)))
        period = rng.uniform(1.5, 4.0)
        first, second = (low, high) if rng.random() < 0.5 else (high, low)
        changes = [(period * k, second if k % 2 else first) for k in range(1, 60)]
        return family, _latency(TokenBucket(first, rng.choice([1, 10]), style, changes=changes), latency)
    if family == "two":
        both = Both(TokenBucket(rate, 10, style), Concurrency(rng.randint(2, 12)))
        both.latency = both.first.latency = both.second.latency = latency
        return family, both
    if family == "share":  # other clients take a varying share of a bucket: a rate that changes
        total = rng.uniform(20.0, 80.0)
        changes = [(k * 1.0, total * (1.0 - rng.uniform(0.0, 0.7))) for k in range(1, 120)]
        return family, _latency(TokenBucket(total * 0.5, 10, style, changes=changes), latency)
    median = rng.choice([0.05, 0.1])
    return family, HeavyTail(TokenBucket(rate, 10, style), median, rng.uniform(0.5, 1.0), rng.randrange(1 << 30))


__all__ = ["FAMILIES", "STYLES", "Both", "CostBucket", "HeavyTail", "Shedding", "SlidingCounter", "SlidingLog",
           "counter_sends", "draw", "ideal"]
