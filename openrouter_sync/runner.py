"""Run many sheets on a thread pool: in order, resumable from a checkpoint, interruptible, with progress.

``run_sheets`` returns one result per input, in input order. ``iter_sheets`` yields
``(index, sheet, result)`` as sheets finish, holding only a bounded window in memory.

On Ctrl-C (or Jupyter's stop button) the pending sheets are cancelled, in-flight requests are
cut, and ``RunInterrupted`` (a ``KeyboardInterrupt``) is raised within about a second; its
``results`` hold what finished (``None`` for the rest), and every finished sheet is already in
the checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from . import errors as E
from ._log import logger, redact
from .checkpoint import CheckpointWriter, load_checkpoint
from .deadline import abort_tagged
from .display import results_html
from .progress import Progress, ProgressArg
from .result import ExecutionResult, utc_now
from .retry import Interrupted
from .sheet import Sheet, SheetKeys, as_sheet
from .summary import RunSummary

OnResult = Callable[[int, ExecutionResult], Any]


class RunResults(list):  # type: ignore[type-arg]
    """The results of ``run_sheets``: a plain list, plus ``summary`` and a Jupyter table."""

    summary: RunSummary

    def _repr_html_(self) -> str:
        return results_html(self, getattr(self, "summary", None))


class RunInterrupted(KeyboardInterrupt):
    """Raised by ``run_sheets`` on Ctrl-C: ``results`` (None where unfinished) and ``summary``."""

    def __init__(self, results: list[Optional[ExecutionResult]], summary: RunSummary) -> None:
        super().__init__(f"run interrupted: {summary.total} of {len(results)} sheets finished")
        self.results = results
        self.summary = summary


def _failed(sheet: Sheet, error_type: str, message: str) -> ExecutionResult:
    return ExecutionResult(success=False, stdout="", stderr=message, duration_seconds=0.0, exit_code=1,
                           exit_reason="error" if error_type != E.CANCELLED else "killed", started_at=utc_now(),
                           error_type=error_type, error_message=message, sheet_id=sheet.key)


def _run_one(backend: Any, sheet: Sheet, cancel: threading.Event, stream: bool) -> ExecutionResult:
    if cancel.is_set():
        return _failed(sheet, E.CANCELLED, "cancelled before it started")
    try:
        if stream:
            return backend.stream_sheet(sheet, cancel=cancel)  # type: ignore[no-any-return]
        return backend.execute_sheet(sheet, cancel=cancel)  # type: ignore[no-any-return]
    except Interrupted:
        return _failed(sheet, E.CANCELLED, "cancelled while running")
    except (ValueError, TypeError) as exc:  # a sheet whose settings are wrong: it fails, the run goes on
        return _failed(sheet, "invalid_sheet", redact(f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # a bug or a bad sheet: this sheet fails, the run goes on
        logger.exception("sheet %s raised", sheet.key)
        return _failed(sheet, "internal_error", redact(f"{type(exc).__name__}: {exc}"))


def iter_sheets(backend: Any, sheets: Iterable[Union[Sheet, str]], *, max_workers: int = 8,
                progress: ProgressArg = False, on_result: Optional[OnResult] = None,
                checkpoint: Union[str, Path, None] = None, executor: Optional[cf.Executor] = None,
                stream: bool = False, total: Optional[int] = None,
                checkpoint_tag: Optional[str] = None) -> Iterator[tuple[int, Sheet, ExecutionResult]]:
    """Yield ``(index, sheet, result)`` as sheets finish (not in input order).

    Inputs are read lazily and at most ``2 * max_workers`` sheets are in flight, so memory does
    not grow with the number of sheets. Sheets already finished successfully in ``checkpoint``
    are yielded from it without being sent. The keyword arguments are those of ``run_sheets``.
    """
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
    done = load_checkpoint(checkpoint, checkpoint_tag) if checkpoint is not None else {}
    writer = CheckpointWriter(checkpoint, tag=checkpoint_tag) if checkpoint is not None else None
    workers = max_workers
    if executor is not None:  # size the pool and the window to the threads that will really run
        workers = max(workers, int(getattr(executor, "_max_workers", workers)))
    if hasattr(backend, "transport"):
        backend.transport.ensure_pool_size(workers)
    own_executor = executor is None
    pool: cf.Executor = executor or cf.ThreadPoolExecutor(max_workers, thread_name_prefix="openrouter-sync")
    cancel = threading.Event()
    meter = Progress(total if total is not None else (len(sheets) if isinstance(sheets, Sequence) else None), progress,
                     activity=getattr(backend, "activity", None))
    pending: dict[cf.Future[ExecutionResult], tuple[int, Sheet, Optional[str]]] = {}
    window = 2 * workers
    keys = SheetKeys() if checkpoint is not None else None  # ids matter (and cost memory) only for a checkpoint
    finished_normally = False

    def finish(index: int, sheet: Sheet, key: Optional[str],
               result: ExecutionResult) -> tuple[int, Sheet, ExecutionResult]:
        result.sheet_id = key
        if writer is not None and key is not None and result.error_type != E.CANCELLED:
            writer.write(key, index, result)
        meter.update(result)
        if on_result is not None:
            on_result(index, result)
        return index, sheet, result

    def harvest(block: bool) -> Iterator[tuple[int, Sheet, ExecutionResult]]:
        if not pending:
            return
        finished, _ = cf.wait(list(pending), timeout=0.25 if block else 0, return_when=cf.FIRST_COMPLETED)
        for future in finished:
            index, sheet, key = pending.pop(future)
            yield finish(index, sheet, key, future.result())

    try:
        for index, item in enumerate(sheets):
            sheet = as_sheet(item)
            key = keys.assign(index, sheet) if keys is not None else sheet.id
            stored = done.get(key) if key is not None else None
            if stored is not None:
                meter.update(stored)
                stored.sheet_id = key
                yield index, sheet, stored
                continue
            while len(pending) >= window:
                yield from harvest(block=True)
            future = pool.submit(_run_one, backend, sheet, cancel, stream)
            pending[future] = (index, sheet, key)
            yield from harvest(block=False)
        while pending:
            yield from harvest(block=True)
        finished_normally = True
    finally:
        if not finished_normally:
            cancel.set()
            for future in pending:
                future.cancel()
            abort_tagged(cancel)
        meter.close()
        if writer is not None:
            writer.close()
        if own_executor:
            pool.shutdown(wait=finished_normally, **({"cancel_futures": True} if not finished_normally else {}))


def run_sheets(backend: Any, sheets: Iterable[Union[Sheet, str]], *, max_workers: int = 8,
               progress: ProgressArg = False, on_result: Optional[OnResult] = None,
               checkpoint: Union[str, Path, None] = None, executor: Optional[cf.Executor] = None,
               stream: bool = False, checkpoint_tag: Optional[str] = None) -> RunResults:
    """Run every sheet (``Sheet`` objects and plain prompt strings, mixed) on ``max_workers`` threads.

    Returns one ``ExecutionResult`` per input, in input order; a failing sheet gives a failed
    result, never an exception. ``progress=True`` shows a bar (tqdm if installed, else text on
    stderr), or pass a callable taking ``ProgressInfo``. ``on_result(index, result)`` is called as
    each sheet finishes. ``checkpoint="run.jsonl"`` records finished sheets as they finish; a
    later run with the same file skips the sheets it holds as successful (matched by sheet id:
    ``Sheet.id``, else a digest of the sheet's content). ``executor`` runs the work on your own
    ``concurrent.futures.Executor``. ``stream=True`` streams each answer into its sheet's
    ``output_log_path`` as it arrives. ``checkpoint_tag`` marks the records; records with another
    tag are not reused (the CLI tags offline runs). The result list has ``.summary``.
    """
    items = [as_sheet(item) for item in sheets]
    if checkpoint is not None:
        keys = SheetKeys()
        for index, sheet in enumerate(items):  # fail fast on duplicate ids, before anything is sent
            keys.assign(index, sheet)
    results: list[Optional[ExecutionResult]] = [None] * len(items)
    started = time.monotonic()
    try:
        for index, _sheet, result in iter_sheets(backend, items, max_workers=max_workers, progress=progress,
                                                 checkpoint=checkpoint, executor=executor, stream=stream,
                                                 total=len(items), checkpoint_tag=checkpoint_tag):
            results[index] = result
            if on_result is not None:
                on_result(index, result)
    except KeyboardInterrupt:
        summary = RunSummary.from_results(results, time.monotonic() - started)
        raise RunInterrupted(results, summary) from None
    out = RunResults(results)
    out.summary = RunSummary.from_results(out, time.monotonic() - started)
    return out
