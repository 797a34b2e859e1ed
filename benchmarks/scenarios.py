"""Batch scenarios against the fake server: rate-limited, fault soak, latency-bound.

Each returns a dict of figures for one client; ``run.py`` puts them side by side.
"""

from __future__ import annotations

import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import requests
import tenacity

from openrouter_sync import OpenRouterBackend, run_sheets
from openrouter_sync.testing import fake_reply

from .servers import ChildServer

MODEL = "openai/gpt-4o-mini"
FAULT_KINDS = ("500", "502", "503", "529", "reset", "truncate", "error200", "error200-top", "html")


def _prompts(n: int, tag: str) -> list[str]:
    return [f"{tag} prompt number {i}: say something about {i}" for i in range(n)]


class ServerProcess(ChildServer):
    """The fake server (or ``module``, e.g. ``benchmarks.fastserver``) in its own process."""

    def __init__(self, *args: str, module: str = "openrouter_sync.testing") -> None:
        extra = ["--max-lifetime", "600"] if module == "openrouter_sync.testing" else []
        super().__init__([sys.executable, "-m", module, *args, *extra])

    def stats(self) -> dict[str, Any]:
        return dict(requests.get(self.base_url.rsplit("/api/v1", 1)[0] + "/_fake/stats", timeout=5).json())


def _check(server: ServerProcess, prompts: list[str], answers: list[str]) -> dict[str, Any]:
    stats = server.stats()
    per_prompt = stats["answers_per_prompt"]
    correct = sum(a == fake_reply(p, MODEL) for p, a in zip(prompts, answers))
    twice = sum(1 for p in prompts if per_prompt.get(p, 0) > 1)
    return {"answered": correct, "of": len(prompts), "answered_twice": twice,
            "requests": stats["request_count"], "429s": stats["status_counts"].get("429", 0),
            "answers": sum(per_prompt.values())}


def ours(server: ServerProcess, prompts: list[str], workers: int) -> list[str]:
    with OpenRouterBackend(model=MODEL, base_url=server.base_url, api_key=f"bench-{uuid.uuid4().hex}",
                           timeout_seconds=10, pool_size=workers) as backend:
        results = run_sheets(backend, prompts, max_workers=workers)
    return [r.stdout if r.success else "" for r in results]


class _Retryable(Exception):
    pass


def requests_tenacity(server: ServerProcess, prompts: list[str], workers: int) -> list[str]:
    """The usual hand-written loop: requests.Session + tenacity exponential back-off with jitter."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))
    url = server.base_url + "/chat/completions"
    headers = {"Authorization": "Bearer bench-key"}

    @tenacity.retry(retry=tenacity.retry_if_exception_type((_Retryable, requests.RequestException)),
                    wait=tenacity.wait_exponential_jitter(initial=0.1, max=5.0),
                    stop=tenacity.stop_after_attempt(12), reraise=True)
    def call(prompt: str) -> str:
        response = session.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
                                headers=headers, timeout=10)
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(response.status_code)
        data = response.json()
        if "choices" not in data or data["choices"][0].get("finish_reason") == "error":
            raise _Retryable("error in 200")
        return str(data["choices"][0]["message"]["content"])

    def safe(prompt: str) -> str:
        try:
            return call(prompt)
        except Exception:
            return ""

    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(safe, prompts))
    session.close()
    return answers


def plain_requests_pool(server: ServerProcess, prompts: list[str], workers: int) -> list[str]:
    """A ThreadPoolExecutor over a plain requests.Session, no retries (the latency-bound baseline)."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))
    url = server.base_url + "/chat/completions"

    def call(prompt: str) -> str:
        response = session.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
                                headers={"Authorization": "Bearer bench-key"}, timeout=10)
        return str(response.json()["choices"][0]["message"]["content"])

    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(call, prompts))
    session.close()
    return answers


Client = Callable[[ServerProcess, list, int], list]


def rate_limited(client: Client, style: str = "retry-after", n: int = 300, workers: int = 32) -> dict[str, Any]:
    """300 prompts, 32 workers, a server allowing 50 requests/s with burst 10, 50 ms latency."""
    prompts = _prompts(n, f"rl-{style}")
    ideal = (n - 10) / 50.0
    with ServerProcess("--latency", "0.05", "--rate", "50", "--burst", "10", "--style", style) as server:
        start = time.monotonic()
        answers = client(server, prompts, workers)
        makespan = time.monotonic() - start
        figures = _check(server, prompts, answers)
    figures.update(makespan=round(makespan, 2), ideal=ideal, ratio=round(makespan / ideal, 3),
                   share_429=round(figures["429s"] / n, 3))
    return figures


def fault_soak(client: Client, n: int = 300, workers: int = 16, seed: int = 7) -> dict[str, Any]:
    """300 prompts, 16 workers, about a quarter of the answers faulty."""
    prompts = _prompts(n, "soak")
    with ServerProcess("--latency", "0.005", "--fault-probability", "0.25", "--fault-kinds", ",".join(FAULT_KINDS),
                       "--seed", str(seed)) as server:
        start = time.monotonic()
        answers = client(server, prompts, workers)
        figures = _check(server, prompts, answers)
        figures["makespan"] = round(time.monotonic() - start, 2)
        figures["faulty_answers"] = figures["requests"] - figures["answers"]
    return figures


def latency_bound(client: Client, n: int = 400, workers: int = 50, latency: float = 0.2) -> dict[str, Any]:
    """400 sheets, 50 workers, 200 ms latency: the ideal is n / workers * latency."""
    prompts = _prompts(n, "lat")
    ideal = n / workers * latency
    with ServerProcess("--latency", str(latency), module="benchmarks.fastserver") as server:
        start = time.monotonic()
        answers = client(server, prompts, workers)
        makespan = time.monotonic() - start
        figures = _check(server, prompts, answers)
    figures.update(makespan=round(makespan, 3), ideal=ideal, ratio=round(makespan / ideal, 3))
    return figures
