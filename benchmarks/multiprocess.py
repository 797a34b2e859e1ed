"""Many processes, one limit: openrouter-sync and the plain loop, each process on its own.

    python -m benchmarks.multiprocess [--quick] [--scenarios scale,kill,shared]
                                      [--shared-state [file|redis|redis://...]] [--pythonpath DIR]

- ``scale``: 2 and 4 processes x 16 workers, 150 prompts each (``--quick``: 60), all started
  together (a start time handed to every process) against ONE server: a token bucket (50/s,
  burst 10, whole-second ``Retry-After``) and a fixed window (100 per 2 s; ``--quick``: 40;
  whole-second ``Retry-After`` to the window's end). Combined makespan (first start to last
  answer) against the ideal, 429s and their share of the prompts, side by side with the same
  processes running the plain requests + tenacity loop.
- ``kill``: 4 openrouter-sync processes, one killed with SIGKILL at half the ideal; the
  survivors' makespan against 3 processes run from the start (does a dead process stall the
  rest?). The survivors' own ideal counts what the killed one got through before it died.
- ``shared``: one process, 32 workers, with ``Throttle.shared(path)`` and without: 300 prompts
  (``--quick``: 120) against the token bucket, 1200 (480) against a server with no limit (where
  only the shared state's cost can show), then the cost of one ``acquire`` in a tight loop with
  and without it. Skipped when the library cannot share state.

``--shared-state`` builds every openrouter-sync backend of ``scale`` and ``kill`` with
``throttle=Throttle.shared(path)`` (one fresh state file per run, shared by its processes).
``--shared-state off`` sets ``$OPENROUTER_SYNC_SHARED_STATE=off`` (each process on its own); without
the flag, the processes run with the default (a fresh runtime directory per run, see
``Throttle.for_endpoint``). ``--shared-state redis`` shares through Redis instead (``RedisState``,
the ``openrouter-sync[redis]`` extra): a ``redis-server`` started for the benchmark on a free port
of 127.0.0.1, one fresh key per run; ``--shared-state redis://host:port/db`` uses that server.
``shared`` then compares with and without the Redis state.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Optional

from .harness import Client, check, child_env, library_line, machine_line, ratio, shared_state_supported, table
from .ratelimit_matrix import LATENCY, bucket_ideal, window_ideal
from .servers import ServerProcess, ServerSpec

WORKERS = 16
CLIENT_LABELS = {"ours": "openrouter-sync", "plain": "requests + tenacity loop"}


def server_models(n: int) -> dict[str, tuple[str, ServerSpec, Any]]:
    """name -> (description, spec, ideal(prompts, workers)) for ``n`` prompts per process. The
    window lets two processes' prompts through in 3 windows (100 per 2 s for 150 a process)."""
    per_window = max(1, 2 * n // 3)
    return {
        "bucket": ("token bucket 50/s burst 10, `Retry-After` whole seconds",
                   ServerSpec("bucket", "int", LATENCY, burst=10, schedule=[[0, 50]]),
                   lambda prompts, workers: bucket_ideal([[0, 50]])(prompts)),
        "window": (f"fixed window {per_window} per 2 s, `Retry-After` whole seconds to the window's end",
                   ServerSpec("window", "int", LATENCY, limit=per_window, window=2.0),
                   lambda prompts, workers: window_ideal(per_window, 2.0, workers)(prompts)),
    }


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class RedisServer:
    """A throw-away ``redis-server`` on a free port of 127.0.0.1 (no persistence), for ``--shared-state redis``."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("--shared-state redis: redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise SystemExit("--shared-state redis: redis-server did not start") from None
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class StateBackend:
    """Where the shared state of one run lives: a fresh file (``redis_url`` None) or a fresh key in
    Redis; ``off``: nowhere (``$OPENROUTER_SYNC_SHARED_STATE=off``, each process on its own)."""

    def __init__(self, redis_url: Optional[str] = None) -> None:
        self.redis_url = redis_url

    @property
    def label(self) -> str:
        if self.redis_url == "off":
            return "not shared"
        return "shared state" if self.redis_url is None else "shared state in Redis"

    def fresh(self) -> tuple[str, Optional[str]]:
        """A new state's ``Throttle.shared`` argument, and a directory to remove after the run (or None)."""
        if self.redis_url == "off":
            return "off", None
        if self.redis_url is not None:
            return f"{self.redis_url.split('#', 1)[0]}#bench-{uuid.uuid4().hex[:12]}", None
        folder = tempfile.mkdtemp(prefix="bench-shared-")
        return os.path.join(folder, "throttle.state"), folder


def run_group(kind: str, spec: ServerSpec, processes: int, n: int, pythonpath: Optional[str],
              shared_state: Optional[StateBackend], kill_after: Optional[float] = None, budget: float = 120.0,
              workers: int = WORKERS) -> dict[str, Any]:
    """``processes`` client processes of ``kind`` against one fresh server, started together.
    With ``kill_after``, the last process is SIGKILLed that many seconds after the start."""
    where, state_dir = shared_state.fresh() if shared_state is not None and kind == "ours" else (None, None)
    if where is None:  # the default: a fresh runtime directory per run, where the processes find each other
        state_dir = tempfile.mkdtemp(prefix="bench-runtime-")
        os.environ["XDG_RUNTIME_DIR"] = state_dir
    with ServerProcess(spec) as server:
        start_at = time.time() + 1.0 + 0.5 * processes  # time for every process to import and set up
        clients = [Client(kind, server.base_url, f"{kind}{i}-{uuid.uuid4().hex[:8]}", n, workers, start_at,
                          pythonpath=pythonpath, shared_state=where).start()
                   for i in range(processes)]
        killed: Optional[Client] = None
        if kill_after is not None:
            time.sleep(max(0.0, start_at + kill_after - time.time()))
            killed = clients[-1]
            killed.kill()
        deadline = start_at + budget
        for client in clients:
            client.finish(deadline)
        stats = server.stats()
    if state_dir:
        shutil.rmtree(state_dir, ignore_errors=True)
    survivors = [c for c in clients if c is not killed]
    ends = [c.result["end"] for c in survivors if "end" in c.result]
    late = max((c.result["began"] - start_at for c in survivors if "began" in c.result), default=0.0)
    timed_out = any(c.result.get("timeout") for c in survivors) or len(ends) < len(survivors)
    figures = check(survivors, stats)
    killed_answers = sum(stats["answers"].get(p, 0) for p in killed.prompts) if killed else 0
    rejected = stats["status"].get("429", 0)
    return {"makespan": None if timed_out else max(ends) - start_at, "late": late, "429s": rejected,
            "share_429": rejected / (n * processes), "killed_answers": killed_answers, **figures}


def _cells(r: dict[str, Any], ideal: float) -> list[str]:
    makespan = "timeout" if r["makespan"] is None else f"{r['makespan']:.2f}"
    return [makespan, ratio(r["makespan"], ideal), f"{r['429s']} ({r['share_429']:.0%})",
            f"{r['correct']}/{r['of']}, {r['twice']}"]


def scale(n: int, pythonpath: Optional[str], shared_state: Optional[StateBackend]) -> str:
    ours_label = "openrouter-sync" + (f" ({shared_state.label})" if shared_state else "")
    headers = ["server", "processes x workers", "ideal s", f"{ours_label} s", "x ideal", "429s (share)",
               "own answer, twice", "plain loop s", "x ideal", "429s (share)", "own answer, twice"]
    lines = []
    for processes in (2, 4):
        total = processes * n
        for _name, (says, spec, ideal_of) in server_models(n).items():
            ideal = ideal_of(total, processes * WORKERS)
            line = [says, f"{processes} x {WORKERS}", f"{ideal:.2f}"]
            for kind in ("ours", "plain"):
                result = run_group(kind, spec, processes, n, pythonpath, shared_state, budget=20 * ideal + 30)
                line += _cells(result, ideal)
                _progress(f"scale {processes}p {spec.limiter} {kind}", result, ideal)
            lines.append(line)
    return table(headers, lines)


def kill(n: int, pythonpath: Optional[str], shared_state: Optional[StateBackend]) -> str:
    _says, spec, ideal_of = server_models(n)["bucket"]
    four_ideal = ideal_of(4 * n, 4 * WORKERS)
    killed = run_group("ours", spec, 4, n, pythonpath, shared_state, kill_after=four_ideal / 2,
                       budget=20 * four_ideal + 30)
    survivors_ideal = ideal_of(3 * n + killed["killed_answers"], 3 * WORKERS)
    _progress("kill 4p, one SIGKILLed", killed, survivors_ideal)
    three = run_group("ours", spec, 3, n, pythonpath, shared_state, budget=20 * four_ideal + 30)
    three_ideal = ideal_of(3 * n, 3 * WORKERS)
    _progress("kill 3p from the start", three, three_ideal)
    headers = ["run (openrouter-sync" + (f", {shared_state.label}" if shared_state else "") + ")", "ideal s",
               "makespan s",
               "x ideal", "429s (share)", "own answer, twice"]
    lines = [[f"4 x {WORKERS}, one SIGKILLed at {four_ideal / 2:.1f} s (it got {killed['killed_answers']} answers);"
              " the 3 survivors", f"{survivors_ideal:.2f}", *_cells(killed, survivors_ideal)],
             [f"3 x {WORKERS} from the start", f"{three_ideal:.2f}", *_cells(three, three_ideal)]]
    return table(headers, lines)


def shared(n: int, pythonpath: Optional[str], backend: StateBackend) -> str:
    """One process of 32 workers: ``n`` prompts against the token bucket, ``4 n`` against a server
    with no limit (where only the cost of the shared state can show); then the cost of one acquire."""
    if not shared_state_supported(pythonpath):
        return "skipped: this version of the library has no `Throttle.shared`"
    models = {f"token bucket 50/s burst 10, whole-second `Retry-After`; {n} prompts":
              (ServerSpec("bucket", "int", LATENCY, burst=10, schedule=[[0, 50]]), n, bucket_ideal([[0, 50]])(n)),
              f"no limit; {4 * n} prompts":
              (ServerSpec("concurrency", "none", LATENCY, limit=10**6), 4 * n, math.ceil(4 * n / 32) * LATENCY)}
    headers = ["server", "ideal s", "without s", "x ideal", "429s (share)", "own answer, twice",
               f"with Throttle.shared ({backend.label}) s", "x ideal", "429s (share)", "own answer, twice"]
    lines = []
    for says, (spec, prompts, ideal) in models.items():
        line = [says, f"{ideal:.2f}"]
        for with_state in (None, backend):
            result = run_group("ours", spec, 1, prompts, pythonpath, with_state, budget=20 * ideal + 30, workers=32)
            line += _cells(result, ideal)
            _progress(f"shared={with_state is not None} {spec.limiter}", result, ideal)
        lines.append(line)
    return table(headers, lines) + "\n\n" + acquire_cost(pythonpath, backend)


ACQUIRE_COST = """
import json, sys, time
from benchmarks.clients import use_library_path
use_library_path()
from openrouter_sync.throttle import Throttle
where, count = sys.argv[1], int(sys.argv[2])
out = {}
for label, throttle in (("without", Throttle()), ("with", Throttle.shared(where))):
    for _ in range(50):  # warm up (connection, script load)
        throttle.on_answer(throttle.acquire(time.sleep, 60))
    began = time.perf_counter()
    for _ in range(count):
        throttle.on_answer(throttle.acquire(time.sleep, 60))
    out[label] = (time.perf_counter() - began) / count
    out[label + "_access"] = throttle.shared_cost()
print(json.dumps(out))
"""


def acquire_cost(pythonpath: Optional[str], backend: StateBackend, count: int = 2000) -> str:
    """One thread, no pacing, no server: ``acquire`` + ``on_answer`` in a loop, with and without
    the shared state; and the measured cost of one access to it (``Throttle.shared_cost``)."""
    where, state_dir = backend.fresh()
    try:
        done = subprocess.run([sys.executable, "-c", ACQUIRE_COST, where, str(count)], env=child_env(pythonpath),
                              capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=300)
    finally:
        if state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
    if done.returncode != 0:
        return f"acquire cost: failed ({done.stderr.strip()[-500:]})"
    r = json.loads(done.stdout.strip().splitlines()[-1])
    access = r["with_access"]
    return table(["one acquire + on_answer, 1 thread, no pacing", "without shared state us", f"with {backend.label} us",
                  "per access to the state us (Throttle.shared_cost)"],
                 [[f"{count} in a loop", f"{r['without'] * 1e6:.1f}", f"{r['with'] * 1e6:.1f}",
                   "" if access is None else f"{access * 1e6:.1f}"]])


def _progress(label: str, result: dict[str, Any], ideal: float) -> None:
    print(f"  {label:32} " + " | ".join(_cells(result, ideal)) + f" | late {result['late']:.2f} s",
          file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 prompts per process instead of 150")
    parser.add_argument("--scenarios", default="scale,kill,shared", help="comma-separated: scale, kill, shared")
    parser.add_argument("--shared-state", nargs="?", const="file", default=None, metavar="file|redis|URL",
                        help="scale and kill: build openrouter-sync backends with throttle=Throttle.shared(path) "
                             "(a fresh state file); 'redis': a fresh key in a redis-server started for the run; "
                             "a redis:// URL: a fresh key on that server; 'off': nothing shared (without the "
                             "flag: the default, a fresh runtime directory per run). Also the backend of the "
                             "shared scenario")
    parser.add_argument("--pythonpath", help="measure the openrouter_sync package found in this directory")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    unknown = [s for s in scenarios if s not in ("scale", "kill", "shared")]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.shared_state and not shared_state_supported(args.pythonpath):
        parser.error("--shared-state: this version of the library has no Throttle.shared")
    choice = args.shared_state
    if choice not in (None, "file", "redis", "off") and not choice.startswith(REDIS_SCHEMES):
        parser.error("--shared-state takes file, redis, off or a redis://, rediss:// or unix:// URL")
    redis_server: Optional[RedisServer] = None
    backend = StateBackend()
    if choice == "off":
        backend = StateBackend("off")
    elif choice is not None and choice != "file":
        if not redis_supported(args.pythonpath):
            parser.error("--shared-state redis: this version of the library (or its environment) has no Redis "
                         "backend (pip install 'openrouter-sync[redis]')")
        if choice == "redis":
            redis_server = RedisServer()
        backend = StateBackend(redis_server.url if redis_server else choice)
    try:
        return _run(args, backend if choice else None, backend)
    finally:
        if redis_server is not None:
            redis_server.stop()


def redis_supported(pythonpath: Optional[str]) -> bool:
    code = ("from benchmarks.clients import use_library_path as u; u(); "
            "from openrouter_sync.ratelimit.redis_state import RedisState; import redis; print(True)")
    done = subprocess.run([sys.executable, "-c", code], env=child_env(pythonpath), capture_output=True,
                          text=True, cwd=tempfile.gettempdir(), timeout=60)
    return done.stdout.strip() == "True"


def _run(args: argparse.Namespace, shared_state: Optional[StateBackend], backend: StateBackend) -> int:
    scenarios = args.scenarios.split(",")
    n = 60 if args.quick else 150
    print(machine_line())
    print(f"openrouter_sync: {library_line(args.pythonpath)}")
    print(f"{n} prompts per process, {WORKERS} workers per process, {LATENCY * 1000:g} ms latency\n", flush=True)
    began = time.time()
    if "scale" in scenarios:
        print("#### Processes started together against one limit\n\n" + scale(n, args.pythonpath, shared_state)
              + "\n", flush=True)
    if "kill" in scenarios:
        print("#### One process killed with SIGKILL mid-run\n\n" + kill(n, args.pythonpath, shared_state)
              + "\n", flush=True)
    if "shared" in scenarios:
        print(f"#### One process, with and without {backend.label} (32 workers)\n\n"
              + shared(2 * n, args.pythonpath, backend) + "\n", flush=True)
    print(f"(took {time.time() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
