"""run_sheets / iter_sheets: order, concurrency, per-sheet settings, checkpoints, interrupts, progress."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest

from openrouter_sync import (
    ExecutionResult,
    OpenRouterBackend,
    RetryPolicy,
    Sheet,
    iter_sheets,
    run_sheets,
)
from openrouter_sync.checkpoint import load_checkpoint
from openrouter_sync.progress import ProgressInfo
from openrouter_sync.testing import FakeOpenRouter, RecordedRequest, Reply, fake_reply
from openrouter_sync.throttle import Throttle

pytestmark = pytest.mark.socket
MODEL = "openai/gpt-4o-mini"


def _backend(server: FakeOpenRouter, key: str, **kw: object) -> OpenRouterBackend:
    return OpenRouterBackend(model=MODEL, base_url=server.base_url, api_key=key,
                             retry_policy=RetryPolicy(backoff_base=0.01, backoff_max=0.05), **kw)  # type: ignore[arg-type]


def test_order_is_kept_under_random_latencies(key: str) -> None:
    rng = random.Random(42)
    delays = {f"p{i}": rng.uniform(0, 0.05) for i in range(80)}

    def slow(request: RecordedRequest) -> Optional[Reply]:
        time.sleep(delays.get(request.prompt or "", 0))
        return None

    with FakeOpenRouter(handler=slow) as server, _backend(server, key) as b:
        mixed: list = [Sheet(prompt=p, id=p) if i % 2 else p for i, p in enumerate(delays)]
        results = run_sheets(b, mixed, max_workers=16)
    assert [r.stdout for r in results] == [fake_reply(p, MODEL) for p in delays]
    assert all(isinstance(r, ExecutionResult) for r in results)
    assert results.summary.succeeded == 80 and results.summary.failed == 0


def test_a_thousand_sheets(key: str) -> None:
    with FakeOpenRouter(record=False) as server, _backend(server, key) as b:
        prompts = [f"sheet {i}" for i in range(1000)]
        with _no_pool_warnings():
            results = run_sheets(b, prompts, max_workers=32)
        assert [r.stdout for r in results] == [fake_reply(p, MODEL) for p in prompts]
        assert server.connection_count <= 32
        assert all(server.answers_per_prompt[p] == 1 for p in prompts)


class _no_pool_warnings:
    def __enter__(self) -> None:
        import logging
        self.records: list = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append  # type: ignore[method-assign]
        logging.getLogger("urllib3").addHandler(self.handler)

    def __exit__(self, *exc: object) -> None:
        import logging
        logging.getLogger("urllib3").removeHandler(self.handler)
        assert not [r for r in self.records if "pool is full" in r.getMessage()]


def test_per_sheet_settings_land_in_the_right_requests(fake: FakeOpenRouter, key: str) -> None:
    sheets = [Sheet(prompt=f"q{i}", id=f"s{i}", overrides={"model": f"m/{i % 3}", "temperature": (i % 4) / 2,
                                                           "max_tokens": 100 + i},
                    preamble=f"PRE{i}", extensions=[f"EXT{i}"], system=f"SYS{i}") for i in range(60)]
    with _backend(fake, key) as b:
        b.apply_overrides({"model": "m/WRONG"})  # the backend's mutable state must not leak in
        b.set_preamble("WRONG PREAMBLE")
        results = run_sheets(b, sheets, max_workers=12)
        b.clear_overrides()
    by_prompt = {r.json["messages"][-1]["content"]: r.json for r in fake.requests}
    for i, result in enumerate(results):
        sent = by_prompt[f"PRE{i}\nq{i}\nEXT{i}"]
        assert sent["model"] == f"m/{i % 3}" and result.model == f"m/{i % 3}"
        assert sent["temperature"] == (i % 4) / 2 and sent["max_tokens"] == 100 + i
        assert sent["messages"][0] == {"role": "system", "content": f"SYS{i}"}
        assert result.sheet_id == f"s{i}"


def test_execute_sheet_from_many_threads(fake: FakeOpenRouter, key: str) -> None:
    with _backend(fake, key) as b, ThreadPoolExecutor(16) as pool:
        sheets = [Sheet(prompt=f"t{i}", overrides={"model": f"x/{i}"}) for i in range(48)]
        results = list(pool.map(b.execute_sheet, sheets))
    assert [r.model for r in results] == [f"x/{i}" for i in range(48)]
    assert [r.stdout for r in results] == [fake_reply(f"t{i}", f"x/{i}") for i in range(48)]


def test_failures_are_results_not_exceptions(fake: FakeOpenRouter, key: str) -> None:
    fake.script(Reply(400))
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=RetryPolicy(max_attempts=1)) as b:
        broken = Sheet("x")
        broken.overrides["temperature"] = 7  # changed after construction: caught when it runs
        results = run_sheets(b, ["bad", broken], max_workers=1)
    assert results[0].error_type == "bad_request"
    assert results[1].error_type == "invalid_sheet" and "temperature" in results[1].error_message
    assert results.summary.by_error_type == {"bad_request": 1, "invalid_sheet": 1}


def test_bad_inputs_fail_before_anything_is_sent(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    with _backend(fake, key) as b:
        with pytest.raises(TypeError, match="a sheet must be"):
            run_sheets(b, ["ok", 42])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="used twice"):  # ids must be unique to checkpoint
            run_sheets(b, [Sheet("a", id="same"), Sheet("b", id="same")], checkpoint=tmp_path / "c.jsonl")
        with pytest.raises(ValueError, match="max_workers"):
            run_sheets(b, ["a"], max_workers=0)
        with pytest.raises(ValueError, match="unknown override"):
            Sheet("a", overrides={"modle": "x"})
    assert fake.request_count == 0


def test_same_prompt_twice_runs_twice(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    with _backend(fake, key) as b:
        results = run_sheets(b, ["dup", "dup"], checkpoint=tmp_path / "c.jsonl")
    assert results[0].sheet_id != results[1].sheet_id
    assert fake.answers_per_prompt["dup"] == 2


def test_checkpoint_resume_skips_finished_and_redoes_failed(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    sheets = [Sheet(f"c{i}", id=f"id{i}") for i in range(10)]
    fake.script(Reply(400))  # one sheet fails the first time (400 is not retried)
    with _backend(fake, key) as b:
        first = run_sheets(b, sheets, max_workers=1, checkpoint=path)
        assert first.summary.failed == 1
        lines = path.read_text().splitlines()
        assert len(lines) == 10 and all(json.loads(line)["id"] for line in lines)
        fake.reset_counts()
        second = run_sheets(b, sheets, max_workers=4, checkpoint=path)
    assert fake.request_count == 1  # only the failed one
    assert all(r.success for r in second)
    assert second.summary.from_checkpoint == 9
    assert [r.stdout for r in second] == [fake_reply(f"c{i}", MODEL) for i in range(10)]


def test_torn_last_line_is_ignored_and_redone(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        run_sheets(b, [Sheet("a", id="a"), Sheet("b", id="b")], checkpoint=path, max_workers=1)
        text = path.read_text()
        path.write_text(text[: len(text) - 40])  # the last record is torn, as after a crash
        assert set(load_checkpoint(path)) == {"a"}
        fake.reset_counts()
        results = run_sheets(b, [Sheet("a", id="a"), Sheet("b", id="b")], checkpoint=path)
    assert fake.request_count == 1 and all(r.success for r in results)
    assert set(load_checkpoint(path)) == {"a", "b"}
    for line in path.read_text().splitlines()[-1:]:
        json.loads(line)


def test_iter_sheets_is_lazy_and_bounded(fake: FakeOpenRouter, key: str) -> None:
    pulled = 0
    in_flight_max = 0
    lock = threading.Lock()
    active = 0

    def gen():  # an endless-looking input: must be read lazily
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield f"lazy {i}"

    def handler(request: RecordedRequest) -> Optional[Reply]:
        nonlocal active, in_flight_max
        with lock:
            active += 1
            in_flight_max = max(in_flight_max, active)
        time.sleep(0.002)
        with lock:
            active -= 1
        return None

    fake.handler = handler
    seen = set()
    with _backend(fake, key) as b:
        for yielded, (index, _sheet, result) in enumerate(iter_sheets(b, gen(), max_workers=4), 1):
            assert pulled <= yielded + 6 * 4 + 1  # never far ahead of what finished (8 in flight, 16 read ahead)
            assert result.success
            seen.add(index)
    assert seen == set(range(200)) and in_flight_max <= 4


class _Recording(Throttle):
    """A throttle that notes what the run declares it has left, at each request it lets go."""

    def __init__(self) -> None:
        super().__init__()
        self.declared: list = []
        self.seen: list[Optional[int]] = []
        self.left_after: Optional[int] = None

    @contextlib.contextmanager
    def expect(self, left):  # type: ignore[no-untyped-def]
        self.declared.append(left)
        with super().expect(left):
            yield
        self.left_after = left()

    def acquire(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        for left in self.declared:
            self.seen.append(left())
        return super().acquire(*args, **kwargs)


@pytest.mark.parametrize("lazy", [False, True], ids=["list", "generator"])
def test_a_run_declares_its_sheets_not_yet_answered_to_the_throttle(fake: FakeOpenRouter, key: str,
                                                                    lazy: bool) -> None:
    """So that the learned rate stops growing near the end (``Throttle.expect``): a list's length
    is known at once; a generator's (``iter_sheets``) once it is used up (None until then)."""
    throttle = _Recording()
    prompts = [f"left {i}" for i in range(40)]
    with _backend(fake, key, throttle=throttle) as b:
        if lazy:
            results = [result for _index, _sheet, result in iter_sheets(b, iter(prompts), max_workers=4)]
        else:
            results = run_sheets(b, prompts, max_workers=4)
    assert len(results) == 40 and all(r.success for r in results) and len(throttle.declared) == 1
    known = [n for n in throttle.seen if n is not None]
    assert known == sorted(known, reverse=True) and all(0 < n <= 40 for n in known)
    if lazy:
        assert None in throttle.seen and len(known) < 40
    else:
        assert len(known) == 40 and known[0] == 40
    assert throttle.left_after == 0


