"""More hostile-server helpers (see ``hostile.py``): an IPv6 server, a raw-socket server that is not
HTTP at all (a TLS peer, a proxy), and bodies carrying numbers too large for a float.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable, Optional

from hostile import HostileServer, close_all, completion

#: A legal JSON integer with 401 digits: ``float()`` of it raises ``OverflowError``.
BIG_INT = "1" + "0" * 400


class IPv6Server(HostileServer):
    """A ``HostileServer`` on ``[::1]`` (``base_url`` is ``http://[::1]:<port>/api/v1``)."""

    def start(self) -> IPv6Server:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::1", 0))
        listener.listen(128)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._released.set()
        self._spawn(self._accept_loop, "hostile6-accept")
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    @property
    def url(self) -> str:
        return f"http://[::1]:{self.port}"


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


RawHandler = Callable[[socket.socket, threading.Event, "RawServer"], None]


class RawServer:
    """Accepts TCP connections on 127.0.0.1 and hands each raw socket to ``handler(sock, stopping,
    server)`` in its own thread: nothing is parsed. ``seen`` collects what handlers record. Stops
    itself after ``lifetime`` seconds (shutting every socket down)."""

    def __init__(self, handler: RawHandler, *, lifetime: float = 5.0) -> None:
        self.handler = handler
        self.lifetime = lifetime
        self.stopping = threading.Event()
        self.seen: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener: Optional[socket.socket] = None
        self._timer: Optional[threading.Timer] = None

    def __enter__(self) -> RawServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._start(self._accept_loop)
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(sock)
            self._start(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(5.0)
            self.handler(sock, self.stopping, self)
        except OSError:
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def record(self, data: bytes) -> None:
        with self._lock:
            self.seen.append(data)

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            sockets = list(self._sockets)
        close_all(sockets, self._threads, self._listener)


def read_head(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """Read up to the end of an HTTP head (or what came before the peer stopped)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        piece = sock.recv(4096)
        if not piece:
            break
        data += piece
    return data


def completion_with(**usage_raw: str) -> bytes:
    """A completion whose ``usage`` fields are the given raw JSON texts (e.g. ``cost=BIG_INT``)."""
    text = json.dumps(completion("fine"))
    usage = ", ".join(f'"{name}": {raw}' for name, raw in usage_raw.items())
    return text.replace('"cost": 1e-05', usage).encode()


def wait_until(predicate: Callable[[], bool], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
