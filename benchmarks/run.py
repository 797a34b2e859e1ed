"""Every benchmark, side by side in one run: ``python -m benchmarks.run [suite ...]``.

Suites: ratelimit, soak, batch (and overhead, import, memory: see benchmarks/overhead.py).
Prints a table per suite with openrouter-sync and its baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any, Callable

from . import scenarios as S

Suite = Callable[[], list[tuple[str, dict[str, Any]]]]


def ratelimit() -> list[tuple[str, dict[str, Any]]]:
    rows = [(f"openrouter-sync ({style})", S.rate_limited(S.ours, style))
            for style in ("retry-after", "retry-after-ms", "reset-ms", "body", "metadata", "none")]
    rows.append(("requests + tenacity exponential back-off (retry-after)", S.rate_limited(S.requests_tenacity)))
    return rows


def soak() -> list[tuple[str, dict[str, Any]]]:
    return [("openrouter-sync", S.fault_soak(S.ours)), ("requests + tenacity", S.fault_soak(S.requests_tenacity))]


def batch() -> list[tuple[str, dict[str, Any]]]:
    return [("openrouter-sync run_sheets", S.latency_bound(S.ours)),
            ("ThreadPoolExecutor + requests.Session", S.latency_bound(S.plain_requests_pool))]


SUITES: dict[str, Suite] = {"ratelimit": ratelimit, "soak": soak, "batch": batch}


def _load_extra_suites() -> None:
    try:
        from . import overhead
    except ImportError:  # pragma: no cover
        return
    SUITES.update(overhead.SUITES)


def _table(name: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
    keys: list[str] = []
    for _, figures in rows:
        keys += [k for k in figures if k not in keys]
    header = "| client | " + " | ".join(keys) + " |"
    lines = [f"### {name}", "", header, "|" + "---|" * (len(keys) + 1)]
    for label, figures in rows:
        lines.append(f"| {label} | " + " | ".join(str(figures.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    _load_extra_suites()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", default=list(SUITES), help=f"any of {', '.join(SUITES)}")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}")
    print(f"machine: {platform.machine()}, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}\n")
    everything: dict[str, Any] = {}
    for name in args.suites:
        rows = SUITES[name]()
        everything[name] = rows
        print(_table(name, rows) + "\n", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(everything, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
