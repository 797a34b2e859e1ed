"""Reading a streamed completion: SSE events in, text deltas and a final ``Outcome`` out.

``ChunkFolder`` is pure (event data in, deltas out, whatever shapes arrive); ``EventStream``
drives it from an open ``transport.Response``, whose reads go through the transport's single
error mapping and the attempt's deadline.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from typing import Any, Deque, Iterable, NamedTuple, Optional

from ._log import logger
from .classify import (
    REASONING_PARTS,
    Outcome,
    classify_response,
    clean_text,
    loads,
    message_text,
    network_outcome,
    parse_completion,
    part_texts,
    provider_error,
    refused,
)
from .error_types import ErrorType
from .sse import SSEDecoder
from .transport import Response, TransportError

MAX_EVENT_BYTES = 1 << 20


class StreamEvent(NamedTuple):
    """One delta of a streamed answer, as it arrived (``Stream.events()`` yields them).

    ``type`` is ``"text"``, ``"reasoning"``, ``"refusal"`` or ``"tool_call"``; ``text`` is the
    piece that arrived (for a tool call: a piece of its ``arguments``). ``choice`` is the choice's
    index (``n > 1``). A tool call's event names its position ``tool_index`` and, once known, its
    ``tool_call_id`` and function ``name``.
    """

    type: str
    text: str
    choice: int = 0
    tool_index: Optional[int] = None
    tool_call_id: Optional[str] = None
    name: Optional[str] = None


class _Choice:
    """What the chunks said of one choice so far."""

    __slots__ = ("text", "reasoning", "refusal", "tool_calls", "finish_reason", "native_finish_reason",
                 "logprobs", "annotations", "images", "reasoning_details", "role")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: Optional[str] = None
        self.native_finish_reason: Optional[str] = None
        self.logprobs: Optional[dict[str, Any]] = None
        self.annotations: Optional[list[Any]] = None
        self.images: Optional[list[Any]] = None
        self.reasoning_details: Optional[list[Any]] = None
        self.role = "assistant"

    def as_choice(self, index: int) -> dict[str, Any]:
        text = "".join(self.text)  # no text beside tool calls or a refusal: null, as a plain answer says
        message: dict[str, Any] = {"role": self.role,
                                   "content": text if text or not (self.tool_calls or self.refusal) else None,
                                   "reasoning": "".join(self.reasoning) or None}
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        for name in ("annotations", "images", "reasoning_details"):
            value = getattr(self, name)
            if value is not None:
                message[name] = value
        choice: dict[str, Any] = {"index": index, "finish_reason": self.finish_reason, "message": message}
        if self.native_finish_reason is not None:
            choice["native_finish_reason"] = self.native_finish_reason
        if self.logprobs is not None:
            choice["logprobs"] = self.logprobs
        return choice


class ChunkFolder:
    """Folds ``chat.completion.chunk`` events into one completion, tolerating any shape.

    Everything a chunk's choices carry is kept: text (a string or a list of parts), reasoning,
    refusal, tool calls (folded by ``index``: ``id``, ``type`` and the function's ``name`` as first
    given, ``arguments`` concatenated), logprobs, annotations, images, reasoning details, every
    choice of an ``n > 1`` answer. With ``events`` set (a deque), each delta is also appended
    there as a ``StreamEvent``.
    """

    def __init__(self, events: Optional[Deque[StreamEvent]] = None) -> None:
        self.first = _Choice()
        self.others: dict[int, _Choice] = {}
        self.text = self.first.text
        self.reasoning = self.first.reasoning
        self.events = events
        self.model: Optional[str] = None
        self.provider: Optional[str] = None
        self.generation_id: Optional[str] = None
        self.system_fingerprint: Optional[str] = None
        self.usage: Optional[dict[str, Any]] = None
        self.error: Any = None
        self.invalid: Optional[str] = None
        self.done = False  # [DONE], a finish_reason, an error, or a malformed chunk ended it
        self.chunks = 0

    @property
    def finish_reason(self) -> Optional[str]:
        return self.first.finish_reason

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The first choice's tool calls so far, in index order."""
        calls = self.first.tool_calls
        return [calls[i] for i in sorted(calls)]

    def fold(self, data: str) -> str:
        """Take one event's data; return its text delta of the first choice ("" if none)."""
        if data.strip() == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = loads(data)
        except (ValueError, RecursionError):
            logger.warning("ignoring a stream event that is not JSON: %.80s", data)
            return ""
        if not isinstance(chunk, dict):
            return ""
        self.chunks += 1
        for name in ("model", "provider", "system_fingerprint"):
            value = chunk.get(name)
            if isinstance(value, str) and value:
                setattr(self, name, value)
        if isinstance(chunk.get("id"), str):
            self.generation_id = chunk["id"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        delta = ""
        if isinstance(choices, list):
            for choice in choices:
                got = self._choice(choice)
                if got:
                    delta += got
        if chunk.get("error"):
            self.error = chunk["error"]
        if self.error is not None or self.finish_reason == "error":
            self.error = self.error if self.error is not None else {"message": "finish_reason 'error'"}
            self.done = True
        return delta

    def _choice(self, choice: Any) -> str:
        if not isinstance(choice, dict):
            return self._malformed("a choice that is not an object")
        index = choice.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            index = 0
        state = self.first if index == 0 else self.others.setdefault(index, _Choice())
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            state.finish_reason = finish
        native = choice.get("native_finish_reason")
        if isinstance(native, str):
            state.native_finish_reason = native
        if choice.get("error"):
            self.error = choice["error"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            _extend_logprobs(state, logprobs)
        delta = choice.get("delta", {})
        if delta is None:
            return ""
        if not isinstance(delta, dict):
            return self._malformed(f"a delta that is a {type(delta).__name__}, not an object")
        if len(delta) > 1 or "content" not in delta:
            self._extras(state, index, delta)
        content = delta.get("content")
        if content is None:
            return ""
        if isinstance(content, str):
            content = clean_text(content)
        else:
            text = message_text(content) if isinstance(content, list) else None
            if text is None:
                return self._malformed(f"content that is a {type(content).__name__}, not text")
            content = text
        if content:
            state.text.append(content)
            if self.events is not None:
                self.events.append(StreamEvent("text", content, index))
        return content if index == 0 else ""

    def _extras(self, state: _Choice, index: int, delta: dict[str, Any]) -> None:
        """The rest of a delta: reasoning, refusal, tool calls, annotations, images, reasoning details."""
        events = self.events
        for kind in ("reasoning", "refusal"):
            piece = delta.get(kind)
            if isinstance(piece, str) and piece:
                piece = clean_text(piece)
                getattr(state, kind).append(piece)
                if events is not None:
                    events.append(StreamEvent(kind, piece, index))
        content = delta.get("content")
        if isinstance(content, list) and not delta.get("reasoning"):  # reasoning sent as content parts
            thinking = clean_text("".join(part_texts(content, REASONING_PARTS)))
            if thinking:
                state.reasoning.append(thinking)
                if events is not None:
                    events.append(StreamEvent("reasoning", thinking, index))
        role = delta.get("role")
        if isinstance(role, str) and role:
            state.role = role
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if isinstance(call, dict):
                    self._tool_call(state, index, position, call)
        for name in ("annotations", "images", "reasoning_details"):
            value = delta.get(name)
            if isinstance(value, list) and value:
                kept = getattr(state, name)
                setattr(state, name, (kept or []) + value)

    def _tool_call(self, state: _Choice, choice: int, position: int, call: dict[str, Any]) -> None:
        calls = state.tool_calls
        index = call.get("index")
        call_id = call.get("id")
        if not isinstance(index, int) or isinstance(index, bool):
            # No index (some providers): a new id starts a new call, else it continues the last one.
            known = [i for i, c in calls.items() if c.get("id") == call_id] if call_id else []
            index = known[0] if known else (max(calls) + 1 if calls and call_id else max(calls, default=position))
        folded = calls.get(index)
        if folded is None:
            folded = calls[index] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        if isinstance(call_id, str) and call_id and not folded["id"]:
            folded["id"] = call_id
        if isinstance(call.get("type"), str):
            folded["type"] = call["type"]
        function = call.get("function")
        piece = ""
        if isinstance(function, dict):
            target = folded["function"]
            name = function.get("name")
            if isinstance(name, str) and name and name != target["name"]:
                target["name"] = name if not target["name"] else target["name"] + name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                piece = arguments
                target["arguments"] += arguments
            elif isinstance(arguments, dict):  # a provider that sends the arguments as an object
                piece = json.dumps(arguments)
                target["arguments"] += piece
        if self.events is not None:
            self.events.append(StreamEvent("tool_call", piece, choice, index, folded["id"],
                                           folded["function"]["name"] or None))

    def _malformed(self, what: str) -> str:
        self.invalid = f"the stream sent {what}"
        self.done = True
        return ""

    def as_completion(self) -> dict[str, Any]:
        """The stream folded into the shape of a non-streamed completion."""
        choices = [self.first.as_choice(0)]
        choices.extend(self.others[i].as_choice(i) for i in sorted(self.others))
        body: dict[str, Any] = {"id": self.generation_id, "object": "chat.completion", "model": self.model,
                                "provider": self.provider, "system_fingerprint": self.system_fingerprint,
                                "choices": choices}
        if self.usage is not None:
            body["usage"] = self.usage
        return body

    def outcome(self, overflow: bool = False) -> Outcome:
        """The verdict once the stream has ended (at [DONE], a finish, an error, or end of file)."""
        text = "".join(self.text)
        data = self.as_completion()
        where = f"after {len(text)} characters" if text else "before any text"
        if overflow:
            return network_outcome(ErrorType.RESPONSE_TOO_LARGE, f"the stream sent an event over {MAX_EVENT_BYTES} "
                                   f"bytes {where}", sent=True, partial=text)
        if self.invalid is not None:
            return Outcome(ErrorType.INVALID_RESPONSE, 502, f"{self.invalid} {where}", 200, data=data,
                           generation_id=self.generation_id, partial_text=text)
        if self.error is not None:
            return provider_error(self.error, data, text, self.generation_id, {}, where=f"the stream failed {where}")
        if not self.done and self.finish_reason is None:
            return network_outcome(ErrorType.TRUNCATED_RESPONSE, f"the stream ended {where} without finishing",
                                   sent=True, partial=text)
        if not self.chunks:
            return Outcome(ErrorType.INVALID_RESPONSE, 502, "the stream ended without a single completion chunk",
                           200, generation_id=self.generation_id)
        completion = parse_completion(data)
        if completion is not None and completion.refusal is not None:
            return refused(completion, data, self.generation_id, None)
        return Outcome(None, 0, status=200, data=data, generation_id=self.generation_id, completion=completion)


def _extend_logprobs(state: _Choice, logprobs: dict[str, Any]) -> None:
    kept = state.logprobs
    if kept is None:
        state.logprobs = {key: list(value) if isinstance(value, list) else value for key, value in logprobs.items()}
        return
    for key, value in logprobs.items():
        if isinstance(value, list) and isinstance(kept.get(key), list):
            kept[key].extend(value)
        elif value is not None:
            kept[key] = value


def outcome_of_event_stream(chunks: Iterable[bytes]) -> Outcome:
    """The outcome of a whole event stream given as byte chunks (pure; for tests and replays)."""
    decoder, folder = SSEDecoder(MAX_EVENT_BYTES), ChunkFolder()
    for chunk in chunks:
        for data in decoder.feed(chunk):
            folder.fold(data)
            if folder.done:
                return folder.outcome()
        if decoder.overflow:
            return folder.outcome(overflow=True)
    for data in decoder.close():
        folder.fold(data)
    return folder.outcome(overflow=decoder.overflow)


class EventStream:
    """An open streamed answer: ``next_event()`` (or ``next_delta()``: text only) until None, then ``outcome()``.

    Network failures surface as ``TransportError`` (mapped by the transport); the deadline is also
    checked between events, since folding many tiny events is CPU work the watchdog cannot cut.
    Every delta (text, reasoning, refusal, a tool call) renews the attempt's deadline (a streamed
    attempt's deadline is a stall timer, capped: see ``Deadline.renew``); keep-alive comments and
    chunks that carry nothing do not, so a server that only says ``: OPENROUTER PROCESSING`` (or
    sends empty chunks) for ``timeout_seconds`` is cut as stalled. A body that holds no event at all
    but parses as JSON (a server that labels a plain answer or error as an event stream) is judged
    as that JSON.
    """

    def __init__(self, response: Response) -> None:
        self.response = response
        self._events: Deque[StreamEvent] = deque()
        self.folder = ChunkFolder(self._events)
        self.folder.generation_id = response.headers.get("X-Generation-Id")
        self._decoder = SSEDecoder(MAX_EVENT_BYTES)
        self._chunks = response.chunks()
        self._ready: Deque[str] = deque()
        self._head: Optional[bytearray] = bytearray()  # the body while no event came (None after one did)
        self.ended = False
        self.overflow = False

    @property
    def text(self) -> str:
        return "".join(self.folder.text)

    def unread(self, event: StreamEvent) -> None:
        """Give an event back: the next ``next_event`` returns it again."""
        self._events.appendleft(event)

    def next_delta(self) -> Optional[str]:
        """The next text delta of the first choice, or None once the stream has ended."""
        while True:
            event = self.next_event()
            if event is None:
                return None
            if event.type == "text" and event.choice == 0:
                return event.text

    def next_event(self) -> Optional[StreamEvent]:
        """The next delta of any kind, or None once the stream has ended."""
        events = self._events
        if events:
            return events.popleft()
        folder, ready, deadline = self.folder, self._ready, self.response.deadline
        while not self.ended:
            folded = 0
            while ready and not folder.done:
                folder.fold(ready.popleft())
                if events:
                    deadline.renew()  # progress: a delta arrived
                    return events.popleft()
                folded += 1
                if folded % 256 == 0 and deadline.passed:
                    raise TransportError(ErrorType.TIMEOUT, "the deadline passed while reading the stream", True)
            if folder.done:
                self.ended = True
                break
            chunk = next(self._chunks, None)
            events_data = self._decoder.close() if chunk is None else self._decoder.feed(chunk)
            self._keep_head(chunk, bool(events_data))
            ready.extend(events_data)
            if self._decoder.overflow:
                self.overflow = self.ended = True
            elif chunk is None and not ready:
                self.ended = True
        return events.popleft() if events else None

    def _keep_head(self, chunk: Optional[bytes], evented: bool) -> None:
        head = self._head
        if head is None:
            return
        if evented or (chunk is not None and len(head) + len(chunk) > MAX_EVENT_BYTES):
            self._head = None
        elif chunk is not None:
            head += chunk

    def outcome(self) -> Outcome:
        head = self._head
        headers = self.response.headers
        if head is not None and not self.folder.chunks and bytes(head.strip()[:1]) in (b"{", b"["):
            return classify_response(self.response.status, headers, bytes(head))
        return dataclasses.replace(self.folder.outcome(self.overflow), headers=headers)

    def close(self) -> None:
        """Close the connection (which cancels the generation, and its billing, at most providers)."""
        self.response.close()
