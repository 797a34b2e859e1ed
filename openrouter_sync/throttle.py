"""One rate-limit state for every thread (and, by default, every backend) that uses an endpoint and key.

``acquire`` before each send, then report the answer with the ticket it returned: ``on_answer``
for anything but a 429, ``on_rate_limited`` for a 429. The state is split in *lanes*, one per
scope a limit applies to:

- ``"key"``: the whole endpoint and key (OpenRouter's per-account limits); every request goes
  through it;
- ``"model:<id>"``: one model (an upstream provider's limit);
- ``"free"``: the ``:free`` model family's quota.

A 429 shuts and slows only the lane its scope names, so a paid model is never held by a
``:free`` quota or by another model's limit. Each lane is a gate, a pacer and an adaptive rate:
see :mod:`openrouter_sync.ratelimit` for how they learn. No gate holds the others back longer
than ``max_gate_seconds``: the request that was told to wait longer handles that wait itself.

The key-wide lane's send slots and measured rate may be shared with other processes
(:meth:`Throttle.shared`, ``$OPENROUTER_SYNC_SHARED_STATE``): through a locked file on one machine
(:mod:`openrouter_sync.ratelimit.shared`), or through Redis across machines
(:mod:`openrouter_sync.ratelimit.redis_state`, the optional ``openrouter-sync[redis]``). By default,
the processes of one user on one machine share it through a file in a runtime directory, from
the moment a second process on the same key is rate-limited (see :meth:`Throttle.for_endpoint`).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from ._log import logger
from .ratelimit.lane import Lane, finite_positive
from .ratelimit.shared import SHARED_STATE_ENV, State, StateStore, default_store, sanitize, store_from_env

__all__ = ["KEY_SCOPE", "KeyThrottles", "ScopeStatus", "Throttle", "ThrottleStatus", "Ticket"]

Sleep = Callable[[float], None]

#: The name of the lane every request goes through (the whole endpoint and key).
KEY_SCOPE = "key"
_NEVER = float("-inf")
_RING = 16  # the latest key-wide 429s of all processes kept in the shared state
STANDBY_LOOK = 0.05  # seconds between looks at the default state file: a peer's 429 is heard within an answer time
_PEERS = 16  # processes kept in the default state file's list of those rate-limited lately (it holds 4 KiB)
REFINE_LOOK = 0.01  # seconds between looks at a send slot while a first guess waits to be raised


@dataclass(frozen=True)
class Ticket:
    """What ``acquire`` hands out; give it back with the answer."""

    sent_at: Optional[float]  #: clock time the request was let go; None: not admitted
    waited: float  #: seconds this acquire spent waiting
    refused_for: float = 0.0  #: when not admitted: how long the gate stays shut
    scopes: Tuple[str, ...] = ()  #: the scopes this request went through (the key-wide lane is implied)

    @property
    def admitted(self) -> bool:
        """Whether the request may be sent."""
        return self.sent_at is not None


@dataclass(frozen=True)
class ScopeStatus:
    """One lane's state at the time of the snapshot."""

    scope: str  #: ``"key"``, ``"model:<id>"`` or ``"free"``
    blocked_for: float  #: seconds until its gate opens (0: open)
    rate: Optional[float]  #: requests per second it paces to now (None: not paced)
    measured: bool  #: whether ``rate`` was measured (else a guess that grows quickly, or a fixed rate)
    rate_limited_count: int  #: 429s attributed to this scope


@dataclass(frozen=True)
class ThrottleStatus:
    """A public, frozen snapshot of a ``Throttle``."""

    scopes: Tuple[ScopeStatus, ...]
    rate_limited_count: int
    requests_per_minute: Optional[float]

    def scope(self, name: Optional[str] = None) -> Optional[ScopeStatus]:
        """The status of one scope (None: the key-wide lane), or None when it was never used."""
        wanted = KEY_SCOPE if name is None else name
        return next((s for s in self.scopes if s.scope == wanted), None)

    @property
    def blocked(self) -> bool:
        """Whether any gate is shut."""
        return any(s.blocked_for > 0 for s in self.scopes)


def _check_rpm(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"requests_per_minute must be > 0, got {value!r}")
    return float(value)


