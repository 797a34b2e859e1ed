"""The fake server's own wire behaviour, checked with raw sockets and plain ``requests`` (not the backend)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest
import requests

from openrouter_sync.testing import FakeOpenRouter, Reply, fake_reply

pytestmark = pytest.mark.socket
MODEL = "openai/gpt-4o-mini"


def _post(sock: socket.socket, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def _read_chunked_response(reader: Any) -> tuple[dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a chunked body from a socket file; return headers and body."""
    status = reader.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    headers: dict[str, str] = {}
    while True:
        line = reader.readline().decode().strip()
        if not line:
            break
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
    body = b""
    while True:
        size = int(reader.readline().strip(), 16)
        if size == 0:
            assert reader.readline() == b"\r\n"
            return headers, body
        body += reader.read(size)
        assert reader.readline() == b"\r\n"


def _events(body: bytes) -> list[Any]:
    out = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _stream_payload(model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "stream me"}], "stream": True, **extra}


def test_streams_are_chunked_and_keep_the_connection_open() -> None:
    with FakeOpenRouter(max_lifetime=30, processing_comments=3) as fake, \
            socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(2):  # the same connection serves a second stream after the first ends
            _post(sock, _stream_payload())
            headers, body = _read_chunked_response(reader)
            assert headers["content-type"] == "text/event-stream" and headers.get("connection") != "close"
            assert body.count(b": OPENROUTER PROCESSING\n\n") == 3
            events = _events(body)
            assert events[-1] == "[DONE]"
            chunks = events[:-1]
            assert all(c["system_fingerprint"] == "fp_fake" and c["object"] == "chat.completion.chunk" for c in chunks)
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
            assert text == fake_reply("stream me", MODEL)
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["cost"] > 0
        assert fake.connection_count == 1 and fake.request_count == 2


@pytest.mark.parametrize(("model", "server_mode", "options", "usage_sent"), [
    (MODEL, "always", None, True),                                   # OpenRouter: always
    (MODEL + ":compat", "always", None, False),                      # OpenAI-compatible: only when asked
    (MODEL + ":compat", "always", {"include_usage": True}, True),
    (MODEL, "requested", None, False),
    (MODEL, "requested", {"include_usage": False}, False),
    (MODEL, "requested", {"include_usage": True}, True),
])
def test_stream_usage_follows_stream_options(model: str, server_mode: str, options: Any, usage_sent: bool) -> None:
    extra = {} if options is None else {"stream_options": options}
    with FakeOpenRouter(max_lifetime=30, stream_usage=server_mode) as fake, \
            socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        _post(sock, _stream_payload(model, **extra))
        _, body = _read_chunked_response(sock.makefile("rb"))
    chunks = _events(body)[:-1]
    assert any("usage" in c for c in chunks) is usage_sent
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" if not usage_sent else chunks[-1]["choices"] == []


def test_mid_stream_error_ends_the_chunked_body_cleanly() -> None:
    with FakeOpenRouter(max_lifetime=30) as fake, socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        fake.script(Reply(stream_error_after=1))
        _post(sock, _stream_payload())
        _, body = _read_chunked_response(sock.makefile("rb"))
    last = _events(body)[-1]
    assert last["error"]["code"] == 502 and last["choices"][0]["finish_reason"] == "error"


def test_scripted_bodies_can_be_sent_chunked() -> None:
    sse = ": OPENROUTER PROCESSING\n\ndata: {\"choices\": []}\n\ndata: [DONE]\n\n"
    with FakeOpenRouter(max_lifetime=30) as fake, socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        fake.script(Reply(200, {"Content-Type": "text/event-stream"}, sse, chunked=True))
        _post(sock, _stream_payload())
        _, body = _read_chunked_response(sock.makefile("rb"))
    assert body.decode() == sse


@pytest.mark.parametrize(("model", "free"), [(MODEL, False), ("meta-llama/llama-3.3-70b-instruct:free", True),
                                             ("someone/unknown-model:free", True), ("someone/unknown", False)])
def test_free_models_cost_nothing(model: str, free: bool) -> None:
    with FakeOpenRouter(max_lifetime=30) as fake:
        answer = requests.post(f"{fake.base_url}/chat/completions", headers={"Authorization": "Bearer k"},
                               json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
        cost = answer.json()["usage"]["cost"]
        gen = requests.get(f"{fake.base_url}/generation", params={"id": answer.headers["X-Generation-Id"]},
                           headers={"Authorization": "Bearer k"}, timeout=5).json()["data"]
    assert (cost == 0) is free and gen["total_cost"] == cost
    assert answer.json()["system_fingerprint"] == "fp_fake"


def test_stats_url_works_in_process() -> None:
    with FakeOpenRouter(max_lifetime=30) as fake:
        requests.post(f"{fake.base_url}/chat/completions", headers={"Authorization": "Bearer k"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
        for url in (fake.stats_url, f"{fake.base_url}/_fake/stats"):
            stats = requests.get(url, timeout=5).json()
            assert stats["request_count"] == 1 and stats["answers_per_prompt"] == {"hi": 1}


@pytest.mark.subprocess
def test_the_server_process_prints_a_working_stats_url() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "openrouter_sync.testing", "--max-lifetime", "30"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        base_url = proc.stdout.readline().strip()
        stats_line = proc.stdout.readline().strip()
        assert base_url.endswith("/api/v1") and stats_line.startswith("stats: ")
        stats_url = stats_line.split(" ", 1)[1]
        requests.get(f"{base_url}/models", timeout=5)
        assert requests.get(stats_url, timeout=5).json()["request_count"] == 1
        proc.stdin.close()
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
