"""The ``openrouter-sync`` command: run a batch, ask one question, list models, check a key.

    openrouter-sync run prompts.txt -o results.jsonl      # one prompt a line, or JSONL, or - for stdin
    openrouter-sync ask "Explain quicksort"               # streams the answer
    openrouter-sync models --free
    openrouter-sync check

``--offline`` (or ``OPENROUTER_SYNC_OFFLINE=1``) runs against the built-in fake server;
``--offline=auto`` does so only when ``OPENROUTER_API_KEY`` is not set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Iterator, Optional, Sequence, TextIO

from ._version import __version__
from .backend import DEFAULT_BASE_URL, DEFAULT_MODEL, OpenRouterBackend
from .errors import OpenRouterError
from .request import OVERRIDE_KEYS
from .retry import RetryPolicy
from .runner import RunInterrupted, run_sheets
from .sheet import Sheet
from .testing.demo import demo_backend, offline_wanted

SHEET_FIELDS = {"prompt", "messages", "id", "system", "preamble", "extensions", "timeout_seconds", "metadata",
                "overrides", "output_log_path"}
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class InputError(Exception):
    """A bad input file; the message names the line."""


def read_sheets(source: TextIO, name: str) -> list[Sheet]:
    """Sheets from a text file (one prompt a line) or JSONL (one object a line). Blank lines are skipped."""
    lines = source.read().splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    jsonl = name.endswith(".jsonl") or first.startswith("{")
    sheets: list[Sheet] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            sheets.append(Sheet(prompt=line.strip()))
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{name}, line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise InputError(f"{name}, line {number}: expected a JSON object, got {type(record).__name__}")
        try:
            sheets.append(_sheet_from_record(record))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}, line {number}: {exc}") from None
    if not sheets:
        raise InputError(f"{name}: no prompts in it")
    return sheets


def _sheet_from_record(record: dict[str, Any]) -> Sheet:
    unknown = sorted(set(record) - SHEET_FIELDS - OVERRIDE_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"use {', '.join(sorted(SHEET_FIELDS))} or a request option")
    fields = {k: v for k, v in record.items() if k in SHEET_FIELDS}
    overrides = dict(fields.pop("overrides", None) or {})
    overrides.update({k: v for k, v in record.items() if k in OVERRIDE_KEYS})
    if "prompt" not in fields and "messages" not in fields:
        raise ValueError("needs 'prompt' or 'messages'")
    return Sheet(overrides=overrides, **fields)


@contextlib.contextmanager
def _backend(args: argparse.Namespace) -> Iterator[tuple[OpenRouterBackend, bool]]:
    offline = offline_wanted(args.offline)
    options: dict[str, Any] = {"model": args.model, "timeout_seconds": args.timeout, "base_url": args.base_url}
    for name in ("max_tokens", "temperature"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "attempts", None) is not None:
        options["retry_policy"] = RetryPolicy(max_attempts=args.attempts)
    if getattr(args, "rpm", None) is not None:
        options["requests_per_minute"] = args.rpm
    if getattr(args, "workers", None):
        options["pool_size"] = args.workers
    with demo_backend(offline="1" if offline else "0", **options) as backend:
        yield backend, offline


def cmd_run(args: argparse.Namespace) -> int:
    try:
        if args.input == "-":
            sheets = read_sheets(sys.stdin, "<stdin>")
        else:
            with open(args.input, encoding="utf-8") as handle:
                sheets = read_sheets(handle, args.input)
    except OSError as exc:
        print(f"openrouter-sync: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as exc:
        print(f"openrouter-sync: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.system:
        for sheet in sheets:
            sheet.system = sheet.system or args.system
    with _backend(args) as (backend, offline):
        try:
            results = run_sheets(backend, sheets, max_workers=args.workers, checkpoint=args.output,
                                 progress=not args.no_progress, checkpoint_tag="offline" if offline else None)
        except RunInterrupted as exc:
            print(f"\ninterrupted: {exc.summary.total} of {len(sheets)} sheets finished; "
                  f"run the same command again to resume from {args.output}", file=sys.stderr)
            return EXIT_INTERRUPTED
    print(results.summary, file=sys.stderr)
    print(f"results: {args.output}", file=sys.stderr)
    return EXIT_FAILED if results.summary.failed else 0


def cmd_ask(args: argparse.Namespace) -> int:
    with _backend(args) as (backend, _), backend.stream(args.prompt, system=args.system) as stream:
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
    result = stream.result
    assert result is not None
    sys.stdout.write("\n")
    if not result.success:
        print(f"openrouter-sync: {result.error_type} (exit {result.exit_code}): {result.error_message}",
              file=sys.stderr)
        return EXIT_FAILED
    cost = "" if result.cost is None else f", ${result.cost:.6f}"
    print(f"[{result.model}, {result.tokens_used} tokens{cost}]", file=sys.stderr)
    return 0


def _per_million(price: Optional[float]) -> str:
    return "?" if price is None else f"{price * 1e6:.2f}"


def cmd_models(args: argparse.Namespace) -> int:
    with _backend(args) as (backend, _):
        try:
            models = backend.list_models(free=args.free)
        except OpenRouterError as exc:
            print(f"openrouter-sync: {exc}", file=sys.stderr)
            return EXIT_FAILED
    width = max([len(m.id) for m in models] + [5])
    print(f"{'model':<{width}}  {'context':>9}  {'$/M in':>8}  {'$/M out':>8}")
    for m in sorted(models, key=lambda m: m.id):
        context = "?" if m.context_length is None else str(m.context_length)
        print(f"{m.id:<{width}}  {context:>9}  {_per_million(m.prompt_price):>8}  "
              f"{_per_million(m.completion_price):>8}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    with _backend(args) as (backend, offline):
        ok = True
        has_key = backend.availability_check()
        print(f"key ({'offline fake' if offline else backend.api_key_env}): {'present' if has_key else 'MISSING'}")
        ok &= has_key
        healthy = backend.health_check()
        print(f"endpoint {backend.base_url}: {'reachable' if healthy else 'NOT reachable or key refused'}")
        ok &= healthy
        if has_key:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openrouter-sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"openrouter-sync {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", "-m", default=os.environ.get("OPENROUTER_MODEL", DEFAULT_MODEL))
    common.add_argument("--base-url", default=DEFAULT_BASE_URL)
    common.add_argument("--timeout", type=float, default=300.0, help="seconds per attempt (default 300)")
    common.add_argument("--offline", nargs="?", const="1", default=None, metavar="auto",
                        help="use the built-in fake server (always; or 'auto': only without OPENROUTER_API_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run every prompt of a file; resumable")
    run.add_argument("input", help="a .txt file (one prompt a line), a .jsonl file, or - for stdin")
    run.add_argument("-o", "--output", required=True, help="JSONL results; also the checkpoint to resume from")
    run.add_argument("--workers", "-w", type=int, default=8)
    run.add_argument("--rpm", type=float, help="client-side limit, requests per minute")
    run.add_argument("--attempts", type=int, help="attempts per prompt (default 8)")
    run.add_argument("--system", help="a system prompt for every sheet")
    run.add_argument("--max-tokens", type=int, dest="max_tokens")
    run.add_argument("--temperature", type=float)
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)

    ask = sub.add_parser("ask", parents=[common], help="ask one question; the answer streams to stdout")
    ask.add_argument("prompt")
    ask.add_argument("--system")
    ask.add_argument("--max-tokens", type=int, dest="max_tokens")
    ask.add_argument("--temperature", type=float)
    ask.set_defaults(func=cmd_ask)

    models = sub.add_parser("models", parents=[common], help="list models and prices")
    models.add_argument("--free", action="store_true", help="only free models")
    models.set_defaults(func=cmd_models)

    check = sub.add_parser("check", parents=[common], help="key present, endpoint healthy, key limits")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # a bad option value (temperature 5, workers 0, ...)
        print(f"openrouter-sync: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
