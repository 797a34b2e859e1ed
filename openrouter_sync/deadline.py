"""Hard per-attempt deadlines.

A socket timeout bounds each ``recv``, not the whole answer: a server that trickles one byte a
second never trips it. Here one watchdog thread (for the whole process) keeps a heap of
deadlines; when one passes, it shuts down the socket the attempt is using, so the blocked read
returns at once and the attempt fails as a timeout.

The socket is learned through urllib3's public connection methods (``connect`` and
``request``, overridden by the connection classes below) and kept by the deadline itself: when
an answer says ``Connection: close``, http.client hands the socket to the response and forgets
it on the connection, but the deadline still holds it and can still cut it. A deadline that
passed while the client was resolving or connecting is noticed as soon as ``connect`` returns,
and nothing is sent.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import os
import socket
import threading
import time
from typing import Any, Callable, Optional

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

Clock = Callable[[], float]
_current = threading.local()


class DeadlinePassed(TimeoutError):
    """Raised inside a connection when its deadline passed before the request could be sent."""


class Deadline:
    """One attempt's deadline: ``activate()`` it around each piece of network I/O it bounds."""

    __slots__ = ("when", "tag", "fired", "sent", "stall", "cap", "_sock", "_connecting", "_done", "_clock",
                 "_previous")

    def __init__(self, when: float, tag: object = None, clock: Clock = time.monotonic) -> None:
        self.when = when
        self.stall: Optional[float] = None  # set by stall_timer(): renew() moves the deadline on
        self.cap = float("inf")  # renew() never moves it past this
        self.tag = tag
        self.fired = False  # the watchdog cut (or was about to cut) this attempt
        self.sent = False  # the whole request reached the socket: the server may act on it
        self._sock: Optional[socket.socket] = None
        self._connecting: Any = None  # a connection still connecting (e.g. through a proxy tunnel)
        self._done = False
        self._clock = clock
        self._previous: Optional[Deadline] = None

    @classmethod
    def after(cls, seconds: float, tag: object = None, clock: Clock = time.monotonic) -> Deadline:
        """A deadline ``seconds`` from now, armed."""
        deadline = cls(clock() + seconds, tag, clock)
        _watchdog.add(deadline)
        return deadline

    def stall_timer(self, seconds: float, cap: float) -> Deadline:
        """Make this a stall timer (a streamed attempt): each :meth:`renew` (a piece of the body
        arrived) moves the deadline to ``seconds`` from then, never past ``cap`` (a clock time:
        the call's whole budget, ``max_elapsed_seconds``)."""
        self.stall = seconds
        self.cap = cap
        self.when = min(self.when, cap)
        return self

    def renew(self) -> None:
        """Bytes arrived: a stall timer starts again (up to its cap); a plain deadline does not move."""
        stall = self.stall
        if stall is not None and not self.fired:
            self.when = min(self._clock() + stall, self.cap)

    @property
    def capped(self) -> bool:
        """The deadline stands at its cap (for a stall timer: the call's whole budget is what ends it)."""
        return self.stall is not None and self.when >= self.cap

    def remaining(self) -> float:
        return self.when - self._clock()

    @property
    def passed(self) -> bool:
        """True once the deadline has fired or its time is up."""
        return self.fired or self.remaining() <= 0

    def activate(self) -> Deadline:
        """Use as ``with deadline.activate():`` to make this the running thread's deadline (the
        connection classes report to it) for the block."""
        return self

    def __enter__(self) -> Deadline:
        self._previous = getattr(_current, "deadline", None)
        _current.deadline = self
        return self

    def __exit__(self, *exc: object) -> None:
        _current.deadline, self._previous = self._previous, None

    def finish(self) -> None:
        """Disarm: the attempt is over and its socket is no longer ours to cut."""
        with _watchdog.lock:
            self._done = True
            self._sock = self._connecting = None

    def attach(self, sock: Optional[socket.socket]) -> None:
        """Record the socket this attempt uses; cut it at once if the deadline already fired."""
        if sock is None:
            return
        with _watchdog.lock:
            if self._done:
                return
            self._sock = sock
            fired = self.fired
        if fired:
            _shutdown(sock)

    def connecting(self, conn: Any) -> None:
        """A connection is being set up for this attempt: while it is, cut whatever socket it has."""
        with _watchdog.lock:
            if not self._done:
                self._connecting = conn

    def _fire_locked(self) -> None:
        if self._done:
            return
        self.fired = True
        sock = self._sock if self._sock is not None else getattr(self._connecting, "sock", None)
        if sock is not None:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """A single daemon thread that fires deadlines in time order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def add(self, deadline: Deadline) -> None:
        with self.lock:
            heap = self._heap
            if len(heap) > 1024:  # drop finished entries so the heap stays small
                heap[:] = [entry for entry in heap if not entry[2]._done]
                heapq.heapify(heap)
            earliest = heap[0][0] if heap else None
            heapq.heappush(heap, (deadline.when, next(self._seq), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="openrouter-sync-deadlines", daemon=True)
                self._thread.start()
            elif earliest is None or deadline.when < earliest:
                self._wake.notify()

    def fire_tagged(self, tag: object) -> int:
        """Fire now every running deadline carrying ``tag``; returns how many."""
        count = 0
        with self.lock:
            for _, _, deadline in self._heap:
                if deadline.tag is tag and not deadline._done and not deadline.fired:
                    deadline._fire_locked()
                    count += 1
        return count

    def _run(self) -> None:
        with self.lock:
            while True:
                heap = self._heap
                while heap and heap[0][2]._done:
                    heapq.heappop(heap)
                if not heap:
                    self._wake.wait(30.0)
                    if not self._heap:
                        self._thread = None
                        return
                    continue
                delay = heap[0][0] - time.monotonic()  # sockets live in real time
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                _, _, deadline = heapq.heappop(heap)
                if deadline.when > time.monotonic():  # renewed (a stall timer): wait for its new time
                    heapq.heappush(heap, (deadline.when, next(self._seq), deadline))
                    continue
                deadline._fire_locked()


_watchdog = _Watchdog()


def _renew_after_fork() -> None:
    """In a forked child: a fresh watchdog (the parent's thread is not there, its lock may be held)."""
    global _watchdog
    _watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_after_fork)


