"""The ``openrouter-sync`` command: run a batch, ask one question, list models, check a key, export or compact results.

    openrouter-sync run prompts.txt -o results.jsonl      # one prompt a line; .jsonl: one object a line
    openrouter-sync ask "Explain quicksort"               # streams the answer ("-": the prompt from stdin)
    openrouter-sync models --free
    openrouter-sync check
    openrouter-sync export results.jsonl -o final.csv     # one row per prompt, in input order
    openrouter-sync compact results.jsonl                 # keep only the latest record of each prompt
    openrouter-sync run prompts.txt --shard 2/3 -o r2.jsonl   # share 2 of 3 (merge: export r1.jsonl r2.jsonl r3.jsonl)

Needs OPENROUTER_API_KEY for OpenRouter (another --base-url, e.g. a local vLLM, needs
none; --no-key sends none; -H 'api-key: ...' sends another auth header). Without it,
--offline (or --offline-mode always) runs against the built-in fake server (its answers are
fakes, and it says so); --offline-mode auto does so only when no key is set.
OPENROUTER_SYNC_OFFLINE=auto|always|never sets the default mode.
The model is -m/--model, else $OPENROUTER_MODEL, else minimax/minimax-m1-80k (a paid model).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import math
import os
import re
import signal
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Optional, Sequence

from ._files import QUIET
from ._log import redact
from ._version import __version__
from .backend import DEFAULT_BASE_URL, DEFAULT_MODEL, OpenRouterBackend
from .checkpoint import CheckpointError, CheckpointLocked, CheckpointMismatch, Record, record_data
from .errors import OpenRouterError
from .request import OVERRIDE_KEYS, is_openrouter_url
from .resultsfile import compact, latest_records
from .retry import RetryPolicy
from .runner import RunAborted, RunInterrupted, Terminated, run_sheets
from .shards import parse_shard
from .sheet import Sheet
from .summary import plural
from .testing.demo import OFFLINE_ENV, demo_backend

KEY_ENV = "OPENROUTER_API_KEY"
MODEL_ENV = "OPENROUTER_MODEL"
SHEET_FIELDS = {"prompt", "messages", "id", "label", "system", "preamble", "extensions", "timeout_seconds",
                "metadata", "overrides", "output_log_path"}
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143  # 128 + SIGINT / SIGTERM
NO_KEY = f"{KEY_ENV} is not set: set {KEY_ENV} or use --offline (the built-in fake server)"
_OFFLINE_VALUES = {"": "never", "0": "never", "no": "never", "false": "never", "off": "never", "never": "never",
                   "1": "always", "yes": "always", "true": "always", "on": "always", "always": "always",
                   "auto": "auto"}
#: Python parameter names in library messages, as the options a CLI user typed.
_OPTION_NAMES = {"max_workers": "-w/--workers", "pool_size": "-w/--workers", "timeout_seconds": "--timeout",
                 "requests_per_minute": "--rpm", "max_attempts": "--attempts", "max_tokens": "--max-tokens",
                 "max_cost": "--max-cost",
                 "base_url": "--base-url", "model": "-m/--model", "temperature": "--temperature"}
_CSV_COLUMNS = ("id", "index", "label", "prompt", "success", "answer", "error_type", "error_message",
                "finish_reason", "tool_calls", "model", "input_tokens", "output_tokens", "cost", "attempts",
                "duration_seconds", "metadata")


def _backend_default(name: str) -> Any:
    return inspect.signature(OpenRouterBackend.__init__).parameters[name].default


class UsageError(Exception):
    """A bad command line or input file: reported in one line, exit code 2, nothing sent or written."""


InputError = UsageError  # the name earlier versions used


class Failure(Exception):
    """Something failed after the command talked to the server: exit code 1, never a usage error."""


@contextlib.contextmanager
def _talking(what: str) -> Iterator[None]:
    """Around the part of a command that talks to the server: whatever goes wrong there (an
    answer the library could not handle) is a ``Failure``, not the user's bad option or input."""
    try:
        yield
    except (UsageError, CheckpointError, OpenRouterError, OSError):
        raise
    except Exception as exc:
        raise Failure(redact(f"{what} failed: {type(exc).__name__}: {str(exc)[:300]}")) from None


