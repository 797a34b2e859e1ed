"""State shared by the processes on one machine: a small file under an exclusive ``flock``.

The file holds one JSON object, so that the processes drive the key-wide lane as one controller
(see ``Throttle._take_over``): its chain of send slots (``next_slot``, and ``slot_gen``, bumped when
a process restarts the chain: every process's reservations are void then); its rate as last set
anywhere (``rate``, ``measured``, ``grow_from``, stamped ``rate_at``), with the time of the last
reaction to a 429 (``reacted``) and what the server's waits proved (``exactness``); a count of all
sends (``sends``: each process scales what it measured by its share) and the latest key-wide 429s
of every process (``refused``: [send time, send number, process], ``refused_n`` in all), for the
measurements; the counts of a fixed window (``window_seq``, ``window_refused``); and the key gate
shut by one process (``hold`` until when, ``hold_by`` which), which the others hold for. Times are
``time.monotonic()`` seconds, which on one machine every process reads alike; ``base`` (wall
clock minus monotonic clock when written) tells a file written before a reboot, which is then
ignored.

The file is opened safely for a shared place such as ``/tmp`` (``open_private``): a symbolic
link, a FIFO or device, a file of another user, one writable by others or hard-linked elsewhere
is refused with a warning, and each process then keeps its own state; a new file is made 0600.

Safe when a process dies holding the lock: the kernel releases an ``flock`` with its last open
file description. Each process opens the file itself (again after a ``fork``: a description
inherited across ``fork`` would share the lock with the parent). A write happens under the lock
and replaces the whole content; a file left half-written by a crash reads as empty state. On a
filesystem without working locks (``flock`` fails: some NFS or FUSE mounts, or no ``fcntl`` at all)
the state falls back to this process alone, with one warning.

``store_from_env`` opens the store ``$OPENROUTER_SYNC_SHARED_STATE`` names, after checking that a
directory is this user's alone; ``sanitize`` drops from a state read back what this library never
writes, whichever store it came from.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Dict, Iterator, Optional, Protocol

from .._files import UnsafeFile, open_private

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("openrouter_sync")

State = Dict[str, Any]
_REBOOT_TOLERANCE = 5.0  # seconds the wall and monotonic clocks may drift apart before a file reads as stale
_MAX_BYTES = 4096
LOCK_WAIT = 1.0  # seconds a caller waits for the lock before going on with this process's own state


#: A directory, or a Redis URL, where every endpoint's key-wide state is shared between processes
#: (see ``Throttle.for_endpoint``); unset or ``off``: not shared.
SHARED_STATE_ENV = "OPENROUTER_SYNC_SHARED_STATE"
#: The state's fields that hold a time (``time.monotonic()`` seconds on the machine that reads them).
TIMES = ("next_slot", "rate_at", "grow_from", "reacted", "hold")
#: The state's fields that hold a list of entries whose first item is such a time.
TIME_LISTS = ("refused",)


def _clock_base() -> float:
    return time.time() - time.monotonic()


def poll_for_lock(take: Callable[[], bool], started: float, limit: float, longest_pause: float) -> bool:
    """Call ``take`` until it returns True (the lock is ours), sleeping between tries (from 0.1 ms,
    growing to ``longest_pause``, jittered); False once ``limit`` seconds passed since ``started``
    (``time.perf_counter()``). A holder is done in microseconds: one that is not has been stopped
    or has died, and must not stop every call of every process."""
    pause = 0.0001
    while True:
        if take():
            return True
        if time.perf_counter() - started > limit:
            return False
        time.sleep(pause * (0.5 + random.random() / 2.0))
        pause = min(longest_pause, pause * 1.5)


def warn_lock_wait(path: str, limit: float) -> None:
    logger.warning("shared rate-limit state %s: waited %.1f s for the lock; this call goes on with this "
                   "process's own state", path, limit)


class StateStore(Protocol):
    """Where a throttle's shared state lives: this module's file, or Redis (``redis_state``)."""

    path: str  #: where it is (shown to users: never a password)
    usable: bool  #: False once it failed: each process keeps its own state from then on
    lock_seconds: float  #: time spent in ``locked()`` so far
    lock_count: int

    def locked(self) -> ContextManager[Optional[State]]:
        """The state under an exclusive lock, to read and change (None: cannot be used now)."""
        ...

    def close(self) -> None: ...


class SharedState:
    """One state file. ``locked()`` yields its content as a dict to read and change (None when
    the file cannot be locked); changes are written back before the lock is released."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self._fd: Optional[int] = None
        self._pid = 0
        self._open_lock = threading.Lock()
        self.usable = fcntl is not None
        self.lock_seconds = 0.0  # time spent in locked() so far (its cost, measured)
        self.lock_count = 0
        self._waited_warning = False
        self._stalled = False  # the last wait for the lock ran out
        if not self.usable:
            logger.warning("shared rate-limit state %s: no fcntl on this platform; each process keeps its own",
                           self.path)

    def __repr__(self) -> str:
        return f"SharedState({self.path!r}, usable={self.usable})"

    def _descriptor(self) -> int:
        with self._open_lock:
            if self._fd is None or self._pid != os.getpid():
                directory = os.path.dirname(self.path)
                if directory:
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                self._fd = open_private(self.path)
                self._pid = os.getpid()
            return self._fd

    def close(self) -> None:
        with self._open_lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    @contextmanager
    def locked(self) -> Iterator[Optional[State]]:
        """The state under an exclusive lock (None when locking is impossible here)."""
        if not self.usable or fcntl is None:
            yield None
            return
        started = time.perf_counter()
        try:
            fd = self._descriptor()
            locked = self._lock_within(fd, started)
        except UnsafeFile as exc:
            self.usable = False
            logger.warning("shared rate-limit state %s refused: %s; each process keeps its own", self.path, exc)
            locked = False
        except OSError as exc:
            self.usable = False
            why = errno.errorcode.get(exc.errno or 0, str(exc))
            logger.warning("shared rate-limit state %s cannot be locked (%s); each process keeps its own",
                           self.path, why)
            locked = False
        if not locked:  # no locks here, or a holder that stopped (SIGSTOP, a debugger): this call goes on alone
            yield None
            return
        try:
            state = self._read(fd)
            before = dict(state)
            yield state
            if state != before:
                data = json.dumps(state, separators=(",", ":")).encode("ascii")
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            self.lock_seconds += time.perf_counter() - started
            self.lock_count += 1

    def _lock_within(self, fd: int, started: float) -> bool:
        """Take the lock, waiting at most ``LOCK_WAIT`` seconds. Once a wait ran out, later calls
        try once and go on at once until the lock is free again."""

        def take() -> bool:
            assert fcntl is not None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        # Polled at 0.5 ms at most: at 2 ms, 4 processes x 16 workers took 1.09x instead of 1.02x.
        got = poll_for_lock(take, started, 0.0 if self._stalled else LOCK_WAIT, 0.0005)
        self._stalled = not got
        if not got and not self._waited_warning:
            self._waited_warning = True
            warn_lock_wait(self.path, LOCK_WAIT)
        return got

    @staticmethod
    def _read(fd: int) -> State:
        raw = os.pread(fd, _MAX_BYTES, 0)
        base = _clock_base()
        try:
            state = json.loads(raw.decode("ascii")) if raw else {}
        except (UnicodeDecodeError, ValueError, RecursionError):
            state = {}  # half-written by a process that died (or not ours): start afresh
        try:
            stale = not isinstance(state, dict) or abs(float(state.get("base", base)) - base) > _REBOOT_TOLERANCE
        except (TypeError, ValueError):
            stale = True
        if stale:
            state = {}  # written before a reboot (its times mean nothing now), or not ours
        state["base"] = round(base, 3) if "base" not in state else state["base"]
        return state


