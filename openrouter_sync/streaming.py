"""Streaming: ``backend.stream(...)`` yields text deltas as they arrive, then exposes the result.

The call is made by the same attempt pipeline as ``execute`` (retries happen only before the
first token); ``Stream`` only consumes the open ``EventStream`` it is handed. After the first
token, a mid-stream error chunk, a dropped connection or a passed deadline ends the stream with a
failed result that keeps the partial text. Closing the stream early closes the HTTP request,
which cancels the generation (and its billing) at most providers.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from .call import CallRecord
from .classify import Outcome, meta_str, network_outcome
from .error_types import ErrorType
from .events import EventStream, outcome_of_event_stream
from .reporting import StreamLog
from .request import CallSpec
from .result import ExecutionResult, utc_now
from .retry import Interrupted
from .transport import TransportError

__all__ = ["Stream", "outcome_of_event_stream"]

Opener = Callable[[], CallRecord]
Finisher = Callable[[ExecutionResult, CallSpec, bool], None]


class Stream:
    """An iterator of text deltas and a context manager; ``result`` is set once it has ended.

        with backend.stream("Tell me a story") as stream:
            for delta in stream:
                print(delta, end="", flush=True)
        print(stream.result.cost)
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
        if self._record is None and self.result is None:
            self._start()
        if self._whole is not None:
            whole, self._whole = self._whole, None
            if whole:
                return whole
        if self.result is not None:
            raise StopIteration
        reader = self._reader
        assert reader is not None
        try:
            delta = reader.next_delta()
        except TransportError as exc:
            what = f"Timeout after {self._spec.timeout:g}s: the stream stalled" \
                if exc.error_type == ErrorType.TIMEOUT else "the stream broke"
            self._finish(network_outcome(exc.error_type, f"{what} after {len(reader.text)} characters: {exc}",
                                         sent=True, partial=reader.text))
            raise StopIteration from None
        if delta is None:
            self._finish(reader.outcome())
            raise StopIteration
        if self._log is not None:
            self._log.write(delta)
        return delta

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