# ----- input ---------------------------------------------------------------------------------

MAX_INPUT_BYTES = 1 << 30  # an input larger than this is no prompt file (/dev/zero, a disk image)
_READ_STEP = 1 << 20


def _line_of(data: bytes, offset: int) -> str:
    """``line N, column M`` of a byte offset (1-based; only a newline byte ends a line)."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", "replace")) + 1
    return f"line {line}, column {column}"


def _decode(data: bytes, name: str) -> str:
    """The text of an input file; errors name the 1-based line (and column) of the bad byte."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UsageError(f"{name}, {_line_of(data, nul)}: a NUL byte; not a text file")
    try:
        return data.decode("utf-8-sig")  # a leading UTF-8 BOM is dropped
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}, {_line_of(data, exc.start)}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                         "save it as UTF-8") from None


def _read_input(handle: IO[bytes], name: str) -> bytes:
    """All of an input (a file, a pipe, stdin), stopping early at a NUL byte or at ``MAX_INPUT_BYTES``
    (a device such as ``/dev/zero`` never ends)."""
    parts: list[bytes] = []
    size = 0
    while True:
        piece = handle.read(_READ_STEP)
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        size += len(piece)
        if b"\x00" in piece:
            return b"".join(parts)  # _decode names its line
        if size > MAX_INPUT_BYTES:
            raise UsageError(f"{name}: larger than {MAX_INPUT_BYTES >> 20} MiB; not a prompt file")


def input_format(name: str, explicit: Optional[str]) -> str:
    """``txt`` or ``jsonl``: ``--format`` if given, else by extension (``.jsonl``/``.ndjson``), else ``txt``."""
    if explicit:
        return explicit
    return "jsonl" if name.lower().endswith((".jsonl", ".ndjson")) else "txt"


def parse_sheets(text: str, name: str, fmt: str) -> list[Sheet]:
    """Sheets from text: ``txt`` (one prompt a line) or ``jsonl`` (one object a line). Blank lines
    are skipped; errors name the file and the 1-based line."""
    sheets: list[Sheet] = []
    ids: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):  # only \n ends a line (U+2028 may be inside a string)
        if not line.strip():
            continue
        if fmt == "txt":
            sheets.append(Sheet(prompt=line.strip(), label=f"line {number}"))
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"{name}, line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise UsageError(f"{name}, line {number}: expected a JSON object, got {type(record).__name__}")
        try:
            sheet = _sheet_from_record(record, f"line {number}")
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{name}, line {number}: {exc}") from None
        if sheet.id is not None:
            if sheet.id in ids:
                raise UsageError(f"{name}, line {number}: id {sheet.id!r} is used twice (first on line "
                                 f"{ids[sheet.id]}); ids must be unique")
            ids[sheet.id] = number
        sheets.append(sheet)
    if not sheets:
        raise UsageError(f"{name}: no prompts in it")
    return sheets


def _sheet_from_record(record: dict[str, Any], label: str) -> Sheet:
    unknown = sorted(set(record) - SHEET_FIELDS - OVERRIDE_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"use {', '.join(sorted(SHEET_FIELDS))} or a request option")
    fields = {k: v for k, v in record.items() if k in SHEET_FIELDS}
    overrides = dict(fields.pop("overrides", None) or {})
    overrides.update({k: v for k, v in record.items() if k in OVERRIDE_KEYS and k not in SHEET_FIELDS})
    if "prompt" not in fields and "messages" not in fields:
        raise ValueError("needs 'prompt' or 'messages'")
    if fields.get("metadata") is not None and not isinstance(fields["metadata"], dict):
        raise ValueError("'metadata' must be an object")
    fields.setdefault("label", str(record["id"]) if record.get("id") is not None else label)
    return Sheet(overrides=overrides, **fields)


