"""The deadline is hard per attempt, against servers that close, trickle, stall, compress or never accept.

Issue 12 ("Deadline", "Retries and billing", Ctrl-C). Each case: ``timeout_seconds`` of 0.5 to 1 s and a
wall-clock bound of timeout + ``SLACK`` (the decided bound is timeout + ~0.5 s; the rest is slack for
a loaded machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Optional

import pytest
from hostile import (
    KEY,
    SSE_HEADERS,
    HostileServer,
    Request,
    as_bytes,
    chunk,
    comments_forever,
    completion,
    delta_chunk,
    echo_handler,
    event,
    gzip_stream_without_newlines,
    head,
    hold_until_closed,
    make_backend,
    ok_handler,
    respond,
    respond_trickled,
    send,
    sse_answer,
    stream_chunked,
    stream_close_delimited,
    timed,
)

from openrouter_sync import RetryPolicy
from openrouter_sync.errors import OpenRouterError

pytestmark = pytest.mark.socket
SLACK = 1.0
TIMEOUT = 0.5


def _stream(backend: Any, prompt: str = "hi") -> tuple[str, Any, float]:
    start = time.monotonic()
    with backend.stream(prompt) as stream:
        text = "".join(stream)
    return text, stream.result, time.monotonic() - start


def _assert_timeout(result: Any) -> None:
    assert (result.success, result.error_type, result.exit_code, result.exit_reason) == \
        (False, "timeout", 408, "timeout"), (result.error_type, result.error_message)


# ----- Connection: close ---------------------------------------------------------------------------

@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "close-delimited"])
def test_connection_close_trickled_body_is_cut_at_the_deadline(content_length: bool) -> None:
    def handle(sock: socket.socket, request: Request) -> None:
        respond_trickled(sock, request, completion("x" * 300), interval=0.05, content_length=content_length)

    with HostileServer(handle) as server:
        result, took = timed(lambda: make_backend(server, TIMEOUT).execute("hi"))
    assert took < TIMEOUT + SLACK
    _assert_timeout(result)
    assert server.request_count == 1


@pytest.mark.parametrize("call", ["health_check", "list_models", "key_info"])
def test_get_endpoints_are_cut_at_the_deadline(call: str) -> None:
    def handle(sock: socket.socket, request: Request) -> None:
        respond_trickled(sock, request, {"data": [{"id": "x" * 300}]}, interval=0.05, content_length=False)

    with HostileServer(handle) as server:
        backend = make_backend(server, TIMEOUT)
        start = time.monotonic()
        try:
            outcome = getattr(backend, call)()
        except OpenRouterError as exc:
            outcome = exc.result.error_type
        took = time.monotonic() - start
    assert took < TIMEOUT + SLACK
    assert outcome in (False, "timeout"), outcome


def test_keep_alive_trickled_body_is_cut_at_the_deadline() -> None:
    def handle(sock: socket.socket, request: Request) -> None:
        data = as_bytes(completion("x" * 300))
        send(sock, head(200, {"Content-Type": "application/json", "Content-Length": str(len(data))}))
        for byte in data:
            if not send(sock, bytes([byte])) or not request.wait(0.05):
                return

    with HostileServer(handle) as server:
        result, took = timed(lambda: make_backend(server, TIMEOUT).execute("hi"))
    assert took < TIMEOUT + SLACK
    _assert_timeout(result)


def test_connection_close_stream_of_keepalive_comments_is_cut_at_the_deadline() -> None:
    def handle(sock: socket.socket, request: Request) -> None:
        stream_close_delimited(sock, request, comments_forever(), interval=0.05)

    with HostileServer(handle) as server:
        text, result, took = _stream(make_backend(server, TIMEOUT))
    assert took < TIMEOUT + SLACK
    _assert_timeout(result)
    assert text == "" and result.stdout == ""


@pytest.mark.parametrize("framing", ["chunked", "close"])
@pytest.mark.parametrize("filler", ["silence", "heartbeats"])
def test_stalled_stream_is_a_timeout_and_keeps_the_partial_text(framing: str, filler: str) -> None:
    def handle(sock: socket.socket, request: Request) -> None:
        start = [event(delta_chunk("Hel")), event(delta_chunk("lo"))]
        if framing == "chunked":
            stream_chunked(sock, request, start, end=False)
            while filler == "heartbeats" and send(sock, chunk(b": OPENROUTER PROCESSING\n\n")) \
                    and request.wait(0.05):
                pass
        else:
            stream_close_delimited(sock, request, start)
            while filler == "heartbeats" and send(sock, b": keep-alive\n\n") and request.wait(0.05):
                pass
        hold_until_closed(sock, request, 5.0)

    with HostileServer(handle) as server:
        text, result, took = _stream(make_backend(server, TIMEOUT))
    assert took < TIMEOUT + SLACK
    _assert_timeout(result)
    assert text == "Hello" and result.stdout == "Hello"


@pytest.mark.parametrize("first", ["close-trickle", "keep-alive-stall", "chunked-stall"])
def test_the_backend_works_again_after_a_deadline(first: str) -> None:
    def handle(sock: socket.socket, request: Request) -> bool:
        if request.server.request_count > 1:
            return respond(sock, 200, completion("second answer"))
        if first == "close-trickle":
            respond_trickled(sock, request, completion("x" * 300), interval=0.05)
        elif first == "keep-alive-stall":
            send(sock, head(200, {"Content-Type": "application/json", "Content-Length": "500"}) + b'{"id"')
            hold_until_closed(sock, request, 5.0)
        else:
            stream_chunked(sock, request, [event(delta_chunk("Hel"))], end=False)
            hold_until_closed(sock, request, 5.0)
        return False

    with HostileServer(handle) as server:
        backend = make_backend(server, TIMEOUT)
        _assert_timeout(backend.execute("hi"))
        result, took = timed(lambda: backend.execute("hi"))
    assert result.success and result.stdout == "second answer", (result.error_type, result.error_message)
    assert took < TIMEOUT


# ----- answers that arrive just in time are kept ----------------------------------------------------

@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "close-delimited"])
def test_complete_answer_just_before_the_deadline_is_a_success(content_length: bool) -> None:
    body = as_bytes(completion("Made it in time"))
    steps = 12
    step = len(body) // steps + 1

    def handle(sock: socket.socket, request: Request) -> None:  # about 0.6 s of a 1 s deadline
        respond_trickled(sock, request, body, interval=0.05, step=step, content_length=content_length)

    with HostileServer(handle) as server:
        result, took = timed(lambda: make_backend(server, 1.0).execute("hi"))
    assert result.success and result.stdout == "Made it in time", (result.error_type, result.error_message)
    assert took < 1.0 + SLACK


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_complete_stream_just_before_the_deadline_is_a_success(framing: str) -> None:
    pieces = ["Made", " it", " in", " time"]

    def handle(sock: socket.socket, request: Request) -> bool:  # 7 events, 0.08 s apart: ~0.56 s of 1 s
        if framing == "chunked":
            return stream_chunked(sock, request, sse_answer(pieces), interval=0.08)
        stream_close_delimited(sock, request, sse_answer(pieces), interval=0.08)
        return False

    with HostileServer(handle) as server:
        text, result, took = _stream(make_backend(server, 1.0))
    assert result.success and text == result.stdout == "Made it in time", (result.error_type, result.error_message)
    assert took < 1.0 + SLACK


def test_chunked_keep_alive_stream_with_heartbeats_succeeds() -> None:
    def handle(sock: socket.socket, request: Request) -> bool:
        return stream_chunked(sock, request, sse_answer(["a", "b", "c"]), heartbeat=0.01, heartbeats=3)

    with HostileServer(handle) as server:
        backend = make_backend(server, 1.0)
        for _ in range(2):  # a second call on the same backend (and maybe the same connection)
            text, result, _ = _stream(backend)
            assert result.success and text == "abc" and result.tokens_used == 8


# ----- connect --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["execute", "stream", "health_check"])
def test_slow_connect_is_cut_at_the_deadline(mode: str) -> None:
    with HostileServer(ok_handler(), slow_connect=True) as server:
        backend = make_backend(server, TIMEOUT)
        if mode == "execute":
            result, took = timed(lambda: backend.execute("hi"))
        elif mode == "stream":
            _, result, took = _stream(backend)
        else:
            healthy, took = timed(backend.health_check)
            assert healthy is False
            result = None
    assert took < TIMEOUT + SLACK
    if result is not None:
        assert not result.success and result.error_type in ("timeout", "connection"), result.error_type
    assert server.request_count == 0


def test_deadline_counts_the_time_spent_connecting() -> None:
    """The SYN is dropped, then retransmitted by the kernel about 1 s later and accepted; the server then
    says nothing. The attempt must end 1.5 s after it began, not 1.5 s after the connection was made."""
    with HostileServer(lambda sock, request: hold_until_closed(sock, request, 5.0), slow_connect=True) as server:
        releaser = threading.Timer(0.3, server.release)
        releaser.start()
        try:
            result, took = timed(lambda: make_backend(server, 1.5).execute("hi"))
        finally:
            releaser.cancel()
    assert not result.success and result.error_type in ("timeout", "connection"), result.error_type
    assert took < 1.5 + 0.6, f"{took:.2f} s: the deadline restarted after connect"


# ----- gzip streams with no newline ------------------------------------------------------------------

@pytest.mark.parametrize("pace", [0.0, 0.02], ids=["flood", "paced"])
def test_gzip_stream_without_newlines_is_cut_at_the_deadline(pace: float) -> None:
    def handle(sock: socket.socket, request: Request) -> None:
        headers = {**SSE_HEADERS, "Content-Encoding": "gzip", "Transfer-Encoding": "chunked"}
        if not send(sock, head(200, headers)):
            return
        for piece in gzip_stream_without_newlines(request):
            if not send(sock, chunk(piece)) or (pace and not request.wait(pace)):
                return

    with HostileServer(handle) as server:
        text, result, took = _stream(make_backend(server, TIMEOUT))
    assert took < TIMEOUT + SLACK
    assert not result.success and text == ""
    assert result.error_type in ("timeout", "response_too_large", "invalid_response"), result.error_type


# ----- retries and billing ----------------------------------------------------------------------------

FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.02}


def _unanswered(kind: str):  # type: ignore[no-untyped-def]
    def handle(sock: socket.socket, request: Request) -> None:
        if kind == "silence":
            hold_until_closed(sock, request, 5.0)
        # "drop": close at once, after the request was read

    return handle


@pytest.mark.parametrize("kind", ["silence", "drop"])
def test_unanswered_attempt_is_not_retried_when_the_policy_says_so(kind: str) -> None:
    with HostileServer(_unanswered(kind)) as server:
        policy = RetryPolicy(max_attempts=3, retry_unanswered=False, **FAST)
        result = make_backend(server, 0.3, retry_policy=policy).execute("hi")
    assert not result.success and server.request_count == 1
    assert result.unanswered_attempts == 1
    if kind == "silence":
        _assert_timeout(result)


def test_default_policy_retries_an_unanswered_attempt_and_counts_it() -> None:
    with HostileServer(_unanswered("silence")) as server:
        policy = RetryPolicy(max_attempts=3, **FAST)  # retry_unanswered left at its default
        result, took = timed(lambda: make_backend(server, 0.3, retry_policy=policy).execute("hi"))
    _assert_timeout(result)
    assert server.request_count == 3 and result.unanswered_attempts == 3
    assert took < 3 * 0.3 + SLACK


def test_unsent_attempts_are_still_retried_without_retry_unanswered() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there: connection refused, the request was never sent
    from openrouter_sync import OpenRouterBackend

    backend = OpenRouterBackend(base_url=f"http://127.0.0.1:{port}/api/v1", api_key=KEY, timeout_seconds=0.5,
                                retry_policy=RetryPolicy(max_attempts=3, retry_unanswered=False, **FAST))
    result = backend.execute("hi")
    assert result.error_type == "connection" and result.attempts == 3 and result.unanswered_attempts == 0


# ----- Ctrl-C ------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    from openrouter_sync import OpenRouterBackend, run_sheets
    backend = OpenRouterBackend(base_url=sys.argv[1], api_key=sys.argv[2], timeout_seconds=30)
    print("ready", flush=True)
    try:
        run_sheets(backend, [f"prompt {i}" for i in range(16)], max_workers=8)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
""")


@pytest.mark.subprocess
def test_ctrl_c_while_connecting_exits_fast_and_sends_nothing_afterwards() -> None:
    with HostileServer(echo_handler(), slow_connect=True, lifetime=20) as server:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, server.base_url, KEY], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        exited: Optional[float] = None
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.4)  # the workers are now stuck in connect()
            interrupted = time.monotonic()
            child.send_signal(signal.SIGINT)
            server.release()  # from now on connects go through: a late request would be seen
            child.wait(10)
            exited = time.monotonic()
            time.sleep(0.3)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(5)
        late = [round(r.at - interrupted, 2) for r in server.requests if r.at > interrupted + 0.2]
    assert exited is not None and exited - interrupted < 3.0, "the process took too long to exit after SIGINT"
    assert late == [], f"requests reached the server after SIGINT (seconds after): {late}"
