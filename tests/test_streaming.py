"""Streaming against the fake server: deltas, comments, usage shapes, mid-stream errors, drops, early close."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from openrouter_sync import OpenRouterBackend, RetryPolicy, Sheet, run_sheets
from openrouter_sync.testing import FakeOpenRouter, Reply, fake_reply

pytestmark = pytest.mark.socket
MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def b(fake: FakeOpenRouter, key: str) -> OpenRouterBackend:
    return OpenRouterBackend(model=MODEL, base_url=fake.base_url, api_key=key,
                             retry_policy=RetryPolicy(backoff_base=0.01, backoff_max=0.02))


def sse(*events: object, comments: int = 2) -> str:
    out = ": OPENROUTER PROCESSING\n\n" * comments
    for event in events:
        out += f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n"
    return out


def chunk(content: str = "", finish: object = None, **extra: object) -> dict:
    return {"id": "gen-s", "object": "chat.completion.chunk", "model": "openai/gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}], **extra}


USAGE = {"prompt_tokens": 15, "completion_tokens": 6, "total_tokens": 21, "cost": 0.0000057915}


def test_deltas_then_result(b: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    fake.processing_comments = 5
    with b.stream("stream me") as stream:
        deltas = list(stream)
    assert len(deltas) > 1 and "".join(deltas) == fake_reply("stream me", MODEL)
    r = stream.result
    assert r is not None and r.success and r.stdout == "".join(deltas)
    assert (r.finish_reason, r.model, r.provider) == ("stop", MODEL, "FakeProvider")
    assert r.tokens_used and r.cost and r.generation_id.startswith("gen-")
    assert fake.requests[-1].json["stream"] is True


@pytest.mark.parametrize("events", [
    # usage in a last chunk with empty choices
    [chunk("Hello"), chunk(" there", "stop"), {"id": "gen-s", "choices": [], "usage": USAGE}, "[DONE]"],
    # usage in the chunk that repeats the finish_reason
    [chunk("Hello"), chunk(" there"), chunk("", "stop", usage=USAGE), "[DONE]"],
])
def test_both_usage_shapes(b: OpenRouterBackend, fake: FakeOpenRouter, events: list) -> None:
    fake.script(Reply(200, {"Content-Type": "text/event-stream"}, sse(*events)))
    stream = b.stream("x")
    assert "".join(stream) == "Hello there"
    r = stream.result
    assert r.success and (r.input_tokens, r.output_tokens, r.tokens_used) == (15, 6, 21)
    assert r.cost == pytest.approx(0.0000057915) and r.finish_reason == "stop"


@pytest.mark.parametrize("code", [502, "502", "server_error"])
def test_mid_stream_error_keeps_partial_text(b: OpenRouterBackend, fake: FakeOpenRouter, code: object) -> None:
    fake.script(Reply(stream_error_after=2, stream_error_code=code))  # type: ignore[arg-type]
    stream = b.stream("fail midway please")
    text = "".join(stream)
    r = stream.result
    assert not r.success and r.error_type == "provider_error"
    assert r.stdout == text and len(text) == 16
    assert r.exit_code == 502 and "Provider disconnected mid-stream" in r.error_message
    assert r.attempts == 1  # no retry after the first token


def test_dropped_connection_keeps_partial_text(b: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    fake.script(Reply(truncate=True))
    stream = b.stream("this answer will be cut in the middle")
    text = "".join(stream)
    assert text and stream.result.stdout == text
    assert not stream.result.success and stream.result.error_type == "truncated_response"


def test_retries_only_before_the_first_token(b: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    fake.script(Reply(503), Reply(429, {"Retry-After": "0.05"}), Reply(502),
                Reply(200, {"Content-Type": "text/event-stream"}, sse(chunk("", "error", error={"code": 502,
                                                                                                "message": "x"}))))
    stream = b.stream("retry me")
    assert "".join(stream) == fake_reply("retry me", MODEL)
    assert stream.result.attempts == 5 and stream.result.success


def test_error_status_before_stream_is_a_normal_error(b: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    fake.script(Reply(401))
    stream = b.stream("x")
    assert list(stream) == []
    assert stream.result.error_type == "authentication"


def test_closing_early_closes_the_request(b: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    fake.script(Reply(trickle=0.05))
    with b.stream("a long answer that we will not wait for") as stream:
        first = next(stream)
    assert first and stream.result.error_type == "cancelled" and stream.result.stdout == first
    deadline = time.monotonic() + 2
    while fake.requests[-1].status != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.requests[-1].status == 0  # the server saw the connection go away


def test_text_reaches_the_log_as_it_arrives(b: OpenRouterBackend, fake: FakeOpenRouter, tmp_path: Path) -> None:
    fake.script(Reply(trickle=0.02))
    b.set_output_log_path(tmp_path / "live")
    log = tmp_path / "live.stdout.log"
    stream = b.stream("watch the log grow")
    first = next(stream)
    # Written before the stream ended, up to the last delimiter: a trailing word is held back until
    # it is complete, so a key split across deltas is redacted whole.
    assert log.read_text() == first[:first.rfind(" ") + 1] and log.read_text()
    rest = "".join(stream)
    assert log.read_text() == first + rest == stream.result.stdout


def test_missing_key_stream(fake: FakeOpenRouter) -> None:
    b = OpenRouterBackend(base_url=fake.base_url, api_key_env="NO_SUCH_KEY_VAR_X")
    stream = b.stream("x")
    assert list(stream) == [] and stream.result.error_type == "configuration"
    assert fake.request_count == 0


def test_sheets_streamed_to_their_logs(b: OpenRouterBackend, fake: FakeOpenRouter, tmp_path: Path) -> None:
    sheets = [Sheet(f"s{i}", id=f"s{i}", output_log_path=tmp_path / f"s{i}") for i in range(6)]
    results = run_sheets(b, sheets, max_workers=3, stream=True)
    for i, r in enumerate(results):
        assert r.success and (tmp_path / f"s{i}.stdout.log").read_text() == r.stdout == fake_reply(f"s{i}", MODEL)
    assert all(req.json["stream"] for req in fake.requests)
