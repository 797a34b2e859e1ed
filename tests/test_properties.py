"""Property-based tests (hypothesis, derandomized): the classifier, the SSE decoder and the stream
outcome never raise and always give a typed answer, whatever bytes a server sends (issue 12).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from openrouter_sync.classify import classify_response
from openrouter_sync.error_types import ErrorType
from openrouter_sync.sse import SSEDecoder
from openrouter_sync.streaming import outcome_of_event_stream

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ERROR_TYPES = {member.value for member in ErrorType}

# ----- strategies -------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
maybe = st.one_of(st.just(None), json_values)


@st.composite
def completion_like(draw: Any) -> Any:
    """A dict shaped (more or less) like a chat completion, with random types where values go."""
    message: Any = draw(st.one_of(
        st.fixed_dictionaries({"role": st.just("assistant"), "content": maybe}, optional={"reasoning": maybe}),
        json_values))
    choice: Any = draw(st.one_of(st.fixed_dictionaries(
        {"message": st.just(message)}, optional={"finish_reason": maybe, "error": maybe, "index": maybe,
                                                 "delta": maybe}), json_values))
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["choices"] = draw(st.one_of(st.lists(st.just(choice), max_size=2), json_values))
    for name in ("error", "usage", "model", "id", "provider"):
        if draw(st.booleans()):
            body[name] = draw(st.one_of(json_values, st.fixed_dictionaries(
                {}, optional={"code": maybe, "message": maybe, "metadata": maybe, "prompt_tokens": maybe,
                              "completion_tokens": maybe, "cost": maybe}))) if name in ("error", "usage") \
                else draw(maybe)
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity come out as the non-JSON tokens servers do send


bodies = st.one_of(
    st.binary(max_size=300),
    completion_like().map(_dumps),
    json_values.map(_dumps),
    st.integers(min_value=1, max_value=3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.text(max_size=100).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from([b'{"choices":[{"message":{"content":"\\ud83d"}}]}', b'{"choices":[{"message":"hello"}]}',
                     b'{"error":"boom"}', b'{"error":{"code":"x","message":null}}', b"\xef\xbb\xbf{}", b"",
                     b'{"choices":[]}', b"null", b"<html>502</html>"]),
)
header_values = st.one_of(st.text(max_size=40), st.sampled_from(
    ["0", "-1", "1e309", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT", "Thu, 01 Jan 9999 00:00:00 GMT",
     "99999999999999999999", "1779321600000", "text/event-stream", "application/json; charset=latin-1", ""]))
header_names = st.one_of(st.text(max_size=20), st.sampled_from(
    ["Retry-After", "retry-after-ms", "X-RateLimit-Reset", "X-RateLimit-Remaining", "Content-Type",
     "X-Generation-Id", "Location", "Content-Encoding"]))
headers = st.dictionaries(header_names, header_values, max_size=5)


# ----- classify_response -------------------------------------------------------------------------------

def _check_outcome(outcome: Any) -> None:
    assert outcome.error_type is None or outcome.error_type in ERROR_TYPES, outcome.error_type
    assert outcome.exit_code is None or isinstance(outcome.exit_code, int)
    if outcome.error_type is not None:
        assert isinstance(outcome.exit_code, int) and outcome.exit_code != 0


@SETTINGS
@given(status=st.integers(min_value=100, max_value=599), headers=headers, content=bodies,
       insensitive=st.booleans())
def test_classify_response_never_raises(status: int, headers: dict[str, str], content: bytes,
                                        insensitive: bool) -> None:
    mapping: Any = CaseInsensitiveDict(headers) if insensitive else headers
    outcome = classify_response(status, mapping, content)
    _check_outcome(outcome)
    if 300 <= status < 400:
        assert outcome.error_type == "redirect" and outcome.exit_code == status
    elif status >= 400:
        assert outcome.error_type is not None and outcome.exit_code == status, (status, outcome.error_type)


@SETTINGS
@given(text=st.text(max_size=50), extra=headers)
def test_classify_response_accepts_a_good_completion(text: str, extra: dict[str, str]) -> None:
    body = {"id": "gen-1", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": text}}]}
    outcome = classify_response(200, CaseInsensitiveDict({**extra, "Content-Type": "application/json"}),
                                _dumps(body))
    assert outcome.error_type is None, (outcome.error_type, text)


# ----- SSEDecoder ---------------------------------------------------------------------------------------

def _decode(pieces: Iterable[bytes], max_event_bytes: Optional[int] = None) -> tuple[list[str], bool]:
    decoder = SSEDecoder() if max_event_bytes is None else SSEDecoder(max_event_bytes=max_event_bytes)
    events: list[str] = []
    for piece in pieces:
        out = decoder.feed(piece)
        assert isinstance(out, list) and all(isinstance(e, str) for e in out)
        events.extend(out)
    tail = decoder.close()
    assert isinstance(tail, list) and all(isinstance(e, str) for e in tail)
    assert isinstance(decoder.overflow, bool)
    return events + tail, decoder.overflow


def _split(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at the given points (repeats allowed: they make empty pieces)."""
    cuts = sorted(min(p, len(data)) for p in points)
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


