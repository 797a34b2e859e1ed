"""The rate-control matrix: every server model, openrouter-sync and the plain loop side by side.

    python -m benchmarks.ratelimit_matrix [--quick | --prompts N] [--rows tb-int,fw-int] [--pythonpath DIR]

Each row starts a fresh independent server (``benchmarks/servers.py``, its own process) and runs
both clients against it one after the other, each in its own process (``benchmarks/clients.py``):
openrouter-sync ``run_sheets(backend, prompts, max_workers=32)`` on a fresh backend, and the plain
``ThreadPoolExecutor`` + ``requests.Session`` + tenacity loop. 300 prompts (``--quick``: 150;
``--prompts N``: N, with the window's size and the time of a rate change following N), 32 workers,
50 ms latency. Per client: makespan against the row's ideal (the floor: see ``bucket_ideal`` and
``window_ideal``), 429s (and their share of the prompts), and correctness
(every prompt answered with its own answer, none answered twice).

``--pythonpath DIR`` measures the ``openrouter_sync`` package in DIR (e.g. a clean checkout);
by default, the one this repository holds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .harness import Client, check, library_line, machine_line, ratio, table
from .servers import ServerProcess, ServerSpec

WORKERS = 32
LATENCY = 0.05
EPOCH_PHASE = 0.37  # fw-epoch: seconds into a wall-clock window at the run's start (as the simulator's)


@dataclass
class Row:
    says: str  # what the server's 429 says, for the table
    spec: ServerSpec
    ideal: Callable[[int], float]  # prompts -> seconds
    phase: Optional[float] = None  # start when the wall clock is this many seconds into a window (epoch windows)


def bucket_ideal(schedule: list, burst: int = 10, latency: float = LATENCY) -> Callable[[int], float]:
    """The floor for ``n`` requests through a token bucket: the burst at once, the rest at the
    (piecewise constant) rate, then one latency for the last answer."""
    def ideal(n: int) -> float:
        left = float(max(0, n - burst))
        points = [*sorted(schedule), [float("inf"), 0.0]]
        for (at, rate), (until, _) in zip(points, points[1:]):
            if at + left / rate <= until:
                return at + left / rate + latency
            left -= rate * (until - at)
        raise AssertionError("unreachable: the last segment never ends")
    return ideal


def window_ideal(limit: int, window: float, workers: int = WORKERS, latency: float = LATENCY,
                 phase: float = 0.0) -> Callable[[int], float]:
    """The floor for ``n`` requests through a fixed window: each window's quota at its start,
    ``workers`` at a time; the last window's share takes ``ceil(share / workers)`` latencies.
    ``phase``: the run starts this many seconds into the first window (windows on the wall clock)."""
    def ideal(n: int) -> float:
        windows = math.ceil(n / limit)
        last = n - (windows - 1) * limit
        return max(0.0, (windows - 1) * window - phase) + math.ceil(last / workers) * latency
    return ideal


def rows_for(n: int) -> dict[str, Row]:
    """The server models for ``n`` prompts. The fixed window lets a third of them through per
    window (100 per 2 s for 300); the rate-change rows switch when half the prompts would be done."""
    per_window = n // 3
    half_at_50, half_at_20 = n / 2 / 50, n / 2 / 20
    rows: dict[str, Row] = {}
    for hint, says in (("int", "`Retry-After: 1` (whole seconds, ceil of the true wait)"),
                       ("date", "`Retry-After: <HTTP-date>` (1 s granularity)"),
                       ("frac", "`Retry-After: 0.237` (fractional)"),
                       ("ms", "`retry-after-ms`"),
                       ("xrl", "only `X-RateLimit-Limit/Remaining/Reset` (epoch ms)"),
                       ("body", "body `retry_after_seconds`"),
                       ("meta", "OpenRouter `error.metadata.headers` (X-RateLimit-*)"),
                       ("none", "nothing at all")):
        rows[f"tb-{hint}"] = Row(f"token bucket 50/s burst 10; {says}",
                                 ServerSpec("bucket", hint, LATENCY, burst=10, schedule=[[0, 50]]),
                                 bucket_ideal([[0, 50]]))
    rows["fw-int"] = Row(f"fixed window {per_window} per 2 s; `Retry-After` whole seconds to the window's end",
                         ServerSpec("window", "int", LATENCY, limit=per_window, window=2.0),
                         window_ideal(per_window, 2.0))
    rows["fw-epoch"] = Row(f"fixed window {per_window} per 2 s on the wall clock (from the epoch), the run "
                           f"starting {EPOCH_PHASE} s into one; `Retry-After` whole seconds to the window's end",
                           ServerSpec("window", "int", LATENCY, limit=per_window, window=2.0, align="epoch"),
                           window_ideal(per_window, 2.0, phase=EPOCH_PHASE), phase=EPOCH_PHASE)
    rows["fw-meta"] = Row(f"fixed window {per_window} per 2 s; OpenRouter free-tier shape: `metadata.headers` "
                          "X-RateLimit-Reset (epoch ms) = the window's end",
                          ServerSpec("window", "meta", LATENCY, limit=per_window, window=2.0),
                          window_ideal(per_window, 2.0))
    rows["conc"] = Row("at most 8 in flight; upstream 429 \"Provider returned error\", no hint",
                       ServerSpec("concurrency", "upstream", LATENCY, limit=8),
                       lambda m: math.ceil(m / 8) * LATENCY)  # 8 answer times at a time: 300 need 38 rounds
    drop, rise = [[0, 50], [half_at_50, 20]], [[0, 20], [half_at_20, 50]]
    rows["drop"] = Row(f"token bucket drops 50 -> 20/s after {half_at_50:g} s; whole-second `Retry-After`",
                       ServerSpec("bucket", "int", LATENCY, burst=10, schedule=drop), bucket_ideal(drop))
    rows["rise"] = Row(f"token bucket rises 20 -> 50/s after {half_at_20:g} s; whole-second `Retry-After`",
                       ServerSpec("bucket", "int", LATENCY, burst=10, schedule=rise), bucket_ideal(rise))
    return rows


CLIENT_LABELS = {"ours": "openrouter-sync", "plain": "requests + tenacity loop"}


def run_one(kind: str, row: Row, n: int, pythonpath: Optional[str]) -> dict[str, Any]:
    """One client against a fresh server of ``row``'s model."""
    ideal = row.ideal(n)
    with ServerProcess(row.spec) as server:
        start_at = time.time() + 1.0
        if row.phase is not None:  # the next moment that far into a window of the wall clock
            window = row.spec.window
            start_at = (math.floor((start_at - row.phase) / window) + 1) * window + row.phase
        client = Client(kind, server.base_url, f"{kind}-{uuid.uuid4().hex[:8]}", n, WORKERS,
                        start_at=start_at, pythonpath=pythonpath).start()
        client.finish(deadline=time.time() + 1.0 + 15 * ideal + 20)
        stats = server.stats()
    figures = check([client], stats)
    result = client.result
    makespan = result["end"] - result["began"] if "end" in result else None
    rejected = stats["status"].get("429", 0)
    return {"client": kind, "makespan": makespan, "ideal": ideal, "429s": rejected, "share_429": rejected / n,
            "timeout": bool(result.get("timeout")), "library": result.get("library", ""), "n": n, **figures}


