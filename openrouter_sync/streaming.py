"""Streaming: ``backend.stream(...)`` yields text deltas as they arrive, then exposes the result.

Server-sent events: ``data: {chunk}`` lines, blank-line separated, ``: OPENROUTER PROCESSING``
comments while queued, ``data: [DONE]`` at the end. Retries happen only before the first token;
after it, a mid-stream error chunk or a dropped connection ends the stream with a failed result
that keeps the partial text. Closing the stream early closes the HTTP request, which cancels the
generation (and its billing) at most providers.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from typing import IO, TYPE_CHECKING, Any, Deque, Iterator, Optional

import requests

from . import errors as E
from ._log import logger, redact
from .classify import Outcome, classify_response, completion_result, error_code, network_outcome
from .request import CallSpec
from .result import ExecutionResult, utc_now
from .retry import CallState, Interrupted
from .transport import RawResponse

if TYPE_CHECKING:
    import threading

    from .backend import OpenRouterBackend

_READ = 65536


class _Dropped(Exception):
    """The connection broke mid-stream."""


class SSEReader:
    """Reads one open event stream: yields text deltas, keeps everything the final result needs."""

    def __init__(self, raw: RawResponse) -> None:
        assert raw.response is not None and raw.deadline is not None
        self._response = raw.response
        self.deadline = raw.deadline
        self.generation_id = raw.headers.get("X-Generation-Id")
        self._buffer = b""
        self._data: list[str] = []
        self._pending: Deque[str] = deque()
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.model: Optional[str] = None
        self.provider: Optional[str] = None
        self.finish_reason: Optional[str] = None
        self.usage: Optional[dict[str, Any]] = None
        self.error: Optional[dict[str, Any]] = None
        self.done = False
        self.closed = False
        read1 = getattr(raw.response.raw, "read1", None)
        self._chunks: Iterator[bytes] = (
            iter(lambda: read1(_READ, decode_content=True), b"") if read1 is not None
            else raw.response.iter_content(chunk_size=1)  # urllib3 1.x: no read1
        )

    def deltas(self) -> Iterator[str]:
        """Text deltas until the stream ends (``done``), fails (``error``) or drops (raises ``_Dropped``).
        Safe to stop and call again: nothing read is lost in between."""
        while True:
            delta = self.next_delta()
            if delta is None:
                return
            yield delta

    def next_delta(self) -> Optional[str]:
        """The next text delta, or None once the stream has ended."""
        while True:
            while self._pending:
                delta = self._handle(self._pending.popleft())
                if delta:
                    return delta
                if self.done:
                    return None
            if self.done:
                return None
            self._read_more()

    def _read_more(self) -> None:
        try:
            with self.deadline.attached():
                chunk = next(self._chunks, b"")
        except (requests.exceptions.RequestException, OSError, ValueError) as exc:
            raise _Dropped(str(exc)) from None
        except Exception as exc:  # urllib3's ProtocolError and friends
            if type(exc).__module__.startswith("urllib3"):
                raise _Dropped(str(exc)) from None
            raise
        if not chunk:
            self.done = True
            if self.finish_reason is None and self.error is None:
                raise _Dropped("the stream ended before it was complete")
            return
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                if self._data:
                    self._pending.append("\n".join(self._data))
                    self._data = []
            elif line.startswith(b":"):
                continue  # a keep-alive comment (": OPENROUTER PROCESSING")
            elif line.startswith(b"data:"):
                self._data.append(line[5:].lstrip().decode("utf-8", "replace"))

    def _handle(self, data: str) -> str:
        if data.strip() == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = json.loads(data)
        except ValueError:
            logger.warning("ignoring a stream event that is not JSON: %.80s", data)
            return ""
        if not isinstance(chunk, dict):
            return ""
        self.model = chunk.get("model") or self.model
        self.provider = chunk.get("provider") or self.provider
        self.generation_id = chunk.get("id") or self.generation_id
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        delta_text = ""
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                delta_text = content
                self.text.append(content)
            reasoning = delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self.reasoning.append(reasoning)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if isinstance(choice.get("error"), dict):
                self.error = choice["error"]
        if isinstance(chunk.get("error"), dict):
            self.error = chunk["error"]
        if self.error is not None or self.finish_reason == "error":
            self.error = self.error or {"message": "the stream ended with finish_reason 'error'"}
            self.done = True
        return delta_text

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.deadline.finish()  # first: the connection stops being ours to cut
            self._response.close()

    def outcome(self) -> Outcome:
        """The verdict once the stream has ended."""
        if self.error is not None:
            code, exit_code = error_code(self.error)
            message = str(self.error.get("message") or "no details")
            return Outcome(E.PROVIDER_ERROR, exit_code, f"stream failed mid-way (code {code}): {message}", 200,
                           data=self.as_completion(), generation_id=self.generation_id,
                           partial_text="".join(self.text))
        return Outcome(None, 0, status=200, data=self.as_completion(), generation_id=self.generation_id)

    def as_completion(self) -> dict[str, Any]:
        """The stream folded into the shape of a non-streamed completion."""
        message = {"role": "assistant", "content": "".join(self.text),
                   "reasoning": "".join(self.reasoning) or None}
        body: dict[str, Any] = {"id": self.generation_id, "model": self.model, "provider": self.provider,
                                "choices": [{"index": 0, "finish_reason": self.finish_reason, "message": message}]}
        if self.usage is not None:
            body["usage"] = self.usage
        return body


class Stream:
    """An iterator of text deltas and a context manager; ``result`` is set once it has ended.

        with backend.stream("Tell me a story") as stream:
            for delta in stream:
                print(delta, end="", flush=True)
        print(stream.result.cost)
    """

    def __init__(self, backend: OpenRouterBackend, spec: CallSpec,
                 cancel: Optional[threading.Event] = None) -> None:
        self._backend = backend
        self._spec = spec
        self._cancel = cancel
        self._started_at = utc_now()
        self._t0 = time.monotonic()
        self._reader: Optional[SSEReader] = None
        self._iter: Optional[Iterator[str]] = None
        self._attempts = 1
        self._state: Optional[CallState] = None
        self._log: Optional[IO[str]] = None
        self._first: list[str] = []
        self._opened: Optional[Outcome] = None
        self.result: Optional[ExecutionResult] = None

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._reader.text) if self._reader is not None else (self.result.stdout if self.result else "")

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        if self.result is not None:
            raise StopIteration
        if self._iter is None:
            self._start()
            if self.result is not None:
                raise StopIteration
        assert self._iter is not None and self._reader is not None
        try:
            delta = next(self._iter)
        except StopIteration:
            self._finish(self._reader.outcome())
            raise
        except _Dropped as exc:
            self._finish(network_outcome(E.TRUNCATED_RESPONSE, f"the stream broke after {len(self.text)} "
                                                               f"characters: {exc}"), partial=True)
            raise StopIteration from None
        self._write(delta)
        return delta

    def _start(self) -> None:
        backend, spec = self._backend, self._spec
        key = backend._key()
        if not key:
            self.result = backend.run_spec(spec)  # the configuration failure, logged and reported as usual
            return
        self._state = state = CallState(self._cancel, backend.activity)
        try:
            outcome: Outcome = backend._retrying(self._attempt, state, spec.body(stream=True), spec.timeout)
        except Interrupted:
            self._finish(Outcome(E.CANCELLED, 1, "cancelled before the first token"))
            raise
        self._attempts = backend._retrying.statistics.get("attempt_number", 1)
        if self._reader is None or outcome is not self._opened:
            self._finish(outcome)
            return
        if spec.stdout_log is not None:
            try:
                spec.stdout_log.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(spec.stdout_log, "a", encoding="utf-8")  # noqa: SIM115 (closed in _finish)
            except OSError as exc:
                logger.warning("could not open output log %s: %s", spec.stdout_log, exc)
        self._iter = itertools.chain(self._first, self._reader.deltas())

    def _attempt(self, state: CallState, body: bytes, timeout: float) -> Outcome:
        """One try at opening the stream, up to its first token (the part that may be retried)."""
        backend = self._backend
        sent = backend._send(state, body, timeout, stream=True, extra_headers={"Accept": "text/event-stream"})
        if isinstance(sent, Outcome):
            return sent
        raw, ticket = sent
        if raw.response is None:  # an error status: an ordinary JSON error body
            outcome = classify_response(raw.status, raw.headers, raw.content)
            backend._observe(outcome, ticket)
            return outcome
        backend.throttle.on_answer(ticket)
        content_type = raw.headers.get("Content-Type", "")
        if "text/event-stream" not in content_type:  # a server that ignored "stream": read it whole
            with raw.deadline.attached():  # type: ignore[union-attr]
                content = raw.response.content
            raw.deadline.finish()  # type: ignore[union-attr]
            return classify_response(raw.status, raw.headers, content)
        reader = SSEReader(raw)
        first: list[str] = []
        try:
            for delta in reader.deltas():
                first.append(delta)
                break
        except _Dropped as exc:
            reader.close()
            return network_outcome(E.TRUNCATED_RESPONSE, f"the stream broke before the first token: {exc}")
        if not first:  # ended (or failed) before any text: nothing was shown, so this may be retried
            reader.close()
            return reader.outcome()
        self._reader, self._first = reader, first
        self._opened = Outcome(None, 0, status=200)
        return self._opened

    def _write(self, delta: str) -> None:
        if self._log is not None:
            self._log.write(redact(delta))
            self._log.flush()

    def _finish(self, outcome: Outcome, partial: bool = False) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        spec = self._spec
        duration = time.monotonic() - self._t0
        waited = self._state.waited if self._state is not None else 0.0
        if outcome.ok and outcome.data is not None:
            result = completion_result(outcome.data, spec.model, duration, self._started_at, self._attempts,
                                       waited, outcome.generation_id)
        else:
            result = outcome.to_result(requested_model=spec.model, duration=duration, started_at=self._started_at,
                                       attempts=self._attempts, waited=waited)
            if self._reader is not None:
                result.stdout = "".join(self._reader.text)
                data = self._reader.as_completion()
                result.model = data.get("model") or spec.model
                result.generation_id = data.get("id") or result.generation_id
        result.sheet_id = spec.sheet_id
        self.result = result
        self._backend._report(result, spec, stdout_logged=self._reader is not None)

    def close(self) -> None:
        """Stop: close the HTTP request (cancelling the generation). The result keeps the partial text."""
        if self.result is None:
            if self._reader is None:
                self._finish(Outcome(E.CANCELLED, 1, "the stream was closed before it started"))
            else:
                self._finish(Outcome(E.CANCELLED, 1, f"the stream was closed early after {len(self.text)} "
                                                     "characters"))

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def until_done(self) -> ExecutionResult:
        """Read the rest of the stream and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

