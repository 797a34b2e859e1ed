"""What a finished call leaves behind: a log record, and the output log files of its sheet."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import IO, Optional

from ._files import open_append
from ._log import logger, redact, secret_spans
from .request import CallSpec
from .result import ExecutionResult

#: A streamed log holds back the trailing run of token characters (and a "Bearer " before it)
#: until a delimiter arrives, so a key split across deltas is redacted whole.
_TRAILING_TOKEN = re.compile(r"(?:(?i:bearer)\s+)?[^\s\"',;(){}\[\]<>]*$")
HOLDBACK_LIMIT = 4096  # a "token" longer than this is no key: write it out


def write_log(path: Optional[Path], text: str) -> None:
    """Append redacted text to an output log, creating its folder; a failure is logged, never raised."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_append(str(path)) as handle:
            handle.write(redact(text))
    except OSError as exc:
        logger.warning("could not write output log %s: %s", path, exc)


class StreamLog:
    """Appends a streamed answer to its log as it arrives, redacting across delta boundaries."""

    def __init__(self, path: Optional[Path]) -> None:
        self._pending = ""
        self._handle: Optional[IO[str]] = None
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open_append(str(path))
        except OSError as exc:
            logger.warning("could not open output log %s: %s", path, exc)

    def write(self, delta: str) -> None:
        if self._handle is None:
            return
        raw = self._pending + delta
        match = _TRAILING_TOKEN.search(raw, max(0, len(raw) - HOLDBACK_LIMIT))
        cut = match.start() if match is not None else len(raw)  # a key still arriving is in the tail
        for start, end in sorted(secret_spans(raw), reverse=True):  # never cut through a whole key
            if start < cut < end:
                cut = start
        self._pending = raw[cut:]
        self._emit(redact(raw[:cut]))

    def close(self) -> None:
        if self._handle is not None:
            self._emit(redact(self._pending))
            self._handle.close()
            self._handle = None

    def _emit(self, text: str) -> None:
        if text and self._handle is not None:
            try:
                self._handle.write(text)
                self._handle.flush()
            except OSError as exc:
                logger.warning("could not write output log: %s", exc)


def report(result: ExecutionResult, spec: CallSpec, stdout_logged: bool = False) -> None:
    """Log the outcome and write the sheet's output logs (``stdout_logged``: a stream already did)."""
    if result.success:
        if not stdout_logged:
            write_log(spec.stdout_log, result.stdout)
        if logger.isEnabledFor(logging.INFO):
            logger.info("ok %s in %.2fs: %s tokens, $%s, %d attempt(s)", result.model, result.duration_seconds,
                        result.tokens_used, "?" if result.cost is None else f"{result.cost:.6f}", result.attempts)
    else:
        write_log(spec.stderr_log, result.stderr)
        logger.warning("failed %s in %.2fs after %d attempt(s): %s", spec.model, result.duration_seconds,
                       result.attempts, result.error_message)