def test_progress_callback_text_and_on_result(fake: FakeOpenRouter, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    infos: list[ProgressInfo] = []
    got: list[int] = []
    with _backend(fake, key) as b:
        run_sheets(b, ["a", "b", "c"], progress=infos.append, on_result=lambda i, r: got.append(i))
        assert [i.done for i in infos] == [1, 2, 3] and infos[-1].succeeded == 3 and infos[-1].cost > 0
        assert sorted(got) == [0, 1, 2]
        # Without tqdm: a one-line text meter on stderr.
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
        err = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        run_sheets(b, ["d", "e"], progress=True)
    assert "[2/2] ok 2 failed 0" in err.getvalue()


def test_tqdm_progress_when_installed(fake: FakeOpenRouter, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with _backend(fake, key) as b:
        run_sheets(b, ["a", "b"], progress=True)
    assert "2/2" in err.getvalue()


def test_bring_your_own_executor(fake: FakeOpenRouter, key: str) -> None:
    with _backend(fake, key) as b, ThreadPoolExecutor(3) as pool:
        results = run_sheets(b, ["x", "y", "z"], executor=pool)
        assert [r.stdout for r in results] == [fake_reply(p, MODEL) for p in "xyz"]
        assert pool.submit(lambda: 1).result() == 1  # still usable: not shut down by run_sheets


def test_summary_and_html(fake: FakeOpenRouter, key: str) -> None:
    with _backend(fake, key) as b:
        results = run_sheets(b, ["a", "b"])
    s = results.summary
    assert s.to_dict()["succeeded"] == 2 and s.tokens > 0 and len(s.slowest) == 2
    assert "2 sheets: 2 ok, 0 failed" in str(s)
    html = results._repr_html_()
    assert "<table>" in html and "Fake answer" in html
    assert "<table>" in results[0]._repr_html_()


CHILD = textwrap.dedent("""
    import sys, time
    from openrouter_sync import OpenRouterBackend, RunInterrupted, run_sheets, Sheet
    base_url, checkpoint, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    b = OpenRouterBackend(base_url=base_url, api_key="child-key", timeout_seconds=30)
    sheets = [Sheet(f"child {i}", id=f"c{i}") for i in range(n)]
    try:
        results = run_sheets(b, sheets, max_workers=4, checkpoint=checkpoint)
    except RunInterrupted as exc:
        done = sum(r is not None for r in exc.results)
        print(f"interrupted with {done} done", flush=True)
        sys.exit(130)
    print("finished", flush=True)
""")


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for_lines(path: Path, n: int, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while _lines(path) < n:
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.02)


@pytest.mark.subprocess
def test_resume_after_a_killed_process(key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with FakeOpenRouter(latency=0.05) as server:
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(path), "60"])
        try:
            _wait_for_lines(path, 12)
        finally:
            child.kill()
            child.wait()
        done_before = load_checkpoint(path)
        assert 12 <= len(done_before) < 60
        server.reset_counts()
        with OpenRouterBackend(base_url=server.base_url, api_key="child-key") as b:
            results = run_sheets(b, [Sheet(f"child {i}", id=f"c{i}") for i in range(60)], max_workers=8,
                                 checkpoint=path)
        assert server.request_count == 60 - len(done_before)  # only the rest
        assert all(server.answers_per_prompt[f"child {i}"] == 0 for i in range(60) if f"c{i}" in done_before)
    assert all(r.success for r in results)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ok_ids = [r["id"] for r in records if r["result"]["success"]]
    assert sorted(ok_ids) == sorted(f"c{i}" for i in range(60))  # each sheet recorded once


@pytest.mark.subprocess
def test_sigint_returns_quickly_with_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with FakeOpenRouter(latency=1.0) as server:
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(path), "200"],
                                 stdout=subprocess.PIPE, text=True)
        _wait_for_lines(path, 4)
        time.sleep(0.3)  # in the middle of the next in-flight requests
        start = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=10)
        elapsed = time.monotonic() - start
    assert elapsed < 2.0, elapsed
    assert child.returncode == 130 and "interrupted with" in out
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) >= 4 and all(r["result"]["success"] for r in records)
    assert os.path.getsize(path) > 0


