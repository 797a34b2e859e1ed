"""Run many sheets on a thread pool: in order, resumable from a checkpoint, interruptible, with progress.

``run_sheets`` returns one result per input, in input order. ``iter_sheets`` yields
``(index, sheet, result)`` as sheets finish, holding only a bounded window in memory.

On Ctrl-C (or Jupyter's stop button) the pending sheets are cancelled, in-flight requests are
cut, and ``RunInterrupted`` (a ``KeyboardInterrupt``) is raised within about a second; its
``results`` hold what finished (``None`` for the rest), including sheets that finished but
were not yet handed to ``on_result``, and every finished sheet is already in the checkpoint
(each worker records its sheet the moment it finishes).

Any other early end (a ``break`` out of ``iter_sheets``, an exception from ``on_result`` or from
the input) cuts nothing: no new sheet or attempt starts, the sheets in flight finish, and their
answers, which the server has made and billed, are kept (in the checkpoint, in ``results`` and
the summary's cost). ``run_sheets`` then raises ``RunAborted``, holding the results like
``RunInterrupted``.

``max_cost`` caps spending: once the cost the answers reported reaches it, no new sheet starts;
the sheets in flight finish, and the rest get ``budget_exceeded`` results without being sent.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Optional, Sequence, Union

from ._log import logger, redact
from .checkpoint import Checkpoint, CheckpointMismatch, Settings, SettingsMemo, endpoint_of
from .deadline import abort_tagged
from .display import results_html
from .error_types import ErrorType
from .handout import Handout
from .progress import Progress, ProgressArg
from .result import ExecutionResult, utc_now
from .retry import Interrupted
from .shards import Shard, in_shard, parse_shard
from .sheet import Sheet, SheetKeys, as_sheet
from .summary import RunSummary
from .throttle import Throttle

OnResult = Callable[[int, ExecutionResult], Any]
_Collect = Callable[[int, ExecutionResult], None]
_MISMATCH_MODES = ("redo", "refuse")
#: Sheets read ahead per worker, for a free worker to take one whose model is not held back.
_LOOKAHEAD = 4
#: After Ctrl-C, how long to let cut requests return (so what they finished is recorded).
_SETTLE_SECONDS = 0.5
#: Results that are not written to a checkpoint: the sheet was not (wholly) sent, so a rerun sends it.
_NOT_RECORDED = (ErrorType.CANCELLED, ErrorType.BUDGET_EXCEEDED)


class RunResults(list):  # type: ignore[type-arg]
    """The results of ``run_sheets``: a plain list, plus ``summary`` and a Jupyter table."""

    summary: RunSummary

    def _repr_html_(self) -> str:
        return results_html(self, getattr(self, "summary", None))


class RunInterrupted(KeyboardInterrupt):
    """Raised by ``run_sheets`` on Ctrl-C (or SIGTERM, with ``stop_on_sigterm=True``): ``results``
    (None where unfinished), ``summary``, and ``signal`` (``signal.SIGTERM``, or None for Ctrl-C)."""

    def __init__(self, results: list[Optional[ExecutionResult]], summary: RunSummary,
                 signal_number: Optional[int] = None) -> None:
        super().__init__(f"run interrupted: {summary.total} of {len(results)} sheets finished")
        self.results = results
        self.summary = summary
        self.signal = signal_number


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while ``run_sheets(..., stop_on_sigterm=True)`` ran: stop as on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_stops(enabled: bool) -> Iterator[list[int]]:
    """While active, the first SIGTERM raises ``Terminated`` in the main thread (later ones are
    ignored until the run has stopped); yields the list the signal's number is put in."""
    got: list[int] = []
    if not enabled or not hasattr(signal, "SIGTERM"):
        yield got
        return
    if threading.current_thread() is not threading.main_thread():
        logger.warning("stop_on_sigterm=True has no effect outside the main thread (signals go to the main thread)")
        yield got
        return

    def stop(number: int, frame: Any) -> None:
        if not got:
            got.append(number)
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, previous)


