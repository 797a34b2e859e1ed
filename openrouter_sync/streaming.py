"""Streaming: ``backend.stream(...)`` yields text deltas as they arrive, then exposes the result.

The call is made by the same attempt pipeline as ``execute`` (retries happen only before the
first delta of any kind: text, reasoning, refusal or a tool call); ``Stream`` only consumes the
open ``EventStream`` it is handed. After that, a mid-stream error chunk, a dropped connection or a
passed deadline ends the stream with a failed result that keeps the partial text (and the tool
calls and reasoning so far). Closing the stream early closes the HTTP request, which cancels the
generation (and its billing) at most providers.

Time: ``timeout_seconds`` bounds the wait for the stream's first delta and then each wait for
its next one (a stall: keep-alive comments and empty chunks are no progress), not the stream's
length, so an answer that keeps arriving is never cut by it; the whole call, stream included,
is bounded by the retry policy's ``max_elapsed_seconds``.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Optional

from ._log import redact_data
from .call import CallRecord
from .classify import Outcome, meta_str, network_outcome
from .error_types import ErrorType
from .events import EventStream, StreamEvent, outcome_of_event_stream
from .reporting import StreamLog
from .request import CallSpec
from .result import ExecutionResult, utc_now
from .retry import Interrupted
from .transport import TransportError

__all__ = ["Stream", "StreamEvent", "outcome_of_event_stream"]

Opener = Callable[[], CallRecord]
Finisher = Callable[[ExecutionResult, CallSpec, bool], None]


class Stream:
    """An iterator of text deltas and a context manager; ``result`` is set once it has ended.

        with backend.stream("Tell me a story") as stream:
            for delta in stream:
                print(delta, end="", flush=True)
        print(stream.result.cost)

    ``stream.events()`` yields every delta instead (``StreamEvent``: reasoning, text, refusal and
    tool-call pieces, as they arrive). Use one of the two ways to read a stream, not both.
    """

    def __init__(self, spec: CallSpec, opener: Opener, on_finish: Finisher) -> None:
        self._spec = spec
        self._opener = opener
        self._on_finish = on_finish
        self._record: Optional[CallRecord] = None
        self._reader: Optional[EventStream] = None
        self._log: Optional[StreamLog] = None
        self._t0 = time.monotonic()
        self._whole: Optional[str] = None  # a server that ignored "stream" answered at once: one delta
        self.result: Optional[ExecutionResult] = None

    @classmethod
    def finished(cls, spec: CallSpec, result: ExecutionResult) -> Stream:
        """A stream that ended before it began (e.g. no API key): it yields nothing; ``result`` says why."""
        stream = cls(spec, _never_opened, _ignore)
        stream.result = result
        return stream

    @property
    def text(self) -> str:
        """The text received so far."""
        if self._reader is not None:
            return self._reader.text
        return self.result.stdout if self.result is not None else ""

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        while True:
            event = self._next_event()
            if event is None:
                raise StopIteration
            if event.type == "text" and event.choice == 0:
                return event.text

    def events(self) -> Iterator[StreamEvent]:
        """Every delta as it arrives: ``StreamEvent(type, text, ...)`` with ``type`` one of
        ``"reasoning"``, ``"text"``, ``"refusal"``, ``"tool_call"`` (``text`` then holds a piece of the
        call's arguments; ``tool_index``, ``tool_call_id`` and ``name`` say which call). When the
        stream ends, ``result`` holds the whole answer, ``tool_calls`` folded."""
        while True:
            event = self._next_event()
            if event is None:
                return
            yield event

    def _next_event(self) -> Optional[StreamEvent]:
        if self._record is None and self.result is None:
            self._start()
        if self._whole is not None:
            whole, self._whole = self._whole, None
            if whole:
                return StreamEvent("text", whole)
        if self.result is not None:
            return None
        reader = self._reader
        assert reader is not None
        try:
            event = reader.next_event()
        except TransportError as exc:
            deadline = reader.response.deadline
            if exc.error_type != ErrorType.TIMEOUT:
                what = "the stream broke"
            elif deadline.capped:
                what = "Timeout: the stream ran past max_elapsed_seconds"
            else:
                what = f"Timeout after {self._spec.timeout:g}s: the stream stalled (no delta for that long)"
            self._finish(network_outcome(exc.error_type, f"{what} after {len(reader.text)} characters: {exc}",
                                         sent=True, partial=reader.text))
            return None
        if event is None:
            self._finish(reader.outcome())
            return None
        if self._log is not None and event.type == "text" and event.choice == 0:
            self._log.write(event.text)
        return event

    def _start(self) -> None:
        try:
            record = self._opener()
        except Interrupted:
            self._finish(Outcome(ErrorType.CANCELLED, 1, "cancelled before the first token"))
            raise
        self._record = record
        self._reader = record.outcome.reader
        if self._reader is None:  # failed, or the whole answer came at once
            self._finish(record.outcome)
            assert self.result is not None
            self._whole = self.result.stdout if self.result.success else None
            return
        self._log = StreamLog(self._spec.stdout_log)

    def _finish(self, outcome: Outcome) -> None:
        reader = self._reader
        if reader is not None:
            reader.close()
        if self._log is not None:
            self._log.close()
        record = self._record
        if record is None:
            record = CallRecord(outcome, 0, 0.0, 0, utc_now(), 0.0)
        record.outcome = outcome
        record.duration = time.monotonic() - self._t0
        if reader is not None and outcome.unanswered:
            record.unanswered += 1
        result = record.to_result(self._spec)
        if reader is not None and not result.success:
            result.stdout = reader.text  # the partial answer
            folded = reader.folder
            result.model = meta_str(folded.model) or result.model
            result.generation_id = meta_str(folded.generation_id) or result.generation_id
            result.finish_reason = meta_str(folded.finish_reason) or result.finish_reason
            if result.raw is None and folded.chunks:  # the partial answer, as far as it came
                result.raw = redact_data(folded.as_completion())
                result.tool_calls = folded.tool_calls
                result.reasoning = result.reasoning or "".join(folded.reasoning) or None
        self.result = result
        self._on_finish(result, self._spec, reader is not None)

    def close(self) -> None:
        """Stop: close the HTTP request (cancelling the generation). The result keeps the partial text."""
        if self.result is None:
            where = "before it started" if self._reader is None else f"early after {len(self.text)} characters"
            self._finish(Outcome(ErrorType.CANCELLED, 1, f"the stream was closed {where}"))

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



def _never_opened() -> CallRecord:
    raise RuntimeError("a finished stream is never opened")


def _ignore(result: ExecutionResult, spec: CallSpec, streamed: bool) -> None:
    return None
