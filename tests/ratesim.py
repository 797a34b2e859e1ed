"""A deterministic discrete-event simulator for the throttle: virtual worker threads against server models.

Each worker is a real thread, but only one runs at a time: ``VirtualTime.sleep`` hands control back
to the scheduler, which wakes the thread with the earliest wake time (ties in the order they fell
asleep) after moving the virtual clock there. So a run is deterministic, takes no wall-clock
sleeps, and the throttle under test is exercised through its public surface only, with the
virtual clock injected as its clock and the virtual sleep as the sleep it is given.

Server models answer at the virtual time a request reaches them (the send, unless the model puts
requests on the way, see ``on_quick_sockets``): a token bucket (its rate may change at set
times), a fixed window, a concurrency limit, a storm of hint-less refusals, and a composite with
per-model and ``:free`` limits. A refusal's wait reaches the client in one of several *styles*,
as a client would parse it: exact seconds, whole seconds, an HTTP-date, milliseconds, a reset
time, a body text, or nothing.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import random
import threading
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

from openrouter_sync.throttle import Throttle

EPOCH = 1_700_000_000.37  # the virtual clock reads like wall time, so HTTP-dates round as they would


class VirtualTime:
    """A virtual clock and a scheduler that runs one thread at a time in wake-time order."""

    def __init__(self, start: float = EPOCH) -> None:
        self.now = start
        self._heap: List[Tuple[float, int, threading.Event]] = []
        self._seq = itertools.count()
        self._yielded = threading.Event()
        self.errors: List[BaseException] = []
        self.wakeups = 0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if not seconds >= 0.0:
            raise ValueError(f"sleep({seconds!r})")
        wake = threading.Event()
        heapq.heappush(self._heap, (self.now + seconds, next(self._seq), wake))
        self._yielded.set()
        wake.wait()

    def spawn(self, target: Callable[[], None], after: float = 0.0) -> None:
        wake = threading.Event()
        heapq.heappush(self._heap, (self.now + after, next(self._seq), wake))

        def run() -> None:
            wake.wait()
            try:
                target()
            except BaseException as exc:  # reported by run()
                self.errors.append(exc)
            finally:
                self._yielded.set()

        threading.Thread(target=run, daemon=True).start()

    def run(self, limit: float = 1e6) -> None:
        """Run until every thread has finished (or the virtual time passes ``limit`` seconds)."""
        start = self.now
        while self._heap:
            when, _, wake = heapq.heappop(self._heap)
            if when - start > limit:
                raise RuntimeError(f"simulation still running after {limit} virtual seconds")
            self.now = max(self.now, when)
            self._yielded.clear()
            wake.set()
            self._yielded.wait()
            self.wakeups += 1
        if self.errors:
            raise self.errors[0]


# ----- how a wait reaches the client -----
def parsed_wait(style: str, true_wait: float, now: float, reset: Optional[float] = None) -> Optional[float]:
    """The wait a client parses from a refusal whose true wait is ``true_wait`` seconds."""
    if style == "exact":  # Retry-After: 0.237
        return true_wait
    if style == "ms":  # retry-after-ms
        return round(true_wait * 1000.0) / 1000.0
    if style in ("whole", "body"):  # Retry-After: 1 / "Please retry after 1 seconds"
        return float(max(1, math.ceil(true_wait - 1e-9)))
    if style == "http-date":  # a date: whole seconds, truncated; may already be past (parsed as 0)
        return max(0.0, math.floor(now + true_wait) - now)
    if style == "http-date-up":  # a date rounded up to the next whole second (never early)
        return math.ceil(now + true_wait) - now
    if style == "reset":  # only X-RateLimit-Reset (epoch ms): when the limiter is full again
        return round((true_wait if reset is None else reset) * 1000.0) / 1000.0
    if style == "none":
        return None
    raise ValueError(style)


@dataclass
class Answer:
    status: int
    wait: Optional[float] = None  # as parsed by the client
    scope: Optional[str] = None  # the scope the client's classifier would name
    latency: float = 0.0
    dated: bool = False  # the wait is a date: the client reads it relative to when the answer arrives


class Server:
    """A server model: ``handle`` at the time of the send, ``finish`` when an accepted answer is out.

    ``delay`` / ``refusal_delay``: seconds the client sees an answer (a 429) later than the server
    is done with it, after the first ``quick`` answers (see :func:`on_sockets`). ``send_delay``:
    seconds from the client's send to the server's (its request on the way); ``think``: seconds
    the client's own code takes before each request (building it, handling the last answer), see
    :func:`on_quick_sockets`."""

    latency = 0.05
    refusal_latency = 0.002  # 429s are answered at once: one network round trip
    delay = 0.0
    refusal_delay = 0.0
    quick = 0
    send_delay = 0.0
    think = 0.0
    connect = 0.0  # seconds more on the way for each of the first ``fresh`` requests (a new connection)
    fresh = 0
    connect_order: Optional[random.Random] = None  # draws each new connection's time in [0, 2 * connect]
    stagger: Optional[float] = None  # seconds between the client's workers starting (None: as ``simulate`` says)

    def on_the_way(self) -> float:
        """Seconds from the client's send to the server's, for the next request."""
        self.fresh -= 1
        if self.fresh < 0:
            return self.send_delay
        scale = 1.0 if self.connect_order is None else 2.0 * self.connect_order.random()
        return self.send_delay + self.connect * scale

    def _late(self, delay: float) -> float:
        self.quick -= 1
        return delay if self.quick < 0 else 0.0

    def handle(self, now: float, model: str) -> Answer:
        raise NotImplementedError

    def finish(self, now: float) -> None:
        pass

    def ideal(self, n: int) -> float:
        raise NotImplementedError

    def ok(self) -> Answer:
        return Answer(200, latency=self.latency + self._late(self.delay))

    def refuse(self, wait: Optional[float], scope: Optional[str] = None, dated: bool = False) -> Answer:
        return Answer(429, wait, scope, self.refusal_latency + self._late(self.refusal_delay), dated)


def on_sockets(server: Server, delay: float = 0.042, refusal_delay: float = 0.042, quick: int = 32) -> Server:
    """``server`` as the benchmark servers behaved on real loopback sockets before the client asked
    for immediate ACKs (``deadline.quick_ack``): they write an answer's headers and body
    separately, so Nagle's algorithm and the client's delayed ACK held the body back about 42 ms
    (the server's work, and a concurrency limit's slot, end before that); the first answer on each
    of the 32 fresh connections came at once. Kept as the model of a path that delays answers."""
    server.delay, server.refusal_delay, server.quick = delay, refusal_delay, quick
    return server


def on_quick_sockets(server: Server, send_delay: float = 0.0003, delay: float = 0.0007,
                     refusal_latency: float = 0.001, think: float = 0.0015, connect: float = 0.004,
                     fresh: int = 32, stagger: float = 0.0008, shuffle: Optional[int] = None) -> Server:
    """``server`` as the real-socket matrix meets it with immediate ACKs (traced on loopback, 2 cores
    shared by client and server): a request reaches the server 0.3 ms after the client lets it
    go (4 ms more for each of the first 32, which open a connection each; ``shuffle``: a seed to
    draw each of those from 0 to 8 ms, so they reach the server out of order), an answer reaches
    the client 0.7 ms after the server is done with it (so a concurrency limit's slot is free
    before the client knows), a 429 is back 1 ms after it reached the server, the client's own
    code takes 1.5 ms between an answer and its next request, and its workers start 0.8 ms apart."""
    server.send_delay, server.delay, server.refusal_latency, server.think = send_delay, delay, refusal_latency, think
    server.connect, server.fresh, server.stagger = connect, fresh, stagger
    server.connect_order = None if shuffle is None else random.Random(shuffle)
    return server


class TokenBucket(Server):
    """``rate`` a second, ``burst`` at once; ``changes``: (seconds after the start, new rate)."""

    def __init__(self, rate: float, burst: int, style: str, changes: Sequence[Tuple[float, float]] = (),
                 start: float = EPOCH) -> None:
        self.burst = burst
        self.style = style
        self.start = start
        self.schedule = [(start, rate)] + [(start + t, r) for t, r in changes]
        self.tokens = float(burst)
        self.stamp = start

    def rate_at(self, t: float) -> float:
        rate = self.schedule[0][1]
        for at, r in self.schedule:
            if at <= t:
                rate = r
        return rate

    def _refill(self, now: float) -> None:
        t = self.stamp
        for at, _ in [*self.schedule[1:], (now, 0.0)]:
            if at <= t:
                continue
            end = min(at, now)
            self.tokens = min(float(self.burst), self.tokens + (end - t) * self.rate_at(t))
            t = end
            if t >= now:
                break
        self.stamp = now

    def handle(self, now: float, model: str) -> Answer:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return self.ok()
        rate = self.rate_at(now)
        true_wait = (1.0 - self.tokens) / rate
        full = (self.burst - self.tokens) / rate
        wait = parsed_wait(self.style, true_wait, now, reset=full)
        return self.refuse(wait, dated=self.style.startswith("http-date"))

    def ideal(self, n: int) -> float:
        """When the n-th token is there, plus one answer time (every request sent the moment it can be)."""
        tokens, t, got, dt = float(self.burst), self.start, 0, 0.0005
        got = min(n, int(tokens))
        tokens -= got
        while got < n:
            t += dt
            tokens += dt * self.rate_at(t)
            if tokens >= 1.0:
                take = min(n - got, int(tokens))
                got += take
                tokens -= take
        return t - self.start + self.latency + self.delay


class FixedWindow(Server):
    """``limit`` requests per ``window`` seconds; a refusal's wait runs to the window's end.
    ``align``: ``"epoch"``, windows aligned to the epoch, like real ones; ``"start"``, counted from
    the first request, as the benchmark server counts them (the first request is the run's start).
    ``offset``: seconds the windows' origin lies after that (an arbitrary phase)."""

    def __init__(self, limit: int, window: float, style: str, start: float = EPOCH, align: str = "epoch",
                 offset: float = 0.0) -> None:
        self.limit, self.window, self.style = limit, window, style
        if align not in ("epoch", "start"):
            raise ValueError(align)
        base = math.floor(start / window) * window if align == "epoch" else start
        self.origin = base + offset - (window if base + offset > start else 0.0)
        self.start = start
        self.counts: Dict[int, int] = {}

    def index(self, now: float) -> int:
        """The window ``now`` lies in."""
        return int((now - self.origin) // self.window)

    def end(self, index: int) -> float:
        """The first clock value in the window after window ``index`` (a window of any length: its end
        computed in floats may still read as in the window, then the next value is)."""
        end = self.origin + (index + 1) * self.window
        for _ in range(64):
            if self.index(end) > index:
                break
            end = math.nextafter(end, math.inf)
        return end

    def handle(self, now: float, model: str) -> Answer:
        index = self.index(now)
        used = self.counts.get(index, 0)
        if used < self.limit:
            self.counts[index] = used + 1
            return self.ok()
        return self.refuse(parsed_wait(self.style, self.end(index) - now, now),
                           dated=self.style.startswith("http-date"))

    def ideal(self, n: int) -> float:
        first = self.origin + self.window - self.start  # what is left of the first window
        return (first + (math.ceil(n / self.limit) - 2) * self.window if n > self.limit else 0.0) \
            + self.latency + self.delay


class Concurrency(Server):
    """An upstream that refuses, with no hint, while ``limit`` requests are in flight (its slot
    frees ``latency`` seconds after the send, even when the client sees the answer later).
    ``upstream``: its 429s name the model's scope, as OpenRouter's "Provider returned error" does."""

    def __init__(self, limit: int, upstream: bool = False) -> None:
        self.limit = limit
        self.upstream = upstream
        self.active = 0
        self.releases: List[float] = []  # with a delay: when each busy slot frees

    def handle(self, now: float, model: str) -> Answer:
        if self.delay:
            while self.releases and self.releases[0] <= now:
                heapq.heappop(self.releases)
            self.active = len(self.releases)
        if self.active >= self.limit:
            return self.refuse(None, f"model:{model}" if self.upstream else None)
        self.active += 1
        if self.delay:
            heapq.heappush(self.releases, now + self.latency)
        return self.ok()

    def finish(self, now: float) -> None:
        if not self.delay:
            self.active -= 1

    def ideal(self, n: int) -> float:
        return math.ceil(n / self.limit) * self.latency + self.delay + self.send_delay


class Storm(Server):
    """Refuses everything, with no hint, for ``seconds``; then answers as ``after`` does."""

    def __init__(self, seconds: float, after: Server, start: float = EPOCH) -> None:
        self.until = start + seconds
        self.seconds = seconds
        self.after = after

    def handle(self, now: float, model: str) -> Answer:
        return self.refuse(None) if now < self.until else self.after.handle(now, model)

    def finish(self, now: float) -> None:
        self.after.finish(now)

    def ideal(self, n: int) -> float:
        return self.seconds + self.after.ideal(n)


class Unlimited(Server):
    def __init__(self, workers: int) -> None:
        self.workers = workers

    def handle(self, now: float, model: str) -> Answer:
        return self.ok()

    def ideal(self, n: int) -> float:
        return math.ceil(n / self.workers) * self.latency


@dataclass
class Scoped(Server):
    """A healthy key-wide server, plus limits of one scope each:
    ``free_quota_reset``: every ``:free`` model is over its daily quota (429, scope ``free``, the wait in hours);
    ``model_limits``: model id -> its own server model (429s from it carry scope ``model:<id>``);
    ``unavailable``: model id -> 503 with this ``Retry-After`` (never reported to the throttle)."""

    free_quota_reset: Optional[float] = None
    model_limits: Dict[str, Server] = field(default_factory=dict)
    unavailable: Dict[str, float] = field(default_factory=dict)
    workers: int = 32

    def handle(self, now: float, model: str) -> Answer:
        if model in self.unavailable:
            return Answer(503, self.unavailable[model], None, self.refusal_latency)
        if model.endswith(":free") and self.free_quota_reset is not None:
            return self.refuse(self.free_quota_reset, "free")
        limit = self.model_limits.get(model)
        if limit is not None:
            answer = limit.handle(now, model)
            if answer.status == 429:
                answer.scope = f"model:{model}"
            return answer
        return self.ok()

    def ideal(self, n: int) -> float:
        return math.ceil(n / self.workers) * self.latency


# ----- clients -----
def scopes_for(model: str) -> Tuple[str, ...]:
    return (f"model:{model}", "free") if model.endswith(":free") else (f"model:{model}",)


@dataclass
class Run:
    makespan: float
    ideal: float
    prompts: int
    requests: int
    refusals: int
    failures: int
    finished_at: Dict[str, float]
    throttle: Optional[Throttle]
    waited: Dict[str, float] = field(default_factory=dict)  # per prompt: seconds spent in acquire

    @property
    def ratio(self) -> float:
        return self.makespan / self.ideal

    @property
    def share_429(self) -> float:
        return self.refusals / self.prompts


def simulate(server: Server, n: int = 300, workers: int = 32, *, plain: bool = False,
             retry_after: bool = False, throttle: Optional[Throttle] = None,
             models: Sequence[str] = ("openai/gpt-4o-mini",), seed: int = 1, stagger: float = 0.0003,
             max_attempts: int = 60, max_wait: float = 120.0,
             clock: Optional[VirtualTime] = None, batch: bool = True,
             sample: Optional[Tuple[float, Callable[[float], None]]] = None) -> Run:
    """Run ``n`` prompts (model ``models[i % len(models)]``) through ``workers`` virtual threads.

    The library's client: ``acquire``, send, wait the answer's latency, report it; after a
    refusal (a 429, a 529, a 503 naming a wait: not counted against ``max_attempts``, only against
    the 900 s budget; reported to the throttle, as a 503 with no wait is too), wait the named wait (a floor for that
    request) or else an exponential back-off (0.2 * 2**(k-1), jitter 50%), then try again.
    ``plain=True``: the usual hand-written loop instead (no throttle, tenacity's
    ``wait_exponential_jitter(initial=0.1, max=5)``, waits named by the server ignored, every
    refusal an attempt); with ``retry_after=True`` too, it waits a number the server names in
    ``Retry-After`` instead (exact or whole seconds, not a date or a body: ``benchmarks/clients.py``'s).
    ``sample``: (every, callback) to call ``callback(seconds since the start)`` while workers run.
    ``batch``: declare the prompts not yet answered to the throttle (``Throttle.expect``), as
    ``run_sheets`` does.
    """
    vt = clock or VirtualTime()
    client = _Client(vt, server, n, workers, plain=plain, retry_after=retry_after, throttle=throttle, models=models,
                     seed=seed, stagger=stagger, max_attempts=max_attempts, max_wait=max_wait, batch=batch)
    if sample is not None:
        every, callback = sample

        def sampler() -> None:
            while client.alive:
                callback(vt.now - client.start)
                vt.sleep(every)

        vt.spawn(sampler)
    with client.declared():
        vt.run()
    return client.run()


def simulate_processes(server: Server, processes: int, n: int, workers: int, *, seed: int = 1,
                       shared: bool = False, max_attempts: int = 60) -> List[Run]:
    """``processes`` clients, each with its own throttle (like processes that share no state;
    ``shared=True``: one throttle for all, as one process would), ``n`` prompts and ``workers``
    threads each, started together against one ``server``. Each run's makespan counts from the
    common start; its ideal is the server's for all the prompts together."""
    vt = VirtualTime()
    common = Throttle(clock=vt.time) if shared else None
    clients = [_Client(vt, server, n, workers, throttle=common or Throttle(clock=vt.time), seed=seed + i, tag=f"p{i}-",
                       max_attempts=max_attempts) for i in range(processes)]
    with contextlib.ExitStack() as stack:
        for client in clients:
            stack.enter_context(client.declared())
        vt.run()
    runs = [client.run() for client in clients]
    for run in runs:
        run.ideal = server.ideal(n * processes)
    return runs


def _in_retry_after(server: Server) -> bool:
    """Whether ``server`` names its waits as a number in ``Retry-After`` (exact or whole seconds;
    the load-shedding and concurrency models name one or none)."""
    for model in (server, getattr(server, "inner", None), getattr(server, "first", None)):
        style = getattr(model, "style", None)
        if style is not None:
            return style in ("exact", "whole")
    return True


class _Client:
    """One client's virtual worker threads, spawned on ``vt`` (see ``simulate``)."""

    def __init__(self, vt: VirtualTime, server: Server, n: int, workers: int, *, plain: bool = False,
                 retry_after: bool = False, throttle: Optional[Throttle] = None,
                 models: Sequence[str] = ("openai/gpt-4o-mini",), seed: int = 1, stagger: float = 0.0003,
                 max_attempts: int = 60, max_wait: float = 120.0, batch: bool = True, tag: str = "") -> None:
        self.vt, self.server, self.n, self.plain = vt, server, n, plain
        self.named = not plain or (retry_after and _in_retry_after(server))  # the waits this client heeds
        self.models, self.max_attempts, self.max_wait, self.batch, self.tag = models, max_attempts, max_wait, batch, tag
        self.start = vt.now
        if throttle is None and not plain:
            throttle = Throttle(clock=vt.time)
        self.throttle = throttle
        self.rng = random.Random(seed)
        self.queue = list(range(n))
        self.queue.reverse()
        self.counts = {"requests": 0, "refusals": 0, "failures": 0}
        self.finished: Dict[str, float] = {}
        self.waited: Dict[str, float] = {}
        self.last = self.start
        self.alive = workers
        if server.stagger is not None:
            stagger = server.stagger
        for i in range(workers):
            vt.spawn(self.worker, after=i * stagger)

    def declared(self) -> ContextManager[None]:
        """While inside, the prompts not yet answered are declared to the throttle (as ``run_sheets`` does)."""
        if self.throttle is None or not self.batch:
            return contextlib.nullcontext()
        return self.throttle.expect(lambda: self.n - len(self.finished) - self.counts["failures"])

    def run(self) -> Run:
        return Run(makespan=self.last - self.start, ideal=self.server.ideal(self.n), prompts=self.n,
                   requests=self.counts["requests"], refusals=self.counts["refusals"],
                   failures=self.counts["failures"], finished_at=self.finished, throttle=self.throttle,
                   waited=self.waited)

    def backoff(self, attempt: int) -> float:
        if self.plain:
            return min(0.1 * 2.0 ** (attempt - 1) + self.rng.uniform(0.0, 1.0), 5.0)
        return min(10.0, 0.2 * 2.0 ** (attempt - 1)) * (1.0 - 0.5 * self.rng.random())

    def worker(self) -> None:
        while self.queue:
            self.one(self.queue.pop())
        self.alive -= 1

    def one(self, index: int) -> None:
        vt, server, throttle, counts = self.vt, self.server, self.throttle, self.counts
        key = f"{self.tag}{index}"
        model = self.models[index % len(self.models)]
        scopes = scopes_for(model)
        processed, attempt = 0, 0
        while processed < self.max_attempts and vt.now - self.start < 900.0:  # the policy's max_elapsed_seconds
            attempt += 1
            ticket = None
            if server.think:
                vt.sleep(server.think)
            if throttle is not None:
                ticket = throttle.acquire(vt.sleep, self.max_wait, scopes=scopes)
                self.waited[key] = self.waited.get(key, 0.0) + ticket.waited
                if not ticket.admitted:
                    counts["failures"] += 1  # the lead's retry code gives up here
                    return
            counts["requests"] += 1
            on_the_way = server.on_the_way()
            if on_the_way:
                vt.sleep(on_the_way)
            answer = server.handle(vt.now, model)
            vt.sleep(answer.latency)
            if answer.dated and answer.wait is not None:  # a date, read on arrival
                answer.wait = max(0.0, answer.wait - answer.latency)
            if self.plain or not (answer.status in (429, 529) or (answer.status == 503 and answer.wait is not None)):
                processed += 1  # the library's default policy bounds refusals by time, not attempts
            if answer.status == 200:
                server.finish(vt.now)
                if throttle is not None and ticket is not None:
                    throttle.on_answer(ticket)
                self.finished[key] = vt.now
                self.last = max(self.last, vt.now)
                return
            signal = answer.status in (429, 503, 529)  # a 503 with no wait is a signal too, but an attempt
            if answer.status != 200:
                counts["refusals"] += 1
            if signal and throttle is not None and ticket is not None:
                shed = answer.status != 429  # a 503 or 529: the model's provider shed it (as the pipeline says)
                throttle.on_rate_limited(ticket, answer.wait, scopes[0] if shed else answer.scope, shed=shed)
            elif throttle is not None and ticket is not None:
                throttle.on_answer(ticket)
            wait = answer.wait if answer.wait is not None and self.named else self.backoff(attempt)
            if wait > self.max_wait:
                counts["failures"] += 1  # the retry policy gives up on waits this long
                return
            if wait > 0:
                vt.sleep(wait)
        counts["failures"] += 1
