"""The key never leaks: not through a stray newline, a server echoing it (whole or cut), a stream that
splits it across deltas, a log record, a checkpoint, nor credentials in ``base_url`` (issue 12).

Keys are random per test (redaction remembers every key it was given, process-wide), and "leaked"
means: any 8-character fragment of the key's random part shows (the public ``sk-or-v1-`` prefix is
not a secret).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from hostile import (
    HostileServer,
    Request,
    delta_chunk,
    error_body,
    event,
    make_backend,
    ok_handler,
    respond,
    stream_chunked,
)

from openrouter_sync import OpenRouterBackend, RetryPolicy, Sheet, run_sheets
from openrouter_sync.errors import OpenRouterError

pytestmark = pytest.mark.socket
FRAGMENT = 8


def _new_key(shape: str = "openrouter") -> tuple[str, str]:
    """A fresh key and its secret (random) part."""
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    return ("sk-or-v1-" + secret if shape == "openrouter" else "proxy-key." + secret), secret


def _leaks(secret: str, text: str) -> list[str]:
    return [secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1) if secret[i:i + FRAGMENT] in text]


def _shown(result: Any, caplog: pytest.LogCaptureFixture, *extra: Any) -> list[str]:
    """Everything a user could see of a result: fields, repr/str, the exception, log records."""
    texts = [repr(result), str(result), result.stdout, result.stderr, str(result.error_message), result.output]
    if not result.success:
        try:
            result.raise_for_error()
        except OpenRouterError as exc:
            texts += [str(exc), repr(exc)]
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            texts.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            texts.append(record.exc_text)
    return texts + [str(x) for x in extra]


def _assert_no_leak(secret: str, texts: list[str]) -> None:
    for text in texts:
        assert not _leaks(secret, text), f"key fragments {_leaks(secret, text)[:3]} shown in: {text[:300]!r}"


def _checking(key: str) -> Callable[[socket.socket, Request], bool]:
    """Answer 200 when the request carries exactly ``Bearer <key>``, else 401."""

    def handle(sock: socket.socket, request: Request) -> bool:
        if request.headers.get("authorization") != f"Bearer {key}":
            return respond(sock, 401, error_body(401, "No auth credentials found"))
        return ok_handler("authorized")(sock, request) is True

    return handle


# ----- whitespace around the key --------------------------------------------------------------------

@pytest.mark.parametrize("tail", ["\n", "\r\n", "  \n", "\t"])
@pytest.mark.parametrize("source", ["argument", "environment"])
def test_key_with_trailing_whitespace_is_stripped(tail: str, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key, _ = _new_key()
    with HostileServer(_checking(key)) as server:
        if source == "argument":
            backend = make_backend(server, 2.0, key=key + tail)
        else:
            monkeypatch.setenv("HOSTILE_KEY", key + tail)
            backend = OpenRouterBackend(base_url=server.base_url, api_key_env="HOSTILE_KEY", timeout_seconds=2.0,
                                        retry_policy=RetryPolicy(max_attempts=1))
        result = backend.execute("hi")
        assert result.success and result.stdout == "authorized", (result.error_type, result.error_message)
        assert backend.health_check() is True
        backend.key_info()  # does not raise


@pytest.mark.parametrize("inner", ["\n", "\r", "\x00", "\x1b", "\x7f", " "])
@pytest.mark.parametrize("source", ["argument", "environment"])
def test_key_with_an_inner_control_character_is_a_configuration_error(
        inner: str, source: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    if source == "environment" and inner == "\x00":
        pytest.skip("an environment variable cannot hold a NUL")
    caplog.set_level(logging.DEBUG)
    key, secret = _new_key()
    bad = key[:30] + inner + key[30:]
    with HostileServer(ok_handler()) as server:
        if source == "argument":
            backend = make_backend(server, key=bad)
        else:
            monkeypatch.setenv("HOSTILE_KEY", bad)
            backend = OpenRouterBackend(base_url=server.base_url, api_key_env="HOSTILE_KEY", timeout_seconds=1.0,
                                        retry_policy=RetryPolicy(max_attempts=1))
        result = backend.execute("hi")
        with backend.stream("hi") as stream:
            assert list(stream) == []
        streamed = stream.result
    assert server.request_count == 0
    for r in (result, streamed):
        assert (r.success, r.error_type, r.exit_code) == (False, "configuration", 1), (r.error_type, r.error_message)
    _assert_no_leak(secret, _shown(result, caplog, repr(backend), str(backend), streamed, repr(streamed)))
    _assert_no_leak(secret, [str(dataclasses.asdict(result)), str(dataclasses.asdict(streamed))])


# ----- keys echoed back by the server ---------------------------------------------------------------

def _echo_cases(key: str) -> list[str]:
    """Pieces of the key as a server might echo them: whole, cut at the end, cut at the start, a middle."""
    pieces = [key] + [key[:n] for n in (12, 17, 20, 33, 50, len(key) - 1)]
    pieces += [key[-n:] for n in (8, 12, 20, 40)] + [key[15:40]]
    return pieces


PADS = (0, 9, 104, 113, 118, 240, 285, 296)  # where snippet cuts (120, 300 characters, ...) land in the key


def _body(style: str, status: int, text: str) -> tuple[bytes, dict[str, str]]:
    if style == "json-message":
        return respond_json(error_body(status, text))
    if style == "json-raw":
        body = error_body(status, "Provider returned error")
        body["error"]["metadata"] = {"raw": text, "provider_name": "Hostile"}
        return respond_json(body)
    return text.encode(), {"Content-Type": "text/plain" if style == "text" else "text/html"}


def respond_json(body: Any) -> tuple[bytes, dict[str, str]]:
    import json

    return json.dumps(body).encode(), {"Content-Type": "application/json"}


@pytest.mark.parametrize("shape", ["openrouter", "custom"])
@pytest.mark.parametrize("style", ["json-message", "json-raw", "text", "html"])
@pytest.mark.parametrize("status", [401, 500, 200])
def test_error_bodies_echoing_the_key_never_show_a_fragment(
        shape: str, style: str, status: int, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    key, secret = _new_key(shape)
    bodies = [f"{'x' * pad}Invalid API key: {piece} (check your Bearer {piece})"
              for pad in PADS for piece in _echo_cases(key)]
    queue = list(bodies)

    def handle(sock: socket.socket, request: Request) -> bool:
        data, headers = _body(style, status, queue.pop(0))
        return respond(sock, status, data, headers)

    with HostileServer(handle, lifetime=20) as server:
        backend = make_backend(server, 2.0, key=key)
        backend.set_output_log_path(tmp_path / "out")
        results = [backend.execute("hi") for _ in bodies]
    for result in results:
        assert not result.success
        _assert_no_leak(secret, _shown(result, caplog))
    _assert_no_leak(secret, [p.read_text(encoding="utf-8", errors="replace") for p in tmp_path.iterdir()])


def test_mid_stream_error_echoing_the_key_never_shows_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key, secret = _new_key("custom")
    events = [event(delta_chunk("partial")),
              event({"error": {"code": 401, "message": f"{'y' * 100}bad key {key[:40]}"}}), event("[DONE]")]
    with HostileServer(lambda sock, request: stream_chunked(sock, request, events)) as server:
        with make_backend(server, key=key).stream("hi") as stream:
            list(stream)
    assert not stream.result.success
    _assert_no_leak(secret, _shown(stream.result, caplog))


def test_checkpoint_never_holds_an_echoed_key(tmp_path: Path) -> None:
    key, secret = _new_key("custom")

    def handle(sock: socket.socket, request: Request) -> bool:
        return respond(sock, 401, error_body(401, f"Invalid key {key} / {key[-30:]} / {key[:25]}"))

    checkpoint = tmp_path / "run.jsonl"
    with HostileServer(handle) as server:
        results = run_sheets(make_backend(server, key=key), [Sheet("a", id="a"), Sheet("b", id="b")],
                             checkpoint=checkpoint)
    assert [r.error_type for r in results] == ["authentication", "authentication"]
    _assert_no_leak(secret, [checkpoint.read_text(encoding="utf-8")])


# ----- keys split across streamed deltas -------------------------------------------------------------

def _splits(key: str) -> list[list[str]]:
    cuts = [[3], [9], [12, 13], [20, 40], [len(key) - 1]]
    out = []
    for points in cuts:
        edges = [0, *points, len(key)]
        out.append([key[a:b] for a, b in zip(edges, edges[1:])])
    out.append(list(key))  # one character per delta
    out.append([key[i:i + 5] for i in range(0, len(key), 5)])
    return out


@pytest.mark.parametrize("shape", ["openrouter", "custom"])
def test_streamed_output_log_never_holds_a_key_split_across_deltas(shape: str, tmp_path: Path) -> None:
    key, secret = _new_key(shape)
    for n, pieces in enumerate(_splits(key)):
        deltas = ["Your key is ", *pieces, " - keep it safe."]
        events = [event(delta_chunk(d)) for d in deltas] + [event(delta_chunk("", "stop")), event("[DONE]")]

        def handle(sock: socket.socket, request: Request, events: list[bytes] = events) -> bool:
            return stream_chunked(sock, request, events)

        with HostileServer(handle) as server:
            backend = make_backend(server, 2.0, key=key)
            backend.set_output_log_path(tmp_path / f"s{n}")
            with backend.stream("hi") as stream:
                list(stream)
            assert stream.result.success
        log = (tmp_path / f"s{n}.stdout.log").read_text(encoding="utf-8")
        assert log.startswith("Your key is ") and log.endswith(" - keep it safe.")
        assert key not in log and secret not in log, pieces
        assert key not in repr(stream.result)


# ----- credentials in base_url ----------------------------------------------------------------------

PASSWORD = "Hunter2-Very-Secret-Pa55"


@pytest.mark.parametrize("url", [
    f"http://user:{PASSWORD}@127.0.0.1:9/api/v1",
    f"https://user:{PASSWORD}@openrouter.ai/api/v1",
    f"http://{PASSWORD}@127.0.0.1:9/api/v1",
    f"http://127.0.0.1:9/api/v1?token={PASSWORD}",
    f"http://127.0.0.1:9/api/v1#{PASSWORD}",
])
def test_base_url_with_credentials_query_or_fragment_is_refused(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        OpenRouterBackend(base_url=url, api_key="sk-or-v1-" + "b" * 64)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)
