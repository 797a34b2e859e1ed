"""State shared by processes on many machines: one JSON string in Redis under a short-lived lock.

The same surface as :class:`~openrouter_sync.ratelimit.shared.SharedState` (``locked()`` yields
the state as a dict, or None), so the throttle shares through Redis exactly as it does through a
file. Needs the optional ``redis`` package (``pip install "openrouter-sync[redis]"``), imported
only when a Redis URL is used.

- **Keys**: ``openrouter-sync:{<name>}:state`` holds the JSON object (it expires a day after its
  last write); ``openrouter-sync:{<name>}:lock`` the lock. (The braces are a Redis Cluster hash
  tag, putting both in one slot; the client itself talks to one server, not to a cluster.)
- **Lock**: ``SET lock <random token> NX PX 2000``, taken and the state read in one Lua script;
  released by a second script that writes the state and deletes the lock only while the lock
  still holds this process's token (compare-and-delete). A process that dies holding it (SIGKILL)
  blocks the others at most the 2 s TTL. Waiting for it spins with short sleeps (0.1 to 2 ms); after
  :data:`LOCK_WAIT` seconds the caller goes ahead with its own state for that one call.
- **Time**: the state's times (the fields in :data:`~openrouter_sync.ratelimit.shared.TIMES`, and
  the first item of each entry of the lists in ``TIME_LISTS`` there) are ``time.monotonic()``
  seconds to the throttle, valid on one machine only. In Redis they are stored as wall-clock seconds (monotonic +
  ``time.time() - time.monotonic()``) and read back as this machine's monotonic seconds, so
  machines whose clocks agree (NTP) share one chain of send slots. A time this process read or
  wrote is handed back exactly as it was (no rounding drift that would read as a newer rate). The
  file's reboot check (``base``) does not apply here: the key is dropped on the way in and out. A
  new time field in the state must be named in ``shared.TIMES`` or ``shared.TIME_LISTS``.
- **Failures**: if Redis is unreachable or answers with an error, one warning is logged, the
  state turns unusable and each process keeps its own (``locked()`` yields None); no error reaches
  the caller's request. The URL's password never appears in ``path``, ``repr``, warnings or errors.
- **Fork**: a child process opens its own connection (the parent's is never reused).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import secrets
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Tuple
from urllib.parse import unquote

from .._log import Secrets, encode_userinfo, password_forms, redact_url, split_userinfo
from .shared import TIME_LISTS, TIMES, SharedState, State, StateStore, poll_for_lock, warn_lock_wait

logger = logging.getLogger("openrouter_sync")

__all__ = ["LOCK_TTL_MS", "LOCK_WAIT", "REDIS_SCHEMES", "RedisState", "is_redis_url", "open_shared_state"]

#: URL schemes that select Redis instead of a state file.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: How long the lock lives (ms) if its holder dies before releasing it.
LOCK_TTL_MS = 2000
#: The longest a caller waits for the lock (s) before going ahead with its own state, once.
LOCK_WAIT = 3.0
STATE_TTL_S = 86400  # the state key expires a day after its last write
MAX_STATE_BYTES = 65536  # a larger value was not written by this library: it reads as empty (and is replaced)
KEY_PREFIX = "openrouter-sync"
DEFAULT_NAME = "default"
SOCKET_TIMEOUT = 1.0  # seconds; a Redis that stops answering costs a request at most about this, once
SLOW_ACCESS, SLOW_STREAK = 0.5, 3  # this many accesses in a row slower than this: Redis is given up, as on an error
_PAIRS = 256  # (wall, monotonic) pairs remembered, so that a value read back is exactly the one written
_BASE_TOLERANCE = 0.001  # wall minus monotonic is re-read only when it moved more than this (a clock step)
_SPIN_MAX = 0.002  # seconds: the longest pause between two tries for the lock (a round trip each)

# KEYS: lock, state. ARGV: token, ttl ms. Returns {1, state or nil} with the lock taken, {0} without.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('GET', KEYS[2])}
end
return {0}
"""
# KEYS: lock, state. ARGV: token, new state ('' to keep it), state ttl s. 1: released; 0: the lock
# was no longer ours (its TTL ran out), nothing written.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  end
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

