"""The SSE decoder and the chunk folder, as pure functions: bytes in, events and outcomes out."""

from __future__ import annotations

import json

import pytest

from openrouter_sync.events import ChunkFolder, outcome_of_event_stream
from openrouter_sync.sse import SSEDecoder, encode_event


def decode_all(data: bytes, cuts: list[int] | None = None, max_event_bytes: int = 1 << 20) -> list[str]:
    decoder = SSEDecoder(max_event_bytes)
    points = [0, *(cuts or []), len(data)]
    events: list[str] = []
    for start, end in zip(points, points[1:]):
        events.extend(decoder.feed(data[start:end]))
    return events + decoder.close()


def test_events_comments_and_fields() -> None:
    data = (b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\n"
            b"event: message\nid: 7\ndata: {\"a\": 1}\n\n"
            b"data:no-space\n\n"
            b"data: line one\ndata: line two\n\n"
            b"retry: 100\n\n"
            b"data: [DONE]\n\n")
    assert decode_all(data) == ['{"a": 1}', "no-space", "line one\nline two", "[DONE]"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    data = newline.join([b"data: a", b"", b": comment", b"data: b", b"", b""])
    assert decode_all(data) == ["a", "b"]


def test_split_anywhere_gives_the_same_events() -> None:
    data = b"data: one\r\n\r\n: keep-alive\r\n\r\ndata: two\r\ndata: 2b\r\n\r\ndata: three\n\n"
    whole = decode_all(data)
    for cut in range(len(data) + 1):
        assert decode_all(data, [cut]) == whole
    assert decode_all(data, list(range(1, len(data)))) == whole


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    assert decode_all(b"data: x\r\n\r\ndata: y\r\n\r\n", [8, 9, 10]) == ["x", "y"]


def test_last_event_without_a_blank_line_is_kept_at_close() -> None:
    assert decode_all(b"data: a\n\ndata: [DONE]") == ["a", "[DONE]"]


def test_an_oversized_event_is_dropped_and_flagged_without_growing() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    events = []
    for _ in range(100):  # 100 kB with no newline at all
        events += decoder.feed(b"x" * 1000)
    events += decoder.feed(b"\n\ndata: small\n\n")
    assert decoder.overflow
    assert events == ["small"]


def test_encode_event_round_trips() -> None:
    for text in ["plain", "two\nlines", "", "ünïcode ✓", '{"json": [1, 2]}']:
        assert decode_all(encode_event(text)) == [text]


def test_undecodable_bytes_are_replaced_not_raised() -> None:
    assert decode_all(b"data: \xff\xfe ok\n\n") == ["\ufffd\ufffd ok"]


def chunk(content: object = None, finish: object = None, **extra: object) -> bytes:
    choice: dict = {"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}
    body = {"id": "gen-1", "model": "m/x", "choices": [choice], **extra}
    return encode_event(json.dumps(body))


def test_folder_builds_the_completion() -> None:
    stream = [b": OPENROUTER PROCESSING\n\n", chunk("Hel"), chunk("lo"),
              chunk(None, "stop", usage={"prompt_tokens": 3, "completion_tokens": 2, "cost": 0.5}),
              b"data: [DONE]\n\n"]
    outcome = outcome_of_event_stream(stream)
    assert outcome.ok and outcome.data is not None
    result = outcome.to_result(requested_model="m/x", duration=0.1, started_at=__import__("datetime").datetime.now())
    assert (result.stdout, result.tokens_used, result.cost, result.finish_reason) == ("Hello", 5, 0.5, "stop")


@pytest.mark.parametrize(("events", "kind"), [
    ([chunk("a"), encode_event('{"error": "boom"}')], "provider_error"),
    ([chunk("a"), encode_event('{"choices": [{"delta": "text"}]}')], "invalid_response"),
    ([chunk("a"), encode_event('{"choices": [{"delta": ["x"]}]}')], "invalid_response"),
    ([chunk("a"), encode_event('{"choices": [{"delta": {"content": 5}}]}')], "invalid_response"),
    ([chunk("a")], "truncated_response"),
    ([chunk("a", "error", error={"code": 502, "message": "Provider disconnected"})], "provider_error"),
    ([b"data: [DONE]\n\n"], "invalid_response"),
])
def test_failed_streams_are_typed(events: list[bytes], kind: str) -> None:
    assert outcome_of_event_stream(events).error_type == kind


def test_error_before_any_text_does_not_say_mid_way() -> None:
    outcome = outcome_of_event_stream([encode_event('{"error": {"code": 429, "message": "slow down"}}')])
    assert outcome.error_type == "provider_error" and "before any text" in outcome.message
    assert outcome.exit_code == 429


def test_lone_surrogates_become_replacement_characters() -> None:
    folder = ChunkFolder()
    folder.fold('{"choices": [{"delta": {"content": "cut emoji \\ud83d"}}]}')
    assert folder.text == ["cut emoji \ufffd"]