def test_progress_counts_sheets_waiting_to_retry(fake: FakeOpenRouter, key: str) -> None:
    fake.script(Reply(500))  # the first request fails (no refusal: nothing is paced); it waits 0.3 s to retry
    infos: list[ProgressInfo] = []
    policy = RetryPolicy(backoff_base=0.3, backoff_max=0.3, jitter=0)
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=policy) as b:
        results = run_sheets(b, ["first", "a", "b", "c"], max_workers=2, progress=infos.append)
    assert all(r.success for r in results)
    assert any(i.retrying == 1 for i in infos)
    assert infos[-1].retried == 1 and infos[-1].retrying == 0 and "retrying" in infos[-1].line()
    assert b.activity.retrying == 0


def test_summary_counts_only_this_runs_work_and_names_sheets(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        first = run_sheets(b, ["a", "b"], checkpoint=path)
        assert first.summary.tokens > 0 and first.summary.cost is not None
        second = run_sheets(b, ["a", "b", "c"], checkpoint=path)
    s = second.summary
    assert (s.total, s.from_checkpoint, s.sent, s.attempts) == (3, 2, 1, 1)
    assert s.tokens == second[2].tokens_used and s.cost == pytest.approx(second[2].cost)
    assert [name for name, _ in s.slowest] == ["#2"]  # an index, never a sha1-... digest
    text = str(s)
    assert "3 sheets: 3 ok, 0 failed (2 from checkpoint, 1 sent now)" in text
    assert "1 attempt, 0 sheets retried" in text and "sha1-" not in text


def test_summary_cost_unknown_failures_and_cut_answers(fake: FakeOpenRouter, key: str) -> None:
    cut = {"id": "g", "model": MODEL, "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
           "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "half"}}]}

    def handler(request: RecordedRequest) -> Reply:
        if request.prompt == "bad":
            return Reply(400, body={"error": {"code": 400, "message": "nope"}})
        return Reply(body=cut)

    fake.handler = handler
    infos: list[ProgressInfo] = []
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=RetryPolicy(max_attempts=1)) as b:
        results = run_sheets(b, [Sheet("ok", id="first"), "bad"], progress=infos.append)
    s = results.summary
    assert s.cost is None and s.truncated == ["first"]
    assert s.failures == [("#1", "bad_request", s.failures[0][2])] and "nope" in s.failures[0][2]
    text = str(s)
    assert "cost unknown" in text and "$0.000000" not in text
    assert "#1: bad_request" in text and 'finish_reason "length"): 1 sheet: first' in text
    assert infos[-1].cost_text == "$?" and "$?" in infos[-1].line()
    assert "cut at max_tokens" in results._repr_html_()


@pytest.mark.subprocess
def test_the_public_names_import_and_stay_lazy() -> None:
    code = textwrap.dedent("""
        import sys
        import openrouter_sync
        heavy = [m for m in ("openrouter_sync.runner", "openrouter_sync.checkpoint", "openrouter_sync.cli")
                 if m in sys.modules]
        assert not heavy, heavy
        from openrouter_sync import (AuthenticationError, BadRequestError, CancelledError, CheckpointLocked,
                                     ConfigurationError, ConnectionFailedError, ErrorType, InsufficientCreditsError,
                                     KeyInfo, ModelInfo, ModerationError, OpenRouterError, ProgressInfo,
                                     ProviderError, RateLimitError, RequestTimeoutError, RunSummary, Throttle)
        assert issubclass(RateLimitError, OpenRouterError) and ErrorType.RATE_LIMIT == "rate_limit"
        assert set(openrouter_sync.__all__) <= set(dir(openrouter_sync))
        for name in openrouter_sync.__all__:
            getattr(openrouter_sync, name)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