sse_lines = st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"data: x", b"data:", b"data", b": OPENROUTER PROCESSING", b"event: e", b"id: 1", b"",
                     b"data: [DONE]", b"retry: 10", b"data:  two spaces", b"\xff\xfe", b"data: \xf0\x9f"]),
), max_size=20)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def sse_bytes(draw: Any) -> bytes:
    lines = draw(sse_lines)
    tail: bytes = draw(st.binary(max_size=10))
    return b"".join(line + draw(line_ends) for line in lines) + tail


@SETTINGS
@given(data=st.one_of(st.binary(max_size=500), sse_bytes()), points=st.lists(st.integers(0, 500), max_size=8),
       limit=st.one_of(st.none(), st.integers(min_value=1, max_value=64)))
def test_sse_decoder_never_raises_and_ignores_how_bytes_are_split(data: bytes, points: list[int],
                                                                  limit: Optional[int]) -> None:
    whole = _decode([data], limit)
    assert _decode(_split(data, points), limit) == whole
    assert _decode([data[i:i + 1] for i in range(len(data))], limit) == whole  # byte by byte


@SETTINGS
@given(first=st.binary(max_size=20), second=st.binary(max_size=20))
def test_sse_decoder_empty_feeds_change_nothing(first: bytes, second: bytes) -> None:
    data = first + b"\r" + b"\n" + second
    assert _decode([first + b"\r", b"", b"\n" + second]) == _decode([data])


def _encode(data: str, line_end: bytes) -> bytes:
    """An SSE event carrying ``data`` (one ``data:`` line per line), as a server would send it."""
    return b"".join(b"data: " + line.encode() + line_end for line in data.split("\n")) + line_end


event_texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r"), max_size=40)


@SETTINGS
@given(texts=st.lists(event_texts, max_size=8), ends=st.lists(line_ends, min_size=8, max_size=8),
       comments=st.lists(st.booleans(), min_size=8, max_size=8), points=st.lists(st.integers(0, 400), max_size=6))
def test_sse_decoder_round_trips_encoded_events(texts: list[str], ends: list[bytes], comments: list[bool],
                                                points: list[int]) -> None:
    data = b""
    for i, text in enumerate(texts):
        if comments[i]:
            data += b": OPENROUTER PROCESSING" + ends[i] + ends[i] + b"event: message" + ends[i]
        data += _encode(text, ends[i])
    events, overflow = _decode(_split(data, points))
    assert events == texts and not overflow


@SETTINGS
@given(size=st.integers(min_value=65, max_value=5000), rest=st.lists(st.text(alphabet="xyz", max_size=10),
                                                                     max_size=2),
       after=st.lists(st.text(alphabet="abc", max_size=10), max_size=3))
def test_sse_decoder_drops_an_oversized_event_whole_and_goes_on(size: int, rest: list[str],
                                                                after: list[str]) -> None:
    oversized = b"data: " + b"x" * size + b"\n" + b"".join(b"data: " + r.encode() + b"\n" for r in rest) + b"\n"
    data = oversized + b"".join(_encode(text, b"\n") for text in after)
    events, overflow = _decode([data], max_event_bytes=64)
    assert overflow and events == after  # no piece of the oversized event comes out as an event


# ----- outcome_of_event_stream ----------------------------------------------------------------------------

@st.composite
def chunk_like(draw: Any) -> Any:
    choice = draw(st.one_of(st.fixed_dictionaries({}, optional={"delta": maybe, "finish_reason": maybe,
                                                                "index": maybe, "error": maybe}), json_values))
    body: dict[str, Any] = {"choices": draw(st.one_of(st.just([choice]), json_values))}
    for name in ("error", "usage", "model", "id"):
        if draw(st.booleans()):
            body[name] = draw(maybe)
    return body


stream_events = st.lists(st.one_of(
    chunk_like().map(lambda c: b"data: " + _dumps(c) + b"\n\n"),
    st.sampled_from([b"data: [DONE]\n\n", b": OPENROUTER PROCESSING\n\n", b'data: {"error": "boom"}\n\n',
                     b"data: {not json\n\n", b'data: {"choices":[{"delta":"str"}]}\n\n',
                     b'data: {"choices":[{"delta":{"content":"\\ud83d"}}]}\n\n']),
    st.binary(max_size=60),
), max_size=10)


@SETTINGS
@given(events=stream_events, points=st.lists(st.integers(0, 2000), max_size=6))
def test_outcome_of_event_stream_never_raises(events: list[bytes], points: list[int]) -> None:
    outcome = outcome_of_event_stream(_split(b"".join(events), points))
    _check_outcome(outcome)


@SETTINGS
@given(chunks=st.lists(st.binary(max_size=200), max_size=10))
def test_outcome_of_event_stream_never_raises_on_raw_bytes(chunks: list[bytes]) -> None:
    _check_outcome(outcome_of_event_stream(iter(chunks)))


@SETTINGS
@given(pieces=st.lists(st.text(max_size=10), min_size=1, max_size=6), points=st.lists(st.integers(0, 3000),
                                                                                       max_size=6))
def test_outcome_of_a_well_formed_stream_is_a_success(pieces: list[str], points: list[int]) -> None:
    events: list[dict[str, Any]] = [
        {"id": "gen-1", "model": "m", "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
        for p in pieces]
    events.append({"id": "gen-1", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "cost": 0.0}})
    data = b"".join(b"data: " + _dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    outcome = outcome_of_event_stream(_split(data, points))
    assert outcome.error_type is None, outcome.error_type