def _normalize_scopes(scopes: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(scopes, str):
        scopes = (scopes,)
    seen: List[str] = []
    for scope in scopes:
        if not isinstance(scope, str) or not scope or scope == KEY_SCOPE:
            raise ValueError(f"scope must be a non-empty string other than {KEY_SCOPE!r}, got {scope!r}")
        if scope not in seen:
            seen.append(scope)
    return tuple(seen)


class Throttle:
    """Shared gates and pacers for one endpoint and key. Thread-safe.

    ``requests_per_minute``: a fixed pace for every request (None: none). ``adaptive``: learn the
    server's rate from 429s (False: only the server's named waits shut the gates, for their
    full length). ``clock``: seconds, monotonic. ``max_gate_seconds``: the longest any 429 holds
    the *other* requests back.
    """

    _registry: ClassVar["weakref.WeakValueDictionary[Tuple[str, str], Throttle]"] = weakref.WeakValueDictionary()
    _shared_registry: ClassVar[Dict[str, "Throttle"]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()
    _all: ClassVar["weakref.WeakSet[Throttle]"] = weakref.WeakSet()

    def __init__(self, requests_per_minute: Optional[float] = None, *, adaptive: bool = True,
                 clock: Callable[[], float] = time.monotonic, max_gate_seconds: float = 60.0) -> None:
        rpm = _check_rpm(requests_per_minute)
        if isinstance(max_gate_seconds, bool) or not isinstance(max_gate_seconds, (int, float)) \
                or not math.isfinite(max_gate_seconds) or max_gate_seconds <= 0:
            raise ValueError(f"max_gate_seconds must be > 0, got {max_gate_seconds!r}")
        self._clock = clock
        # Wall time, to see where an HTTP-date's wait ends (an injected clock is taken as reading like wall time).
        self._wall: Callable[[], float] = time.time if clock is time.monotonic else clock
        self._lock = threading.Lock()
        self._adaptive = bool(adaptive)
        self._max_gate = float(max_gate_seconds)
        self._rpm = rpm
        self._lanes: Dict[str, Lane] = {}
        self._key = self._lane(KEY_SCOPE)
        self._key.fixed_interval = 60.0 / rpm if rpm else 0.0
        self._rate_limited = 0
        self._shared: Optional[StateStore] = None
        # The default store, in standby until another process on this key is rate-limited (``_join_peers``).
        self._standby: Optional[StateStore] = None
        self._standby_mtime: Optional[int] = None  # the standby file's mtime as last looked at or written here
        self._standby_look = _NEVER  # when acquire looks at it next
        self._seen_rate = 0.0  # stamp of the shared rate last taken over or written
        self._slot_gen = 0  # generation of the shared chain of send slots last seen
        self._restarts_seen = self._key.pacer.restarts
        self._refusals_seen = 0  # count of the shared ring of 429s taken over
        self._window_seen = 0  # the key-wide lane's count of sends in the window, as last taken over
        self._shared_refusals: Deque[float] = deque(maxlen=4 * _RING)  # sends whose 429 went to the ring
        self._share_pid, self._share_token = 0, ""  # see _share_id
        self._work: Dict[int, Callable[[], Optional[int]]] = {}  # see expect
        self._works = 0
        Throttle._all.add(self)

    @classmethod
    def for_endpoint(cls, base_url: str, api_key: Optional[str]) -> Throttle:
        """The process-wide throttle for this endpoint and key: the same object while it is in use
        (released, closing its state file, once no backend holds it).

        Only a hash of the key is kept (never the key itself). With ``$OPENROUTER_SYNC_SHARED_STATE``
        set to a directory (created ``0700`` if missing), its key-wide state is shared with the other
        processes that set it (see :meth:`shared`), in a file there named after a hash of the
        endpoint and key. A directory that is not this user's alone (another owner, writable by
        group or others, or a link), or one below a folder or link another user could swap, is
        refused with a warning, and the state stays in this process.
        A Redis URL (``redis://``, ``rediss://``, ``unix://``; needs ``openrouter-sync[redis]``)
        shares it with processes on other machines too (without the ``redis`` package, or with a
        malformed URL, a warning is logged and the state is not shared). ``off``: not shared.

        Unset (the default): a file of this user's runtime directory (``$XDG_RUNTIME_DIR/openrouter-sync``,
        else ``openrouter-sync-<uid>`` in the temporary directory) waits in standby. Each key-wide 429
        is noted there, and every ``STANDBY_LOOK`` seconds a request looks (a ``stat``) whether the file
        changed. Once another process on this key was rate-limited within ``max_gate_seconds``, the
        state is shared there as with a directory named, and it stays shared. A process alone on its
        key never shares, and its calls cost no more. Where that directory cannot be used, nothing is
        shared, with no warning."""
        url = str(base_url).rstrip("/")
        digest = hashlib.sha256((api_key or "").encode("utf-8")).hexdigest()
        key = (url, digest)
        with cls._registry_lock:
            throttle = cls._registry.get(key)
            if throttle is None:
                name = hashlib.sha256(f"{url}\n{digest}".encode()).hexdigest()[:32]
                throttle = cls()
                where = os.environ.get(SHARED_STATE_ENV, "").strip()
                if where:
                    throttle._shared = store_from_env(where, name)
                else:
                    throttle._standby = default_store(name)
                store = throttle._shared or throttle._standby
                if store is not None:
                    weakref.finalize(throttle, store.close)
                cls._registry[key] = throttle
            return throttle

    @classmethod
    def shared(cls, path: str, requests_per_minute: Optional[float] = None, *, adaptive: bool = True,
               max_gate_seconds: float = 60.0) -> Throttle:
        """A throttle whose key-wide lane (send slots, rate, recent 429s, window counts and gate)
        lives in the file ``path`` (created if missing), shared by every process on this machine
        that uses the same path: e.g. ``Throttle.shared("~/.cache/openrouter-sync/<key-hash>.state")``.
        One object per path in a process. Standard library only (``fcntl.flock``); where the file
        cannot be locked, the state stays per process (with a warning). Scoped lanes (a model,
        ``:free``) and concurrency caps stay per process.

        ``path`` may instead be a Redis URL, ``redis://[:password@]host[:port][/db][#name]`` (or
        ``rediss://``, ``unix://``), to share with processes on other machines: needs
        ``pip install "openrouter-sync[redis]"``; the state lives under a Redis key named after the
        ``#name`` (``default`` without one). If Redis fails, one warning is logged and the state
        stays per process. Any other ``scheme://`` is refused with a ``ValueError`` (a mistyped
        Redis URL never becomes a file path)."""
        from .ratelimit.redis_state import open_shared_state

        where = path.strip() if "://" in path else os.path.abspath(os.path.expanduser(path))
        with cls._registry_lock:
            throttle = cls._shared_registry.get(where)
            if throttle is None:
                state = open_shared_state(where)  # before registering: a missing package raises here
                throttle = cls(requests_per_minute, adaptive=adaptive, max_gate_seconds=max_gate_seconds)
                throttle._shared = state
                cls._shared_registry[where] = throttle
            return throttle

    @property
    def shared_state(self) -> Optional[str]:
        """Where the state shared with other processes lives (a file, or a Redis URL without its
        password), or None: not shared (by default, not until another process on this key is
        rate-limited), or no longer (the file could not be locked, Redis failed)."""
        return None if self._shared is None or not self._shared.usable else self._shared.path

    def shared_cost(self) -> Optional[float]:
        """Mean seconds per access to the shared state (file or Redis) so far (its cost), or None."""
        shared = self._shared
        if shared is None or not shared.lock_count:
            return None
        return shared.lock_seconds / shared.lock_count

    def __repr__(self) -> str:
        rate = self.learned_rate
        return (f"Throttle(requests_per_minute={self._rpm!r}, adaptive={self._adaptive}, "
                f"learned_rate={None if rate is None else round(rate, 3)}, rate_limited_count={self._rate_limited})")

    def _lane(self, scope: str) -> Lane:
        lane = self._lanes.get(scope)
        if lane is None:
            lane = self._lanes[scope] = Lane(scope, adaptive=self._adaptive)
        return lane

    # ----- configuration and introspection -----
    @property
    def adaptive(self) -> bool:
        """Whether rates are learned from 429s (settable; turning it off forgets what was learned)."""
        return self._adaptive

    @adaptive.setter
    def adaptive(self, value: bool) -> None:
        with self._lock:
            self._adaptive = bool(value)
            for lane in self._lanes.values():
                if lane.adaptive != self._adaptive:
                    lane.adaptive = self._adaptive
                    lane.forget()

    @property
    def requests_per_minute(self) -> Optional[float]:
        """The fixed pace for every request, or None."""
        return self._rpm

    def set_requests_per_minute(self, value: Optional[float]) -> None:
        """Change the fixed pace (None: no fixed pace). Raises ``ValueError`` unless None or finite and > 0."""
        rpm = _check_rpm(value)
        with self._lock:
            self._rpm = rpm
            self._key.fixed_interval = 60.0 / rpm if rpm else 0.0

    @property
    def learned_rate(self) -> Optional[float]:
        """The key-wide adaptive rate in requests per second, or None while nothing is paced."""
        with self._lock:
            return self._key.current_rate(self._clock())

    @property
    def rate_limited_count(self) -> int:
        """429s reported so far, all scopes."""
        return self._rate_limited

    def blocked_for(self, scope: Optional[str] = None) -> float:
        """Seconds until the gate of ``scope`` (None: the key-wide one) opens; 0 when open."""
        with self._lock:
            lane = self._lanes.get(KEY_SCOPE if scope is None else scope)
            return 0.0 if lane is None else lane.gate.remaining(self._clock())

    def ready_in(self, scopes: Sequence[str] = ()) -> float:
        """Seconds until a request through ``scopes`` (and the key-wide lane) could go as things
        stand, by its gates and paced send slots: 0 when now. A scheduler uses it to hand out work
        whose scopes are open (see :mod:`openrouter_sync.handout`)."""
        names = _normalize_scopes(scopes)
        with self._lock:
            now = self._clock()
            wait = 0.0
            for name in (KEY_SCOPE, *names):
                lane = self._lanes.get(name)
                if lane is not None:
                    wait = max(wait, lane.gate.until - now, lane.pacer.next_slot - now)
            return wait

    def status(self) -> ThrottleStatus:
        """A snapshot: per scope, how long its gate stays shut and the rate it paces to."""
        with self._lock:
            now = self._clock()
            scopes = tuple(
                ScopeStatus(scope=name, blocked_for=lane.gate.remaining(now), rate=lane.status_rate(now),
                            measured=lane.measured and lane.rate is not None,
                            rate_limited_count=lane.rate_limited_count)
                for name, lane in self._lanes.items())
            return ThrottleStatus(scopes=scopes, rate_limited_count=self._rate_limited,
                                  requests_per_minute=self._rpm)

    def reset(self, scope: Optional[str] = None) -> None:
        """Forget learned rates and open the gates: of one scope (``"key"`` for the key-wide lane),
        or of all (None). The fixed ``requests_per_minute`` and the counts stay."""
        with self._lock:
            if scope is None:
                lanes = list(self._lanes.values())
            else:
                lane = self._lanes.get(scope)
                lanes = [] if lane is None else [lane]
            for lane in lanes:
                lane.forget()

    def block(self, seconds: float, scope: Optional[str] = None) -> None:
        """Shut a gate by hand for ``seconds`` (not capped, not learned from): e.g. a planned pause."""
        hold = finite_positive(seconds)
        if hold is None:
            return
        with self._lock:
            lane = self._lane(KEY_SCOPE if scope is None else scope)
            now = self._clock()
            if lane.gate.until > now:
                lane.gate.extend(now + hold)
            else:
                lane.gate.shut(now + hold, None, trusted=True)
            lane.epoch += 1

    @contextmanager
    def expect(self, left: Callable[[], Optional[int]]) -> Iterator[None]:
        """While inside, ``left()`` says how many requests are still to come through this throttle
        from a batch (``run_sheets`` declares its sheets not yet answered; None: not known yet). Near
        the end of the work, the learned rate then stops growing where a refused step's named wait
        would outlast the work (see ``Lane.hold_growth``). Not with processes sharing the state:
        their work is not known here. ``left`` is called with this throttle's lock held, as a
        request plans its send: it must be quick and must not call the throttle."""
        with self._lock:
            self._works += 1
            token = self._works
            self._work[token] = left
        try:
            yield
        finally:
            with self._lock:
                del self._work[token]

    def _work_left(self) -> Optional[int]:
        """The requests still to come from the declared batches (None: some batch does not know,
        none is declared, or other processes share the state)."""
        if not self._work or self._shared is not None:
            return None
        total = 0
        for left in self._work.values():
            count = left()
            if count is None:
                return None
            total += count
        return total

    # ----- the send side -----
    def acquire(self, sleep: Sleep, max_wait: float, *, gate: bool = True, scopes: Sequence[str] = (),
                budget: float = math.inf) -> Ticket:
        """Wait for this request's turn; return its ticket.

        When a gate that applies stays shut longer than ``max_wait`` seconds, return at once with
        ``sent_at=None`` and ``refused_for`` the seconds it stays shut (once the server confirmed
        a long wait, the seconds it named, beyond the ``max_gate_seconds`` cap). A request that
        may be a gate's early probe within ``max_wait`` is let go instead. ``gate=False`` ignores the
        gates (for a caller that never retries) but keeps the pacing. ``scopes``: the scopes besides
        the key-wide one that this request goes through, e.g. ``("model:x/y",)`` or
        ``("model:x/y:free", "free")``. ``budget``: the seconds the caller has left in all; a send
        slot further away than that is not taken (``sent_at=None``, ``refused_for`` the wait), so
        pacing never outlasts a call's ``max_elapsed_seconds``. ``sleep`` may raise (cancellation):
        it propagates.
        """
        names = _normalize_scopes(scopes)
        if self._shared is None:  # the common case, nothing to plan: every lane lets it go now
            with self._lock:
                now = self._clock()
                if self._standby is not None and now >= self._standby_look:
                    self._look_for_peers(now)
                lanes = [self._key, *(self._lane(name) for name in names)]
                if self._shared is None and all(lane.unhindered(now) for lane in lanes):
                    return self._send(lanes, [], now, 0.0, names, None)
        places: Dict[Lane, int] = {}  # this request's places in line for a slot under a concurrency cap
        try:
            return self._wait_turn(sleep, max_wait, gate, names, budget, places)
        finally:
            if places:
                with self._lock:
                    self._leave(places)

    def _wait_turn(self, sleep: Sleep, max_wait: float, gate: bool, names: Tuple[str, ...], budget: float,
                   places: Dict[Lane, int]) -> Ticket:
        waited = 0.0
        while True:
            with self._lock, self._synced() as state:
                now = self._clock()
                lanes = [self._key, *(self._lane(name) for name in names)]
                plan = self._plan(lanes, now, gate, max_wait, places)
                if isinstance(plan, float):
                    return Ticket(None, waited, refused_for=plan, scopes=names)
                start, wake, probes = plan
                if wake is None:
                    self._leave(places)  # it goes, or takes a send slot: out of line
                if wake is None and start - now > budget - waited:  # the slot lies beyond the caller's budget
                    return Ticket(None, waited, refused_for=start - now, scopes=names)
                if wake is None:
                    for lane in lanes:
                        lane.pacer.commit(start, lane.interval(now))
                    claim = start + self._probe_hold()
                    for lane in probes:
                        lane.gate.claim_probe(claim)
                    self._commit_shared(state)
                    if start <= now:
                        return self._send(lanes, probes, now, waited, names, self._count_send(state))
                    held = [lane for lane in lanes if lane.cap is not None]  # a slot taken counts under a cap
                    for lane in held:
                        lane.reserved += 1
                    epochs = [lane.epoch for lane in lanes]
                    delay = start - now
                    step = self._sleep_step(lanes, now)
                elif waited >= budget:  # a turn (a full cap, a gate's probe) never outlasts the caller's budget
                    return Ticket(None, waited, refused_for=wake - now, scopes=names)
                else:
                    claim, epochs, delay, step, held = 0.0, [], min(wake - now, budget - waited), 0.0, []
            if not epochs:
                sleep(delay)
                waited += delay
                continue
            # Sleep towards the slot in pieces: a rate that rose meanwhile voids the reservation
            # (the epoch changes) and this request plans again.
            try:
                while True:
                    piece = min(delay, step)
                    sleep(piece)
                    waited += piece
                    delay -= piece
                    with self._lock, self._synced() as state:
                        self._restart_stale(lanes, self._clock())
                        self._commit_shared(state)
                        current = all(lane.epoch == epoch for lane, epoch in zip(lanes, epochs))
                        if current and delay <= 1e-9:
                            self._unreserve(held)
                            return self._send(lanes, probes, self._clock(), waited, names, self._count_send(state))
                    if not current:
                        break
            except BaseException:
                self._release(probes, claim, held)
                raise
            self._release(probes, claim, held)

    @staticmethod
    def _sleep_step(lanes: List[Lane], now: float) -> float:
        """How long a request sleeps towards its send slot before it looks whether the slot still
        stands: two pacing intervals, at least 50 ms; 10 ms while a lane's first guess waits to be
        raised when its burst's answers are in (the guess may be far below the server's rate)."""
        if any(lane.refine_guess for lane in lanes):
            return REFINE_LOOK
        return max(0.05, 2.0 * max(lane.interval(now) for lane in lanes))

    @staticmethod
    def _leave(places: Dict[Lane, int]) -> None:
        for lane, place in places.items():
            lane.leave(place)
        places.clear()

    def _plan(self, lanes: List[Lane], now: float, gate: bool, max_wait: float,
              places: Dict[Lane, int]) -> float | Tuple[float, Optional[float], List[Lane]]:
        """Seconds to refuse for; or (send time, None, lanes to probe); or (_, time to look again, []).
        A request that finds a concurrency cap full waits in its line (its place kept in ``places``)."""
        start = now
        wake: Optional[float] = None
        probes: List[Lane] = []
        refuse = 0.0
        left = self._work_left()
        for lane in lanes:
            lane.hold_growth(now, left)
        for lane in lanes:
            g = lane.gate
            look: Optional[float] = None
            if gate and g.until > now:
                if g.probe_at is not None and g.probe_free(now) and g.probe_at - now <= max_wait:
                    start = max(start, g.probe_at)
                    probes.append(lane)
                    continue
                # Longer than this caller may wait: refuse. Once no probe is pending (the wait was
                # confirmed, or is short), the server's own word counts, not the cap.
                named = g.named_until - now if g.probe_at is None else 0.0
                refuse = max(refuse, named if named > max_wait else g.until - now)
                if g.probe_at is None:
                    look = g.until
                elif g.probe_sent is None:  # the probe has yet to go: look again once it could be answered
                    look = min(g.until, max(now, g.probe_at) + lane.typical_latency() + self._look_again(lane))
                else:
                    look = min(g.until, now + self._look_again(lane))
            elif lane.full(now, places.get(lane)):  # a concurrency cap, kept like pacing even with gate=False
                places[lane] = place = lane.queue(places.get(lane), now)
                look = lane.waiting[place]
            elif gate and lane.budget_spent():  # a window's worth went: one at a time
                if g.probe_free(now):
                    probes.append(lane)
                else:
                    look = now + self._look_again(lane)
            if look is not None:
                wake = look if wake is None else max(wake, look)
        if refuse > max_wait:
            return refuse
        if wake is not None:
            for lane, place in places.items():  # in line, but asleep until then (another lane may hold it)
                lane.waiting[place] = wake
            return now, wake, []
        self._restart_stale(lanes, now)
        for lane in lanes:
            start = lane.pacer.earliest(start)
        return start, None, probes

    def _restart_stale(self, lanes: List[Lane], now: float) -> None:
        """Void reservations made at a much slower pace than the lane's rate now. The next slot is
        still one (new) interval after the lane's latest send (a bucket with no burst to spare
        refuses a request that follows the one before it sooner), except in a key-wide lane that
        processes share: that chain restarts for all of them at once, and spacing it from this
        process's own latest send held the others back (2 x 16 on slow sockets: 1.17x, not 1.02x)."""
        for lane in lanes:
            interval = lane.interval(now)
            if lane.pacer.stale(interval):
                shared = lane is self._key and self._shared is not None
                lane.pacer.restart(now if shared else max(now, lane.last_sent() + interval))
                lane.epoch += 1

    def _look_again(self, lane: Lane) -> float:
        """How soon a request held while a probe is out looks again (about half an answer time)."""
        return min(0.05, max(0.005, self._key.typical_latency() / 2.0))

    def _probe_hold(self) -> float:
        """How long a probe's claim lasts without an answer before another request may probe."""
        return max(1.0, 3.0 * self._key.typical_latency())

    def _send(self, lanes: List[Lane], probes: List[Lane], now: float, waited: float,
              names: Tuple[str, ...], seq: Optional[int]) -> Ticket:
        self._key.sent(now, seq)
        for lane in lanes[1:]:
            lane.sent(now)
        for lane in probes:
            lane.gate.probe_sent = now
        return Ticket(now, waited, scopes=names)

    @staticmethod
    def _unreserve(held: List[Lane]) -> None:
        for lane in held:
            lane.reserved = max(0, lane.reserved - 1)

    def _release(self, probes: List[Lane], claim: float, held: List[Lane]) -> None:
        with self._lock:
            self._unreserve(held)
            for lane in probes:
                if lane.gate.probe_busy_until == claim and lane.gate.probe_sent is None:
                    lane.gate.free_probe()

    # ----- the answer side -----
    def on_answer(self, ticket: Ticket) -> None:
        """Any answer that is not a 429, errors and network failures included."""
        if ticket.sent_at is None:
            return
        with self._lock:
            now = self._clock()
            before = self._key_snapshot()
            for name in (KEY_SCOPE, *ticket.scopes):
                self._lane(name).answered(ticket.sent_at, now)
            self._publish(before, now)

    def on_rate_limited(self, ticket: Ticket, wait: Optional[float], scope: Optional[str] = None, *,
                        shed: bool = False) -> None:
        """A refusal. ``wait``: the seconds the server named, or None. ``scope``: what the limit applies
        to: None for the whole endpoint and key, ``"model:<id>"`` for one model, ``"free"`` for the
        ``:free`` family's quota. ``shed``: a 503 or 529 (load shed by the model's provider): a signal
        with no wait of its own for the scope (the wait is its request's floor: a sick model refusing
        half its requests would keep a gate shut), when it names none or one within
        ``max_gate_seconds``; a longer one is an outage, which holds only the request told of it (it
        is heard as an answer)."""
        if shed and wait is not None and wait > self._max_gate:
            self.on_answer(ticket)
            return
        target = KEY_SCOPE if scope is None else scope
        with self._lock:
            now = self._clock()
            self._rate_limited += 1
            hint = None if shed else finite_positive(wait)  # a shed's wait is its own request's floor, not a gate
            if target == KEY_SCOPE and self._standby is not None:
                self._join_peers(now, announce=True)
            before = self._key_snapshot()
            for name in (KEY_SCOPE, *ticket.scopes):
                if name != target and ticket.sent_at is not None:
                    self._lane(name).refused_elsewhere(ticket.sent_at, now)
            self._lane(target).refused(ticket.sent_at, now, hint, self._max_gate, self._on_second(hint),
                                       self._wall() - now)
            self._publish(before, now)

    def _on_second(self, wait: Optional[float]) -> bool:
        """Whether a wait under a second ends on a whole second of the wall clock (within 10 ms):
        an HTTP-date (or a reset time in seconds), coarse, never one token's interval."""
        if wait is None or wait >= 1.0:
            return False
        end = self._wall() + wait
        return abs(end - round(end)) <= 0.01

    # ----- sharing with other processes -----
    def _look_for_peers(self, now: float) -> None:
        """In standby: every ``STANDBY_LOOK`` seconds, whether the default state file changed since
        this process last looked or wrote it (a stat); if so, whether another process announced a
        key-wide 429 there (``_join_peers``)."""
        self._standby_look = now + STANDBY_LOOK
        if self._standby is not None and _mtime(self._standby.path) != self._standby_mtime:
            self._join_peers(now, announce=False)

    def _join_peers(self, now: float, announce: bool) -> None:
        """Share the key-wide lane through the default store from now on (as ``Throttle.shared``
        does) once another process on this key was rate-limited within ``max_gate_seconds``; on a
        key-wide 429 here (``announce``), say so in the store first. A process that joins says so
        too, so that the one it saw (which has not seen it) joins at its next look. A process alone
        on its key never shares: its calls keep their cost, and what only one controller alone does
        (window ends, the end of a batch) stays."""
        store = self._standby
        if store is None:
            return
        with store.locked() as state:
            if state is None:
                self._standby = None  # the file cannot be locked or used: this process keeps its own
                return
            me = self._share_id()
            present = state.get("present")
            peers = {who: at for who, at in present.items() if isinstance(at, (int, float)) and not isinstance(at, bool)
                     and now - self._max_gate <= at <= now + self._max_gate} if isinstance(present, dict) else {}
            joined = any(who != me for who in peers)
            if announce or joined:
                peers[me] = now
                state["present"] = dict(sorted(peers.items(), key=lambda item: item[1])[-_PEERS:])
        self._standby_mtime = _mtime(store.path)
        if joined:
            self._shared, self._standby = store, None
            self._restarts_seen = self._key.pacer.restarts  # the peers' chain of send slots is taken over
            # Sends before now carry no number among all processes' sends: no measurement spans them,
            # and a first guess counts them once for each process rate-limited lately.
            self._key.barrier = max(self._key.barrier, now)
            self._key.unnumbered_share = float(len(peers))
            logger.debug("another process on this key is rate-limited: sharing its rate limit state in %s", store.path)

    @contextmanager
    def _synced(self) -> Iterator[Optional[State]]:
        """The shared state under its file lock, taken over into the key-wide lane first (None: not shared)."""
        if self._shared is None:
            yield None
            return
        with self._shared.locked() as state:
            if state is not None:
                self._adopt_shared(state)
            yield state

    def _adopt_shared(self, state: State) -> None:
        """Take over a state read from the shared store, after checking it: another process, a
        crash or a hand may have written anything there, and none of it may raise into a call or
        hold requests without bound."""
        now = self._clock()
        try:
            sanitize(state, now, self._max_gate)
            self._take_over(state, now)
        except (TypeError, ValueError, OverflowError, AttributeError, IndexError):
            state.clear()  # not a state this library wrote: start afresh

    def _take_over(self, state: State, now: float) -> None:
        """Adopt what other processes wrote, so that the key-wide lane acts as one controller for
        them all: its rate (one value: a measurement, a cut, a guess), the time of the last
        reaction to a 429 and what the server's waits proved (exact or coarse), their 429s (for
        the measurements here), the counts of a fixed window, the chain of send slots, and the
        hold of a gate another process shut. A chain restarted elsewhere (a 429 event cut the
        rate, the rate rose well past the pace of the reservations, a gate opened) voids this
        process's reservations too, as a restart here does: its waiting requests plan again."""
        key = self._key
        rate_at = float(state.get("rate_at", 0.0))
        if rate_at > self._seen_rate:
            self._seen_rate = rate_at
            key.adopt(state.get("rate"), bool(state.get("measured")), float(state.get("grow_from", now)), now,
                      float(state.get("reacted", _NEVER)), int(state.get("exactness", key.exactness)))
        count = int(state.get("refused_n", 0))
        if count != self._refusals_seen:
            ring = state.get("refused", [])
            me = self._share_id()
            for sent_at, seq, who in ring[max(0, len(ring) - (count - self._refusals_seen)):]:
                if who != me:
                    key.adopt_refusal(float(sent_at), int(seq))
            self._refusals_seen = count
        self._window_counts(state, key)
        self._mirror_gate(state, key, now)
        if key.pacer.restarts != self._restarts_seen:
            return  # restarted here: the commit writes the new chain
        generation = int(state.get("slot_gen", 0))
        shared_slot = float(state.get("next_slot", _NEVER))
        if generation != self._slot_gen:
            key.pacer.restart(shared_slot)
            self._restarts_seen = key.pacer.restarts
            self._slot_gen = generation
            key.epoch += 1
        else:
            key.pacer.next_slot = max(key.pacer.next_slot, shared_slot)

    def _mirror_gate(self, state: State, key: Lane, now: float) -> None:
        """Hold this process's requests while another process's key gate is shut: a copy of that
        gate whose probe is taken (the other process sends it), so that waiting requests look
        again every few tens of milliseconds and go as soon as it opens. A gate shut here (its
        own 429 event) stays as it is."""
        gate = key.gate
        mirrored = gate.probe_sent is not None and math.isnan(gate.probe_sent)
        hold = float(state.get("hold", _NEVER))
        if state.get("hold_by") in (None, self._share_id()) or hold <= now:
            if mirrored:
                gate.open(now)
                key.epoch += 1
            return
        if not mirrored and gate.until > now:
            return
        if not mirrored:
            key.epoch += 1
        # Shut until the other's gate opens (again: a 429 here of the same burst may have extended
        # the copy, but only the other process's gate and its probe say when it opens).
        gate.shut(hold, now, trusted=False)
        gate.claim_probe(hold)
        gate.probe_sent = math.nan  # taken by the process that shut the gate

    def _window_counts(self, state: State, key: Lane) -> None:
        """The key-wide lane's counts of what was sent (and not refused) since the last window
        began, for every process: one controller learns a fixed window's size from all that went
        through it, and lets the rest go one at a time once a window's worth went. A restart of
        the counts here (a window's gate, or a new window found) restarts them for all."""
        sends, refused = int(state.get("sends", 0)), int(state.get("refused_n", 0))
        admitted, through = key.admitted_in_window, key.through_in_window
        if admitted < self._window_seen:
            state["window_seq"] = sends - admitted
            state["window_refused"] = refused - (admitted - through)
        admitted = max(0, sends - int(state.get("window_seq", 0)))
        key.admitted_in_window = admitted
        key.through_in_window = admitted - max(0, refused - int(state.get("window_refused", 0)))
        self._window_seen = admitted

    def _commit_shared(self, state: Optional[State]) -> None:
        """Write the key-wide lane's next send slot (a new chain when the pacer restarted here)."""
        if state is None:
            return
        key = self._key
        if key.pacer.restarts != self._restarts_seen:
            self._new_chain(state, key.pacer.next_slot)
        elif int(state.get("slot_gen", 0)) == self._slot_gen:  # else the chain restarted elsewhere: taken over later
            state["next_slot"] = max(float(state.get("next_slot", _NEVER)), key.pacer.next_slot)

    def _new_chain(self, state: State, next_slot: float) -> None:
        self._restarts_seen = self._key.pacer.restarts
        self._slot_gen = int(state.get("slot_gen", 0)) + 1
        state["slot_gen"] = self._slot_gen
        state["next_slot"] = next_slot

    def _share_gate(self, state: State, now: float) -> None:
        """The key gate shut or opened here: the other processes hold until it opens (one
        controller holds every request while its gate is shut; this process sends the probe).
        Opened earlier than the hold said (a probe went through): a new chain, from now, for all."""
        gate = self._key.gate
        if gate.probe_sent is not None and math.isnan(gate.probe_sent):
            return  # a copy of another process's gate (see _mirror_gate), extended by a 429 of the same burst
        mine = state.get("hold_by") == self._share_id()
        if gate.until <= now:  # opened
            if mine and float(state.get("hold", _NEVER)) > now:
                state["hold"] = now
                self._new_chain(state, max(now, self._key.pacer.next_slot))
            return
        state["hold"], state["hold_by"] = gate.until, self._share_id()

    @staticmethod
    def _count_send(state: Optional[State]) -> Optional[int]:
        """Count a send among all processes' sends; its number (None: not shared)."""
        if state is None:
            return None
        seq = int(state.get("sends", 0)) + 1
        state["sends"] = seq
        return seq

    def _share_id(self) -> str:
        """This throttle's name in the shared state: random, and new in a forked child (process ids
        repeat across containers, where every worker may be pid 1)."""
        pid = os.getpid()
        if self._share_pid != pid:
            self._share_pid, self._share_token = pid, secrets.token_hex(8)
        return self._share_token

    def _key_snapshot(self) -> Tuple[Any, ...]:
        """What ``_publish`` compares, taken before an answer changes the key-wide lane. When the
        state is shared, the other processes' state is taken over first: one controller hears
        every answer with everything the others learned (a 429 from a burst another process
        already reacted to is old news, not an event of its own; their 429s end measurements).
        Not shared: nothing to compare (``_publish`` has nothing to write)."""
        if self._shared is None:
            return ()
        with self._shared.locked() as state:
            if state is not None:
                self._adopt_shared(state)
        return self._key_values()

    def _key_values(self) -> Tuple[Any, ...]:
        key = self._key
        return (key.rate, key.measured, key.grow_from, key.last_reaction, key.exactness,
                key.gate.until, key.rate_limited_count)

    def _share_refusals(self, state: State) -> None:
        """Append this process's new key-wide 429s (send time and number) to the shared ring, for
        the other processes' measurements (see ``Lane.adopt_refusal``)."""
        fresh: List[List[Any]] = []
        for sent_at, seq in self._key.recent_refusals(_RING):
            if seq not in self._shared_refusals:
                fresh.append([sent_at, int(seq), self._share_id()])
                self._shared_refusals.append(seq)
        if fresh:
            state["refused"] = (list(state.get("refused", [])) + fresh)[-_RING:]
            state["refused_n"] = int(state.get("refused_n", 0)) + len(fresh)

    def _publish(self, before: Tuple[Any, ...], now: float) -> None:
        """Write what changed here for the other processes: the key-wide rate (a measurement, a
        cut on a 429 event with the time of that reaction, so that the other processes take the
        rest of its burst as old news, as one controller would; a guess; its growth restarting),
        not while a concurrency cap paces this process (in flight counts are per process); its
        gate; and this process's key-wide 429s."""
        if self._shared is None:
            return
        key = self._key
        after = self._key_values()
        rated = after[:5] != before[:5] and key.cap is None
        gated = after[5] != before[5]
        refused = after[6] != before[6]
        if not (rated or gated or refused):
            return
        with self._shared.locked() as state:
            if state is None:
                return
            if rated:
                stamp = max(now, float(state.get("rate_at", 0.0)) + 1e-6)
                state.update(rate=key.rate, measured=key.measured, grow_from=key.grow_from, rate_at=stamp,
                             reacted=max(key.last_reaction, float(state.get("reacted", _NEVER))),
                             exactness=key.exactness)
                self._seen_rate = stamp
            if refused:
                self._share_refusals(state)
            self._commit_shared(state)
            if gated:
                self._share_gate(state, now)


class KeyThrottles:
    """Which throttle a backend's calls with a key go through: the backend's own (``own``), or the
    process-wide one for the endpoint and key (:meth:`Throttle.for_endpoint`). A throttle gets the
    backend's pacing options when the backend starts using it; ``close`` lets go of them."""

    def __init__(self, base_url: str, own: Optional[Throttle], *, requests_per_minute: Optional[float] = None,
                 adaptive: bool = True) -> None:
        self.base_url = base_url
        self._pacing = (requests_per_minute, adaptive)
        self._own = self._configure(own) if own is not None else None
        self._by_key: Dict[Optional[str], Throttle] = {}

    def __call__(self, key: Optional[str]) -> Throttle:
        throttle = self._own or self._by_key.get(key)
        if throttle is None:  # two threads may both get here: the same throttle, configured alike
            throttle = self._by_key[key] = self._configure(Throttle.for_endpoint(self.base_url, key))
        return throttle

    def close(self) -> None:
        """Let go of the process-wide throttles (each is released once no backend holds it)."""
        self._by_key.clear()

    def _configure(self, throttle: Throttle) -> Throttle:
        rpm, adaptive = self._pacing
        if rpm is not None:
            throttle.set_requests_per_minute(rpm)
        if not adaptive:
            throttle.adaptive = False
        return throttle


def _after_fork_in_child() -> None:
    """A forked child starts with fresh locks (a parent thread may have held one at the fork)."""
    Throttle._registry_lock = threading.Lock()
    for throttle in list(Throttle._all):
        throttle._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _mtime(path: str) -> Optional[int]:
    """A file's modification time in nanoseconds (None: there is none)."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