class RunAborted(Exception):
    """Raised by ``run_sheets`` when ``on_result`` (or a progress callback, or the executor) raises.

    The sheets in flight were let finish first, so no answer the server made is lost: ``results``
    (None where unfinished) and ``summary`` (its ``cost`` counts them) hold them, as in
    ``RunInterrupted``, and they are in the checkpoint. ``error`` (also ``__cause__``) is the
    exception that stopped the run."""

    def __init__(self, results: list[Optional[ExecutionResult]], summary: RunSummary, error: BaseException) -> None:
        super().__init__(redact(f"run stopped by {type(error).__name__}: {error}; {summary.total} of "
                                f"{len(results)} sheets finished"))
        self.results = results
        self.summary = summary
        self.error = error


class _Budget:
    """A run's spending cap: the cost its answers reported (thread-safe), and whether a sheet may start.

    ``before`` is what the checkpoint's records say earlier runs spent."""

    def __init__(self, cap: Optional[float], before: float = 0.0) -> None:
        self.cap = cap
        self.before = before
        self.spent = 0.0
        self._lock = threading.Lock()
        self._warned = False

    def add(self, result: ExecutionResult) -> None:
        if self.cap is None:
            return
        cost = result.cost
        if isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0:
            with self._lock:
                self.spent += cost
        elif cost is None and result.success and not self._warned:
            self._warned = True
            logger.warning("max_cost: an answer reported no cost (the server sends none); only reported costs "
                           "count toward the spending cap")

    def reached(self) -> bool:
        return self.cap is not None and self.before + self.spent >= self.cap

    def refused(self, sheet: Sheet, key: Optional[str]) -> ExecutionResult:
        earlier = f", ${self.before:.6f} of it by earlier runs" if self.before else ""
        result = _failed(sheet, ErrorType.BUDGET_EXCEEDED,
                         f"not sent: the spending cap max_cost=${self.cap:g} was reached "
                         f"(${self.before + self.spent:.6f} spent{earlier}); a rerun with a higher max_cost sends it")
        result.sheet_id = key
        return result


def _check_cost(max_cost: Optional[float]) -> None:
    if max_cost is None:
        return
    if isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or not math.isfinite(max_cost) \
            or max_cost <= 0:
        raise ValueError(f"max_cost must be a number of US dollars > 0, got {max_cost!r}")


def _failed(sheet: Sheet, error_type: ErrorType, message: str) -> ExecutionResult:
    return ExecutionResult(success=False, stdout="", stderr=message, duration_seconds=0.0, exit_code=1,
                           exit_reason="killed" if error_type == ErrorType.CANCELLED else "error",
                           started_at=utc_now(), error_type=error_type, error_message=message, sheet_id=sheet.key)


