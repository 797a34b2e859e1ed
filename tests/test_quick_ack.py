"""Immediate ACKs after each request (Linux ``TCP_QUICKACK``): the wiring, and that it never fails a call.

The effect (an answer written as head then body by a server without ``TCP_NODELAY`` arrives 40 ms
sooner) is measured in ``benchmarks/overhead.py`` (``split-write latency``), not timed here.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Optional

import pytest
from hostile import HostileServer, Request, completion, head, make_backend, send

import openrouter_sync.deadline as deadline_module

pytestmark = pytest.mark.socket


def _split_writes(sock: socket.socket, request: Request) -> bool:
    """Head and body in two writes, as ``http.server`` does."""
    data = json.dumps(completion("split")).encode()
    return send(sock, head(200, {"Content-Type": "application/json", "Content-Length": str(len(data))})) \
        and send(sock, data)


def test_each_request_asks_for_immediate_acks_on_its_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Optional[socket.socket]] = []
    real = deadline_module.quick_ack

    def record(sock: Optional[socket.socket]) -> None:
        seen.append(sock)
        real(sock)

    monkeypatch.setattr(deadline_module, "quick_ack", record)
    with HostileServer(_split_writes) as server:
        backend = make_backend(server)
        results = [backend.execute(f"p{i}") for i in range(3)]
    assert [r.stdout for r in results] == ["split"] * 3
    assert len(seen) == 3 and all(isinstance(s, socket.socket) for s in seen)
    assert len({id(s) for s in seen}) == 1  # one kept-alive connection, set again for each request


def test_a_socket_that_refuses_the_option_or_is_no_socket_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing(socket.socket):
        def setsockopt(self, *args: Any) -> None:
            raise OSError(92, "Protocol not available")

    class Wrapped:  # TLS inside a proxy's TLS tunnel (urllib3's SSLTransport), pyOpenSSL's WrappedSocket
        pass

    with Refusing() as refusing:
        deadline_module.quick_ack(refusing)
    deadline_module.quick_ack(Wrapped())  # type: ignore[arg-type]
    deadline_module.quick_ack(None)
    monkeypatch.setattr(deadline_module, "_QUICKACK", None)  # not Linux: nothing to do
    with HostileServer(_split_writes) as server:
        assert make_backend(server).execute("x").stdout == "split"
