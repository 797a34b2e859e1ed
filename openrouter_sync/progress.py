"""Progress for a run: a ``tqdm.auto`` bar when tqdm is installed, a one-line text meter otherwise, or a callback."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TextIO, Union

from .result import ExecutionResult


@dataclass
class ProgressInfo:
    """A snapshot handed to a progress callback after each finished sheet."""

    done: int
    total: Optional[int]
    succeeded: int
    failed: int
    retried: int  # finished sheets that needed more than one attempt
    tokens: int
    cost: float
    elapsed: float
    retrying: int = 0  # sheets waiting to retry at this moment
    priced: int = 0  # finished sheets whose answer reported a cost (``cost`` sums theirs)
    restored: int = 0  # sheets restored from a checkpoint (counted in ``done``, not in tokens or cost)

    @property
    def cost_text(self) -> str:
        """``$0.0123``, or ``$?`` while no answer has reported a cost."""
        return f"${self.cost:.4f}" if self.priced else "$?"

    def line(self) -> str:
        """The one-line text meter: ``[done/total] ok N failed N ... tokens N $cost elapsed``."""
        total = "?" if self.total is None else str(self.total)
        restored = f" restored {self.restored}" if self.restored else ""
        return (f"[{self.done}/{total}] ok {self.succeeded} failed {self.failed}{restored} retrying {self.retrying} "
                f"retried {self.retried} tokens {self.tokens} {self.cost_text} {self.elapsed:.1f}s")


ProgressArg = Union[bool, Callable[[ProgressInfo], Any], None]


class Progress:
    """Counts results and shows them the way the caller asked."""

    def __init__(self, total: Optional[int], mode: ProgressArg, file: Optional[TextIO] = None,
                 min_interval: float = 0.2, activity: Any = None) -> None:
        self._activity = activity
        self.info = ProgressInfo(0, total, 0, 0, 0, 0, 0.0, 0.0)
        self._start = time.monotonic()
        self._callback = mode if callable(mode) else None
        self._file = file or sys.stderr
        self._text = False
        self._bar: Any = None
        self._last = 0.0
        self._shown = 0  # the ``done`` count the text meter last showed
        self._min_interval = min_interval
        self._tty = bool(getattr(self._file, "isatty", lambda: False)())  # else: whole lines, less often
        if not self._tty:
            self._min_interval = max(min_interval, 2.0)
        if mode is True:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self._text = True
            else:
                self._bar = tqdm(total=total, unit="sheet", dynamic_ncols=True, file=self._file)

    def update(self, result: ExecutionResult) -> None:
        info = self.info
        info.done += 1
        if result.success:
            info.succeeded += 1
        else:
            info.failed += 1
        if result.from_checkpoint:
            info.restored += 1
        else:
            info.retried += result.attempts > 1
            info.tokens += result.tokens_used or 0
            if result.cost is not None:
                info.cost += result.cost
                info.priced += 1
        info.elapsed = time.monotonic() - self._start
        info.retrying = getattr(self._activity, "retrying", 0)
        if self._callback is not None:
            self._callback(dataclasses.replace(info))  # a snapshot the callback may keep
        if self._bar is not None:
            self._bar.set_postfix_str(f"failed={info.failed} retrying={info.retrying} retried={info.retried} "
                                      f"tokens={info.tokens} {info.cost_text}", refresh=False)
            self._bar.update(1)
        elif self._text:
            now = time.monotonic()
            if now - self._last >= self._min_interval or info.done == info.total:
                self._last = now
                self._shown = info.done
                self._file.write("\r" + info.line() if self._tty else info.line() + "\n")
                self._file.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._text and self.info.done:
            if self._tty:
                self._file.write(("" if self._shown == self.info.done else "\r" + self.info.line()) + "\n")
            elif self._shown != self.info.done:
                self._file.write(self.info.line() + "\n")
            self._file.flush()
            self._text = False