def store_from_env(where: str, name: str) -> Optional[StateStore]:
    """The store ``$OPENROUTER_SYNC_SHARED_STATE`` (``where``) names for ``name``, or None: not shared
    (see ``Throttle.for_endpoint``)."""
    from .redis_state import open_shared_state

    if not where or where.lower() == "off":
        return None
    if "://" in where:  # Redis, or refused (another scheme never becomes a file name)
        try:
            return open_shared_state(where, name)
        except (ImportError, ValueError) as exc:  # no redis package, or a bad URL: calls never raise
            logger.warning("%s: %s; state is not shared", SHARED_STATE_ENV, exc)
            return None
    directory = os.path.expanduser(where)
    why = _not_private(directory)
    if why:
        logger.warning("%s: %s %s; state is not shared", SHARED_STATE_ENV, where, why)
        return None
    return SharedState(os.path.join(directory, f"{name}.state"))


def default_store(name: str) -> Optional[StateStore]:
    """The store for ``name`` in this user's runtime directory: ``$XDG_RUNTIME_DIR/openrouter-sync``,
    else ``openrouter-sync-<uid>`` in the temporary directory. None, quietly (nothing was asked
    for), where files cannot be locked or that directory is not this user's alone."""
    if fcntl is None or not hasattr(os, "getuid"):
        return None
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime:
        directory = os.path.join(runtime, "openrouter-sync")
    else:
        directory = os.path.join(tempfile.gettempdir(), f"openrouter-sync-{os.getuid()}")
    why = _not_private(directory)
    if why:
        logger.debug("no default shared rate-limit state: %s %s", directory, why)
        return None
    return SharedState(os.path.join(directory, f"{name}.state"))


