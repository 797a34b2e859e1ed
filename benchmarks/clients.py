"""The two clients the rate-control benchmarks compare, each run in a child process of its own.

- ``ours``: openrouter-sync, ``run_sheets(backend, prompts, max_workers=W)`` on a fresh backend with
  the library's default throttle (a fresh process, a fresh port and a key made from the port: the
  processes of one run share a key, as workers of one app do, and nothing carries over between
  runs); ``--shared-state PATH`` builds it with
  ``throttle=Throttle.shared(PATH)`` instead (or, without that method, sets
  ``$OPENROUTER_SYNC_SHARED_STATE``).
- ``plain``: the usual hand-written loop: a ``ThreadPoolExecutor`` of W threads over one
  ``requests.Session``, tenacity exponential back-off with jitter, honouring ``Retry-After`` when
  it parses as seconds.

``python -m benchmarks.clients --client ours --base-url URL --tag T --n 300 --workers 32
[--start-at EPOCH]`` waits until ``--start-at`` (so several processes start together), runs, and
prints one JSON line: when it started and ended, which library it ran, and every answer.
The library imported is the ``openrouter_sync`` in ``$BENCH_OPENROUTER_SYNC_PATH`` if set, else
whichever is first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

MODEL = "openai/gpt-4o-mini"
LIBRARY_PATH_ENV = "BENCH_OPENROUTER_SYNC_PATH"  # a directory holding the openrouter_sync to measure


def use_library_path() -> None:
    """Put ``$BENCH_OPENROUTER_SYNC_PATH`` first on ``sys.path`` (before anything imports the library)."""
    path = os.environ.get(LIBRARY_PATH_ENV)
    if path and path not in sys.path[:1]:
        sys.path.insert(0, path)


def prompts_for(tag: str, n: int) -> list[str]:
    return [f"{tag} prompt {i}: say something about the number {i}" for i in range(n)]


def find_throttle() -> Any:
    """The library's ``Throttle`` class (exported at the top in newer versions), or None."""
    try:
        import openrouter_sync

        throttle = getattr(openrouter_sync, "Throttle", None)
        if throttle is None:
            from openrouter_sync.throttle import Throttle as throttle
        return throttle
    except ImportError:
        return None


SHARED_STATE_ENV = "OPENROUTER_SYNC_SHARED_STATE"


def shared_state_supported() -> bool:
    """Whether this version of the library can share its throttle between processes: a
    ``Throttle.shared(path)``, or (failing that) a package that reads ``$OPENROUTER_SYNC_SHARED_STATE``."""
    throttle = find_throttle()
    if throttle is None:
        return False
    if callable(getattr(throttle, "shared", None)):
        return True
    import openrouter_sync

    root = os.path.dirname(openrouter_sync.__file__)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    if SHARED_STATE_ENV in handle.read():
                        return True
    return False


def library_info() -> str:
    try:
        import openrouter_sync
    except ImportError as error:
        return f"not importable: {error}"
    return f"{getattr(openrouter_sync, '__version__', '?')} at {os.path.dirname(openrouter_sync.__file__)}"


def ours(base_url: str, prompts: list[str], workers: int, start_at: Optional[float],
         shared_state: Optional[str] = None) -> tuple[list[str], float]:
    from openrouter_sync import OpenRouterBackend, run_sheets

    extra: dict[str, Any] = {}
    if shared_state == "off":
        os.environ[SHARED_STATE_ENV] = "off"
    elif shared_state:
        throttle = find_throttle()
        if callable(getattr(throttle, "shared", None)):
            extra["throttle"] = throttle.shared(shared_state)
        else:
            os.environ[SHARED_STATE_ENV] = shared_state
    # One key for every process of a run (a fresh server, so a fresh key): processes on one key, as
    # gunicorn or Celery workers are.
    key = "bench-" + hashlib.sha256(base_url.encode()).hexdigest()[:16]
    backend = OpenRouterBackend(model=MODEL, base_url=base_url, api_key=key,
                                timeout_seconds=10, pool_size=workers, **extra)
    began = _wait_until(start_at)
    with backend:
        results = run_sheets(backend, prompts, max_workers=workers)
    return [r.stdout if r.success else "" for r in results], began


class _Retryable(Exception):
    def __init__(self, status: object, retry_after: Optional[float] = None) -> None:
        super().__init__(status)
        self.retry_after = retry_after


def _seconds(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP-date: the usual hand-written loop does not parse it
        return None


def plain(base_url: str, prompts: list[str], workers: int, start_at: Optional[float]) -> tuple[list[str], float]:
    import requests
    import tenacity

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))
    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer bench-key"}
    backoff = tenacity.wait_exponential_jitter(initial=0.1, max=5.0)

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return error.retry_after
        return float(backoff(state))

    @tenacity.retry(retry=tenacity.retry_if_exception_type((_Retryable, requests.RequestException)),
                    wait=wait, stop=tenacity.stop_after_attempt(30), reraise=True)
    def call(prompt: str) -> str:
        response = session.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
                                headers=headers, timeout=10)
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(response.status_code, _seconds(response.headers.get("Retry-After")))
        return str(response.json()["choices"][0]["message"]["content"])

    def safe(prompt: str) -> str:
        try:
            return call(prompt)
        except Exception:
            return ""

    began = _wait_until(start_at)
    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(safe, prompts))
    session.close()
    return answers, began


def _wait_until(start_at: Optional[float]) -> float:
    """Sleep until ``start_at`` (epoch seconds, if given); return when the run actually began."""
    if start_at is not None:
        time.sleep(max(0.0, min(start_at - time.time(), 60.0)))
    return time.time()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", choices=("ours", "plain"), required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--tag", required=True, help="makes this run's prompts distinct")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--start-at", type=float, help="epoch seconds: start then (after imports and set-up)")
    parser.add_argument("--shared-state", help="ours: build the backend with throttle=Throttle.shared(PATH)")
    args = parser.parse_args(argv)
    use_library_path()
    prompts = prompts_for(args.tag, args.n)
    if args.client == "ours":
        answers, began = ours(args.base_url, prompts, args.workers, args.start_at, args.shared_state)
    else:
        answers, began = plain(args.base_url, prompts, args.workers, args.start_at)
    end = time.time()
    print(json.dumps({"client": args.client, "library": library_info() if args.client == "ours" else "",
                      "began": began, "end": end, "answers": answers}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
