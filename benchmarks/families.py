"""Rate control on random limiters from the families real APIs use, in the simulator: this library's
client against a plain requests + tenacity loop, per family, on the same instances.

    python -m benchmarks.families [--per-family N] [--seed S] [--family F ...]

Each family gets the same number of instances (a family drawn at random among ten gets about a
tenth of them, too few for a median). Each instance is drawn by ``tests/limiters.draw`` (its
parameters: rates of 5-60/s, bursts, windows of 1, 2 or 5 s or any length from 0.5 to 6 s at any
phase, caps of 2-16, waits named in any style) and run for 150 or 300 prompts on 32 virtual
workers (``tests/ratesim``: deterministic, no sockets). Makespans are given against the oracle's
ideal (``tests/limiters.ideal``); refusals as a share of the prompts.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from limiters import FAMILIES, draw, ideal
from ratesim import Server, simulate

WORKERS = 32


def _instance(seed: int, family: str) -> Tuple[int, Server]:
    """The batch size and a fresh server of the instance of ``family`` that ``seed`` draws."""
    rng = random.Random(seed)
    n = rng.choice([150, 300])
    return n, draw(rng, n, family)[1]


def measure(seed: int, family: str) -> Tuple[float, float, float, int, int]:
    """(ours x ideal, plain x ideal, ours' refusals per prompt, ours' and plain's lost prompts) on
    the instance of ``family`` that ``seed`` draws (the same one for every client). The plain loop
    is the better of two: one that ignores the waits the server names, and one that waits a number
    named in ``Retry-After`` (as ``benchmarks/clients.py``'s does); the one that lost fewer prompts,
    else the faster."""
    n, server = _instance(seed, family)
    best = ideal(server, n, WORKERS)
    ours = simulate(server, n=n, workers=WORKERS, seed=seed)
    plains = [simulate(_instance(seed, family)[1], n=n, workers=WORKERS, seed=seed, plain=True, retry_after=heed,
                       max_attempts=10) for heed in (False, True)]
    plain = min(plains, key=lambda run: (run.failures, run.makespan))  # a run that lost prompts ended early
    return ours.makespan / best, plain.makespan / best, ours.refusals / n, ours.failures, plain.failures


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-family", type=int, default=50, help="instances of each family (default 50)")
    parser.add_argument("--seed", type=int, default=100, help="the first instance's seed")
    parser.add_argument("--family", action="append", choices=FAMILIES, help="only this family (repeatable)")
    args = parser.parse_args(argv)
    if args.per_family < 1:
        parser.error("--per-family must be at least 1")
    rows: Dict[str, List[Tuple[float, float, float, int, int]]] = {
        family: [measure(seed, family) for seed in range(args.seed, args.seed + args.per_family)]
        for family in args.family or FAMILIES}
    print("| family | instances | x ideal, median | worst | plain loop, median | slower than plain | "
          "worst vs plain | refused, mean | over 10% refused | prompts lost (ours / plain) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for family, got in rows.items():
        ours, plain = [r[0] for r in got], [r[1] for r in got]
        print(f"| {family} | {len(got)} | {statistics.median(ours):.2f}x | {max(ours):.2f}x | "
              f"{statistics.median(plain):.2f}x | {sum(o > p for o, p in zip(ours, plain))} | "
              f"{max(o / p for o, p in zip(ours, plain)):.2f}x | {statistics.mean(r[2] for r in got):.0%} | "
              f"{sum(r[2] > 0.10 for r in got)} | {sum(r[3] for r in got)} / {sum(r[4] for r in got)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
