"""More hostile, broken and merely unusual servers and environments, beyond tests/test_hostile_*.py.

Each test is a real local server (127.0.0.1 or ::1) speaking raw bytes. The first part holds
regression tests for promises that break today (they assert the right behaviour); the second part
holds guards for behaviours that hold and were not covered before.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import pytest
from hostile import (
    KEY,
    MODEL,
    SSE_HEADERS,
    HostileServer,
    Request,
    as_bytes,
    chunk,
    completion,
    delta_chunk,
    echo_handler,
    error_body,
    event,
    head,
    make_backend,
    ok_handler,
    respond,
    send,
    sse_answer,
    stream_chunked,
    timed,
    trickle,
)
from hostile_more import BIG_INT, IPv6Server, RawServer, completion_with, ipv6_available, read_head

from openrouter_sync import OpenRouterBackend, RetryPolicy, Sheet, run_sheets
from openrouter_sync.error_types import ErrorType
from openrouter_sync.errors import OpenRouterError

pytestmark = pytest.mark.socket
ERROR_TYPES = {member.value for member in ErrorType}
TIMEOUT = 0.5
SLACK = 1.0
#: The default policy, with back-offs too short to slow a test down.
FAST_DEFAULT = RetryPolicy(backoff_base=0.001, backoff_max=0.001)


def _stream(backend: Any, prompt: str = "hi") -> tuple[str, Any]:
    with backend.stream(prompt) as stream:
        text = "".join(stream)
    return text, stream.result


def _call(backend: Any, mode: str) -> Any:
    return backend.execute("hi") if mode == "execute" else _stream(backend)[1]


def _assert_typed_failure(result: Any) -> None:
    assert not result.success and result.error_type in ERROR_TYPES, (result.error_type, result.error_message)
    assert isinstance(result.exit_code, int) and result.exit_code != 0


# =====================================================================================================
# Findings: these fail today.
# =====================================================================================================

# ----- numbers too large for a float (legal JSON) ----------------------------------------------------

def test_429_whose_body_names_a_huge_integer_wait_is_a_rate_limit_result() -> None:
    """``{"error": {"retry_after_seconds": 1000...0}}`` (401 digits): today ``OverflowError`` out of
    ``execute`` (waits.py: wait_from_body calls ``float(int)``)."""
    body = ('{"error": {"code": 429, "message": "slow down", "retry_after_seconds": ' + BIG_INT + "}}").encode()
    with HostileServer(lambda sock, request: respond(sock, 429, body)) as server:
        backend = make_backend(server, 1.0)
        result = backend.execute("hi")
        streamed = _stream(backend)[1]
    for r in (result, streamed):
        assert (r.success, r.error_type, r.exit_code, r.rate_limited) == (False, "rate_limit", 429, True), \
            (r.error_type, r.error_message)
        assert r.rate_limit_wait_seconds is None or r.rate_limit_wait_seconds >= 0


@pytest.mark.parametrize("mode", ["execute", "stream"])
def test_huge_integer_cost_in_usage_keeps_the_answer(mode: str) -> None:
    """A 200 whose ``usage.cost`` is a 401-digit integer: today ``OverflowError`` out of ``execute``
    and out of the ``for delta in stream`` loop (classify.py: apply_usage calls ``float(cost)``)."""
    usage = '{"prompt_tokens": 3, "completion_tokens": 5, "cost": ' + BIG_INT + "}"

    def handle(sock: socket.socket, request: Request) -> bool:
        if request.streaming:
            events = [event(delta_chunk("fine")), event(delta_chunk("", "stop")),
                      b'data: {"id": "gen-1", "choices": [], "usage": ' + usage.encode() + b"}\n\n", event("[DONE]")]
            return stream_chunked(sock, request, events)
        return respond(sock, 200, completion_with(cost=BIG_INT))

    with HostileServer(handle) as server:
        result = _call(make_backend(server, 1.0), mode)
    assert result.success and result.stdout == "fine", (result.error_type, result.error_message)
    assert result.cost is None or result.cost >= 0


@pytest.mark.parametrize("call", ["list_models", "key_info"])
def test_get_endpoints_with_huge_integers_raise_nothing_untyped(call: str) -> None:
    """``context_length``/``limit`` of 401 digits: today ``OverflowError`` out of ``list_models`` and
    ``key_info`` (endpoints.py: _number catches TypeError/ValueError, not OverflowError)."""
    models = json.dumps({"data": [{"id": "m/x", "context_length": "@", "pricing": {"prompt": "@", "completion": "0"}}]})
    key = json.dumps({"data": {"label": "k", "limit": "@", "usage": "@", "limit_remaining": "@"}})
    models_body, key_body = (text.replace('"@"', BIG_INT).encode() for text in (models, key))

    def handle(sock: socket.socket, request: Request) -> bool:
        return respond(sock, 200, models_body if request.path.endswith("/models") else key_body)

    with HostileServer(handle) as server:
        backend = make_backend(server, 1.0)
        try:
            value = getattr(backend, call)()
        except OpenRouterError:
            return  # refusing the answer is allowed; any other exception is not
    assert value is not None


# ----- 1xx interim responses ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["execute", "stream"])
@pytest.mark.parametrize("interim", [b"103 Early Hints\r\nLink: </a.css>; rel=preload", b"102 Processing"],
                         ids=["103", "102"])
def test_interim_1xx_response_before_the_answer_is_skipped(mode: str, interim: bytes) -> None:
    """RFC 9110 15.2: a client must accept and skip 1xx responses before the final one (CDNs send
    103 Early Hints). Today only 100 is skipped: the 103 is taken as the answer (``http_error`` 103),
    the completion that follows (already made, and billed) is thrown away, and it is not retried."""

    def handle(sock: socket.socket, request: Request) -> bool:
        send(sock, b"HTTP/1.1 " + interim + b"\r\n\r\n")
        if request.streaming:
            return stream_chunked(sock, request, sse_answer(["Hel", "lo"]))
        return respond(sock, 200, completion("Hello"))

    with HostileServer(handle) as server:
        result = _call(make_backend(server, 1.0), mode)
        sent = server.request_count
    assert result.success and result.stdout == "Hello", (result.error_type, result.error_message)
    assert sent == 1


# ----- content types and framing of event streams ------------------------------------------------------

def test_event_stream_starting_with_a_bom_keeps_its_first_event() -> None:
    """The SSE spec strips one leading U+FEFF. Today the first line reads ``\\ufeffdata: ...``, is not
    a ``data`` field, and the first delta is dropped *silently*: success with "lo" for "Hello"
    (sse.py: SSEDecoder.feed never strips a BOM)."""
    events = sse_answer(["Hel", "lo"])
    events[0] = b"\xef\xbb\xbf" + events[0]
    with HostileServer(lambda sock, request: stream_chunked(sock, request, events)) as server:
        text, result = _stream(make_backend(server, 1.0))
    assert result.success and text == result.stdout == "Hello", (text, result.error_type)


@pytest.mark.parametrize("content_type", ["Text/Event-Stream", "TEXT/EVENT-STREAM; charset=utf-8"])
def test_event_stream_media_type_is_case_insensitive(content_type: str) -> None:
    """Media types are case-insensitive (RFC 9110 8.3.1). Today ``Text/Event-Stream`` is read as JSON:
    ``invalid_response``, retried by the default policy: 9 completions made and billed, none kept
    (call.py: Pipeline._exchange tests ``"text/event-stream" in Content-Type``)."""

    def handle(sock: socket.socket, request: Request) -> bool:
        return stream_chunked(sock, request, sse_answer(["Hel", "lo"]), headers={"Content-Type": content_type})

    with HostileServer(handle) as server:
        text, result = _stream(make_backend(server, 1.0, retry_policy=FAST_DEFAULT))
        sent = server.request_count
    assert result.success and text == "Hello", (result.error_type, result.error_message)
    assert sent == 1


def test_execute_answered_with_an_event_stream_is_read_not_resent() -> None:
    """A server (or proxy) that streams although ``stream`` was not asked for. Today: ``invalid_response``
    ("not JSON"), retried 8 times by default: 9 finished completions billed, none kept. The library
    has a total event-stream decoder (events.outcome_of_event_stream); execute never uses it
    (call.py: Pipeline._exchange -> classify.classify_response assumes JSON)."""
    with HostileServer(lambda sock, request: stream_chunked(sock, request, sse_answer(["Hel", "lo"]))) as server:
        result = make_backend(server, 1.0, retry_policy=FAST_DEFAULT).execute("hi")
        sent = server.request_count
    assert result.success and result.stdout == "Hello", (result.error_type, result.error_message, sent)
    assert sent == 1


@pytest.mark.parametrize("body,expected", [
    (error_body(401, "User not found."), "error"),
    (completion("whole answer"), "whole answer"),
], ids=["json-error", "json-completion"])
def test_stream_answered_with_json_labelled_event_stream(body: Any, expected: str) -> None:
    """A JSON answer sent with ``Content-Type: text/event-stream``. Today both become
    ``truncated_response`` ("ended before any text"): the 401's message is lost, and the default
    policy sends the request 9 times, a 401 included (events.py: EventStream drops every non-``data:``
    line; ChunkFolder.outcome calls an eventless stream truncated)."""

    def handle(sock: socket.socket, request: Request) -> bool:
        return respond(sock, 200, body, {"Content-Type": "text/event-stream"})

    with HostileServer(handle) as server:
        text, result = _stream(make_backend(server, 1.0, retry_policy=FAST_DEFAULT))
        sent = server.request_count
    if expected == "error":
        assert not result.success and result.error_type in ("provider_error", "authentication"), result.error_type
        assert "User not found" in (result.error_message or ""), result.error_message
        assert result.exit_code == 401 and sent == 1, (result.exit_code, sent)
    else:
        assert result.success and text == expected, (result.error_type, result.error_message)
        assert sent == 1


# ----- configuration that reaches the network layer --------------------------------------------------------

@pytest.mark.parametrize("port", ["99999", "-1", "abc"])
def test_base_url_with_an_invalid_port_is_refused_or_a_typed_failure(port: str) -> None:
    """``http://127.0.0.1:99999/api/v1`` passes construction; then ``execute``, ``stream`` and
    ``health_check`` (documented: False on failure) raise ``requests.exceptions.InvalidURL``
    (request.py: check_base_url never reads the port; transport.py: Transport.open prepares the
    request outside map_network_errors)."""
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        backend = OpenRouterBackend(model=MODEL, base_url=url, api_key=KEY, timeout_seconds=TIMEOUT,
                                    retry_policy=RetryPolicy(max_attempts=1))
    except ValueError:
        return  # refused up front, clearly: the best outcome
    _assert_typed_failure(backend.execute("hi"))
    _assert_typed_failure(_stream(backend)[1])
    assert backend.health_check() is False
    with pytest.raises(OpenRouterError):
        backend.list_models()


# ----- the deadline through an HTTPS proxy ---------------------------------------------------------------

def test_https_proxy_trickling_its_connect_reply_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTPS_PROXY`` names a proxy that answers ``CONNECT`` one byte every 0.2 s. Today the call is
    held until the proxy gives up (2.5 s here, 8 s with an 8 s proxy, forever in general): the tunnel is
    set up inside ``connect()``, and deadline.py: _DeadlineAware.connect attaches the socket to the
    deadline only after ``super().connect()`` returns, so the watchdog has nothing to cut."""

    def proxy(sock: socket.socket, stopping: threading.Event, server: RawServer) -> None:
        server.record(read_head(sock))
        for byte in b"HTTP/1.1 200 Connection established\r\n\r\n":
            if stopping.wait(0.2):
                return
            sock.sendall(bytes([byte]))
        stopping.wait(10)

    with RawServer(proxy, lifetime=2.5) as server:  # the proxy gives up after 2.5 s
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.setenv("HTTPS_PROXY", server.url)
        backend = OpenRouterBackend(model=MODEL, base_url="https://127.0.0.1:9/api/v1", api_key=KEY,
                                    timeout_seconds=TIMEOUT, retry_policy=RetryPolicy(max_attempts=1))
        result, took = timed(lambda: backend.execute("hi"))
    assert took < TIMEOUT + SLACK, f"took {took:.2f}s for a {TIMEOUT}s deadline"
    assert (result.success, result.error_type, result.exit_reason) == (False, "timeout", "timeout"), \
        (result.error_type, result.error_message)