MISSING_PACKAGE = ('a Redis URL for the shared rate-limit state needs the redis package: '
                   'pip install "openrouter-sync[redis]" (or ".[redis]" in a clone of the repository)')


def is_redis_url(where: str) -> bool:
    """Whether ``where`` names Redis (``redis://``, ``rediss://`` or ``unix://``) rather than a file."""
    return where.strip().lower().startswith(REDIS_SCHEMES)


def open_shared_state(where: str, name: Optional[str] = None) -> StateStore:
    """The shared state at ``where``: a :class:`RedisState` for a Redis URL (its key named after
    ``name``, else after the URL's ``#fragment``, else ``default``), otherwise the state file at
    that path."""
    if is_redis_url(where):
        return RedisState(where, name)
    if "://" in where:  # a typo of a Redis URL, or another scheme: never a file named "http:/..."
        scheme = where.split("://", 1)[0][:20]
        raise ValueError(f"shared rate-limit state: {scheme!r}:// is not a Redis URL "
                         f"({', '.join(REDIS_SCHEMES)}) nor a file path")
    return SharedState(where)


def _url_passwords(url: str) -> Tuple[str, ...]:
    """Every form of the password a Redis URL carries (in its user part or its query), as
    written, decoded and encoded, and the pieces a parser may cut it into; longest first."""
    forms = set()
    _, userinfo, rest = split_userinfo(url)
    if ":" in userinfo:
        forms.add(userinfo.split(":", 1)[1])
    for text in (rest, userinfo):
        query = text.partition("?")[2]
        for i, field in enumerate(query.split("&")):
            key, _, value = field.partition("=")
            if unquote(key).lower() == "password" and value:
                forms.add("&".join([value, *query.split("&")[i + 1:]]).split("#", 1)[0])  # up to the end: "a&b"
                forms.add(value)
    return password_forms(*forms)


def _finite(value: Any) -> Optional[float]:
    """A finite number as a float, else None (infinities mean the same on every machine)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _snapshot(state: State) -> str:
    """The state's content, nested lists included, to tell whether the caller changed it."""
    try:
        return json.dumps(state, sort_keys=True)
    except (TypeError, ValueError):
        return repr(state)


