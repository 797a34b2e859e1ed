"""Checkpoints: one JSON line per finished sheet, flushed as it finishes; read back to resume."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import IO, Any, Optional, Union

from ._log import logger
from .result import ExecutionResult


def load_checkpoint(path: Union[str, Path], tag: Optional[str] = None) -> dict[str, ExecutionResult]:
    """The successful results recorded in a checkpoint file, by sheet id.

    Lines that do not parse (a torn last line after a crash) are skipped, so their sheets run
    again. A later record for the same id wins. Records written under another ``tag`` (say,
    by an offline run) are not reused.
    """
    done: dict[str, ExecutionResult] = {}
    path = Path(path)
    if not path.exists():
        return done
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                key = str(record["id"])
                if record.get("tag") != tag:
                    continue
                result = ExecutionResult.from_dict(record["result"])
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("checkpoint %s: line %d ignored (%s); that sheet will run again", path, number,
                               type(exc).__name__)
                continue
            if result.success:
                result.from_checkpoint = True
                done[key] = result
            else:
                done.pop(key, None)
    return done


class CheckpointWriter:
    """Appends records from many threads; each line is written whole and flushed at once."""

    def __init__(self, path: Union[str, Path], fsync: bool = False, tag: Optional[str] = None) -> None:
        self.path = Path(path)
        self._tag = tag
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                needs_newline = handle.read(1) != b"\n"
        self._handle: Optional[IO[str]] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if needs_newline:  # a torn last line: end it so the next record starts clean
            self._handle.write("\n")
            self._handle.flush()

    def write(self, key: str, index: int, result: ExecutionResult, extra: Optional[dict[str, Any]] = None) -> None:
        data = result.to_dict()
        data.pop("from_checkpoint", None)
        record: dict[str, Any] = {"id": key, "index": index, "result": data}
        if self._tag is not None:
            record["tag"] = self._tag
        if extra:
            record.update(extra)
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._handle is None:
                return
            self._handle.write(line)
            self._handle.flush()
            if self._fsync:
                os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
