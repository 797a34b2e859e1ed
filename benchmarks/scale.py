"""A million sheets: throughput, peak RSS and resume time, beside a plain thread pool, in one run.

    python -m benchmarks.scale [--sizes 10000,100000,1000000] [--run-sizes 10000] [--workers 16]

For each size in ``--run-sizes``: a fresh batch against ``benchmarks.fastserver`` (an asyncio
server answering at once): ``iter_sheets`` with a checkpoint, and a ``ThreadPoolExecutor`` over
``requests.Session`` (no checkpoint). For each size in ``--sizes``: a checkpoint of that many
finished sheets is synthesized (one record written by the library, repeated with new ids, about
1 KB a line) and resumed by ``iter_sheets`` over a generator and by ``run_sheets`` over a list.
Every measurement runs in its own child process; peak RSS is the child's ``ru_maxrss``. Prints
a markdown table (and the machine's load, which a shared machine changes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

MODEL = "openai/gpt-4o-mini"
ENDPOINT = "http://127.0.0.1:9/api/v1"  # no server: a resume must send nothing


def _sheets(n: int) -> Any:
    from openrouter_sync import Sheet

    for i in range(n):
        yield Sheet(prompt=f"prompt number {i}: say something about {i}", id=f"s{i}")


def synthesize(path: str, n: int) -> int:
    """A checkpoint of ``n`` finished sheets, as the library writes them; its size in bytes."""
    from openrouter_sync import OpenRouterBackend, Sheet
    from openrouter_sync.checkpoint import Checkpoint, settings_for
    from openrouter_sync.result import ExecutionResult
    from openrouter_sync.testing import fake_reply

    template = path + ".template"
    with OpenRouterBackend(model=MODEL, base_url=ENDPOINT, api_key="k" * 40) as backend:
        sheet = Sheet(prompt="prompt number 123456789: say something about 123456789", id="s123456789")
        checkpoint = Checkpoint(template, resume=False)
        result = ExecutionResult(success=True, stdout=fake_reply(sheet.prompt, MODEL), stderr="",
                                 duration_seconds=0.012, exit_code=0, model=MODEL, tokens_used=20, input_tokens=10,
                                 output_tokens=10, cost=0.00001, finish_reason="stop", generation_id="gen-fast",
                                 provider="Fast", status_code=200)
        line = checkpoint._line(sheet.key, 123456789, result, settings_for(backend, sheet, ENDPOINT), sheet, None)
        checkpoint.close()
    os.unlink(template)
    with open(path, "w", encoding="ascii") as out:
        for i in range(n):
            out.write(line.replace("123456789", str(i)))
    return os.path.getsize(path)


def _child(mode: str, n: int, path: str, base_url: str, workers: int) -> dict[str, Any]:
    """One measurement, in this (child) process."""
    import concurrent.futures as cf

    import requests

    from openrouter_sync import OpenRouterBackend, iter_sheets, run_sheets

    started = time.perf_counter()
    ok = 0
    if mode == "plain":
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=workers, pool_maxsize=workers)
        session.mount("http://", adapter)

        def one(i: int) -> bool:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"prompt number {i}: say something about "
                                                                               f"{i}"}]}
            answer = session.post(base_url + "/chat/completions", json=body, timeout=30)
            return answer.status_code == 200 and bool(answer.json()["choices"][0]["message"]["content"])

        with cf.ThreadPoolExecutor(workers) as pool:
            ok = sum(pool.map(one, range(n), chunksize=64))
    else:
        with OpenRouterBackend(model=MODEL, base_url=base_url or ENDPOINT, api_key="k" * 40, timeout_seconds=30,
                               pool_size=workers) as backend:
            if mode in ("run-iter", "resume-iter"):
                for _, _, result in iter_sheets(backend, _sheets(n), checkpoint=path, max_workers=workers):
                    ok += result.success and (mode == "run-iter" or result.from_checkpoint)
            else:
                ok = sum(r.success and r.from_checkpoint for r in run_sheets(backend, list(_sheets(n)),
                                                                             checkpoint=path, max_workers=workers))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return {"ok": ok, "seconds": round(seconds, 2), "rss_mb": peak, "cpu_seconds": round(time.process_time(), 2)}


def measure(mode: str, n: int, path: str = "", base_url: str = "", workers: int = 16) -> dict[str, Any]:
    """``_child`` in a child process (its peak RSS is its own)."""
    code = ("import json, sys; from benchmarks.scale import _child; "
            f"print(json.dumps(_child({mode!r}, {n}, {path!r}, {base_url!r}, {workers})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["n"] = n
    return figures


def run(sizes: list[int], run_sizes: list[int], workers: int) -> list[list[str]]:
    """The table's rows."""
    from .scenarios import ServerProcess

    rows: list[list[str]] = []
    folder = tempfile.mkdtemp(prefix="bench-scale-")
    if run_sizes:
        with ServerProcess(module="benchmarks.fastserver") as server:
            for n in run_sizes:
                path = os.path.join(folder, f"run-{n}.jsonl")
                for label, mode in (("openrouter-sync iter_sheets + checkpoint", "run-iter"),
                                    ("ThreadPoolExecutor + requests", "plain")):
                    f = measure(mode, n, path, server.base_url, workers)
                    rows.append([label, "fresh run", f"{n:,}", f"{f['ok']:,}", f"{f['n'] / f['seconds']:.0f}",
                                 str(f["rss_mb"]), f"{f['seconds']:.1f}", "", ""])
                os.unlink(path)
    for n in sizes:
        path = os.path.join(folder, f"resume-{n}.jsonl")
        size = synthesize(path, n)
        for label, mode in (("openrouter-sync iter_sheets", "resume-iter"),
                            ("openrouter-sync run_sheets", "resume-run")):
            f = measure(mode, n, path, "", workers)
            rows.append([label, "resume", f"{n:,}", f"{f['ok']:,}", f"{f['n'] / f['seconds']:.0f}", str(f["rss_mb"]),
                         f"{f['seconds']:.1f}", f"{f['cpu_seconds']:.1f}", f"{size / n:.0f}"])
        os.unlink(path)
    return rows


def table(rows: list[list[str]]) -> str:
    header = ["client", "what", "sheets", "answered / restored", "sheets/s", "peak RSS, MB", "seconds", "CPU s",
              "bytes a record"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="checkpoint sizes to resume")
    parser.add_argument("--run-sizes", default="10000,100000", help="fresh batch sizes (against the fast server)")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    run_sizes = [int(s) for s in args.run_sizes.split(",") if s]
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load {load[0]:.2f} at the start\n")
    rows = run(sizes, run_sizes, args.workers)
    print(table(rows))
    print(f"\n(load {os.getloadavg()[0]:.2f} at the end; a resume sends nothing: its server does not exist)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