def current() -> Optional[Deadline]:
    """The deadline active in this thread, if any."""
    return getattr(_current, "deadline", None)


def abort_tagged(tag: object) -> int:
    """Cut the attempts running under ``tag`` (e.g. a run being interrupted); returns how many."""
    return _watchdog.fire_tagged(tag)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def quick_ack(sock: Optional[socket.socket]) -> None:
    """Acknowledge what arrives on ``sock`` at once instead of up to 40 ms later (Linux).

    A server that writes an answer's head and body separately, without
    ``TCP_NODELAY`` (Python's ``http.server`` among many), holds the second write back until the
    first is acknowledged (Nagle's algorithm), and a client in a request/answer exchange delays
    that acknowledgement: 40 ms added to every answer. The kernel goes back to delaying after a
    while, so this is set again after each request. (A stream's events, not answered by the
    client, are acknowledged promptly anyway: measured, no gain there.)"""
    # Only a real socket (TLS included): TLS inside a proxy's TLS tunnel, or pyOpenSSL's wrapper,
    # have no setsockopt, and an option is never worth failing a call for.
    if _QUICKACK is not None and isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass


class _DeadlineAware:
    """Mixin for urllib3 connections: report the socket to the running attempt's deadline.

    Uses only the public connection API: ``connect()`` (after which the socket exists),
    ``request()`` (which sends the whole request, connecting first if needed) and ``send()``.
    ``send`` also holds a request's head back until its body follows, so both leave in one
    segment and one system call (http.client writes them separately).
    """

    sock: Optional[socket.socket]
    _held: Optional[bytes] = None
    _hold_head = False

    def connect(self) -> None:
        deadline = current()
        if deadline is not None:
            deadline.connecting(self)  # a proxy tunnel is read on self.sock before connect() returns
        super().connect()  # type: ignore[misc]
        if deadline is not None:
            deadline.attach(self.sock)
            if deadline.passed:  # the time went on DNS or the connect itself: send nothing
                raise DeadlinePassed("the deadline passed while connecting")

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        deadline = current()
        if deadline is not None:
            if deadline.passed:
                raise DeadlinePassed("the deadline passed before the request was sent")
            deadline.attach(self.sock)  # a reused connection; a new one attaches in connect()
        self._hold_head = isinstance(body, bytes) and bool(body)
        try:
            super().request(method, url, body=body, headers=headers, **kwargs)  # type: ignore[misc]
        finally:
            self._hold_head = False
            self._flush_held()
        if deadline is not None:
            deadline.sent = True
        quick_ack(self.sock)

    def send(self, data: Any) -> None:
        if self._hold_head and self._held is None and isinstance(data, bytes):
            self._held = data  # the head: it goes with the body, in the next send
            return
        if self._held is not None and isinstance(data, bytes):
            data, self._held = self._held + data, None
        self._flush_held()
        super().send(data)  # type: ignore[misc]

    def _flush_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            super().send(held)  # type: ignore[misc]


class FinalResponse(http.client.HTTPResponse):
    """An ``http.client`` response that skips interim 1xx answers (``103 Early Hints``, ``102``),
    as RFC 9110 asks; http.client itself only skips ``100 Continue``."""

    def begin(self) -> None:
        super().begin()
        while 100 < self.status < 200 and self.status != 101:
            self.headers = self.msg = None  # type: ignore[assignment]
            super().begin()


class DeadlineHTTPConnection(_DeadlineAware, HTTPConnection):
    response_class = FinalResponse


class DeadlineHTTPSConnection(_DeadlineAware, HTTPSConnection):
    response_class = FinalResponse


class DeadlineHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = DeadlineHTTPConnection


class DeadlineHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = DeadlineHTTPSConnection


POOL_CLASSES = {"http": DeadlineHTTPConnectionPool, "https": DeadlineHTTPSConnectionPool}
