"""A mixed batch: half the sheets to a model its provider holds to 10 requests a second, half to one
with no limit. How soon are the unlimited model's sheets done, against their own ideal?

    python -m benchmarks.mixed [--prompts N] [--pythonpath DIR]

The server (here, on 127.0.0.1) answers every request after 50 ms; the limited model's requests
pass a token bucket of 10 a second (burst 1), and those over it get a 429 "Provider returned error"
naming the model's provider and the exact wait. ``run_sheets(backend, sheets, max_workers=32)``
with the sheets alternating between the two models. The unlimited half's ideal is
``ceil(N/2 / 32) * 50 ms`` (rounds of 32); the limited half's is ``(N/2 - 1) / 10 s``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LATENCY = 0.05
LIMITED = "slow/limited"
RATE = 10.0


class _Bucket:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens, self.stamp = 1.0, time.monotonic()

    def take(self) -> float:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(1.0, self.tokens + (now - self.stamp) * RATE)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / RATE


def serve() -> ThreadingHTTPServer:
    bucket = _Bucket()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            model = body.get("model", "")
            wait = bucket.take() if model == LIMITED else 0.0
            if wait:
                payload = {"error": {"code": 429, "message": "Provider returned error",
                                     "metadata": {"provider_name": "Slow", "raw": "rate limited upstream"}}}
                self._send(429, payload, {"Retry-After": f"{wait:.3f}"})
                return
            time.sleep(LATENCY)
            text = body["messages"][-1]["content"]
            self._send(200, {"id": "gen-1", "model": model, "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}, {})

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        request_queue_size = 512  # 32 workers connect at once: a SYN dropped from a full backlog waits 1 s

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--pythonpath", help="measure the openrouter_sync package found in this directory")
    args = parser.parse_args(argv)
    if args.pythonpath:
        sys.path.insert(0, args.pythonpath)
    from openrouter_sync import OpenRouterBackend, RetryPolicy, Sheet, run_sheets

    server = serve()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    sheets = [Sheet(prompt=f"p{i}", id=f"s{i}", overrides={"model": LIMITED if i % 2 else "fast/unlimited"})
              for i in range(args.prompts)]
    finished: dict[int, float] = {}
    start = time.monotonic()
    with OpenRouterBackend(base_url=url, api_key="sk-bench", share_throttle=False,
                           retry_policy=RetryPolicy(max_attempts=50)) as backend:
        results = run_sheets(backend, sheets, max_workers=32,
                             on_result=lambda i, r: finished.__setitem__(i, time.monotonic() - start))
    server.shutdown()
    half = args.prompts // 2
    fast_done = max(t for i, t in finished.items() if i % 2 == 0)
    slow_done = max(t for i, t in finished.items() if i % 2)
    fast_ideal = math.ceil(half / 32) * LATENCY
    slow_ideal = (half - 1) / RATE + LATENCY
    ok = sum(r.success for r in results)
    print(f"unlimited half done at {fast_done:.2f} s ({fast_done / fast_ideal:.1f}x its ideal {fast_ideal:.2f} s); "
          f"limited half at {slow_done:.2f} s ({slow_done / slow_ideal:.2f}x its ideal {slow_ideal:.2f} s); "
          f"{ok}/{len(results)} answered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
