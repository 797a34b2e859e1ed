"""Client overhead: per-call cost against a server faster than the clients, import time, memory.

Per-call figures are medians over interleaved rounds of sequential calls to ``fastserver --fixed``
(an asyncio server answering one pre-built body), so the client is what is measured. ``cpu_us``
is the client process's CPU time per call; ``wall_us`` includes the server's share.

    python -m benchmarks.overhead [overhead latency import memory] [--pythonpath DIR]

(or ``python -m benchmarks.run overhead``). ``--pythonpath DIR`` measures the ``openrouter_sync``
package in DIR (e.g. a clean checkout of the last commit) instead of the importable one.
"""

from __future__ import annotations

import http.client
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable
from urllib.parse import urlsplit

import requests

MODEL = "openai/gpt-4o-mini"
PAYLOAD = {"model": MODEL, "messages": [{"role": "user", "content": "fixed"}], "max_tokens": 16384,
           "temperature": 0.7}
CALLS, ROUNDS, WARMUP = 1500, 5, 200


def _raw_client(base_url: str) -> Callable[[], Any]:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    path = parts.path + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}

    def call() -> Any:
        conn.request("POST", path, json.dumps(PAYLOAD), headers)
        return json.loads(conn.getresponse().read())["choices"][0]["message"]["content"]

    return call


def _requests_client(base_url: str) -> Callable[[], Any]:
    session = requests.Session()
    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer k"}

    def call() -> Any:
        return session.post(url, json=PAYLOAD, headers=headers, timeout=30).json()["choices"][0]["message"]["content"]

    return call


def _ours(base_url: str) -> Callable[[], Any]:
    from openrouter_sync import OpenRouterBackend

    logging.basicConfig(level=logging.WARNING)
    backend = OpenRouterBackend(model=MODEL, base_url=base_url, api_key=f"k-{uuid.uuid4().hex}")

    def call() -> Any:
        result = backend.execute("fixed")
        assert result.success
        return result.stdout

    return call


def _openai(base_url: str) -> Callable[[], Any]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="k")

    def call() -> Any:
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fixed"}],
                                              max_tokens=16384, temperature=0.7).choices[0].message.content

    return call


def per_call() -> list[tuple[str, dict[str, Any]]]:
    clients: dict[str, Callable[[str], Callable[[], Any]]] = {
        "raw http.client": _raw_client, "requests.Session.post + .json()": _requests_client,
        "openrouter-sync execute": _ours,
    }
    try:
        import openai  # noqa: F401
        clients["openai SDK"] = _openai
    except ImportError:
        pass
    from .scenarios import ServerProcess  # imports openrouter_sync: not before --pythonpath is applied

    wall: dict[str, list[float]] = {name: [] for name in clients}
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    with ServerProcess("--fixed", module="benchmarks.fastserver") as server:
        calls = {name: make(server.base_url) for name, make in clients.items()}
        for call in calls.values():
            for _ in range(WARMUP):
                call()
        for _ in range(ROUNDS):
            for name, call in calls.items():
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(CALLS):
                    call()
                wall[name].append((time.perf_counter() - w0) / CALLS * 1e6)
                cpu[name].append((time.process_time() - c0) / CALLS * 1e6)
    base = statistics.median(cpu["requests.Session.post + .json()"])
    ours = statistics.median(cpu["openrouter-sync execute"])
    rows = []
    for name in clients:
        c = statistics.median(cpu[name])
        rows.append((name, {"cpu_us": round(c, 1), "wall_us": round(statistics.median(wall[name]), 1),
                            "cpu_vs_requests": round(c / base, 3), "ours_speedup": round(c / ours, 2)}))
    return rows