# ----- CPU the watchdog cannot cut ----------------------------------------------------------------------

_GZIP_EVENTS_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from hostile import HostileServer, event, delta_chunk, gzip_bytes, head, send, make_backend
    payload = b"data: {}\\n\\n" * 400_000 + event(delta_chunk("late")) + event("[DONE]")
    body = gzip_bytes(payload)  # about 8 KB that inflate to 4 MB: 400,000 events
    def handle(sock, request):
        headers = {"Content-Type": "text/event-stream", "Content-Encoding": "gzip", "Content-Length": str(len(body))}
        return send(sock, head(200, headers) + body)
    with HostileServer(handle, lifetime=60) as server:
        backend = make_backend(server, 0.5)
        print("ready", flush=True)
        start = time.monotonic()
        with backend.stream("hi") as stream:
            for _ in stream:
                pass
        print("done", round(time.monotonic() - start, 2), stream.result.error_type, flush=True)
""")


@pytest.mark.subprocess
def test_gzip_stream_of_many_tiny_events_is_cut_at_the_deadline() -> None:
    """8 KB of gzip inflating to 400,000 ``data: {}`` events. Today: 9.9 s at 100% CPU for a 0.5 s
    deadline, then ``success`` (2 MB: 3 s; 4 MB: 10 s; the 32 MB cap: many minutes): one read
    inflates up to max_response_bytes, the decoder returns every event at once, and
    events.py: EventStream.next_delta pops them with ``list.pop(0)`` (quadratic) without ever
    looking at the deadline. Run in a child process, killed after 2 s."""
    here = str(Path(__file__).parent)
    child = subprocess.Popen([sys.executable, "-c", _GZIP_EVENTS_CHILD, here], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        try:
            out, err = child.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            pytest.fail("a 0.5 s stream was still being decoded after 2 s")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert child.returncode == 0, err[-2000:]
    _, took, error_type = out.split()
    assert float(took) < TIMEOUT + SLACK and error_type == "timeout", out


# ----- the key, echoed in an answer's metadata ------------------------------------------------------------

def test_key_echoed_in_answer_metadata_never_reaches_the_checkpoint(tmp_path: Path) -> None:
    """A server (a logging proxy, a broken gateway) that echoes the key in ``model``, ``id``,
    ``provider``, ``system_fingerprint``, ``finish_reason`` or ``X-Generation-Id``. Error bodies are
    redacted (test_hostile_keys); these fields are written to the checkpoint verbatim
    (checkpoint.py: Checkpoint._line redacts only stdout/stderr/error_message/reasoning)."""
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    key = "proxy-key." + secret

    def handle(sock: socket.socket, request: Request) -> bool:
        if request.prompt == "a":
            body = completion("fine", model=key)
            body.update(id=key, provider=key, system_fingerprint=key)
            return respond(sock, 200, body)
        if request.prompt == "b":
            return respond(sock, 500, error_body(500, "boom"), {"X-Generation-Id": key})
        body = completion("fine")
        body["choices"][0]["finish_reason"] = key
        return respond(sock, 200, body)

    checkpoint = tmp_path / "run.jsonl"
    with HostileServer(handle) as server:
        results = run_sheets(make_backend(server, 1.0, key=key), [Sheet("a", id="a"), Sheet("b", id="b"),
                                                                  Sheet("c", id="c")], checkpoint=checkpoint)
    assert [r.success for r in results] == [True, False, True]
    text = checkpoint.read_text(encoding="utf-8")
    assert secret[:16] not in text and secret[-16:] not in text, "the key was written to the checkpoint"


# =====================================================================================================
# Guards: these hold today and were not covered.
# =====================================================================================================

def test_trickled_response_head_is_cut_at_the_deadline() -> None:
    """Status line and headers one byte every 0.1 s (the body never comes)."""
    data = head(200, {"Content-Type": "application/json", "Content-Length": "100", "X-Pad": "p" * 40})

    with HostileServer(lambda sock, request: trickle(sock, request, data, interval=0.1)) as server:
        backend = make_backend(server, TIMEOUT)
        result, took = timed(lambda: backend.execute("hi"))
        healthy, health_took = timed(backend.health_check)
    assert took < TIMEOUT + SLACK and health_took < TIMEOUT + SLACK, (took, health_took)
    assert (result.error_type, result.exit_reason) == ("timeout", "timeout") and healthy is False


def test_endless_header_block_trickled_is_cut_at_the_deadline() -> None:
    def handle(sock: socket.socket, request: Request) -> bool:
        if not send(sock, b"HTTP/1.1 200 OK\r\n"):
            return False
        for i in range(90):  # under http.client's 100-header limit: only the deadline can stop it
            if not send(sock, b"X-%d: y\r\n" % i) or not request.wait(0.05):
                return False
        return False

    with HostileServer(handle) as server:
        result, took = timed(lambda: make_backend(server, TIMEOUT).execute("hi"))
    assert took < TIMEOUT + SLACK and result.error_type == "timeout", (took, result.error_type)


def test_trickled_tls_handshake_is_cut_at_the_deadline() -> None:
    """An https server that announces a 16 KB handshake record, then sends one byte every 0.1 s."""

    def tls_peer(sock: socket.socket, stopping: threading.Event, server: RawServer) -> None:
        sock.recv(65536)  # the ClientHello
        sock.sendall(b"\x16\x03\x03\x40\x00")
        while not stopping.wait(0.1):
            sock.sendall(b"\x00")

    with RawServer(tls_peer, lifetime=4.0) as server:
        backend = OpenRouterBackend(model=MODEL, base_url=f"https://127.0.0.1:{server.port}/api/v1", api_key=KEY,
                                    timeout_seconds=TIMEOUT, retry_policy=RetryPolicy(max_attempts=1))
        result, took = timed(lambda: backend.execute("hi"))
    assert took < TIMEOUT + SLACK and result.error_type == "timeout", (took, result.error_type)


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_base_url_works_for_every_call() -> None:
    with IPv6Server(ok_handler("over six")) as server:
        backend = make_backend(server, 1.0)
        result = backend.execute("hi")
        text, streamed = _stream(backend)
        healthy = backend.health_check()
        models = backend.list_models()
    assert result.success and result.stdout == "over six"
    assert streamed.success and text == "over six"
    assert healthy is True and [m.id for m in models] == [MODEL]
    assert server.requests[0].headers.get("host") == f"[::1]:{server.port}"


def test_chunked_answers_with_extensions_and_trailers_reuse_the_connection() -> None:
    def handle(sock: socket.socket, request: Request) -> bool:
        if request.streaming:
            data = b"".join(sse_answer(["Hel", "lo"]))
            headers = {**SSE_HEADERS, "Transfer-Encoding": "chunked", "Trailer": "X-Checksum"}
        else:
            data = as_bytes(completion("Hello"))
            headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked", "Trailer": "X-Checksum"}
        body = b"%x;name=value\r\n%s\r\n" % (len(data), data) + b"0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n"
        return send(sock, head(200, headers) + body)

    with HostileServer(handle) as server:
        backend = make_backend(server, 1.0)
        results = [backend.execute("one"), backend.execute("two"), backend.execute("three")]
        connections = server.connections  # the trailers were read: the connection went back to the pool
        results += [_stream(backend)[1], _stream(backend)[1]]
    assert [(r.success, r.stdout) for r in results] == [(True, "Hello")] * 5
    assert connections == 1


def test_event_stream_with_cr_line_endings_and_no_space_after_the_colon() -> None:
    data = b"".join(sse_answer(["Hel", "lo"])).replace(b"\n", b"\r").replace(b"data: ", b"data:")
    with HostileServer(lambda sock, request: stream_chunked(sock, request, [data[:7], data[7:]])) as server:
        text, result = _stream(make_backend(server, 1.0))
    assert result.success and text == "Hello"


def test_error_sent_before_the_request_body_is_read_is_kept() -> None:
    """A server that answers 413 as soon as it has the head, and closes without reading the 8 MB body."""

    def early(sock: socket.socket, stopping: threading.Event, server: RawServer) -> None:
        server.record(read_head(sock))
        body = json.dumps(error_body(413, "request too large")).encode()
        sock.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        stopping.wait(0.05)

    with RawServer(early) as server:
        backend = OpenRouterBackend(model=MODEL, base_url=server.url + "/api/v1", api_key=KEY, timeout_seconds=2.0,
                                    retry_policy=FAST_DEFAULT)
        result, took = timed(lambda: backend.execute("x" * (8 << 20)))
        connections = server.connections
    assert (result.error_type, result.exit_code) == ("payload_too_large", 413), (result.error_type,
                                                                                 result.error_message)
    assert "request too large" in result.error_message and connections == 1 and took < 2.0


@pytest.mark.parametrize("mode", ["silent", "407"])
def test_https_proxy_sees_no_key_and_its_failures_are_typed(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``HTTPS_PROXY`` the proxy sees only ``CONNECT host:port``: never the key. A proxy that
    says nothing is a timeout; one that answers 407 is a typed failure; no call raises."""

    def proxy(sock: socket.socket, stopping: threading.Event, server: RawServer) -> None:
        server.record(read_head(sock))
        if mode == "407":
            sock.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=x\r\n"
                         b"Content-Length: 0\r\n\r\n")
        stopping.wait(3)

    with RawServer(proxy, lifetime=4.0) as server:
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.setenv("HTTPS_PROXY", server.url)
        backend = OpenRouterBackend(model=MODEL, base_url="https://127.0.0.1:9/api/v1", api_key=KEY,
                                    timeout_seconds=TIMEOUT, retry_policy=RetryPolicy(max_attempts=1))
        result, took = timed(lambda: backend.execute("hi"))
        healthy = backend.health_check()
        with pytest.raises(OpenRouterError):
            backend.key_info()
        seen = list(server.seen)
    _assert_typed_failure(result)
    assert took < TIMEOUT + SLACK and healthy is False
    assert seen and all(s.startswith(b"CONNECT 127.0.0.1:9 ") for s in seen), seen
    assert not any(KEY[10:30].encode() in s for s in seen)
    assert KEY[10:30] not in repr(result) + str(result.error_message)


