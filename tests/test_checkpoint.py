"""Checkpoints: settings remembered, nothing lost (surrogates, disk full, Ctrl-C), bad records, locking, redaction."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from openrouter_sync import (
    CheckpointLocked,
    CheckpointMismatch,
    OpenRouterBackend,
    RetryPolicy,
    RunInterrupted,
    Sheet,
    iter_sheets,
    run_sheets,
)
from openrouter_sync.checkpoint import Checkpoint, load_checkpoint, read_records
from openrouter_sync.testing import FakeOpenRouter, RecordedRequest, Reply, fake_reply

pytestmark = pytest.mark.socket
MODEL = "openai/gpt-4o-mini"
SHEETS = [Sheet(f"question {i}", id=f"q{i}") for i in range(4)]


def _backend(server: FakeOpenRouter, key: str, **kw: Any) -> OpenRouterBackend:
    kw.setdefault("model", MODEL)
    return OpenRouterBackend(base_url=server.base_url, api_key=key, retry_policy=RetryPolicy(max_attempts=1), **kw)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines() if line.strip()]


# ----- settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    {"model": "other/model"}, {"temperature": 0.0}, {"max_tokens": 55},
    {"default_options": {"seed": 7}},
])
def test_other_settings_redo_the_sheets_and_never_hand_back_old_answers(
        fake: FakeOpenRouter, key: str, tmp_path: Path, change: dict[str, Any]) -> None:
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        first = run_sheets(b, SHEETS, checkpoint=path)
    assert all(r.success for r in first)
    fake.reset_counts()
    with _backend(fake, key, **change) as b:
        second = run_sheets(b, SHEETS, checkpoint=path)
    assert fake.request_count == len(SHEETS)  # every sheet redone
    assert not any(r.from_checkpoint for r in second) and second.summary.from_checkpoint == 0
    model = change.get("model", MODEL)
    assert [r.stdout for r in second] == [fake_reply(s.prompt, model) for s in SHEETS]
    fake.reset_counts()
    with _backend(fake, key, **change) as b:  # the same settings again: all from the checkpoint
        third = run_sheets(b, SHEETS, checkpoint=path)
    assert fake.request_count == 0 and all(r.from_checkpoint for r in third)
    stored = _records(path)[-1]["settings"]
    assert set(stored) == {"model", "temperature", "max_tokens", "options", "endpoint"}


def test_other_endpoint_redoes(key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with FakeOpenRouter() as one, _backend(one, key) as b:
        run_sheets(b, SHEETS[:1], checkpoint=path)
    with FakeOpenRouter() as two, _backend(two, key) as b:
        run_sheets(b, SHEETS[:1], checkpoint=path)
        assert two.request_count == 1


def test_per_sheet_overrides_are_part_of_the_settings(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        run_sheets(b, [Sheet("a", id="a", overrides={"model": "x/1"}), Sheet("b", id="b")], checkpoint=path)
        fake.reset_counts()
        again = run_sheets(b, [Sheet("a", id="a", overrides={"model": "x/2"}), Sheet("b", id="b")], checkpoint=path)
    assert fake.request_count == 1 and again[0].model == "x/2" and again[1].from_checkpoint


def test_refuse_raises_before_anything_is_sent(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        run_sheets(b, SHEETS, checkpoint=path)
    fake.reset_counts()
    with _backend(fake, key, model="other/model") as b:
        with pytest.raises(CheckpointMismatch, match="other settings") as caught:
            run_sheets(b, [*SHEETS, Sheet("new one", id="new")], checkpoint=path, on_mismatch="refuse")
        assert len(caught.value.found) == len(SHEETS) and "other/model" in str(caught.value)
        with pytest.raises(ValueError, match="on_mismatch"):
            run_sheets(b, SHEETS, checkpoint=path, on_mismatch="sometimes")
    assert fake.request_count == 0


def test_records_without_settings_are_not_reused(fake: FakeOpenRouter, key: str, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.jsonl"
    with _backend(fake, key) as b:
        run_sheets(b, SHEETS[:2], checkpoint=path)
    old = [{k: v for k, v in r.items() if k != "settings"} for r in _records(path)]  # as 0.1 wrote them
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    fake.reset_counts()
    with caplog.at_level(logging.WARNING, "openrouter_sync"), _backend(fake, key) as b:
        results = run_sheets(b, SHEETS[:2], checkpoint=path)
    assert fake.request_count == 2 and all(r.success and not r.from_checkpoint for r in results)
    assert "older version" in caplog.text


def test_resume_false_reuses_nothing(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        run_sheets(b, SHEETS, checkpoint=path)
        fake.reset_counts()
        run_sheets(b, SHEETS, checkpoint=path, resume=False)
    assert fake.request_count == len(SHEETS)
    assert len(_records(path)) == 2 * len(SHEETS) and len(read_records(path)) == len(SHEETS)


# ----- what a record holds -------------------------------------------------------------------

def test_a_lone_surrogate_never_breaks_a_write(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    body = ('{"id":"gen-1","model":"m/x","choices":[{"index":0,"finish_reason":"stop","message":'
            '{"role":"assistant","content":"a cut emoji \\ud83d","reasoning":"why \\ud83d"}}],'
            '"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}')
    fake.handler = lambda request: Reply(body=body) if request.prompt == "q0" else None
    path = tmp_path / "run.jsonl"
    sheets = [Sheet("q0", id="q0", metadata={"note": "caf\u00e9 \ud800"}), Sheet("q1", id="q1")]
    with _backend(fake, key) as b:
        results = run_sheets(b, sheets, checkpoint=path, max_workers=2)
    answer = results[0].stdout  # the lone surrogate kept, or replaced by the decoder: either way, written
    assert all(r.success for r in results) and answer.startswith("a cut emoji ")
    path.read_bytes().decode("ascii")  # ensure_ascii: every record is ASCII
    assert len(_records(path)) == 2
    assert load_checkpoint(path)["q0"].stdout == answer
    fake.reset_counts()
    with _backend(fake, key) as b:
        again = run_sheets(b, sheets, checkpoint=path)
    assert fake.request_count == 0 and again[0].stdout == answer


def test_a_result_holding_lone_surrogates_is_written_and_read_back(tmp_path: Path) -> None:
    from openrouter_sync import ExecutionResult

    path = tmp_path / "c.jsonl"
    checkpoint = Checkpoint(path)
    result = ExecutionResult(True, "cut \ud83d", "", 0.1, exit_code=0, reasoning="\udfff why", model="m/\ud800")
    assert checkpoint.write("a", 0, result, sheet=Sheet("prompt \ud83d", metadata={"k": "\udc80"}))
    checkpoint.close()
    assert checkpoint.error is None
    path.read_bytes().decode("ascii")
    restored = load_checkpoint(path)["a"]
    assert (restored.stdout, restored.reasoning, restored.model) == ("cut \ud83d", "\udfff why", "m/\ud800")


def test_answers_and_errors_are_redacted_in_the_checkpoint(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    leaked = "sk-or-v1-" + "ab12" * 16
    answer = {"id": "gen-1", "model": MODEL, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
              "choices": [{"index": 0, "finish_reason": "stop", "message": {
                  "role": "assistant", "content": f"here is {leaked} and {key}", "reasoning": f"use {key}"}}]}
    error = {"error": {"code": 400, "message": f"bad key {key}"}}

    def handler(request: RecordedRequest) -> Optional[Reply]:
        return Reply(body=answer) if request.prompt == "good" else Reply(400, body=error)

    fake.handler = handler
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        results = run_sheets(b, [Sheet("good", id="good", metadata={"owner": "me"}), Sheet("bad", id="bad")],
                             checkpoint=path)
    assert results[0].success and not results[1].success
    text = path.read_text()
    assert key not in text and "[REDACTED]" in text
    by_id = {r["id"]: r for r in _records(path)}
    assert by_id["good"]["sheet"] == {"prompt": "good", "metadata": {"owner": "me"}}
    # The answer is kept as it was but for the key: a key-shaped string that is no secret of ours stays.
    assert by_id["good"]["result"]["stdout"] == f"here is {leaked} and [REDACTED]"
    assert load_checkpoint(path)["good"].stdout == f"here is {leaked} and [REDACTED]"
    assert by_id["bad"]["result"]["error_message"] == "HTTP 400 (bad_request): bad key [REDACTED]"


def test_records_of_unexpected_shape_are_skipped_with_the_line(fake: FakeOpenRouter, key: str, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        run_sheets(b, SHEETS, checkpoint=path)
    good = _records(path)
    by_id = {r["id"]: r for r in good}
    slow = json.loads(json.dumps(by_id["q1"]))
    slow["result"]["duration_seconds"] = "slow"
    typed = json.loads(json.dumps(by_id["q2"]))
    typed["result"]["success"] = "yes"
    odd_settings = json.loads(json.dumps(by_id["q3"]))
    odd_settings["settings"] = "anything"
    lines = [json.dumps(by_id["q0"]), json.dumps({"id": "q0", "result": "text"}),  # q0's latest valid one wins
             json.dumps(slow), json.dumps(typed), json.dumps(odd_settings), "[1, 2]", "not json", '{"id": 5}',
             "[" * 100000]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, "openrouter_sync"):
        records = read_records(path)
    assert set(records) == {"q0"}
    for number in range(2, 10):
        assert f"line {number}: ignored" in caplog.text
    fake.reset_counts()
    with _backend(fake, key) as b:
        results = run_sheets(b, SHEETS, checkpoint=path)
    assert fake.request_count == 3 and all(r.success for r in results) and results[0].from_checkpoint
    assert str(results.summary)  # the summary never trips on what was read


# ----- writes that fail, interruptions -------------------------------------------------------

def test_a_failed_write_never_raises(fake: FakeOpenRouter, key: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "run.jsonl"
    real_open = Checkpoint._open

    def full_disk(self: Checkpoint) -> Any:
        handle = real_open(self)

        def write(text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        handle.write = write  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(Checkpoint, "_open", full_disk)
    sheets = [Sheet(f"s{i}", id=f"s{i}") for i in range(6)]
    with caplog.at_level(logging.WARNING, "openrouter_sync"), _backend(fake, key) as b:
        results = run_sheets(b, sheets, checkpoint=path, max_workers=3)
    assert [r.stdout for r in results] == [fake_reply(s.prompt, MODEL) for s in sheets]
    summary = results.summary
    assert not summary.checkpoint_complete and "No space left" in (summary.checkpoint_error or "")
    assert summary.checkpoint_unwritten == 6
    assert "CHECKPOINT INCOMPLETE: 6 finished sheets not recorded" in str(summary)
    assert "could not be written" in caplog.text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_really_full_disk_never_raises(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    with _backend(fake, key) as b:
        results = run_sheets(b, [Sheet(f"s{i}", id=f"s{i}") for i in range(3)], checkpoint=path, resume=False)
    assert all(r.success for r in results) and results.summary.checkpoint_unwritten == 3
    assert "No space left" in (results.summary.checkpoint_error or "")


def test_results_finished_but_not_harvested_at_ctrl_c_are_kept(key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    sheets = [Sheet(f"s{i}", id=f"s{i}") for i in range(40)]

    def slow_then_ctrl_c(index: int, result: object) -> None:
        deadline = time.monotonic() + 10  # a slow callback: meanwhile the workers finish more sheets
        while len(path.read_text().splitlines()) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        raise KeyboardInterrupt

    with FakeOpenRouter(latency=0.02) as server, _backend(server, key) as b:
        with pytest.raises(RunInterrupted) as caught:
            run_sheets(b, sheets, checkpoint=path, max_workers=4, on_result=slow_then_ctrl_c)
    finished = {r.sheet_id for r in caught.value.results if r is not None}
    recorded = set(load_checkpoint(path))
    assert len(finished) >= 5 and finished == recorded
    assert caught.value.summary.total == len(finished)


def test_on_result_reports_restored_sheets_in_both_apis(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with _backend(fake, key) as b:
        run_sheets(b, SHEETS[:2], checkpoint=path)
        seen_run: list[tuple[int, bool]] = []
        run_sheets(b, SHEETS, checkpoint=path, on_result=lambda i, r: seen_run.append((i, r.from_checkpoint)))
        seen_iter: list[tuple[int, bool]] = []
        for _ in iter_sheets(b, SHEETS, checkpoint=path,
                             on_result=lambda i, r: seen_iter.append((i, r.from_checkpoint))):
            pass
    assert sorted(seen_run) == [(0, True), (1, True), (2, False), (3, False)]
    assert sorted(seen_iter) == [(0, True), (1, True), (2, True), (3, True)]


# ----- two runs on one file ------------------------------------------------------------------

def test_a_second_run_on_a_locked_checkpoint_fails_before_sending(fake: FakeOpenRouter, key: str,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    holder = Checkpoint(path)
    try:
        with _backend(fake, key) as b:
            with pytest.raises(CheckpointLocked, match="in use by process"):
                run_sheets(b, SHEETS, checkpoint=path)
            with pytest.raises(CheckpointLocked):
                list(iter_sheets(b, SHEETS, checkpoint=path))
        assert fake.request_count == 0
    finally:
        holder.close()
    assert not (tmp_path / "run.jsonl.lock").exists()  # removed on release
    with _backend(fake, key) as b:  # released: usable again
        assert all(r.success for r in run_sheets(b, SHEETS, checkpoint=path))
    assert not (tmp_path / "run.jsonl.lock").exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from openrouter_sync import OpenRouterBackend, Sheet, run_sheets
    b = OpenRouterBackend(base_url=sys.argv[1], api_key="child-key")
    run_sheets(b, [Sheet(f"child {i}", id=f"c{i}") for i in range(40)], max_workers=2, checkpoint=sys.argv[2])
""")


