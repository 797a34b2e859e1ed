"""Independent rate-limited chat-completions servers for the rate-control benchmarks.

Standard library only (``http.server`` with HTTP/1.1 keep-alive, one thread per connection),
written without looking at how openrouter-sync reads a 429: these are the servers the library
meets in the wild, not the library's own fake server. Each runs in its own process on
127.0.0.1 (a free port), answers ``POST .../chat/completions`` after a fixed latency with an
OpenAI-shaped body whose content names the prompt (``expected_answer``), and keeps count of the
answers and 429s per prompt (``GET /_stats``). It stops when its stdin closes (the parent is
gone) or after ``max_lifetime`` seconds, whichever comes first.

A server is a *limiter* (when to say no, and the true wait) and a *hint* (how the 429 says it):

limiters
    ``bucket``       token bucket, ``rate`` per second (a schedule ``[[t, rate], ...]`` of seconds
                     since the first request lets it change mid-run), ``burst`` tokens
    ``window``       fixed window: ``limit`` requests per ``window`` seconds, windows counted from
                     the first request (``align: "epoch"``: on the wall clock, from the epoch);
                     the wait is the time to the window's end
    ``concurrency``  at most ``limit`` requests in flight; no wait is known
hints
    ``int``          ``Retry-After: <ceil(wait)>``, whole seconds (the only numeric form HTTP defines)
    ``date``         ``Retry-After: <HTTP-date>`` of the moment the wait ends, rounded up to a second
    ``frac``         ``Retry-After: 0.237`` (fractional seconds, common but not in the RFC)
    ``ms``           ``retry-after-ms: 237``
    ``xrl``          only ``X-RateLimit-Limit/Remaining/Reset`` (Reset in epoch milliseconds)
    ``body``         ``retry_after_seconds`` in the JSON body
    ``meta``         OpenRouter style: ``error.metadata.headers`` holding the ``X-RateLimit-*`` trio
    ``none``         a bare 429
    ``upstream``     OpenRouter's "Provider returned error" 429 for an upstream provider, no hint

``python -m benchmarks.servers '<spec json>'`` prints the base URL (``http://127.0.0.1:PORT/v1``)
and serves; ``ServerProcess(spec)`` does that from Python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, TypeVar

UPSTREAM_RAW = ("openai/gpt-4o-mini is temporarily rate-limited upstream. Please retry shortly, or add your "
                "own key to accumulate your rate limits: https://openrouter.ai/settings/integrations")


def expected_answer(prompt: str) -> str:
    """The content a server answers ``prompt`` with: names the prompt, so a mix-up shows."""
    return f"answer {hashlib.sha1(prompt.encode()).hexdigest()[:12]} to: {prompt}"


@dataclass
class ServerSpec:
    limiter: str  # bucket | window | concurrency
    hint: str = "int"
    latency: float = 0.05
    burst: int = 10  # bucket
    schedule: list = field(default_factory=lambda: [[0.0, 50.0]])  # bucket: [[seconds since first request, rate]]
    limit: int = 100  # window: requests per window; concurrency: requests in flight
    window: float = 2.0  # window: seconds
    align: str = "start"  # window: counted from the first request ("start") or from the epoch ("epoch")
    max_lifetime: float = 600.0


# ----- limiters: admit() returns None (go ahead) or the true wait in seconds (None-able for "unknown") -----

class _Rejected(Exception):
    def __init__(self, wait: Optional[float]) -> None:
        self.wait = wait


class TokenBucket:
    def __init__(self, spec: ServerSpec) -> None:
        self.schedule = sorted((float(t), float(r)) for t, r in spec.schedule)
        self.burst = float(spec.burst)
        self.tokens = self.burst
        self.start: Optional[float] = None
        self.last = 0.0

    def rate_at(self, now: float) -> float:
        since = now - (self.start if self.start is not None else now)
        rate = self.schedule[0][1]
        for at, value in self.schedule:
            if since >= at:
                rate = value
        return rate

    def admit(self, now: float) -> None:
        if self.start is None:
            self.start = self.last = now
        rate = self.rate_at(now)
        self.tokens = min(self.burst, self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return
        raise _Rejected((1.0 - self.tokens) / rate)

    def advertised(self, now: float) -> int:
        return int(self.rate_at(now))

    def release(self) -> None:
        pass


class FixedWindow:
    def __init__(self, spec: ServerSpec) -> None:
        self.limit, self.window = spec.limit, spec.window
        self.start: Optional[float] = None
        if spec.align == "epoch":  # the monotonic clock's reading at the epoch's window boundary before now
            wall, mono = time.time(), time.monotonic()
            self.start = mono - wall + math.floor(wall / spec.window) * spec.window
        elif spec.align != "start":
            raise ValueError(f"align must be 'start' or 'epoch', got {spec.align!r}")
        self.index, self.count = -1, 0

    def admit(self, now: float) -> None:
        if self.start is None:
            self.start = now
        index = int((now - self.start) // self.window)
        if index != self.index:
            self.index, self.count = index, 0
        if self.count < self.limit:
            self.count += 1
            return
        raise _Rejected(self.start + (index + 1) * self.window - now)

    def advertised(self, now: float) -> int:
        return self.limit

    def release(self) -> None:
        pass


class Concurrency:
    def __init__(self, spec: ServerSpec) -> None:
        self.limit = spec.limit
        self.in_flight = 0

    def admit(self, now: float) -> None:
        if self.in_flight >= self.limit:
            raise _Rejected(None)
        self.in_flight += 1

    def advertised(self, now: float) -> int:
        return self.limit

    def release(self) -> None:
        self.in_flight -= 1


LIMITERS = {"bucket": TokenBucket, "window": FixedWindow, "concurrency": Concurrency}


# ----- hints: how a 429 names the wait -----

def _error(message: str, **extra: Any) -> dict:
    return {"error": {"message": message, "code": 429, **extra}}


def rate_limited_reply(hint: str, wait: Optional[float], limit: int) -> tuple[dict[str, str], dict]:
    """Headers and JSON body of a 429 whose true wait is ``wait`` seconds, in the style ``hint``."""
    wait = max(0.0, wait or 0.0)
    reset_ms = str(math.ceil((time.time() + wait) * 1000))
    trio = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset_ms}
    body = _error("Rate limit exceeded")
    headers: dict[str, str] = {}
    if hint == "int":
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    elif hint == "date":
        headers["Retry-After"] = formatdate(math.ceil(time.time() + wait), usegmt=True)
    elif hint == "frac":
        headers["Retry-After"] = f"{wait:.3f}"
    elif hint == "ms":
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
    elif hint == "xrl":
        headers.update(trio)
    elif hint == "body":
        body["retry_after_seconds"] = round(wait, 3)
    elif hint == "meta":
        body = _error("Rate limit exceeded: limit_rpm/openai/gpt-4o-mini", metadata={"headers": trio})
    elif hint == "upstream":
        body = _error("Provider returned error", metadata={"raw": UPSTREAM_RAW, "provider_name": "X"})
    elif hint != "none":
        raise ValueError(f"unknown hint {hint!r}")
    return headers, body


def completion(prompt: str, model: str) -> dict:
    return {"id": "gen-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
            "provider": "Bench", "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": expected_answer(prompt)}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


# ----- the server -----

class _State:
    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.limiter = LIMITERS[spec.limiter](spec)
        self.lock = threading.Lock()
        self.answers: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.status: Counter[str] = Counter()
        self.first: Optional[float] = None
        self.last_answer: Optional[float] = None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": sum(self.status.values()), "status": dict(self.status),
                    "answers": dict(self.answers), "rejections": dict(self.rejections),
                    "first": self.first, "last_answer": self.last_answer}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict, headers: Optional[dict[str, str]] = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._send(200, self.server.state.stats())
        else:
            self._send(404, {"error": {"message": "not found", "code": 404}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.endswith("/chat/completions"):
            self._send(404, {"error": {"message": "not found", "code": 404}})
            return
        payload = json.loads(raw or b"{}")
        prompt = str((payload.get("messages") or [{}])[-1].get("content", ""))
        state = self.server.state
        with state.lock:
            now = time.monotonic()
            if state.first is None:
                state.first = time.time()
            try:
                state.limiter.admit(now)
                wait: Optional[float] = -1.0
            except _Rejected as rejected:
                wait = rejected.wait
                state.rejections[prompt] += 1
                state.status["429"] += 1
        if wait is None or wait >= 0:
            headers, body = rate_limited_reply(state.spec.hint, wait, state.limiter.advertised(now))
            self._send(429, body, headers)
            return
        try:
            time.sleep(state.spec.latency)
        finally:
            with state.lock:
                state.limiter.release()
                state.answers[prompt] += 1
                state.status["200"] += 1
                state.last_answer = time.time()
        self._send(200, completion(prompt, str(payload.get("model", ""))))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, spec: ServerSpec) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = _State(spec)


def serve(spec: ServerSpec) -> None:
    """Serve until stdin closes or ``spec.max_lifetime`` passes; print the base URL first."""
    server = _Server(spec)
    print(f"http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(spec.max_lifetime)
    os._exit(0)  # daemon handler threads may be mid-sleep: leave at once


_Server_T = TypeVar("_Server_T", bound="ChildServer")


class ChildServer:
    """A server in a child process (so its work does not share the clients' GIL) that prints its
    base URL on its first line and stops when its stdin closes."""

    def __init__(self, argv: list[str], env: Optional[dict[str, str]] = None) -> None:
        self._argv, self._env = argv, env
        self._proc: Optional[subprocess.Popen[str]] = None
        self.base_url = ""

    def __enter__(self: _Server_T) -> _Server_T:
        self._proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env=self._env)
        assert self._proc.stdout is not None
        self.base_url = self._proc.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise RuntimeError(f"the benchmark server did not start: {' '.join(self._argv[:3])}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


class ServerProcess(ChildServer):
    """A rate-limited benchmark server (``ServerSpec``) in its own process."""

    def __init__(self, spec: ServerSpec, python: str = sys.executable) -> None:
        self.spec = spec
        env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        super().__init__([python, "-m", "benchmarks.servers", json.dumps(asdict(spec))], env)

    def stats(self) -> dict[str, Any]:
        url = self.base_url.rsplit("/v1", 1)[0] + "/_stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(json.loads(response.read()))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="a ServerSpec as JSON, e.g. '{\"limiter\": \"bucket\", \"hint\": \"int\"}'")
    serve(ServerSpec(**json.loads(parser.parse_args(argv).spec)))


if __name__ == "__main__":
    main()
