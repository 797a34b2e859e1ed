"""A server-sent-events decoder: bytes in, the ``data`` of each complete event out.

Pure and incremental: each byte is scanned once, however the stream is split, so a body that
never sends a newline costs linear time, and a line or event longer than ``max_event_bytes`` is
dropped (``overflow`` is set) instead of growing without bound. Lines end with CRLF, LF or CR;
lines starting with ``:`` are comments (``: OPENROUTER PROCESSING``); only the ``data`` field
matters here. It never raises.
"""

from __future__ import annotations

import re

_EOL = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    """Feed it chunks as they arrive; it returns the events they complete."""

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self.max_event_bytes = max_event_bytes
        self.overflow = False  # an event was too large and was dropped
        self._line = bytearray()  # the current, unfinished line
        self._data: list[bytes] = []  # the data lines of the current event
        self._size = 0  # bytes in _data
        self._skip_line = False  # dropping the rest of an over-long line
        self._skip_event = False  # dropping the rest of an oversized event, up to its blank line
        self._after_cr = False  # the last chunk ended with CR: a leading LF is its pair
        self._at_start = True  # a UTF-8 byte order mark may open the stream (the spec strips one)

    def feed(self, chunk: bytes) -> list[str]:
        """The ``data`` of every event this chunk completes, in order."""
        events: list[str] = []
        if not chunk:
            return events
        if self._at_start:
            if len(self._line) + len(chunk) < 3 and b"\xef\xbb\xbf".startswith(bytes(self._line) + chunk):
                self._line += chunk  # could still be the start of a BOM
                return events
            pending = bytes(self._line) + chunk
            self._line.clear()
            self._at_start = False
            chunk = pending[3:] if pending.startswith(b"\xef\xbb\xbf") else pending
            if not chunk:
                return events
        start = 0
        if self._after_cr and chunk[:1] == b"\n":
            start = 1
        self._after_cr = False
        length = len(chunk)
        while start < length:
            match = _EOL.search(chunk, start)
            if match is None:
                self._append(chunk[start:])
                break
            self._append(chunk[start:match.start()])
            if match.group() == b"\r" and match.end() == length:
                self._after_cr = True  # a CRLF may be split across chunks
            self._end_line(events)
            start = match.end()
        return events

    def close(self) -> list[str]:
        """At the end of the stream: the last event, if the server did not end it with a blank line."""
        events: list[str] = []
        self._at_start = False
        if self._line or self._skip_line:
            self._end_line(events)
        self._dispatch(events)
        return events

    def _append(self, piece: bytes) -> None:
        if self._skip_line or not piece:
            return
        if len(self._line) + len(piece) + self._size > self.max_event_bytes:
            self.overflow = True
            self._skip_line = self._skip_event = True
            self._line.clear()
            self._data.clear()
            self._size = 0
            return
        self._line += piece

    def _end_line(self, events: list[str]) -> None:
        if self._skip_line:
            self._skip_line = False
            return
        line = bytes(self._line)
        self._line.clear()
        if self._skip_event:
            self._skip_event = bool(line)  # the blank line ends the dropped event
            return
        if not line:
            self._dispatch(events)
            return
        if line.startswith(b":"):
            return  # a comment: a keep-alive
        name, colon, value = line.partition(b":")
        if name != b"data":
            return  # event, id, retry and unknown fields do not matter here
        if colon and value.startswith(b" "):
            value = value[1:]
        self._data.append(value)
        self._size += len(value) + 1

    def _dispatch(self, events: list[str]) -> None:
        if self._data:
            events.append(b"\n".join(self._data).decode("utf-8", "replace"))
            self._data = []
            self._size = 0


def encode_event(data: str) -> bytes:
    """One event carrying ``data`` (each of its lines a ``data:`` line), as a server would send it."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return b"".join(b"data: " + line.encode("utf-8") + b"\n" for line in lines) + b"\n"