def _run_one(backend: Any, sheet: Sheet, cancel: threading.Event, stream: bool) -> ExecutionResult:
    if cancel.is_set():
        return _failed(sheet, ErrorType.CANCELLED, "cancelled before it started")
    try:
        if stream:
            return backend.stream_sheet(sheet, cancel=cancel)  # type: ignore[no-any-return]
        return backend.execute_sheet(sheet, cancel=cancel)  # type: ignore[no-any-return]
    except Interrupted:
        return _failed(sheet, ErrorType.CANCELLED, "cancelled while running")
    except (ValueError, TypeError) as exc:  # a sheet whose settings are wrong: it fails, the run goes on
        return _failed(sheet, ErrorType.INVALID_SHEET, redact(f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # a bug or a bad sheet: this sheet fails, the run goes on
        logger.exception("sheet %s raised", sheet.key)
        return _failed(sheet, ErrorType.INTERNAL_ERROR, redact(f"{type(exc).__name__}: {exc}"))


def _work(backend: Any, sheet: Sheet, cancel: threading.Event, stream: bool, index: int, key: Optional[str],
          checkpoint: Optional[Checkpoint], settings: Optional[Settings], budget: _Budget) -> ExecutionResult:
    """Run one sheet on a worker thread (unless the spending cap was reached while it waited to start)
    and record it in the checkpoint at once (not when harvested)."""
    if budget.reached():
        return budget.refused(sheet, key)
    result = _run_one(backend, sheet, cancel, stream)
    budget.add(result)
    result.sheet_id = key
    if checkpoint is not None and key is not None and result.error_type not in _NOT_RECORDED:
        checkpoint.write(key, index, result, settings=settings, sheet=sheet, label=sheet.label)
    return result


class _Left:
    """The sheets of a run not yet answered, for the throttle (``Throttle.expect``): None while the
    input's length is unknown and not yet used up."""

    def __init__(self, total: Optional[int], pending: dict[Any, Any]) -> None:
        self.total = total
        self.pending = pending
        self.done = 0
        self.exhausted = False

    def __call__(self) -> Optional[int]:
        if self.total is not None:
            return self.total - self.done  # (the pending sheets are among them)
        return len(self.pending) if self.exhausted else None


def _expecting(backend: Any, left: _Left) -> contextlib.AbstractContextManager[None]:
    throttle = getattr(backend, "throttle", None)
    return throttle.expect(left) if isinstance(throttle, Throttle) else contextlib.nullcontext()


def _check_modes(max_workers: int, on_mismatch: str, max_cost: Optional[float], keep_raw: bool) -> None:
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
    if on_mismatch not in _MISMATCH_MODES:
        raise ValueError(f"on_mismatch must be 'redo' or 'refuse', got {on_mismatch!r}")
    _check_cost(max_cost)
    if not isinstance(keep_raw, bool):
        raise TypeError(f"keep_raw must be True or False, got {keep_raw!r}")


def _iterate(backend: Any, sheets: Iterable[Union[Sheet, str]], *, max_workers: int, progress: ProgressArg,
             on_result: Optional[OnResult], checkpoint: Optional[Checkpoint], endpoint: str, on_mismatch: str,
             executor: Optional[cf.Executor], stream: bool, total: Optional[int], budget: _Budget,
             collect: Optional[_Collect] = None, shard: Optional[Shard] = None,
             count: Optional[int] = None, keys: Optional[Sequence[str]] = None,
             ) -> Generator[tuple[int, Sheet, ExecutionResult], None, None]:
    """The engine of ``iter_sheets`` and ``run_sheets``. ``collect(index, result)`` (run_sheets) hears of
    every finished sheet as soon as it is harvested, and on an early end of those finished but not
    yet harvested, so none is lost from ``RunInterrupted.results`` / ``RunAborted.results``. With
    ``shard``, only the sheets of that share run (indexes stay those of the whole input); ``count``
    is how many that is, when known. ``keys`` are the sheets' checkpoint keys, when the caller has
    assigned them already (run_sheets without a shard); else they are assigned here as sheets are read."""
    workers = max_workers
    if executor is not None:  # size the pool and the window to the threads that will really run
        workers = max(workers, int(getattr(executor, "_max_workers", workers)))
    if hasattr(backend, "transport"):
        backend.transport.ensure_pool_size(workers)
    own_executor = executor is None
    pool: cf.Executor = executor or cf.ThreadPoolExecutor(max_workers, thread_name_prefix="openrouter-sync")
    cancel = threading.Event()
    # How many sheets this run handles; None: known once the input is used up.
    length = count if count is not None else len(sheets) if isinstance(sheets, Sequence) and shard is None else None
    meter = Progress(total if total is not None else length, progress, activity=getattr(backend, "activity", None))
    pending: dict[cf.Future[ExecutionResult], tuple[int, Sheet]] = {}
    # Ids matter (and cost memory) only for a checkpoint.
    assigner = SheetKeys() if checkpoint is not None and keys is None else None
    finished_normally = False
    on_result_raised = False

    left = _Left(length, pending)  # not ``total``: that one is for show only

    def finish(index: int, sheet: Sheet, result: ExecutionResult) -> tuple[int, Sheet, ExecutionResult]:
        nonlocal on_result_raised
        left.done += 1
        if collect is not None:
            collect(index, result)
        meter.update(result)
        if on_result is not None:
            try:
                on_result(index, result)
            except BaseException:
                on_result_raised = True
                raise
        return index, sheet, result

    def harvest(block: bool) -> Iterator[tuple[int, Sheet, ExecutionResult]]:
        if not pending:
            return
        finished, _ = cf.wait(list(pending), timeout=0.25 if block else 0, return_when=cf.FIRST_COMPLETED)
        for future in finished:
            index, sheet = pending.pop(future)
            yield finish(index, sheet, future.result())

    def finished_pending() -> Iterator[tuple[int, Sheet, ExecutionResult]]:
        for future, (index, sheet) in pending.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                result = future.result()
                if result.error_type != ErrorType.CANCELLED:
                    yield index, sheet, result

    def cut() -> None:
        """Ctrl-C: cut the requests in flight, keep what finished meanwhile."""
        cancel.set()
        for future in pending:
            future.cancel()
        abort_tagged(cancel)
        running = [f for f in pending if not f.done()]
        if running:  # cut by now: let them return, so whatever finished is recorded
            cf.wait(running, timeout=_SETTLE_SECONDS)
        if collect is not None:
            for index, _sheet, result in finished_pending():
                collect(index, result)
        pending.clear()

    def drain() -> None:
        """Any other early end: start nothing more, let the sheets in flight finish, report them."""
        nonlocal on_result_raised
        cancel.set()  # no sheet still queued and no retry starts; the attempts in flight are not cut
        for future in pending:
            future.cancel()
        while any(not f.done() for f in pending):
            cf.wait([f for f in pending if not f.done()], timeout=0.25)
        late = list(finished_pending())
        pending.clear()
        for index, _sheet, result in late:
            left.done += 1
            if collect is not None:
                collect(index, result)
            try:
                meter.update(result)
                if on_result is not None and not on_result_raised:
                    on_result(index, result)
            except Exception:
                on_result_raised = True
                logger.exception("a callback raised for sheet %s while the run was stopping; on_result is not "
                                 "called again", result.sheet_id or f"#{index}")
        if late and collect is None:
            cost = sum(r.cost or 0.0 for _, _, r in late)
            where = "in the checkpoint" if checkpoint is not None else \
                "reported to on_result" if on_result is not None and not on_result_raised else "not kept anywhere"
            logger.log(logging.INFO if where != "not kept anywhere" else logging.WARNING,
                       "iter_sheets stopped early: %d sheet(s) in flight finished afterwards (cost $%.6f); %s",
                       len(late), cost, where)

    # Up to a worker's worth queued beyond the running sheets, so that a slow consumer (a callback, the
    # loop body of iter_sheets) does not leave the workers idle; each is chosen as it is queued.
    window = 2 * workers
    handout: Handout[tuple[int, Sheet, Optional[str], Optional[Settings]]] = Handout(backend, _LOOKAHEAD * workers)
    source = enumerate(sheets)
    settings_of = SettingsMemo(backend, endpoint)

    def read_ahead() -> Iterator[tuple[int, Sheet, ExecutionResult]]:
        """Fill the look-ahead from the input; sheets the checkpoint holds are finished at once."""
        for index, item in source:
            sheet = as_sheet(item)
            if shard is not None and not in_shard(sheet.key, shard):
                continue  # another share's sheet
            key = keys[index] if keys is not None else assigner.assign(index, sheet) if assigner is not None \
                else sheet.id
            settings: Optional[Settings] = None
            if checkpoint is not None and key is not None:
                settings = settings_of(sheet)
                stored = checkpoint.restore(key, settings)
                if stored is not None:
                    yield finish(index, sheet, stored)
                    continue
                if on_mismatch == "refuse":
                    why = checkpoint.mismatch(key, settings)
                    if why is not None:
                        raise CheckpointMismatch(f"{checkpoint.path}: the answer for {key!r} was made with other "
                                                 f"settings: {why}", [(index, key, why)])
            handout.add(sheet, (index, sheet, key, settings))
            if handout.full:
                return
        left.exhausted = True

    try:
        with _expecting(backend, left):
            while True:
                if not handout.full:
                    yield from read_ahead()
                if not len(handout):
                    break
                while len(pending) >= window:
                    yield from harvest(block=True)
                index, sheet, key, settings = handout.take()
                if budget.reached():
                    yield finish(index, sheet, budget.refused(sheet, key))
                    continue
                future = pool.submit(_work, backend, sheet, cancel, stream, index, key, checkpoint, settings, budget)
                pending[future] = (index, sheet)
                yield from harvest(block=False)
            while pending:
                yield from harvest(block=True)
        finished_normally = True
    except KeyboardInterrupt:
        cut()
        raise
    except BaseException:  # GeneratorExit (the caller stopped iterating), or an exception from a callback or the input
        try:
            drain()
        except KeyboardInterrupt:  # Ctrl-C while waiting for the sheets in flight
            cut()
            raise
        raise
    finally:
        meter.close()
        if own_executor:
            pool.shutdown(wait=finished_normally, **({"cancel_futures": True} if not finished_normally else {}))


def iter_sheets(backend: Any, sheets: Iterable[Union[Sheet, str]], *, max_workers: int = 8,
                progress: ProgressArg = False, on_result: Optional[OnResult] = None,
                checkpoint: Union[str, Path, None] = None, executor: Optional[cf.Executor] = None,
                stream: bool = False, total: Optional[int] = None, checkpoint_tag: Optional[str] = None,
                on_mismatch: str = "redo", resume: bool = True, max_cost: Optional[float] = None,
                keep_raw: bool = False, shard: Union[str, tuple[int, int], None] = None,
                ) -> Iterator[tuple[int, Sheet, ExecutionResult]]:
    """Yield ``(index, sheet, result)`` as sheets finish (not in input order).

    Inputs are read lazily: at most ``2 * max_workers`` sheets are in flight and ``4 * max_workers``
    more read ahead, so memory does not grow with the number of sheets. A free worker takes the first
    sheet read ahead whose model the throttle does not hold back (see :mod:`openrouter_sync.handout`).
    Sheets whose answers the checkpoint holds (made with the same settings) are yielded from it
    without being sent, and reported to ``on_result`` like the others. The keyword arguments are
    those of ``run_sheets`` (with ``on_mismatch="refuse"``, ``CheckpointMismatch`` is raised when
    the first such sheet is reached, not up front).

    Leaving the loop early (``break``, an exception in its body) or an exception from
    ``on_result`` starts nothing more, but the sheets in flight finish, when the generator is
    closed, so that their answers (made and billed by the server) are written to the checkpoint
    and, after a ``break``, reported to ``on_result``. The exception from ``on_result`` then
    propagates. Ctrl-C cuts the sheets in flight instead.

    ``shard="K/N"`` (or ``(K, N)``) yields only the sheets of share K of N (see ``run_sheets``),
    with their indexes in the whole input.
    """
    _check_modes(max_workers, on_mismatch, max_cost, keep_raw)
    share = parse_shard(shard)
    opened = Checkpoint(checkpoint, resume=resume, keep_raw=keep_raw) if checkpoint is not None else None
    try:
        yield from _iterate(backend, sheets, max_workers=max_workers, progress=progress, on_result=on_result,
                            checkpoint=opened, endpoint=endpoint_of(backend, checkpoint_tag),
                            on_mismatch=on_mismatch, executor=executor, stream=stream, total=total,
                            budget=_Budget(max_cost, opened.spent if opened is not None else 0.0), shard=share)
    finally:
        if opened is not None:
            opened.close()
            if opened.error is not None:
                logger.warning("checkpoint %s is incomplete: %d finished sheet(s) not recorded (%s)", opened.path,
                               opened.unwritten, opened.error)


def _refuse_mismatches(backend: Any, items: Sequence[Sheet], keys: Sequence[str], checkpoint: Checkpoint,
                       endpoint: str, chosen: Optional[Sequence[bool]] = None) -> None:
    found = []
    settings_of = SettingsMemo(backend, endpoint)
    for index, (sheet, key) in enumerate(zip(items, keys)):
        if chosen is not None and not chosen[index]:
            continue
        why = checkpoint.mismatch(key, settings_of(sheet))
        if why is not None:
            found.append((index, key, why))
    if found:
        _, first_key, first_why = found[0]
        raise CheckpointMismatch(
            f"{checkpoint.path} holds {len(found)} answer(s) made with other settings than this run's "
            f"(e.g. {first_key!r}: {first_why}); pass on_mismatch='redo' to redo them, or use another checkpoint",
            found)


def run_sheets(backend: Any, sheets: Iterable[Union[Sheet, str]], *, max_workers: int = 8,
               progress: ProgressArg = False, on_result: Optional[OnResult] = None,
               checkpoint: Union[str, Path, None] = None, executor: Optional[cf.Executor] = None,
               stream: bool = False, checkpoint_tag: Optional[str] = None, on_mismatch: str = "redo",
               resume: bool = True, max_cost: Optional[float] = None, keep_raw: bool = False,
               stop_on_sigterm: bool = False, shard: Union[str, tuple[int, int], None] = None) -> RunResults:
    """Run every sheet (``Sheet`` objects and plain prompt strings, mixed) on ``max_workers`` threads.

    Returns one ``ExecutionResult`` per input, in input order; a failing sheet gives a failed
    result, never an exception. ``progress=True`` shows a bar (tqdm if installed, else text on
    stderr), or pass a callable taking ``ProgressInfo``. ``on_result(index, result)`` is called
    once per input as it finishes, including sheets restored from the checkpoint
    (``result.from_checkpoint`` is True for those). ``executor`` runs the work on your own
    ``concurrent.futures.Executor``. ``stream=True`` streams each answer into its sheet's
    ``output_log_path`` as it arrives. The result list has ``.summary``.

    ``checkpoint="run.jsonl"`` records each sheet the moment it finishes (see
    ``openrouter_sync.checkpoint`` for the format). A later run with the same file does not send
    the sheets it holds as successful (matched by ``Sheet.id``, else a digest of the sheet's
    content) when they were made with the same settings (model, temperature, max_tokens, request
    options, endpoint). Sheets answered with other settings are redone (``on_mismatch="redo"``)
    or, with ``on_mismatch="refuse"``, ``CheckpointMismatch`` is raised before anything is sent.
    ``resume=False`` reuses nothing (new records are appended; the latest record of an id wins).
    ``checkpoint_tag`` names the endpoint in the records instead of the base URL (the CLI uses
    ``"offline"`` for its fake server, whose port changes every run). A checkpoint is locked while
    in use: a second run on it raises ``CheckpointLocked`` before sending anything. A failed write
    (disk full) never raises: the run goes on, a warning is logged and ``summary.checkpoint_error``
    says the checkpoint is incomplete. ``keep_raw=True`` also writes each result's ``raw`` (the
    response body) to the checkpoint; it is left out by default, so that large batches keep small
    files (a restored result then has ``raw=None``).

    ``max_cost=5.0`` caps spending at 5 US dollars: once the costs the answers reported (``cost``)
    add up to it, no new sheet is sent. Sheets in flight finish and are kept (so the total may pass
    the cap by what they cost); the others get ``budget_exceeded`` results, which are not
    written to the checkpoint, so a rerun with a higher cap sends them. With a checkpoint, the
    cap covers the whole batch: what its records say earlier runs spent counts too (with
    ``resume=False``, only this run). Answers that report no cost count as free (with a warning).

    An exception from ``on_result`` (or a progress callback) stops the run: nothing more starts,
    the sheets in flight finish and are kept, and ``RunAborted`` is raised with ``results`` and
    ``summary``, like ``RunInterrupted`` on Ctrl-C.

    ``stop_on_sigterm=True`` (in the main thread) treats SIGTERM (how systemd, Docker and
    Kubernetes stop a job) as Ctrl-C: in-flight sheets are cut, everything finished is in the
    checkpoint, and ``RunInterrupted`` is raised with ``signal == signal.SIGTERM``; the previous
    handler is restored when the call returns.

    ``shard="K/N"`` (or ``(K, N)``, ``1 <= K <= N``) runs only share K of N of the sheets, split by
    a hash of each sheet's id (``openrouter_sync.shards``): N processes or machines given the same
    sheets run each sheet exactly once between them (give each its own checkpoint; ``openrouter-sync
    export`` merges them). The list still has one entry per input, in input order: the sheets of
    other shares are None there, and the summary counts this share's.
    """
    _check_modes(max_workers, on_mismatch, max_cost, keep_raw)
    share = parse_shard(shard)
    items = [as_sheet(item) for item in sheets]
    chosen = None if share is None else [in_shard(sheet.key, share) for sheet in items]
    labels = [sheet.label or sheet.id or f"#{index}" for index, sheet in enumerate(items)]
    opened: Optional[Checkpoint] = None
    endpoint = endpoint_of(backend, checkpoint_tag)
    keys: list[str] = []
    if checkpoint is not None:
        assign = SheetKeys().assign
        keys = [assign(index, sheet) for index, sheet in enumerate(items)]  # duplicate ids fail before anything
        opened = Checkpoint(checkpoint, resume=resume, keep_raw=keep_raw)
    results: list[Optional[ExecutionResult]] = [None] * len(items)
    budget = _Budget(max_cost, opened.spent if opened is not None else 0.0)

    def collect(index: int, result: ExecutionResult) -> None:
        results[index] = result

    def summary() -> RunSummary:
        return RunSummary.from_results(results, time.monotonic() - started, labels=labels,
                                       checkpoint_error=None if opened is None else opened.error,
                                       checkpoint_unwritten=0 if opened is None else opened.unwritten,
                                       max_cost=max_cost, earlier_cost=budget.before)

    started = time.monotonic()
    engine = _iterate(backend, items, max_workers=max_workers, progress=progress, on_result=on_result,
                      checkpoint=opened, endpoint=endpoint, on_mismatch="redo", executor=executor,
                      stream=stream, total=len(items) if chosen is None else sum(chosen), budget=budget,
                      collect=collect, shard=share, count=None if chosen is None else sum(chosen),
                      keys=keys if opened is not None and share is None else None)  # (a shard assigns its own)
    with _sigterm_stops(stop_on_sigterm) as terminated:
        try:
            if opened is not None and on_mismatch == "refuse":
                _refuse_mismatches(backend, items, keys, opened, endpoint, chosen)
            for _ in engine:
                pass
        except KeyboardInterrupt:
            # if Ctrl-C came between two results: cut, collect the finished
            with contextlib.suppress(KeyboardInterrupt):
                engine.throw(KeyboardInterrupt())
            if opened is not None:
                opened.close()
            raise RunInterrupted(results, summary(), terminated[0] if terminated else None) from None
        except CheckpointMismatch:  # raised before anything was sent
            raise
        except Exception as exc:  # from on_result or another callback: the sheets in flight have finished
            if opened is not None:
                opened.close()
            raise RunAborted(results, summary(), exc) from exc
        finally:
            if opened is not None:
                opened.close()
    out = RunResults(results)
    out.summary = summary()
    if out.summary.checkpoint_error is not None:
        logger.warning("%s", out.summary.checkpoint_line())
    return out