@pytest.mark.subprocess
def test_two_processes_on_one_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with FakeOpenRouter(latency=0.1) as server:
        child = subprocess.Popen([sys.executable, "-c", HOLDER, server.base_url, str(path)])
        try:
            deadline = time.monotonic() + 20
            while not path.exists() or not path.read_text():
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.02)
            with OpenRouterBackend(base_url=server.base_url, api_key="parent-key") as b:
                with pytest.raises(CheckpointLocked, match=f"process {child.pid}"):
                    run_sheets(b, [Sheet(f"parent {i}", id=f"c{i}") for i in range(40)], checkpoint=path)
            assert not any(server.answers_per_prompt[f"parent {i}"] for i in range(40))  # the second sent nothing
        finally:
            child.kill()
            child.wait()


def test_checkpoint_writes_from_many_threads_are_whole_lines(tmp_path: Path) -> None:
    from openrouter_sync import ExecutionResult

    checkpoint = Checkpoint(tmp_path / "c.jsonl")
    result = ExecutionResult(True, "x" * 5000 + "\u00e9", "", 0.1, exit_code=0)

    def write(n: int) -> None:
        for i in range(50):
            checkpoint.write(f"{n}-{i}", i, result)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checkpoint.close()
    assert len(read_records(tmp_path / "c.jsonl")) == 400
