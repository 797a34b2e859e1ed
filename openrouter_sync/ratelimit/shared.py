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
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
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
