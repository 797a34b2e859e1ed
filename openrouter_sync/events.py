"""Reading a streamed completion: SSE events in, text deltas and a final ``Outcome`` out.

``ChunkFolder`` is pure (event data in, deltas out, whatever shapes arrive); ``EventStream``
drives it from an open ``transport.Response``, whose reads go through the transport's single
error mapping and the attempt's deadline.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Iterable, Optional

from ._log import logger
from .classify import Outcome, classify_response, clean_text, loads, network_outcome, provider_error
from .error_types import ErrorType
from .sse import SSEDecoder
from .transport import Response, TransportError

MAX_EVENT_BYTES = 1 << 20


class ChunkFolder:
    """Folds ``chat.completion.chunk`` events into one completion, tolerating any shape."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.model: Optional[str] = None
        self.provider: Optional[str] = None
        self.generation_id: Optional[str] = None
        self.system_fingerprint: Optional[str] = None
        self.finish_reason: Optional[str] = None
        self.usage: Optional[dict[str, Any]] = None
        self.error: Any = None
        self.invalid: Optional[str] = None
        self.done = False  # [DONE], a finish_reason, an error, or a malformed chunk ended it
        self.chunks = 0

    def fold(self, data: str) -> str:
        """Take one event's data; return its text delta ("" if none)."""
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
        delta = self._choice(chunk)
        if chunk.get("error"):
            self.error = chunk["error"]
        if self.error is not None or self.finish_reason == "error":
            self.error = self.error if self.error is not None else {"message": "finish_reason 'error'"}
            self.done = True
        return delta

    def _choice(self, chunk: dict[str, Any]) -> str:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return ""
        choice = choices[0]
        if not isinstance(choice, dict):
            return self._malformed("a choice that is not an object")
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        if choice.get("error"):
            self.error = choice["error"]
        delta = choice.get("delta", {})
        if delta is None:
            return ""
        if not isinstance(delta, dict):
            return self._malformed(f"a delta that is a {type(delta).__name__}, not an object")
        reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self.reasoning.append(clean_text(reasoning))
        content = delta.get("content")
        if content is None:
            return ""
        if not isinstance(content, str):
            return self._malformed(f"content that is a {type(content).__name__}, not text")
        content = clean_text(content)
        if content:
            self.text.append(content)
        return content

    def _malformed(self, what: str) -> str:
        self.invalid = f"the stream sent {what}"
        self.done = True
        return ""

    def as_completion(self) -> dict[str, Any]:
        """The stream folded into the shape of a non-streamed completion."""
        message = {"role": "assistant", "content": "".join(self.text), "reasoning": "".join(self.reasoning) or None}
        body: dict[str, Any] = {"id": self.generation_id, "model": self.model, "provider": self.provider,
                                "system_fingerprint": self.system_fingerprint,
                                "choices": [{"index": 0, "finish_reason": self.finish_reason, "message": message}]}
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
        return Outcome(None, 0, status=200, data=data, generation_id=self.generation_id)


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
    """An open streamed answer: ``next_delta()`` until None, then ``outcome()``.

    Network failures surface as ``TransportError`` from ``next_delta`` (mapped by the transport);
    the deadline is also checked between events, since folding many tiny events is CPU work the
    watchdog cannot cut. A body that holds no event at all but parses as JSON (a server that
    labels a plain answer or error as an event stream) is judged as that JSON.
    """

    def __init__(self, response: Response) -> None:
        self.response = response
        self.folder = ChunkFolder()
        self.folder.generation_id = response.headers.get("X-Generation-Id")
        self._decoder = SSEDecoder(MAX_EVENT_BYTES)
        self._chunks = response.chunks()
        self._ready: Deque[str] = deque()
        self._pushed: Optional[str] = None
        self._head: Optional[bytearray] = bytearray()  # the body while no event came (None after one did)
        self.ended = False
        self.overflow = False

    @property
    def text(self) -> str:
        return "".join(self.folder.text)

    def unread(self, delta: str) -> None:
        """Give a delta back: the next ``next_delta`` returns it again."""
        self._pushed = delta

    def next_delta(self) -> Optional[str]:
        """The next text delta, or None once the stream has ended."""
        if self._pushed is not None:
            delta, self._pushed = self._pushed, None
            return delta
        folder, ready, deadline = self.folder, self._ready, self.response.deadline
        while not self.ended:
            folded = 0
            while ready and not folder.done:
                delta = folder.fold(ready.popleft())
                if delta:
                    return delta
                folded += 1
                if folded % 256 == 0 and deadline.passed:
                    raise TransportError(ErrorType.TIMEOUT, "the deadline passed while reading the stream", True)
            if folder.done:
                self.ended = True
                break
            chunk = next(self._chunks, None)
            events = self._decoder.close() if chunk is None else self._decoder.feed(chunk)
            self._keep_head(chunk, bool(events))
            ready.extend(events)
            if self._decoder.overflow:
                self.overflow = self.ended = True
            elif chunk is None and not ready:
                self.ended = True
        return None

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
        if head is not None and not self.folder.chunks and bytes(head.strip()[:1]) in (b"{", b"["):
            return classify_response(self.response.status, {}, bytes(head))
        return self.folder.outcome(self.overflow)

    def close(self) -> None:
        """Close the connection (which cancels the generation, and its billing, at most providers)."""
        self.response.close()
