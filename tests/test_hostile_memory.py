"""Memory stays bounded: huge, endless and compressed-bomb bodies end as ``response_too_large`` fast,
are not retried, and barely move the peak RSS; stored error text is bounded (issue 12).

The client runs in a child process (the hostile server stays in this one) so ``ru_maxrss`` measures
the client alone: the peak after the call minus the peak before it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any, Callable

import pytest
from hostile import (
    KEY,
    HostileServer,
    Request,
    chunk,
    delta_chunk,
    error_body,
    event,
    head,
    make_backend,
    respond,
    respond_endless_chunked,
    respond_gzip_bomb,
    respond_huge,
    send,
)

pytestmark = [pytest.mark.socket, pytest.mark.subprocess]
MAX_GROWTH_MB = 100
MAX_SECONDS = 3.0

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a broken client fails, not the machine
    from openrouter_sync import OpenRouterBackend
    url, key, mode = sys.argv[1:4]
    backend = OpenRouterBackend(model="openai/gpt-4o-mini", base_url=url, api_key=key, timeout_seconds=5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    if mode == "stream":
        with backend.stream("hi") as stream:
            for _ in stream:
                pass
        result = stream.result
    else:
        result = backend.execute("hi")
    took = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"error_type": result.error_type, "success": result.success, "took": took,
                      "grew_mb": (after - before) / 1024, "attempts": getattr(result, "attempts", None),
                      "message": (result.error_message or "")[:300]}))
""")


def _run_client(server: HostileServer, mode: str) -> dict[str, Any]:
    child = subprocess.run([sys.executable, "-c", _CHILD, server.base_url, KEY, mode], capture_output=True,
                           text=True, timeout=15, env=dict(os.environ))
    assert child.returncode == 0, child.stderr[-2000:]
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def _endless_sse(sock: socket.socket, request: Request) -> None:
    """A chunked event stream of ordinary deltas that never ends."""
    if not send(sock, head(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})):
        return
    block = chunk(event(delta_chunk("a" * 4000)) * 16)
    while not request.server.stopping.is_set() and send(sock, block):
        pass


def _one_endless_event(sock: socket.socket, request: Request) -> None:
    """A chunked event stream whose first event never ends (no newline, ever)."""
    if not send(sock, head(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})):
        return
    send(sock, chunk(b'data: {"choices":[{"delta":{"content":"'))
    block = chunk(b"a" * 65536)
    while not request.server.stopping.is_set() and send(sock, block):
        pass


CASES: dict[str, tuple[Callable[..., Any], str]] = {
    "200MB-body": (respond_huge, "execute"),
    "endless-chunked": (respond_endless_chunked, "execute"),
    "gzip-bomb": (respond_gzip_bomb, "execute"),
    "gzip-bomb-stream": (lambda sock, request: respond_gzip_bomb(sock, request, stream=True), "stream"),
    "endless-sse": (_endless_sse, "stream"),
    "endless-sse-event": (_one_endless_event, "stream"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_oversized_answer_is_refused_fast_with_bounded_memory(case: str) -> None:
    handler, mode = CASES[case]
    with HostileServer(handler, lifetime=20) as server:
        outcome = _run_client(server, mode)
        requests_seen = server.request_count
    assert outcome["error_type"] == "response_too_large", outcome
    assert outcome["took"] < MAX_SECONDS, outcome
    assert requests_seen == 1, "refused answers are not retried (the default policy was used)"
    # A stream keeps the text it has shown (up to max_response_bytes, 32 MiB by default) in ``stdout``:
    # allow it more than the decided ~100 MB for a plain body.
    assert outcome["grew_mb"] < (MAX_GROWTH_MB if mode == "execute" else 1.6 * MAX_GROWTH_MB), outcome


def test_huge_error_message_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    message = "The provider said: " + "blah " * (1024 * 1024)  # 5 MB

    def handle(sock: socket.socket, request: Request) -> bool:
        return respond(sock, 500, error_body(500, message))

    with HostileServer(handle) as server:
        result = make_backend(server, 5.0).execute("hi")
        with make_backend(server, 5.0).stream("hi") as stream:
            assert list(stream) == []
        streamed = stream.result
    for r in (result, streamed):
        assert not r.success and r.error_type == "api_error"
        assert len(r.error_message) <= 2000, len(r.error_message)
        assert "The provider said" in r.error_message or "500" in r.error_message
        assert len(r.stderr) <= 100_000 and len(repr(r)) <= 100_000
    assert sum(len(record.getMessage()) for record in caplog.records) <= 100_000
