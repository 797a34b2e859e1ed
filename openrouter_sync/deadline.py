"""Hard per-attempt deadlines.

A socket timeout bounds each ``recv``, not the whole answer: a server that trickles one byte a
second never trips it. Here one watchdog thread (for the whole process) keeps a heap of
deadlines; when one passes, it shuts down the socket of the connection that attempt is using,
so the blocked read returns at once and the attempt fails as a timeout.

The connection is learned from urllib3 through the pool subclasses below: ``_make_request``
records the connection an attempt uses, ``_put_conn`` forgets it as it goes back to the pool,
so a deadline can never close a connection another thread has since taken.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from typing import Any, Iterator, Optional

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class Deadline:
    """One attempt's deadline; use as a context manager around the request and the body read."""

    __slots__ = ("when", "tag", "fired", "_conn", "_done", "_prev")

    def __init__(self, when: float, tag: object = None) -> None:
        self.when = when
        self.tag = tag
        self.fired = False
        self._conn: Any = None
        self._done = False
        self._prev: Optional[Deadline] = None

    def remaining(self) -> float:
        return self.when - time.monotonic()

    def __enter__(self) -> Deadline:
        self.start()
        self._prev = getattr(_current, "deadline", None)
        _current.deadline = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
        _current.deadline = self._prev

    def start(self) -> None:
        """Arm the deadline (the context manager does this)."""
        _watchdog.add(self)

    def finish(self) -> None:
        """Disarm: the attempt is over and its connection is no longer ours to cut."""
        with _watchdog.lock:
            self._done = True
            self._conn = None

    @contextlib.contextmanager
    def attached(self) -> Iterator[Deadline]:
        """Make this the running thread's deadline for a while (e.g. each read of a stream)."""
        prev = getattr(_current, "deadline", None)
        _current.deadline = self
        try:
            yield self
        finally:
            _current.deadline = prev

    # Called by the pool subclasses, in the attempt's own thread.
    def _attach(self, conn: Any) -> None:
        with _watchdog.lock:
            if not self._done:
                self._conn = conn
        if self.fired:  # passed while no connection was attached
            _shutdown(conn)

    def _detach(self, conn: Any) -> None:
        if self._conn is conn:
            with _watchdog.lock:
                if self._conn is conn:
                    self._conn = None

    def _fire(self) -> None:  # watchdog thread, lock held
        if self._done:
            return
        self.fired = True
        if self._conn is not None:
            _shutdown(self._conn)


def _shutdown(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
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
                    deadline._fire()
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
                delay = heap[0][0] - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                _, _, deadline = heapq.heappop(heap)
                deadline._fire()


_watchdog = _Watchdog()


def current() -> Optional[Deadline]:
    return getattr(_current, "deadline", None)


def abort_tagged(tag: object) -> int:
    """Cut the connections of every attempt running under ``tag`` (e.g. a run being interrupted)."""
    return _watchdog.fire_tagged(tag)


class _DeadlineAware:
    """Mixin for urllib3 pools: tell the running attempt's deadline which connection it uses."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline._attach(conn)
        return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]

    def _put_conn(self, conn: Any) -> None:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None and conn is not None:
            deadline._detach(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _Coalescing:
    """Mixin for urllib3 connections: send the request head and a bytes body in one ``send``.

    urllib3 sends the head, then the body: two syscalls, and two small segments that can meet
    Nagle's algorithm on the way. Here ``endheaders`` holds the head back and the first body
    send carries it; a request without a body sends it when the response is awaited.
    """

    _held: Optional[bytes] = None

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if message_body is not None:
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
            return
        buffer = self._buffer  # type: ignore[attr-defined]
        buffer.extend((b"", b""))
        self._held = b"\r\n".join(buffer)
        del buffer[:]

    def send(self, data: Any) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if isinstance(data, (bytes, bytearray)):
                data = held + data
            else:
                super().send(held)  # type: ignore[misc]
        super().send(data)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        held = self._held
        if held is not None:
            self._held = None
            super().send(held)  # type: ignore[misc]
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class CoalescingHTTPConnection(_Coalescing, HTTPConnection):
    pass


class CoalescingHTTPSConnection(_Coalescing, HTTPSConnection):
    pass


class DeadlineHTTPConnectionPool(_DeadlineAware, HTTPConnectionPool):
    ConnectionCls = CoalescingHTTPConnection


class DeadlineHTTPSConnectionPool(_DeadlineAware, HTTPSConnectionPool):
    ConnectionCls = CoalescingHTTPSConnection


POOL_CLASSES = {"http": DeadlineHTTPConnectionPool, "https": DeadlineHTTPSConnectionPool}
