"""The picture in docs/rate-limits.md: the rate this library sends at against the server's real limit,
over time, for three families of limiters (in the simulator, so it is the same on every machine).

    python -m benchmarks.rate_picture [--out docs/img/rate-control.png]

Needs matplotlib (the ``bench`` extra). Each panel: requests admitted per quarter second (as a rate),
refusals as marks, and the limiter's rate (for a window, its count over its length).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from ratesim import EPOCH, Answer, FixedWindow, Server, TokenBucket, simulate

BIN = 0.25


def _recorded(server: Server) -> Tuple[Server, List[Tuple[float, int]]]:
    """``server``, with every request's time (from the start) and status recorded."""
    log: List[Tuple[float, int]] = []
    handle: Callable[[float, str], Answer] = server.handle

    def recording(now: float, model: str) -> Answer:
        answer = handle(now, model)
        log.append((now - EPOCH, answer.status))
        return answer

    server.handle = recording  # type: ignore[method-assign]
    return server, log


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/img/rate-control.png")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [
        ("token bucket 40/s, burst 10, Retry-After: 1", TokenBucket(40.0, 10, "whole"), lambda t: 40.0),
        ("rate 20/s, 50/s from 4 s, 20/s from 8 s", TokenBucket(20.0, 5, "exact", changes=[(4.0, 50.0), (8.0, 20.0)]),
         lambda t: 50.0 if 4.0 <= t < 8.0 else 20.0),
        ("fixed window 60 per 2 s, Retry-After to its end", FixedWindow(60, 2.0, "exact", align="start"),
         lambda t: 30.0),
    ]
    figure, axes = plt.subplots(len(cases), 1, figsize=(8, 7.5), sharex=True)
    for axis, (title, server, limit) in zip(axes, cases):
        server, log = _recorded(server)
        run = simulate(server, n=360, workers=32)
        end = max(t for t, _ in log)
        bins = int(end / BIN) + 1
        admitted = [0.0] * bins
        for t, status in log:
            if status == 200:
                admitted[int(t / BIN)] += 1.0 / BIN
        times = [i * BIN for i in range(bins)]
        axis.step(times, admitted, where="post", label="admitted (per second)")
        axis.plot(times, [limit(t) for t in times], "k--", linewidth=1, label="the server's limit")
        refused = [t for t, status in log if status != 200]
        axis.plot(refused, [2.0] * len(refused), "rx", markersize=4, label=f"refused ({len(refused)})")
        axis.set_title(f"{title}: {run.makespan:.2f} s, {run.ratio:.2f}x the ideal", fontsize=10)
        axis.set_ylabel("requests/s")
        axis.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("seconds since the first request")
    figure.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