def _not_private(directory: str) -> str:
    """Why ``directory`` (created ``0700`` if missing) cannot hold a state ('' when it can): it must be
    a directory of this user's alone, below nothing another user could swap."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        return f"cannot be used ({exc})"
    mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    if not stat.S_ISDIR(info.st_mode) or not mine or info.st_mode & 0o022 or not _safe_ancestors(directory):
        return "is not a directory of this user's alone"
    return ""


def _safe_ancestors(directory: str) -> bool:
    """Whether no other user can swap what lies above ``directory``: every folder on its way from
    ``/`` is this user's or root's, and writable by no one else unless sticky (as ``/tmp`` is), and
    every link on the way is this user's or root's."""
    if not hasattr(os, "getuid"):
        return True
    trusted = (0, os.getuid())
    path = os.path.abspath(directory)
    seen = 0
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return True
        try:
            link = os.lstat(parent)
            if stat.S_ISLNK(link.st_mode):
                seen += 1
                if link.st_uid not in trusted or seen > 40:
                    return False
            folder = os.stat(parent)
        except OSError:
            return False
        if folder.st_uid not in trusted or (folder.st_mode & 0o022 and not folder.st_mode & stat.S_ISVTX):
            return False
        path = os.path.realpath(parent) if stat.S_ISLNK(link.st_mode) else parent


_SLOT_HORIZON = 3600.0  # seconds: no chain of send slots legitimately reaches further ahead


def sanitize(state: State, now: float, max_gate: float) -> None:
    """Drop what no process of this library writes, so a corrupted state cannot stall or break
    calls: numbers that are not finite or absurdly large, rates that are not positive, times far
    in the future (a shared gate holds at most ``max_gate`` seconds, as a gate here does; a chain of
    slots at most an hour), and malformed entries of the 429 ring."""
    for name, value in list(state.items()):
        if isinstance(value, float) and not math.isfinite(value):
            del state[name]  # -inf (never, for a time) reads the same as a missing field
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > 1e12:
            del state[name]
    rate = state.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0):
        del state["rate"]
    horizon = {"hold": max_gate, "next_slot": _SLOT_HORIZON}
    for name in TIMES:
        value = state.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            del state[name]
        elif value > now + horizon.get(name, max_gate):
            del state[name]  # a time this far ahead was not written by a clock that agrees with ours
    ring = state.get("refused")
    if ring is not None:
        state["refused"] = [entry for entry in ring if isinstance(entry, list) and len(entry) == 3
                            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                    and abs(x) <= 1e12 for x in entry[:2])] if isinstance(ring, list) else []