def test_close_from_another_thread_mid_call_and_execute_after_close() -> None:
    with HostileServer(echo_handler(0.3), lifetime=6) as server:
        backend = make_backend(server, 2.0)
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(backend.execute, f"p{i}") for i in range(8)]
            time.sleep(0.1)
            backend.close()
            backend.close()
            results = [f.result(timeout=5) for f in futures]
        again = backend.execute("again")
    for i, result in enumerate(results):
        assert (result.success and result.stdout == f"echo: p{i}") or result.error_type in ERROR_TYPES
    assert again.success and again.stdout == "echo: again"


_STREAM_CHILD = textwrap.dedent("""
    import sys
    from openrouter_sync import OpenRouterBackend, RetryPolicy
    backend = OpenRouterBackend(model="m/x", base_url=sys.argv[1], api_key=sys.argv[2], timeout_seconds=20,
                                retry_policy=RetryPolicy(max_attempts=1))
    stream = backend.stream("hi")
    got = []
    try:
        with stream:
            for delta in stream:
                got.append(delta)
                if len(got) == 2:
                    print("ready", flush=True)
    except KeyboardInterrupt:
        r = stream.result
        print("interrupted", r.error_type if r else None, (r.stdout if r else "") == "".join(got), flush=True)
        sys.exit(130)
    print("finished", flush=True)
""")


