"""Calls never raise for what a server sends, and lose nothing: redirects, malformed and nested JSON,
odd stream chunks, lone surrogates, TLS; non-finite settings are refused up front (issue 12).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hostile import (
    KEY,
    HostileServer,
    Request,
    as_bytes,
    completion,
    delta_chunk,
    echo_handler,
    event,
    gzip_bytes,
    lone_surrogate_completion,
    make_backend,
    nested_completion,
    nested_json,
    ok_handler,
    raw_delta_chunk,
    redirect,
    respond,
    send,
    sse_answer,
    stream_chunked,
    tls_context,
)

from openrouter_sync import OpenRouterBackend, RetryPolicy, Sheet, run_sheets
from openrouter_sync.error_types import ErrorType
from openrouter_sync.errors import OpenRouterError

pytestmark = pytest.mark.socket
ERROR_TYPES = {member.value for member in ErrorType}


def _stream(backend: Any, prompt: str = "hi") -> tuple[str, Any]:
    with backend.stream(prompt) as stream:
        text = "".join(stream)  # iterating never raises
    return text, stream.result


# ----- redirects are never followed, and never raise --------------------------------------------------

REDIRECTS = [301, 302, 303, 307, 308]


def _redirecting(status: int, relative: bool = False):  # type: ignore[no-untyped-def]
    def handle(sock: socket.socket, request: Request) -> bool:
        if request.path.startswith("/elsewhere"):
            return respond(sock, 200, completion("followed!"))
        port = sock.getsockname()[1]
        location = "/elsewhere/chat/completions" if relative else f"http://127.0.0.1:{port}/elsewhere/x"
        return redirect(sock, request, status, location)

    return handle


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("status", REDIRECTS)
def test_redirect_is_a_failed_result_and_is_not_followed(status: int, relative: bool) -> None:
    with HostileServer(_redirecting(status, relative)) as server:
        result = make_backend(server).execute("hi")
    assert (result.success, result.error_type, result.exit_code) == (False, "redirect", status)
    assert [r.path for r in server.requests] == ["/api/v1/chat/completions"]  # nothing forwarded


def test_cookies_are_never_kept() -> None:
    """A ``Set-Cookie`` (from a proxy or the provider) is never stored by the transport's session
    (so a long run does not collect them); the next request carries no ``Cookie`` header."""
    from openrouter_sync.transport import NoRedirectSession

    def handle(sock: socket.socket, request: Request) -> bool:
        return respond(sock, 200, completion("ok"), headers={"Set-Cookie": "sid=abc123; Path=/; Max-Age=3600"})

    with HostileServer(handle) as server:
        backend = make_backend(server)
        assert backend.execute("one").success and backend.execute("two").success
        session = NoRedirectSession()
        assert session.get(server.base_url + "/models", timeout=5).status_code == 200
        assert session.get(server.base_url + "/models", timeout=5).status_code == 200
    assert len(session.cookies) == 0
    assert all("cookie" not in r.headers for r in server.requests)


@pytest.mark.parametrize("status", [302, 307])
def test_redirect_on_a_stream_is_a_failed_result(status: int) -> None:
    with HostileServer(_redirecting(status)) as server:
        text, result = _stream(make_backend(server))
    assert text == "" and (result.success, result.error_type, result.exit_code) == (False, "redirect", status)
    assert server.request_count == 1


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirect_on_the_get_endpoints(status: int) -> None:
    with HostileServer(_redirecting(status)) as server:
        backend = make_backend(server)
        assert backend.health_check() is False
        for call in (backend.list_models, backend.key_info):
            with pytest.raises(OpenRouterError) as caught:
                call()
            assert caught.value.result.error_type == "redirect"
    assert all(not r.path.startswith("/elsewhere") for r in server.requests)


@pytest.mark.parametrize("body", [nested_json(), b'{"data": "x"}', b'{"data": [1, null, "x", {"id": 5}]}',
                                  b"not json", b'{"data": {"limit": "abc", "usage": [1], "label": {}}}', b"null",
                                  b'{"data": [{"id": "m", "pricing": "free", "context_length": "big"}]}'],
                         ids=["nested", "data-str", "data-junk", "not-json", "key-junk", "null", "model-junk"])
def test_get_endpoints_never_raise_anything_untyped(body: bytes) -> None:
    with HostileServer(lambda sock, request: respond(sock, 200, body)) as server:
        backend = make_backend(server)
        assert isinstance(backend.health_check(), bool)
        for call in (backend.list_models, backend.key_info):
            try:
                call()
            except OpenRouterError:
                pass  # typed: fine; anything else (AttributeError, TypeError, RecursionError) fails the test


# ----- malformed answers ---------------------------------------------------------------------------

@pytest.mark.parametrize("body", [nested_json(), nested_completion(), b'{"a":' * 50_000 + b"1" + b"}" * 50_000],
                         ids=["nested-list", "nested-content", "nested-object"])
def test_deeply_nested_json_is_an_invalid_response(body: bytes) -> None:
    with HostileServer(lambda sock, request: respond(sock, 200, body)) as server:
        result = make_backend(server).execute("hi")
    assert (result.success, result.error_type, result.exit_code) == (False, "invalid_response", 502)


@pytest.mark.parametrize("body", [
    {"choices": [{"message": "hello"}]},
    {"choices": [{"message": ["hello"]}]},
    {"choices": "hello"},
    {"choices": [None]},
    {"choices": [{"message": {"content": {"text": "hello"}}}]},
    [1, 2, 3],
    "just a string",
], ids=["message-str", "message-list", "choices-str", "choice-null", "content-dict", "list", "string"])
def test_completion_of_the_wrong_shape_is_an_invalid_response(body: Any) -> None:
    with HostileServer(lambda sock, request: respond(sock, 200, body)) as server:
        result = make_backend(server).execute("hi")
    assert not result.success and result.error_type == "invalid_response", (result.error_type, result.stdout)


@pytest.mark.parametrize("delta", ["hello", ["hello"], 42, None], ids=["str", "list", "int", "null"])
def test_stream_chunk_with_an_odd_delta_ends_the_stream_failed(delta: Any) -> None:
    events = [event(delta_chunk("Hi ")), event(raw_delta_chunk(delta)), event(delta_chunk("there", "stop")),
              event("[DONE]")]
    with HostileServer(lambda sock, request: stream_chunked(sock, request, events)) as server:
        text, result = _stream(make_backend(server))
    if delta is None:  # a null delta carries nothing: tolerated
        assert result.success or result.error_type == "invalid_response"
        return
    assert not result.success and result.error_type == "invalid_response", result.error_type
    assert text.startswith("Hi ") and result.stdout == text


@pytest.mark.parametrize("error", ["boom", {"message": "boom"}, {"code": "server_error", "message": "boom"}, 502],
                         ids=["string", "no-code", "string-code", "int"])
def test_mid_stream_error_of_any_shape_is_a_provider_error(error: Any) -> None:
    events = [event(delta_chunk("Partial")), event({"error": error}), event(delta_chunk(" more", "stop")),
              event("[DONE]")]
    with HostileServer(lambda sock, request: stream_chunked(sock, request, events)) as server:
        _, result = _stream(make_backend(server))
    assert not result.success and result.error_type == "provider_error", result.error_type
    assert result.stdout.startswith("Partial")


def test_stream_of_non_json_events_never_raises() -> None:
    events = [event(delta_chunk("ok ")), b"data: {not json\n\n", b"data: \xff\xfe\n\n", event("[DONE]")]
    with HostileServer(lambda sock, request: stream_chunked(sock, request, events)) as server:
        text, result = _stream(make_backend(server))
    # Undecided whether a non-JSON event fails the stream or is skipped (with a warning): either is typed.
    assert text == result.stdout == "ok "
    assert result.success or result.error_type in ("invalid_response", "provider_error")


# ----- settings that are not finite -----------------------------------------------------------------

BAD_TIMEOUTS = [float("inf"), 1e12, float("nan"), -1.0, 0.0]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_non_finite_timeout_is_refused_at_construction(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout_seconds"):
        OpenRouterBackend(base_url="http://127.0.0.1:9/api/v1", api_key=KEY, timeout_seconds=timeout)


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_non_finite_timeout_is_refused_per_call(timeout: float) -> None:
    with HostileServer(ok_handler()) as server:
        backend = make_backend(server)
        with pytest.raises(ValueError, match="timeout_seconds"):
            backend.execute("hi", timeout_seconds=timeout)
        with pytest.raises(ValueError, match="timeout_seconds"):
            backend.stream("hi", timeout_seconds=timeout)
    assert server.request_count == 0


@pytest.mark.parametrize(("option", "value"), [("top_p", float("nan")), ("seed", float("inf")),
                                               ("frequency_penalty", float("-inf"))])
def test_non_finite_request_options_are_refused_and_nothing_is_sent(option: str, value: Any) -> None:
    with HostileServer(ok_handler()) as server:
        with pytest.raises(ValueError, match=option):
            make_backend(server).execute("hi", **{option: value})
    assert server.request_count == 0


@pytest.mark.parametrize(("option", "value"), [("top_p", float("nan")), ("seed", float("inf"))])
def test_non_finite_request_options_are_refused_when_the_stream_is_made(option: str, value: Any) -> None:
    """At ``stream()``, like ``execute``: not later, from inside the ``for`` loop that "never raises"."""
    with HostileServer(ok_handler()) as server:
        with pytest.raises(ValueError, match=option):
            make_backend(server).stream("hi", **{option: value})
    assert server.request_count == 0


def test_non_finite_nested_option_is_refused_and_nothing_is_sent() -> None:
    with HostileServer(ok_handler()) as server:
        with pytest.raises(ValueError):
            make_backend(server).execute("hi", provider={"max_price": {"prompt": float("nan")}})
    assert server.request_count == 0


@pytest.mark.parametrize(("field", "value"), [
    *[(name, float("nan")) for name in ("backoff_base", "backoff_max", "jitter", "max_wait_seconds",
                                        "max_elapsed_seconds")],
    ("backoff_base", float("inf")), ("jitter", float("inf")),  # (an infinite cap might mean "no cap": not tested)
])
def test_retry_policy_refuses_non_finite_numbers(field: str, value: float) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**changes)


@pytest.mark.parametrize("value", [float("nan"), -1.0])
def test_requests_per_minute_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        OpenRouterBackend(base_url="http://127.0.0.1:9/api/v1", api_key=KEY, requests_per_minute=value)


# ----- nothing lost: lone surrogates ------------------------------------------------------------------

def _surrogate_handler(every: bool = False):  # type: ignore[no-untyped-def]
    def handle(sock: socket.socket, request: Request) -> bool:
        prompt = request.prompt or ""
        if every or prompt.endswith("-2"):
            return respond(sock, 200, lone_surrogate_completion("Cut emoji ", f" for {prompt}"))
        return respond(sock, 200, completion(f"echo: {prompt}"))

    return handle


def test_lone_surrogate_answer_is_a_success_with_a_replacement_character() -> None:
    with HostileServer(_surrogate_handler(every=True)) as server:
        result = make_backend(server).execute("hi")
    assert result.success, (result.error_type, result.error_message)
    assert result.stdout == "Cut emoji \ufffd for hi"
    result.stdout.encode("utf-8")  # storable anywhere
    repr(result)


def test_lone_surrogate_answer_is_written_to_the_output_log(tmp_path: Path) -> None:
    with HostileServer(_surrogate_handler(every=True)) as server:
        backend = make_backend(server)
        backend.set_output_log_path(tmp_path / "logs" / "run")
        result = backend.execute("hi")  # does not raise
    assert result.success
    assert "\ufffd" in (tmp_path / "logs" / "run.stdout.log").read_text(encoding="utf-8")


def test_lone_surrogate_answer_is_streamed_and_logged(tmp_path: Path) -> None:
    events = [event(delta_chunk("Cut emoji ")), b'data: {"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}\n\n',
              event(delta_chunk(" end", "stop")), event("[DONE]")]
    with HostileServer(lambda sock, request: stream_chunked(sock, request, events)) as server:
        backend = make_backend(server)
        backend.set_output_log_path(tmp_path / "s")
        text, result = _stream(backend)
    assert result.success and text == result.stdout == "Cut emoji \ufffd end"
    assert (tmp_path / "s.stdout.log").read_text(encoding="utf-8") == text


def test_lone_surrogate_does_not_lose_the_batch(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.jsonl"
    sheets = [Sheet(f"prompt-{i}", id=f"sheet-{i}") for i in range(6)]
    with HostileServer(_surrogate_handler()) as server:
        backend = make_backend(server)
        results = run_sheets(backend, sheets, max_workers=3, checkpoint=checkpoint)
        assert [r.success for r in results] == [True] * 6
        assert "\ufffd" in results[2].stdout and results[0].stdout == "echo: prompt-0"
        lines = [json.loads(line) for line in checkpoint.read_text(encoding="utf-8").splitlines() if line.strip()]
        text = json.dumps(lines)
        assert all(f"sheet-{i}" in text for i in range(6))
        sent = server.request_count
        again = run_sheets(backend, sheets, max_workers=3, checkpoint=checkpoint)  # the resume sends nothing
        assert [r.stdout for r in again] == [r.stdout for r in results] and server.request_count == sent


# ----- protocol garbage ---------------------------------------------------------------------------------

_OK = as_bytes(completion("fine"))
GARBAGE = {
    "not-http": b"HELLO THERE\r\n\r\n",
    "binary-noise": bytes(range(256)) * 4,
    "bad-status": b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    "bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n" + _OK,
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n" + _OK,
    "conflicting-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 9\r\n\r\n" + _OK,
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + _OK,
    "too-many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"Content-Length: 0\r\n\r\n",
    "header-line-too-long": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    "short-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n" + _OK,
    "no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "empty-200": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "eof-before-status": b"",
}
LENIENT = {"bad-content-length", "negative-content-length"}


@pytest.mark.parametrize("name", list(GARBAGE))
@pytest.mark.parametrize("mode", ["execute", "stream"])
def test_protocol_garbage_is_a_typed_failure(name: str, mode: str) -> None:
    def handle(sock: socket.socket, request: Request) -> None:
        send(sock, GARBAGE[name])  # then close

    with HostileServer(handle) as server:
        backend = make_backend(server, 1.0)
        start = time.monotonic()
        result = backend.execute("hi") if mode == "execute" else _stream(backend)[1]
        took = time.monotonic() - start
    assert took < 1.0 + 1.0
    if name in LENIENT and result.success:
        return  # http.client ignores a malformed Content-Length and reads to the close: the body is whole
    assert not result.success and result.error_type in ERROR_TYPES, (result.error_type, result.error_message)
    assert isinstance(result.exit_code, int) and result.exit_code != 0


@pytest.mark.parametrize("preface", [b"HTTP/1.1 100 Continue\r\n\r\n", b""], ids=["100-continue", "plain"])
@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
def test_old_or_chatty_but_valid_http_works(preface: bytes, version: bytes) -> None:
    def handle(sock: socket.socket, request: Request) -> None:  # no length: the body ends at close
        send(sock, preface + version + b" 200 OK\r\nContent-Type: application/json\r\n\r\n" + _OK)

    with HostileServer(handle) as server:
        result = make_backend(server, 1.0).execute("hi")
    assert result.success and result.stdout == "fine", (result.error_type, result.error_message)


def test_stream_answered_with_a_plain_completion_never_raises() -> None:
    with HostileServer(lambda sock, request: respond(sock, 200, completion("not streamed"))) as server:
        text, result = _stream(make_backend(server))
    assert text == result.stdout
    assert (result.success and text == "not streamed") or result.error_type == "invalid_response", result.error_type


def test_stream_that_ends_without_done_or_finish_keeps_its_text() -> None:
    events = [event(delta_chunk("Hel")), event(delta_chunk("lo"))]
    with HostileServer(lambda sock, request: stream_chunked(sock, request, events)) as server:
        text, result = _stream(make_backend(server))
    assert text == result.stdout == "Hello"
    assert not result.success and result.error_type == "truncated_response", result.error_type


# ----- compressed answers -------------------------------------------------------------------------------

def test_gzip_encoded_answer_is_decoded() -> None:
    data = gzip_bytes(as_bytes(completion("squeezed")))

    def handle(sock: socket.socket, request: Request) -> bool:
        return respond(sock, 200, data, {"Content-Encoding": "gzip"})

    with HostileServer(handle) as server:
        result = make_backend(server).execute("hi")
    assert result.success and result.stdout == "squeezed", (result.error_type, result.error_message)


def test_gzip_encoded_chunked_stream_is_decoded() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    pieces = [compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in sse_answer(["squ", "eezed"])]
    pieces.append(compressor.flush())

    def handle(sock: socket.socket, request: Request) -> bool:
        return stream_chunked(sock, request, pieces, headers={"Content-Encoding": "gzip"})

    with HostileServer(handle) as server:
        text, result = _stream(make_backend(server))
    assert result.success and text == "squeezed", (result.error_type, result.error_message)


@pytest.mark.parametrize("encoding", ["x-unknown", "br", "gzip"])
def test_body_that_does_not_match_its_encoding_never_raises(encoding: str) -> None:
    def handle(sock: socket.socket, request: Request) -> bool:  # plain JSON, labelled as compressed
        return respond(sock, 200, completion("plain"), {"Content-Encoding": encoding})

    with HostileServer(handle) as server:
        result = make_backend(server).execute("hi")
        _, streamed = _stream(make_backend(server))
    for r in (result, streamed):
        assert r.success or r.error_type in ("invalid_response", "truncated_response", "connection"), r.error_type


# ----- TLS --------------------------------------------------------------------------------------------

def test_tls_with_a_private_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # read when the backend is made
    with HostileServer(ok_handler("secure hello"), tls=tls_context(ca)) as server:
        assert server.base_url.startswith("https://")
        backend = make_backend(server, 2.0)
        result = backend.execute("hi")
        assert result.success and result.stdout == "secure hello", (result.error_type, result.error_message)
        text, streamed = _stream(backend)
        assert streamed.success and text == "secure hello"


def test_tls_with_an_untrusted_certificate_is_a_connection_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    trustme = pytest.importorskip("trustme")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with HostileServer(ok_handler(), tls=tls_context(trustme.CA())) as server:
        result = make_backend(server, 2.0).execute("hi")
    assert not result.success and result.error_type == "connection" and result.exit_code == 503
    assert server.request_count == 0


# ----- what already held: CRLF in base_url, 64 threads ---------------------------------------------------

def test_crlf_in_base_url_is_refused_or_encoded() -> None:
    with HostileServer(ok_handler()) as server:
        bad = server.base_url + "/x\r\nX-Injected: yes"
        try:
            backend = OpenRouterBackend(base_url=bad, api_key=KEY, timeout_seconds=1,
                                        retry_policy=RetryPolicy(max_attempts=1))
        except ValueError:
            return
        backend.execute("hi")
    assert all("x-injected" not in r.headers for r in server.requests)


def test_64_threads_get_their_own_answers() -> None:
    with HostileServer(echo_handler(delay=0.01), lifetime=20) as server:
        backend = make_backend(server, 5.0, pool_size=64)
        barrier = threading.Barrier(64)

        def call(i: int) -> tuple[int, str]:
            barrier.wait(5)
            return i, backend.execute(f"prompt {i}").stdout

        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(call, range(64)))
    assert answers == [(i, f"echo: prompt {i}") for i in range(64)]
    assert server.request_count == 64
