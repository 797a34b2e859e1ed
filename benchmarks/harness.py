"""Shared plumbing of the rate-control benchmarks: child processes, checks, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from .clients import LIBRARY_PATH_ENV, prompts_for
from .servers import expected_answer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(pythonpath: Optional[str]) -> dict[str, str]:
    """The environment of a client process: this repository on ``PYTHONPATH`` (for ``benchmarks``),
    the library to measure in ``LIBRARY_PATH_ENV`` (``benchmarks.clients`` puts it first on
    ``sys.path``: a checkout holds a ``benchmarks`` package of its own, so PYTHONPATH order alone
    cannot pick one package from each); loopback never goes through a proxy."""
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    env.pop("OPENROUTER_SYNC_SHARED_STATE", None)
    if pythonpath:
        env[LIBRARY_PATH_ENV] = os.path.abspath(pythonpath)
    return env


def library_line(pythonpath: Optional[str]) -> str:
    """Which openrouter_sync the clients import, as they will import it. Exits when ``pythonpath``
    is given but the package comes from elsewhere (a mistyped path would measure the wrong one)."""
    code = "from benchmarks.clients import library_info, use_library_path; use_library_path(); print(library_info())"
    done = subprocess.run([sys.executable, "-c", code], env=child_env(pythonpath), capture_output=True,
                          text=True, cwd=tempfile.gettempdir(), timeout=60)
    lines = (done.stdout or done.stderr).strip().splitlines()
    line = lines[-1] if lines else "?"
    if pythonpath and f" at {os.path.join(os.path.abspath(pythonpath), 'openrouter_sync')}" not in line:
        raise SystemExit(f"--pythonpath {pythonpath}: no openrouter_sync package there (the clients would import: "
                         f"{line})")
    return line


def shared_state_supported(pythonpath: Optional[str]) -> bool:
    code = "from benchmarks.clients import shared_state_supported as s, use_library_path as u; u(); print(s())"
    done = subprocess.run([sys.executable, "-c", code], env=child_env(pythonpath), capture_output=True,
                          text=True, cwd=tempfile.gettempdir(), timeout=60)
    return done.stdout.strip() == "True"


def machine_line() -> str:
    return (f"machine: {os.cpu_count()} cores, {platform.machine()} {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


@dataclass
class Client:
    """One client process (``benchmarks.clients``) and its outcome."""

    kind: str  # ours | plain
    base_url: str
    tag: str
    n: int
    workers: int
    start_at: float
    pythonpath: Optional[str] = None
    shared_state: Optional[str] = None
    proc: Optional[subprocess.Popen[str]] = None
    result: dict[str, Any] = field(default_factory=dict)
    _out: Any = None
    _err: Any = None

    def start(self) -> Client:
        args = [sys.executable, "-m", "benchmarks.clients", "--client", self.kind, "--base-url", self.base_url,
                "--tag", self.tag, "--n", str(self.n), "--workers", str(self.workers),
                "--start-at", repr(self.start_at)]
        if self.shared_state:
            args += ["--shared-state", self.shared_state]
        # Files, not pipes: a client must never block on a full pipe while others are being waited for.
        self._out = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in finish)
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(args, env=child_env(self.pythonpath), cwd=tempfile.gettempdir(),
                                     stdout=self._out, stderr=self._err, text=True)
        return self

    def finish(self, deadline: float) -> dict[str, Any]:
        """Wait for the process until ``deadline`` (epoch seconds); kill it then. Returns its JSON
        report, or ``{"timeout": True}`` / ``{"failed": returncode}``."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self._read(self._out), self._read(self._err)
            self.result = {"timeout": True}
            return self.result
        out, err = self._read(self._out), self._read(self._err)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if self.proc.returncode != 0 or not lines:
            self.result = {"failed": self.proc.returncode}
            if self.proc.returncode != -signal.SIGKILL:
                print(f"client {self.kind} failed ({self.proc.returncode}):\n{err[-2000:]}", file=sys.stderr)
        else:
            self.result = json.loads(lines[-1])
        return self.result

    @staticmethod
    def _read(handle: IO[str]) -> str:
        handle.seek(0)
        text = handle.read()
        handle.close()
        return text

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    @property
    def prompts(self) -> list[str]:
        return prompts_for(self.tag, self.n)


def check(clients: list[Client], stats: dict[str, Any]) -> dict[str, Any]:
    """Correctness over the prompts of ``clients`` (those that reported): own answer, none twice."""
    correct = total = twice = 0
    for client in clients:
        answers = client.result.get("answers")
        if answers is None:
            continue
        for prompt, answer in zip(client.prompts, answers):
            total += 1
            correct += answer == expected_answer(prompt)
            twice += stats["answers"].get(prompt, 0) > 1
    return {"correct": correct, "of": total, "twice": twice}


def ratio(value: Optional[float], ideal: float) -> str:
    return "" if value is None else f"{value / ideal:.2f}x"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