@pytest.mark.subprocess
def test_ctrl_c_inside_stream_iteration_stops_at_once_and_closes_the_request() -> None:
    closed: list[float] = []

    def handle(sock: socket.socket, request: Request) -> bool:
        stream_chunked(sock, request, [event(delta_chunk(f"w{i} ")) for i in range(400)], interval=0.02)
        closed.append(time.monotonic())
        return False

    with HostileServer(handle, lifetime=10) as server:
        child = subprocess.Popen([sys.executable, "-c", _STREAM_CHILD, server.base_url, KEY],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.1)
            interrupted = time.monotonic()
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=5)
            exited = time.monotonic()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(5)
        time.sleep(0.2)
    assert child.returncode == 130 and out.split() == ["interrupted", "cancelled", "True"], (out, err[-1000:])
    assert exited - interrupted < 2.0
    assert closed and closed[0] - interrupted < 1.0, "the server kept streaming to a client that stopped"


def test_64_threads_with_a_misbehaving_server_get_their_own_answer_or_a_typed_failure() -> None:
    """Per prompt (fixed by its number): a normal answer, ``Connection: close``, chunked, a body cut
    short, a 500, a 204 carrying a stray body, or a silent server; 64 threads share one backend."""
    behaviours = ["ok", "close", "chunked", "cut", "500", "stray-204", "silent", "ok"]

    def handle(sock: socket.socket, request: Request) -> bool:
        prompt = request.prompt or ""
        number = int(prompt.split()[-1])
        body = as_bytes(completion(f"answer {number}"))
        kind = behaviours[number % len(behaviours)]
        if kind == "close":
            return respond(sock, 200, body, close=True) and False
        if kind == "chunked":
            return send(sock, head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
                        + chunk(body[:20]) + chunk(body[20:]) + b"0\r\n\r\n")
        if kind == "cut":
            send(sock, head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}) + body[:30])
            return False
        if kind == "500":
            return respond(sock, 500, error_body(500, "boom"))
        if kind == "stray-204":
            return send(sock, head(204, {"Content-Length": str(len(body))}) + body)
        if kind == "silent":
            request.wait(1.5)
            return False
        return respond(sock, 200, body)

    with HostileServer(handle, lifetime=8) as server:
        backend = make_backend(server, 0.6, pool_size=64)
        with ThreadPoolExecutor(64) as pool:
            start = time.monotonic()
            results = list(pool.map(lambda i: backend.execute(f"prompt {i}"), range(64)))
            took = time.monotonic() - start
    assert took < 0.6 + 1.5, took
    for i, result in enumerate(results):
        kind = behaviours[i % len(behaviours)]
        if result.success:
            assert result.stdout == f"answer {i}", (i, kind, result.stdout)
            assert kind in ("ok", "close", "chunked"), (i, kind)
        else:
            _assert_typed_failure(result)
            assert kind not in ("ok", "close", "chunked"), (i, kind, result.error_type, result.error_message)


