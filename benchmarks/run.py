"""Every benchmark, side by side in one run.

    python -m benchmarks.run --markdown            # BENCHMARKS.md's tables and docs/img/benchmarks/*.png
    python -m benchmarks.run --markdown --quick    # a smoke test: small samples, printed, pictures in a temp dir
    python -m benchmarks.run [suite ...]           # one table per suite, printed

``--markdown [FILE]`` measures the families of ``benchmarks.report`` (matrix, processes,
overhead, batches; name some to run only those) and writes each one's table and picture between
its markers in FILE (default BENCHMARKS.md; ``-`` prints them). With ``--quick`` the samples are
small and the tables are printed unless FILE is named. Without ``--markdown``: suites ratelimit,
soak, batch, overhead, latency, import, memory, each printed as a table with openrouter-sync and
its baselines measured in the same run.
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


def _markdown(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from . import report

    names = args.suites or list(report.FAMILIES)
    unknown = [s for s in names if s not in report.FAMILIES]
    if unknown:
        parser.error(f"unknown famil(ies) for --markdown: {', '.join(unknown)}; known: {', '.join(report.FAMILIES)}")
    target = args.markdown
    if args.quick and target == _DEFAULT_MARKDOWN and not args.markdown_named:
        target = "-"
    if args.quick:  # a smoke test never replaces the published pictures
        report.FIGURES = Path(tempfile.mkdtemp(prefix="bench-figures-"))
    print(f"measuring {', '.join(names)}{' (quick)' if args.quick else ''}", flush=True)
    sections, data = report.run(names, args.quick)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
    if target == "-":
        for name, body in sections.items():
            print(f"\n<!-- benchmarks:{name} -->\n{body}\n<!-- /benchmarks:{name} -->")
        print(f"\n(pictures in {report.FIGURES})")
    else:
        report.write(Path(target), sections)
        print(f"wrote {target} ({', '.join(sections)}) and pictures in {report.FIGURES}")
    return 0


_DEFAULT_MARKDOWN = "BENCHMARKS.md"


def main(argv: list[str] | None = None) -> int:
    _load_extra_suites()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", help=f"suites: any of {', '.join(SUITES)} (default: all); "
                                                  "with --markdown (named before it), families (default: all)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--markdown", nargs="?", const=_DEFAULT_MARKDOWN, metavar="FILE",
                        help="write BENCHMARKS.md's tables and pictures (FILE, default %(const)s; - prints)")
    parser.add_argument("--quick", action="store_true", help="small samples, for a smoke test")
    args = parser.parse_args(argv)
    raw = list(argv) if argv is not None else sys.argv[1:]
    args.markdown_named = any(a.startswith("--markdown=") for a in raw) or (
        "--markdown" in raw and raw.index("--markdown") + 1 < len(raw)
        and raw[raw.index("--markdown") + 1] == args.markdown)
    if args.markdown:
        return _markdown(parser, args)
    args.suites = args.suites or list(SUITES)
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