def _cell(r: dict[str, Any]) -> list[str]:
    if r["timeout"]:
        return ["timeout", "", f"{r['429s']}", f"{r['correct']}/{r['n']}, {r['twice']}"]
    if r["makespan"] is None:
        return ["failed", "", "", ""]
    return [f"{r['makespan']:.2f}", ratio(r["makespan"], r["ideal"]), f"{r['429s']} ({r['share_429']:.0%})",
            f"{r['correct']}/{r['n']}, {r['twice']}"]


def markdown(results: list[tuple[str, dict[str, Any]]], kinds: list[str]) -> str:
    """One line per row, the clients side by side."""
    headers = ["row", "ideal s"]
    for kind in kinds:
        label = CLIENT_LABELS[kind]
        headers += [f"{label} s", "x ideal", "429s (share of prompts)", "own answer, twice"]
    by_row: dict[str, dict[str, dict[str, Any]]] = {}
    for name, result in results:
        by_row.setdefault(name, {})[result["client"]] = result
    lines = []
    for name, clients in by_row.items():
        line = [name, f"{next(iter(clients.values()))['ideal']:.2f}"]
        for kind in kinds:
            line += _cell(clients[kind]) if kind in clients else ["", "", "", ""]
        lines.append(line)
    return table(headers, lines)


def legend(rows: dict[str, Row], names: list[str]) -> str:
    return table(["row", "server model (50 ms latency; 429s answered at once)"],
                 [[name, rows[name].says] for name in names])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="150 prompts a row instead of 300")
    parser.add_argument("--prompts", type=int, help="this many prompts a row instead of 300")
    parser.add_argument("--rows", help="comma-separated row names (default: all): " + ", ".join(rows_for(300)))
    parser.add_argument("--clients", default="ours,plain", help="comma-separated: ours, plain")
    parser.add_argument("--pythonpath", help="measure the openrouter_sync package found in this directory")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    n = args.prompts or (150 if args.quick else 300)
    if n < 3:
        parser.error("--prompts must be at least 3")
    rows = rows_for(n)
    names = args.rows.split(",") if args.rows else list(rows)
    unknown = [name for name in names if name not in rows]
    if unknown:
        parser.error(f"unknown row(s): {', '.join(unknown)}; known: {', '.join(rows)}")
    print(machine_line())
    print(f"openrouter_sync: {library_line(args.pythonpath)}")
    print(f"{n} prompts a row, {WORKERS} workers, {LATENCY * 1000:g} ms latency\n", flush=True)
    kinds = args.clients.split(",")
    results = []
    began = time.time()
    for name in names:
        for kind in kinds:
            result = run_one(kind, rows[name], n, args.pythonpath)
            results.append((name, result))
            print(f"  {name:8} {CLIENT_LABELS[kind]:26} " + " | ".join(_cell(result)), file=sys.stderr, flush=True)
    print(legend(rows, names) + "\n")
    print(markdown(results, kinds))
    print(f"\n(matrix took {time.time() - began:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([{"row": name, **result} for name, result in results], handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