def read_sheets(path: str, fmt: Optional[str] = None) -> list[Sheet]:
    """The sheets of an input file (``-``: stdin), format by ``fmt`` or extension."""
    name = "<stdin>" if path == "-" else path
    if path == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        text = _decode(_read_input(buffer, name), name) if buffer is not None else sys.stdin.read().lstrip("\ufeff")
    else:
        try:
            with open(path, "rb") as handle:
                data = _read_input(handle, name)
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory, not an input file") from None
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        text = _decode(data, name)
    return parse_sheets(text, name, input_format(name, fmt))


# ----- the results file ----------------------------------------------------------------------

def _is_results_file(path: Path) -> bool:
    """An empty file, or one whose first non-blank line is a results record (``id`` and ``result``),
    or only the torn start of one (a run killed while writing its first record)."""
    try:
        fd = os.open(path, os.O_RDONLY | QUIET)  # a FIFO planted there must not hang us
    except OSError:
        return False
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = handle.read(1 << 20)
    lines = [raw for raw in head.splitlines() if raw.strip()]
    if not lines:
        return True
    try:
        record = json.loads(lines[0])
    except (ValueError, RecursionError):
        return len(lines) == 1 and not head.endswith(b"\n") and lines[0].startswith(b'{"id": ')
    return isinstance(record, dict) and "id" in record and isinstance(record.get("result"), dict)


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for messages."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output(output: str, source: Optional[str]) -> None:
    """Refuse an ``-o`` that is not a regular file (a directory, FIFO, device, socket, a link to a
    missing file), the input itself, or an existing file that is not a results file; and a
    ``<output>.lock`` that is anything but a regular file (a link, FIFO, directory)."""
    path = Path(output)
    try:
        info: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        info = None
        if os.path.islink(path):
            raise UsageError(f"-o/--output {output} is a symbolic link to a missing file "
                             f"({os.readlink(path)}); name a results file") from None
    except OSError as exc:
        raise UsageError(f"-o/--output {output}: {exc.strerror or exc}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise UsageError(f"-o/--output {output} is a directory; name a results file, e.g. {path / 'results.jsonl'}")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise UsageError(f"-o/--output {output} is {_kind(info.st_mode)}, not a results file; name a results file")
    lock = path.with_name(path.name + ".lock")
    try:
        held = os.lstat(lock)
    except OSError:
        held = None
    if held is not None and not stat.S_ISREG(held.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(held.st_mode) else _kind(held.st_mode)
        raise UsageError(f"-o/--output {output}: its lock file {lock} is {what}; refusing to use it (remove it "
                         "if no run is using it)")
    if source is not None and source != "-" and path.exists():
        try:
            same = os.path.samefile(source, path)
        except OSError:
            same = False
        if same:
            raise UsageError(f"-o/--output {output} is the input file; write the results to another file")
    if path.suffix.lower() in (".csv", ".tsv", ".txt", ".json") and not path.exists():
        raise UsageError(f"-o/--output {output}: results are JSONL; name a .jsonl file (for CSV, run "
                         "`openrouter-sync export RESULTS.jsonl -o final.csv` afterwards)")
    if path.exists() and not _is_results_file(path):
        raise UsageError(f"-o/--output {output} exists and is not an openrouter-sync results file; "
                         "refusing to write into it (choose another -o)")


# ----- options and the backend ---------------------------------------------------------------

def offline_mode(args: argparse.Namespace) -> str:
    """``always``, ``auto`` or ``never``: --offline, else --offline-mode, else $OPENROUTER_SYNC_OFFLINE, else never."""
    if getattr(args, "offline", False):
        return "always"
    if getattr(args, "offline_mode", None):
        return str(args.offline_mode)
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value not in _OFFLINE_VALUES:
        raise UsageError(f"{OFFLINE_ENV} must be auto, always or never, got {value!r}")
    return _OFFLINE_VALUES[value]


def _has_key() -> bool:
    return bool(os.environ.get(KEY_ENV, "").strip())


def _key_needed(args: argparse.Namespace) -> bool:
    """Whether calls need OPENROUTER_API_KEY: not with --no-key, nor for a --base-url that is not
    OpenRouter's (a vLLM or Ollama server needs none; a key that is set is still sent)."""
    return not getattr(args, "no_key", False) and is_openrouter_url(getattr(args, "base_url", DEFAULT_BASE_URL))


def _parse_headers(values: Optional[Sequence[str]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values or []:
        name, colon, content = value.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"--header must be 'Name: value', got {value.split(':')[0]!r:.40}")
        headers[name.strip()] = content.strip()
    return headers


def _is_offline(args: argparse.Namespace) -> bool:
    mode = offline_mode(args)
    return mode == "always" or (mode == "auto" and not _has_key())


@contextlib.contextmanager
def _backend(args: argparse.Namespace, offline: bool) -> Iterator[OpenRouterBackend]:
    options: dict[str, Any] = {"timeout_seconds": args.timeout, "base_url": args.base_url}
    if hasattr(args, "model"):
        options["model"] = args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    for name in ("max_tokens", "temperature"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "attempts", None) is not None:
        options["retry_policy"] = RetryPolicy(max_attempts=args.attempts)
    if getattr(args, "rpm", None) is not None:
        options["requests_per_minute"] = args.rpm
    if getattr(args, "workers", None):
        options["pool_size"] = args.workers
    headers = _parse_headers(getattr(args, "header", None))
    if headers:
        options["default_headers"] = headers
    if getattr(args, "no_key", False) and not offline:
        options.update(require_key=False, api_key="")
    with demo_backend(offline="always" if offline else "never", **options) as backend:
        yield backend


def _err(message: str) -> None:
    print(f"openrouter-sync: {message}", file=sys.stderr)


# ----- commands ------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    check_output(args.output, args.input)
    sheets = read_sheets(args.input, args.format)
    offline = _is_offline(args)
    if not offline and not _has_key() and _key_needed(args):
        raise UsageError(f"{NO_KEY}; nothing was sent or written")
    if args.system:
        for sheet in sheets:
            sheet.system = sheet.system or args.system
    finished = 0

    def count(index: int, result: Any) -> None:
        nonlocal finished
        finished += 1

    with _backend(args, offline) as backend:
        try:
            results = run_sheets(backend, sheets, max_workers=args.workers, checkpoint=args.output,
                                 progress=not args.no_progress, checkpoint_tag="offline" if offline else None,
                                 on_mismatch="redo" if args.force else "refuse", resume=not args.fresh,
                                 max_cost=args.max_cost, on_result=count, stop_on_sigterm=True,
                                 shard=args.shard)
            summary = str(results.summary)
        except CheckpointMismatch as exc:
            index, _, why = exc.found[0]
            raise UsageError(
                f"{args.output} holds {plural(len(exc.found), 'answer')} made with other settings than this run's "
                f"(e.g. {sheets[index].label}: {why}); nothing was sent. Add --force to redo those sheets "
                "(appended; the newest record of a sheet wins), --fresh to redo every sheet, or choose another "
                "-o") from None
        except CheckpointLocked as exc:
            _err(f"{exc}; nothing was sent")
            return EXIT_FAILED
        except RunInterrupted as exc:
            how = "terminated (SIGTERM)" if exc.signal == getattr(signal, "SIGTERM", None) else "interrupted"
            print(f"\n{exc.summary}\n{how}: {exc.summary.total} of {len(sheets)} sheets finished; run the "
                  f"same command again to resume from {args.output}", file=sys.stderr)
            return EXIT_TERMINATED if exc.signal is not None else EXIT_INTERRUPTED
        except RunAborted as exc:
            print(f"\n{exc.summary}", file=sys.stderr)
            _err(f"{exc}; run the same command again to resume from {args.output}")
            return EXIT_FAILED
        except Exception as exc:
            if not finished:
                raise  # before anything finished: a bad option or input (or a bug), reported by main()
            # Sheets were sent: whatever failed now is no usage error (and not the user's fault).
            _err(redact(f"the run failed after {plural(finished, 'sheet')} finished ({type(exc).__name__}: "
                        f"{str(exc)[:300]}); what finished is in {args.output}: run the same command again to "
                        "resume"))
            return EXIT_FAILED
    print(summary, file=sys.stderr)
    print(f"results: {args.output} (one JSON line per finished sheet; `openrouter-sync export {args.output}` "
          "gives one per prompt, in input order)", file=sys.stderr)
    return EXIT_FAILED if results.summary.failed or results.summary.checkpoint_error else 0


def cmd_ask(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt == "-":
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise UsageError("no prompt on stdin")
    offline = _is_offline(args)
    if not offline and not _has_key() and _key_needed(args):
        raise UsageError(f"{NO_KEY}; nothing was sent")
    with _backend(args, offline) as backend:
        opened = backend.stream(prompt, system=args.system)  # a bad prompt or option: a usage error
        with _talking("ask"), opened as stream:
            for delta in stream:
                sys.stdout.write(delta)
                sys.stdout.flush()
    result = stream.result
    assert result is not None
    sys.stdout.write("\n")
    sys.stdout.flush()  # the answer's last line before the stats on stderr, also when both are piped
    if not result.success:
        _err(f"{result.error_type} (exit {result.exit_code}): {result.error_message}")
        return EXIT_FAILED
    tokens = "tokens unknown" if result.tokens_used is None else plural(result.tokens_used, "token")
    cost = "cost unknown" if result.cost is None else f"${result.cost:.6f}"
    finish = "" if result.finish_reason is None else f", finish_reason {result.finish_reason}"
    print(f"[{result.model}, {tokens}, {cost}{finish}]", file=sys.stderr)
    if result.finish_reason == "length":
        print("note: the answer was cut by the token limit (finish_reason \"length\"); raise --max-tokens",
              file=sys.stderr)
    return 0


def _per_million(price: Optional[float]) -> str:
    return "?" if price is None else f"{price * 1e6:.2f}"


def cmd_models(args: argparse.Namespace) -> int:
    with _backend(args, _is_offline(args)) as backend:
        try:
            with _talking("models"):
                models = backend.list_models(free=args.free)
        except OpenRouterError as exc:
            _err(str(exc))
            return EXIT_FAILED
    width = max([len(m.id) for m in models] + [5])
    print(f"{'model':<{width}}  {'context':>9}  {'$/M in':>8}  {'$/M out':>8}")
    for m in sorted(models, key=lambda m: m.id):
        context = "?" if m.context_length is None else str(m.context_length)
        print(f"{m.id:<{width}}  {context:>9}  {_per_million(m.prompt_price):>8}  "
              f"{_per_million(m.completion_price):>8}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    offline = _is_offline(args)
    if not offline and not _has_key() and _key_needed(args):
        print(f"key ({KEY_ENV}): MISSING; nothing was sent (set {KEY_ENV} or use --offline)")
        return EXIT_FAILED
    with _backend(args, offline) as backend, _talking("check"):
        keyless = not offline and (getattr(args, "no_key", False) or not _has_key())
        print(f"key ({'offline fake' if offline else KEY_ENV}): {'not sent (none needed)' if keyless else 'present'}")
        healthy = backend.health_check()
        state = "reachable, key accepted" if healthy else "NOT reachable or key refused"
        print(f"endpoint {backend.base_url}: {state}")
        ok = healthy
        try:
            info = backend.key_info()
        except OpenRouterError as exc:
            print(f"key limits: unavailable ({exc.result.error_type})")
            ok = False
        else:
            limit = "unlimited" if info.limit is None else f"${info.limit:g}"
            print(f"key limits: {limit}, used ${info.usage or 0:g}, remaining "
                  f"{'n/a' if info.limit_remaining is None else f'${info.limit_remaining:g}'}, "
                  f"free tier: {info.is_free_tier}")
    return 0 if ok else EXIT_FAILED


def _printable(text: str) -> str:
    """``text`` with lone surrogates (a provider's cut emoji) replaced, so any output can encode it."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _export_rows(records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    for record in records:
        result, sheet = record.result, record.sheet
        yield {"id": record.id, "index": record.index, "label": record.label, "prompt": sheet.get("prompt", ""),
               "success": result.success, "answer": result.stdout, "error_type": result.error_type or "",
               "error_message": result.error_message or "", "finish_reason": result.finish_reason or "",
               "tool_calls": json.dumps(result.tool_calls, ensure_ascii=False) if result.tool_calls else "",
               "model": result.model or "", "input_tokens": result.input_tokens, "output_tokens": result.output_tokens,
               "cost": result.cost, "attempts": result.attempts, "duration_seconds": result.duration_seconds,
               "metadata": json.dumps(sheet["metadata"], ensure_ascii=False) if sheet.get("metadata") else ""}


def cmd_export(args: argparse.Namespace) -> int:
    sources = [Path(name) for name in args.results]
    for source in sources:
        if not source.is_file():
            raise UsageError(f"{source}: no such results file")
        if not _is_results_file(source):
            raise UsageError(f"{source} is not an openrouter-sync results file")
    fmt = args.format or ("csv" if args.output and args.output.lower().endswith(".csv") else "jsonl")
    if args.output and args.output != "-":
        if Path(args.output).is_dir():
            raise UsageError(f"-o/--output {args.output} is a directory")
        if Path(args.output).exists() and any(os.path.samefile(args.output, source) for source in sources):
            raise UsageError("-o/--output is one of the results files; export to another file")
    counts = {"sheets": 0, "failed": 0, "calls": 0, "empty": 0}

    def records() -> Iterator[Record]:
        """The latest record of each sheet across the files, in input order, one at a time."""
        for record in latest_records(sources):
            result = record.result
            counts["sheets"] += 1
            counts["failed"] += not result.success
            counts["calls"] += bool(result.success and result.tool_calls)
            counts["empty"] += bool(result.success and not result.tool_calls and not result.stdout.strip())
            yield record

    def write(out: Any) -> None:
        if fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=list(_CSV_COLUMNS))
            writer.writeheader()
            for row in _export_rows(records()):
                writer.writerow({k: "" if v is None else _printable(v) if isinstance(v, str) else v
                                 for k, v in row.items()})
        else:
            for record in records():
                data = record_data(record, record.path or sources[0])
                out.write(_printable(json.dumps(data, ensure_ascii=False)) + "\n")

    if not args.output or args.output == "-":
        write(sys.stdout)
    else:
        target = Path(args.output)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="" if fmt == "csv" else None) as out:
                write(out)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    calls, empty = counts["calls"], counts["empty"]
    kinds = "".join([f", {plural(calls, 'tool-call answer')}" if calls else "", f", {empty} empty" if empty else ""])
    named = ", ".join(args.results)
    print(f"exported {plural(counts['sheets'], 'sheet')} ({counts['failed']} failed{kinds}) from {named}"
          + (f" to {args.output}" if args.output and args.output != "-" else ""), file=sys.stderr)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    source = Path(args.results)
    if not source.is_file():
        raise UsageError(f"{args.results}: no such results file")
    if not _is_results_file(source):
        raise UsageError(f"{args.results} is not an openrouter-sync results file")
    try:
        report = compact(source)
    except CheckpointLocked as exc:
        _err(f"{exc}; nothing was changed")
        return EXIT_FAILED
    print(f"compacted {args.results}: kept {plural(report.kept, 'record')} (the latest of each sheet), dropped "
          f"{report.dropped}; {report.bytes_before:,} -> {report.bytes_after:,} bytes", file=sys.stderr)
    return 0


# ----- the parser ----------------------------------------------------------------------------

def _number(kind: Callable[[str], Any], low: float, high: float = math.inf,
            low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (int or float) within bounds, else a message naming them."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value) and (value > low if low_open else value >= low) \
            and value <= high
        if not ok:
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            span = f"between {low:g} and {high:g}" if high != math.inf else bound
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'} {span}, "
                                             f"got {text!r}")
        return value
    return parse


def _shard(text: str) -> str:
    """An argparse type: ``K/N`` as ``parse_shard`` reads it (kept as text for run_sheets)."""
    try:
        parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("shard must be", "must be")) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    temperature, max_tokens = _backend_default("temperature"), _backend_default("max_tokens")
    parser = argparse.ArgumentParser(prog="openrouter-sync", description=(__doc__ or "").replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"openrouter-sync {__version__}")

    endpoint = argparse.ArgumentParser(add_help=False)
    endpoint.add_argument("--base-url", default=DEFAULT_BASE_URL, metavar="URL",
                          help="an OpenAI-compatible endpoint (default: %(default)s)")
    endpoint.add_argument("--timeout", type=_number(float, 0, low_open=True), default=300.0, metavar="SECONDS",
                          help="deadline per HTTP attempt; for a streamed answer, per wait for its next event "
                               "(default: %(default)s)")
    endpoint.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'",
                          help="a header sent with every request, e.g. 'api-key: ...' (repeatable; default: "
                               "none; the values of credential headers are never shown)")
    endpoint.add_argument("--no-key", action="store_true",
                          help="send no API key (a server that needs none; default: the key is required for "
                               "OpenRouter's endpoint only)")
    offline = endpoint.add_mutually_exclusive_group()
    offline.add_argument("--offline", action="store_true",
                         help="use the built-in fake server (same as --offline-mode always; default: off)")
    offline.add_argument("--offline-mode", choices=("auto", "always", "never"), metavar="{auto,always,never}",
                         help="auto: the fake server only when OPENROUTER_API_KEY is not set; always; never "
                              f"(default: ${OFFLINE_ENV}, else never)")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("-m", "--model", metavar="MODEL",
                       help=f"model id (default: ${MODEL_ENV} if set, else {DEFAULT_MODEL}, a paid model)")
    model.add_argument("--temperature", type=_number(float, 0, 2), metavar="T",
                       help=f"sampling temperature, 0 to 2 (default: {temperature})")
    model.add_argument("--max-tokens", type=_number(int, 1), dest="max_tokens", metavar="N",
                       help=f"answer length limit in tokens (default: {max_tokens})")
    model.add_argument("--system", metavar="TEXT", help="a system prompt (default: none)")

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[model, endpoint], help="run every prompt of a file; resumable",
                         description="Run every prompt of a file. Results are appended to -o as they finish "
                                     "(one JSON line each: id, prompt, metadata, settings, result); run the same "
                                     "command again to resume. A results file remembers the settings its answers "
                                     "were made with: a rerun with other settings refuses unless --force or "
                                     "--fresh is given.")
    run.add_argument("input", help="a .txt file (one prompt a line), a .jsonl file (one object a line: "
                                   "prompt or messages, id, system, metadata, model, temperature, ...), or - for stdin")
    run.add_argument("-o", "--output", required=True, metavar="RESULTS.jsonl",
                     help="the results file (JSONL); also the checkpoint a rerun resumes from (required)")
    run.add_argument("--format", choices=("txt", "jsonl"),
                     help="the input's format (default: by extension: .jsonl/.ndjson is jsonl, anything else "
                          "and stdin txt)")
    run.add_argument("-w", "--workers", type=_number(int, 1), default=8, metavar="N",
                     help="prompts in flight at once (default: %(default)s)")
    run.add_argument("--rpm", type=_number(float, 0, low_open=True), metavar="N",
                     help="client-side limit, requests per minute (default: none)")
    run.add_argument("--max-cost", type=_number(float, 0, low_open=True), dest="max_cost", metavar="USD",
                     help="spending cap: send no new prompt once the answers' reported cost reaches USD dollars, "
                          "counting what earlier runs on -o spent; prompts in flight finish; the rest are "
                          "left for a rerun with a higher cap (default: no cap)")
    run.add_argument("--attempts", type=_number(int, 1), metavar="N",
                     help=f"attempts per prompt, 1 = no retries (default: {RetryPolicy().max_attempts})")
    redo = run.add_mutually_exclusive_group()
    redo.add_argument("--force", action="store_true",
                      help="redo the sheets whose stored answers were made with other settings (default: refuse)")
    redo.add_argument("--fresh", action="store_true",
                      help="reuse nothing from the results file: redo every sheet, appending (default: resume)")
    run.add_argument("--shard", type=_shard, metavar="K/N",
                     help="run only share K of N of the prompts (1 <= K <= N), split by a hash of each prompt's "
                          "id: N machines or array tasks, each with its own -o, run every prompt exactly once "
                          "between them; `export` merges their results files (default: every prompt)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    run.set_defaults(func=cmd_run)

    ask = sub.add_parser("ask", parents=[model, endpoint], help="ask one question; the answer streams to stdout")
    ask.add_argument("prompt", help="the question, or - to read it from stdin")
    ask.set_defaults(func=cmd_ask)

    models = sub.add_parser("models", parents=[endpoint], help="list models and prices")
    models.add_argument("--free", action="store_true", help="only free models (default: all)")
    models.set_defaults(func=cmd_models)

    check = sub.add_parser("check", parents=[endpoint], help="key present, endpoint healthy, key limits")
    check.set_defaults(func=cmd_check)

    export = sub.add_parser("export", help="a results file's final answers: one per prompt, in input order",
                            description="Write the latest record of each sheet of a results file, in input "
                                        "order: JSONL (the records as stored, with their attachments put back) "
                                        "or CSV (id, index, label, prompt, success, answer, error_type, "
                                        "error_message, finish_reason, tool_calls, model, input_tokens, "
                                        "output_tokens, cost, attempts, duration_seconds, metadata).")
    export.add_argument("results", nargs="+", metavar="RESULTS",
                        help="a results file written by `openrouter-sync run`; several (the shards of one batch, "
                             "--shard) are merged into one, in input order (a later file wins for a sheet in two)")
    export.add_argument("-o", "--output", metavar="FILE", help="where to write (default: stdout)")
    export.add_argument("--format", choices=("jsonl", "csv"),
                        help="output format (default: csv when -o ends in .csv, else jsonl)")
    export.set_defaults(func=cmd_export)

    compacting = sub.add_parser("compact", help="rewrite a results file keeping the latest record of each sheet",
                                description="Rewrite a results file keeping only the latest valid record of each "
                                            "sheet (superseded records from reruns, torn and foreign lines go), "
                                            "atomically: a new file is written beside it and renamed over it. "
                                            "Refused while a run uses the file.")
    compacting.add_argument("results", help="a results file written by `openrouter-sync run`")
    compacting.set_defaults(func=cmd_compact)
    return parser


def _cli_names(message: str) -> str:
    """A library message with its parameter names replaced by the options a CLI user typed."""
    return re.sub(r"\b(" + "|".join(_OPTION_NAMES) + r")\b", lambda m: _OPTION_NAMES[m.group(1)], message)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` (exit 143, through the command's cleanup) instead of killing the
    process at once; ``run`` replaces this with run_sheets' own handling while the batch runs."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup is not cut in turn
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has reported
        return int(exc.code or 0)
    try:
        with _sigterm_raises():
            return int(args.func(args))
    except (UsageError, CheckpointError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except Failure as exc:
        _err(str(exc))
        return EXIT_FAILED
    except ValueError as exc:  # a bad option value the library refused
        _err(_cli_names(str(exc)))
        return EXIT_USAGE
    except Terminated:
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `openrouter-sync export ... | head`: the reader has gone
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