class RedisState:
    """One state in Redis (``url``: ``redis://[[user]:password@]host[:port][/db][#name]``,
    ``rediss://`` for TLS, or ``unix://[[user]:password@]/path/to/socket[?db=n][#name]``).
    ``locked()`` yields the state as a dict to read and change (None when Redis cannot be used);
    changes are written back as the lock is released. ``clock`` and ``wall``: this machine's
    monotonic and wall clocks (injectable for tests); ``lock_ttl_ms``: how long the lock outlives a
    holder that died."""

    def __init__(self, url: str, name: Optional[str] = None, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, lock_ttl_ms: int = LOCK_TTL_MS) -> None:
        try:  # imported by name: the library, and its type check, never need the package otherwise
            self._redis: Any = importlib.import_module("redis")
        except ImportError:
            raise ImportError(MISSING_PACKAGE) from None
        url = url.strip()
        self._passwords = _url_passwords(url)
        self._secrets = Secrets(self._passwords)  # belt and braces: the library's log redaction knows it too
        scheme, userinfo, rest = split_userinfo(url)
        rest, _, fragment = rest.partition("#")  # the fragment after the host: a "#" in a password is not one
        self.name = name or unquote(fragment) or DEFAULT_NAME
        self._url = encode_userinfo(f"{scheme}://{userinfo + '@' if userinfo else ''}{rest}")  # "#" in a password
        self.path = f"{redact_url(url)}#{self.name}"
        self.key = f"{KEY_PREFIX}:{{{self.name}}}:state"
        self.lock_key = f"{KEY_PREFIX}:{{{self.name}}}:lock"
        self._clock, self._wall = clock, wall
        self.lock_ttl_ms = max(1, int(lock_ttl_ms))
        self._base: Optional[float] = None
        self._walls: Dict[float, float] = {}  # monotonic -> wall, for values read or written here
        self._monos: Dict[float, float] = {}  # wall -> monotonic
        self._client: Any = None
        self._scripts: Tuple[Any, Any] = (None, None)
        self._pid = 0
        self._open_lock = threading.Lock()
        self.usable = True
        self.lock_seconds = 0.0  # time spent in locked() so far (its cost, measured)
        self.lock_count = 0
        self.lost_locks = 0  # releases that found the lock expired and taken by another (nothing written)
        self._waited_warning = False
        self._slow = 0  # accesses in a row slower than SLOW_ACCESS
        try:
            self._new_client()  # parses the URL now (a bad one is a configuration error); connects on first use
        except Exception as exc:
            raise ValueError(f"shared rate-limit state {self.path}: {self._scrub(exc)}") from None

    def __repr__(self) -> str:
        return f"RedisState({self.path!r}, key={self.key!r}, usable={self.usable})"

    def _scrub(self, exc: BaseException) -> str:
        """An error's text without the URL's password (nor the URL itself)."""
        text = f"{type(exc).__name__}: {exc}"
        if self._url:
            text = text.replace(self._url, self.path)
        for form in self._passwords:
            text = text.replace(form, "***")
        return text

    def _new_client(self) -> Any:
        redis = self._redis
        kwargs: Dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}
        try:
            backoff = importlib.import_module("redis.backoff").NoBackoff()
            kwargs["retry"] = importlib.import_module("redis.retry").Retry(backoff, 0)  # fail at once
        except (ImportError, AttributeError):  # pragma: no cover - a redis package without retries never retries
            pass
        client = redis.Redis.from_url(self._url, **kwargs)
        self._client = client
        self._scripts = (client.register_script(_ACQUIRE), client.register_script(_RELEASE))
        self._pid = os.getpid()
        return client

    def _connection(self) -> Tuple[Any, Any]:
        """This process's client's two scripts (a forked child opens its own connection)."""
        with self._open_lock:
            if self._client is None or self._pid != os.getpid():
                self._secrets.hold()
                self._new_client()
            return self._scripts

    def close(self) -> None:
        with self._open_lock:
            client, self._client = self._client, None
            self._secrets.release()
            if client is not None and self._pid == os.getpid():
                try:
                    client.connection_pool.disconnect()
                except Exception:
                    pass

    def _fail(self, exc: BaseException) -> None:
        if self.usable:
            self.usable = False
            logger.warning("shared rate-limit state %s: Redis failed (%s); each process keeps its own",
                           self.path, self._scrub(exc))
        self.close()

    def _clock_base(self) -> float:
        base = self._wall() - self._clock()
        if self._base is None or abs(base - self._base) > _BASE_TOLERANCE:
            self._base = base
        return self._base

    @contextmanager
    def locked(self) -> Iterator[Optional[State]]:
        """The state under the Redis lock (None when Redis cannot be used, or after waiting
        :data:`LOCK_WAIT` seconds for the lock)."""
        if not self.usable:
            yield None
            return
        started = time.perf_counter()
        try:
            token, raw = self._acquire(started)
        except Exception as exc:
            self._fail(exc)
            yield None
            return
        try:
            if token is None:
                yield None
                return
            base = self._clock_base()
            try:
                state = self._decode(raw, base)
                before = _snapshot(state)
            except Exception:  # whatever was stored: start afresh, and never keep the lock
                state, before = {}, ""
            try:
                yield state
            except BaseException:
                self._release(token, None, base)
                raise
            self._release(token, state if _snapshot(state) != before else None, base)
        finally:
            took = time.perf_counter() - started
            self.lock_seconds += took
            self.lock_count += 1
            self._slow = self._slow + 1 if took > SLOW_ACCESS else 0
            if self._slow >= SLOW_STREAK and self.usable:  # sharing now costs more than it can save
                self._fail(TimeoutError(f"{SLOW_STREAK} accesses in a row took over {SLOW_ACCESS:g} s"))

    def _acquire(self, started: float) -> Tuple[Optional[str], Any]:
        acquire, _ = self._connection()
        token = secrets.token_hex(16)
        keys = [self.lock_key, self.key]
        raw: list[Any] = []

        def take() -> bool:
            answer = acquire(keys=keys, args=[token, self.lock_ttl_ms])
            if answer and int(answer[0]) == 1:
                raw.append(answer[1] if len(answer) > 1 else None)
                return True
            return False

        if poll_for_lock(take, started, LOCK_WAIT, _SPIN_MAX):
            return token, raw[0]
        if not self._waited_warning:
            self._waited_warning = True
            warn_lock_wait(self.path, LOCK_WAIT)
        return None, None

    def _release(self, token: str, state: Optional[State], base: float) -> None:
        """Write ``state`` (None: unchanged) and release the lock; a Redis failure is logged, not raised."""
        try:
            data = "" if state is None else self._encode(state, base)
            _, release = self._connection()
            if int(release(keys=[self.lock_key, self.key], args=[token, data, STATE_TTL_S])) != 1:
                self.lost_locks += 1
                logger.debug("shared rate-limit state %s: the lock expired before its release; not written",
                             self.path)
        except Exception as exc:
            self._fail(exc)

    def _decode(self, raw: Any, base: float) -> State:
        """Redis's JSON as the throttle reads it: times in this machine's monotonic seconds."""
        try:
            too_big = raw is not None and len(raw) > MAX_STATE_BYTES  # ours is about 1 KB
            state = json.loads(raw.decode("utf-8")) if raw and not too_big else {}
        except (AttributeError, TypeError, UnicodeDecodeError, ValueError, RecursionError):
            state = {}  # not a state this library wrote: start afresh
        if not isinstance(state, dict):
            return {}
        state.pop("base", None)
        return self._translate(state, lambda wall: self._local(wall, base))

    def _encode(self, state: State, base: float) -> str:
        """The state as stored in Redis: times in wall-clock seconds."""
        out = self._translate(state, lambda mono: self._remote(mono, base))
        out.pop("base", None)
        return json.dumps(out, separators=(",", ":"))

    @staticmethod
    def _translate(state: State, convert: Callable[[float], float]) -> State:
        """A copy of ``state`` with its finite times converted (infinities mean the same on every
        machine; anything else is left for the throttle to reject)."""
        out = dict(state)
        for field in TIMES:
            value = _finite(out.get(field))
            if value is not None:
                out[field] = convert(value)
        for field in TIME_LISTS:
            entries = out.get(field)
            if isinstance(entries, list):
                out[field] = [[convert(first), *entry[1:]]
                              if isinstance(entry, list) and entry and (first := _finite(entry[0])) is not None
                              else entry for entry in entries]
        return out

    def _local(self, wall: float, base: float) -> float:
        """Wall-clock seconds as this machine's monotonic seconds (exactly the value this process
        read or wrote before, for a wall time it has seen)."""
        mono = self._monos.get(wall)
        if mono is None:
            mono = wall - base
        self._remember(wall, mono)
        return mono

    def _remote(self, mono: float, base: float) -> float:
        wall = self._walls.get(mono)
        if wall is None:
            wall = mono + base
        self._remember(wall, mono)
        return wall

    def _remember(self, wall: float, mono: float) -> None:
        """Keep the pair (the latest few hundred, most recently used last)."""
        for table, key, value in ((self._walls, mono, wall), (self._monos, wall, mono)):
            table.pop(key, None)
            table[key] = value
            if len(table) > _PAIRS:
                del table[next(iter(table))]