@pytest.mark.parametrize("value", ["-5", "1e9", "NaN", "inf", "-inf", " 3 ", "1e400", "0x10", "3, 7",
                                   "Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
                                   "Mon, 01 Jan 0001 00:00:00 +2359", "Fri, 31 Dec 9999 23:59:59 -2359",
                                   "\xff\xfe\xfd"])
def test_odd_retry_after_and_reset_headers_give_a_sane_rate_limit(value: str) -> None:
    headers = {"Retry-After": value, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": value,
               "retry-after-ms": value}
    with HostileServer(lambda sock, request: respond(sock, 429, error_body(429, "slow"), headers)) as server:
        result = make_backend(server, 1.0).execute("hi")
    assert (result.error_type, result.exit_code, result.rate_limited) == ("rate_limit", 429, True)
    wait = result.rate_limit_wait_seconds
    assert wait is None or (wait == wait and 0 <= wait <= 2 * 86400), wait


def test_key_never_shown_at_debug_level_through_a_failing_proxy(caplog: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain-http proxy legitimately sees the request; what it answers (echoing the key) must not
    show it at DEBUG, in the result or in the exception of a GET endpoint."""
    caplog.set_level(logging.DEBUG)
    key = "proxy-key." + uuid.uuid4().hex + uuid.uuid4().hex

    def proxy(sock: socket.socket, request: Request) -> bool:
        echoed = f"407 for {request.method} {request.path} with {request.headers.get('authorization')}"
        return respond(sock, 407, {"error": {"message": echoed}}, {"Proxy-Authenticate": "Basic", "X-Echo": key})

    with HostileServer(proxy) as server:
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.setenv("HTTP_PROXY", server.url)
        backend = OpenRouterBackend(model=MODEL, base_url="http://127.0.0.1:9/api/v1", api_key=key,
                                    timeout_seconds=1.0, retry_policy=RetryPolicy(max_attempts=1))
        result = backend.execute("hi")
        try:
            backend.key_info()
        except OpenRouterError as exc:
            raised: Optional[OpenRouterError] = exc
        else:
            raised = None
        proxied = server.request_count
    assert proxied >= 1, "the proxy was not used"
    _assert_typed_failure(result)
    assert raised is not None
    shown = [repr(result), str(result), result.stderr, str(result.error_message), str(raised), repr(raised)]
    shown += [record.getMessage() for record in caplog.records]
    assert not any(key[10:30] in text for text in shown)
