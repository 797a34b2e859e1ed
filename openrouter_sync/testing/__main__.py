"""Run the fake server in its own process: ``python -m openrouter_sync.testing [options]``.

Prints its base URL on the first line and the URL of its counters (JSON) on the second, then serves
until stdin closes or it is stopped. ``GET <base URL>/_fake/stats`` answers the same.
"""

from __future__ import annotations

import argparse
import sys

from .server import FakeOpenRouter, Faults, RateLimit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrouter_sync.testing", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each chat answer")
    parser.add_argument("--rate", type=float, help="token bucket: requests per second")
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--style", default="retry-after", help="how 429s name their wait")
    parser.add_argument("--delay-rejections", action="store_true")
    parser.add_argument("--fault-probability", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default="500,502,503,reset,truncate,error200,html")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-lifetime", type=float, default=900.0)
    parser.add_argument("--stream-usage", choices=("always", "requested"), default="always",
                        help="end streams with a usage chunk always (as OpenRouter) or only when the request "
                             "asks with stream_options.include_usage (as OpenAI-compatible servers)")
    args = parser.parse_args(argv)
    rate_limit = RateLimit(args.rate, args.burst, args.style, args.delay_rejections) if args.rate else None
    faults = Faults(args.fault_probability, tuple(args.fault_kinds.split(",")), args.seed) \
        if args.fault_probability else None
    with FakeOpenRouter(port=args.port, latency=args.latency, rate_limit=rate_limit, faults=faults,
                        record=False, max_lifetime=args.max_lifetime, stream_usage=args.stream_usage) as server:
        print(server.base_url, flush=True)
        print(f"stats: {server.stats_url}", flush=True)
        try:
            sys.stdin.read()  # until the parent closes our stdin
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