def _import_ms(statement: str) -> float:
    """One fresh interpreter's import time. Run outside the repository, so the installed package
    (with the bytecode pip compiled) is what is imported, as in a user's program."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir()).stdout
    return float(out) * 1000


def imports(runs: int = 25) -> list[tuple[str, dict[str, Any]]]:
    located = subprocess.run([sys.executable, "-c", "import openrouter_sync; print(openrouter_sync.__file__)"],
                             capture_output=True, text=True, cwd=tempfile.gettempdir())
    if located.returncode != 0:
        raise SystemExit("the import benchmark needs openrouter-sync installed: python -m pip install .")
    statements = {"import requests, tenacity": "import requests, tenacity",
                  "import openrouter_sync": "import openrouter_sync"}
    try:
        import openai  # noqa: F401
        statements["import openai"] = "import openai"
    except ImportError:
        pass
    times: dict[str, list[float]] = {name: [] for name in statements}
    for _ in range(runs):  # interleaved, so drift hits all alike
        for name, statement in statements.items():
            times[name].append(_import_ms(statement))
    base = statistics.median(times["import requests, tenacity"])
    return [(name, {"ms": round(statistics.median(t), 1),
                    "vs_requests_tenacity": round(statistics.median(t) / base, 3)}) for name, t in times.items()]


MEMORY_CHILD = """
import sys, time, tracemalloc, uuid
from openrouter_sync import OpenRouterBackend, iter_sheets, run_sheets
base_url, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
backend = OpenRouterBackend(model="m/x", base_url=base_url, api_key=uuid.uuid4().hex)
backend.execute("warm up")
tracemalloc.start()
start = time.monotonic()
prompts = (f"sheet {i}" for i in range(n))
if mode == "run":
    results = run_sheets(backend, list(prompts), max_workers=32)
    ok = sum(r.success for r in results)
else:
    ok = sum(r.success for _, _, r in iter_sheets(backend, prompts, max_workers=32))
peak = tracemalloc.get_traced_memory()[1]
print(ok, peak, time.monotonic() - start)
"""


def memory(sizes: tuple[tuple[str, int], ...] = (("iter", 2000), ("iter", 10000), ("run", 10000)),
           ) -> list[tuple[str, dict[str, Any]]]:
    """Peak Python memory of ``iter_sheets`` / ``run_sheets`` over ``(mode, sheets)`` runs, each in a child."""
    from .scenarios import ServerProcess

    rows = []
    with ServerProcess(module="benchmarks.fastserver") as server:
        for mode, n in sizes:
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, server.base_url, mode, str(n)],
                                 capture_output=True, text=True, check=True).stdout.split()
            label = f"{'iter_sheets' if mode == 'iter' else 'run_sheets'} x {n}"
            rows.append((label, {"ok": int(out[0]), "peak_python_mb": round(int(out[1]) / 2**20, 2),
                                 "seconds": round(float(out[2]), 2)}))
    return rows


def latency(calls: int = 40, rounds: int = 5) -> list[tuple[str, dict[str, Any]]]:
    """Answer time against a server built on Python's ``http.server`` (``benchmarks.servers``, no
    limit, 50 ms of work), which writes an answer's head and body separately without
    ``TCP_NODELAY``: Nagle's algorithm holds the body until the client acknowledges the head,
    which a client delays by up to 40 ms unless it asks for immediate ACKs (``TCP_QUICKACK``)."""
    from .servers import ServerProcess as LimitServer
    from .servers import ServerSpec

    clients: dict[str, Callable[[str], Callable[[], Any]]] = {
        "requests.Session.post + .json()": _requests_client, "openrouter-sync execute": _ours}
    try:
        import openai  # noqa: F401
        clients["openai SDK"] = _openai
    except ImportError:
        pass
    wall: dict[str, list[float]] = {name: [] for name in clients}
    with LimitServer(ServerSpec("concurrency", "none", 0.05, limit=10_000)) as server:
        made = {name: make(server.base_url) for name, make in clients.items()}
        for call in made.values():
            call()
        for _ in range(rounds):
            for name, call in made.items():
                for _ in range(calls):
                    started = time.perf_counter()
                    call()
                    wall[name].append((time.perf_counter() - started) * 1000)
    return [(name, {"median_ms": round(statistics.median(w), 1), "server_work_ms": 50.0,
                    "added_ms": round(statistics.median(w) - 50.0, 1)}) for name, w in wall.items()]


SUITES = {"overhead": per_call, "latency": latency, "import": imports, "memory": memory}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import platform

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", default=["overhead"], help=f"any of {', '.join(SUITES)}")
    parser.add_argument("--pythonpath", help="measure the openrouter_sync package found in this directory")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}")
    if args.pythonpath:
        path = os.path.abspath(args.pythonpath)
        sys.path.insert(0, path)  # this process (per-call) ...
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))  # children
    import openrouter_sync

    from .run import _table

    if args.pythonpath and not openrouter_sync.__file__.startswith(os.path.abspath(args.pythonpath) + os.sep):
        parser.error(f"--pythonpath {args.pythonpath}: no openrouter_sync there ({openrouter_sync.__file__})")

    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; openrouter_sync "
          f"{getattr(openrouter_sync, '__version__', '?')} at {os.path.dirname(openrouter_sync.__file__)}\n")
    for name in args.suites:
        print(_table(name, SUITES[name]()) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
