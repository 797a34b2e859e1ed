"""Spending caps and early stops against a real local server that bills: what it billed is what the run kept.

The fake server bills every completion it makes (``generations``: one per answer it produced,
with its ``total_cost``), whether or not the client is still there to read it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from openrouter_sync import ErrorType, ExecutionResult, OpenRouterBackend, RetryPolicy, Sheet, iter_sheets, run_sheets
from openrouter_sync.checkpoint import load_checkpoint, read_records
from openrouter_sync.cli import main
from openrouter_sync.errors import BudgetExceededError
from openrouter_sync.runner import RunAborted, RunInterrupted
from openrouter_sync.testing import FakeOpenRouter, RecordedRequest, Reply

pytestmark = pytest.mark.socket
MODEL = "openai/gpt-4o-mini"


def _backend(server: FakeOpenRouter, key: str) -> OpenRouterBackend:
    return OpenRouterBackend(model=MODEL, base_url=server.base_url, api_key=key,
                             retry_policy=RetryPolicy(backoff_base=0.01, backoff_max=0.05))


def _sheets(n: int, tag: str = "p") -> list[Sheet]:
    return [Sheet(f"{tag}{i:03d} " * 20, id=f"{tag}{i:03d}") for i in range(n)]  # equal lengths: equal costs


def _billed(server: FakeOpenRouter) -> float:
    return math.fsum(g["total_cost"] for g in list(server.generations.values()))


def _answered(server: FakeOpenRouter) -> set[str]:
    return {p for p, n in server.answers_per_prompt.items() if n}


# ----- max_cost ------------------------------------------------------------------------------

def test_max_cost_stops_new_sheets_and_a_higher_cap_resumes(key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    sheets = _sheets(30)
    workers = 3
    with FakeOpenRouter(latency=0.02) as server, _backend(server, key) as b:
        one = b.execute_sheet(Sheet("z999 " * 20)).cost  # what one answer costs here
        assert one is not None and one > 0
        server.generations.clear()
        server.reset_counts()
        cap = 6.5 * one

        first = run_sheets(b, sheets, checkpoint=path, max_workers=workers, max_cost=cap)
        done = [r for r in first if r.success]
        refused = [r for r in first if not r.success]
        assert len(first) == 30 and refused
        assert {r.error_type for r in refused} == {ErrorType.BUDGET_EXCEEDED}
        assert all(r.exit_code == 1 and "max_cost" in (r.error_message or "") for r in refused)
        # It stopped once the reported cost reached the cap; only the sheets in flight went past it.
        assert len(done) * one >= cap - 1e-12
        assert (len(done) - workers) * one < cap
        # Nothing refused was sent; what the server billed is what the run kept and counted.
        assert server.request_count == len(done)
        assert _answered(server) == {s.prompt for s, r in zip(sheets, first) if r.success}
        assert first.summary.cost == pytest.approx(_billed(server))
        assert first.summary.budget_exceeded == len(refused) and first.summary.failed == len(refused)
        assert "spending cap" in str(first.summary) and "not sent" in str(first.summary)
        # The refused sheets are not in the checkpoint (not as successes, not at all).
        assert set(read_records(path)) == {r.sheet_id for r in done}
        with pytest.raises(BudgetExceededError):
            refused[0].raise_for_error()

        # The same cap again: earlier runs' spending counts, so nothing more is sent.
        again = run_sheets(b, sheets, checkpoint=path, max_workers=workers, max_cost=cap)
        assert server.request_count == len(done)
        assert again.summary.from_checkpoint == len(done) and again.summary.budget_exceeded == len(refused)
        assert again.summary.earlier_cost == pytest.approx(_billed(server))

        # A higher cap resumes: every sheet is then answered, each exactly once.
        last = run_sheets(b, sheets, checkpoint=path, max_workers=workers, max_cost=1000 * cap)
    assert all(r.success for r in last)
    assert sorted(server.answers_per_prompt.values()) == [1] * 30
    assert last.summary.cost == pytest.approx(one * len(refused))


def test_iter_sheets_max_cost_over_a_generator(key: str) -> None:
    with FakeOpenRouter() as server, _backend(server, key) as b:
        sheets = _sheets(12)
        one = b.execute_sheet(sheets[0]).cost
        assert one is not None
        server.reset_counts()
        seen: list[ExecutionResult] = []
        out = list(iter_sheets(b, (s for s in sheets[1:]), max_workers=1, max_cost=2.5 * one,
                               on_result=lambda i, r: seen.append(r)))
    kinds = sorted(r.error_type or "ok" for _, _, r in out)
    assert kinds == ["budget_exceeded"] * 8 + ["ok"] * 3  # 3 answers reach the cap; one worker: none in flight
    assert server.request_count == 3 and len(seen) == 11


def test_max_cost_counts_only_reported_costs_and_says_so(key: str, caplog: pytest.LogCaptureFixture) -> None:
    answer = {"id": "gen-x", "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant", "content": "hi"}}]}
    with FakeOpenRouter(handler=lambda request: Reply(body=answer)) as server, _backend(server, key) as b:
        with caplog.at_level(logging.WARNING, logger="openrouter_sync"):
            results = run_sheets(b, _sheets(4), max_workers=2, max_cost=0.01)
    assert all(r.success for r in results) and server.request_count == 4
    assert sum("reported no cost" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "5", True])
def test_bad_caps_are_refused_before_anything_is_sent(fake: FakeOpenRouter, key: str, bad: Any) -> None:
    with _backend(fake, key) as b:
        with pytest.raises(ValueError, match="max_cost must be a number of US dollars > 0"):
            run_sheets(b, ["a"], max_cost=bad)
        with pytest.raises(ValueError, match="max_cost"):
            list(iter_sheets(b, ["a"], max_cost=bad))
        with pytest.raises(TypeError, match="keep_raw must be True or False"):
            run_sheets(b, ["a"], keep_raw="yes")  # type: ignore[arg-type]
    assert fake.request_count == 0


# ----- early stops keep what the server billed -----------------------------------------------

def test_a_break_out_of_iter_sheets_keeps_the_answers_in_flight(key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    sheets = _sheets(40)
    reported: list[ExecutionResult] = []
    with FakeOpenRouter(latency=0.15) as server, _backend(server, key) as b:
        for n, _ in enumerate(iter_sheets(b, sheets, max_workers=8, checkpoint=path,
                                          on_result=lambda i, r: reported.append(r))):
            if n == 2:
                break
        # Closed at the break: the sheets in flight finished and were recorded, none was cut.
        assert server.status_counts.get(0, 0) == 0
        answered = _answered(server)
        assert len(answered) > 3
        assert {s.id for s in sheets if s.prompt in answered} == set(load_checkpoint(path))
        assert math.fsum(r.cost or 0 for r in reported) == pytest.approx(_billed(server))
        assert len(reported) == len(answered)
        # A rerun sends only the rest.
        results = run_sheets(b, sheets, checkpoint=path, max_workers=8)
    assert all(r.success for r in results)
    assert sorted(server.answers_per_prompt.values()) == [1] * 40


def test_an_exception_from_on_result_ends_the_run_with_every_billed_answer(key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    sheets = _sheets(40)

    def fails_on_the_fifth(index: int, result: ExecutionResult) -> None:
        if index == 4:
            raise LookupError("my bug")

    with FakeOpenRouter(latency=0.1) as server, _backend(server, key) as b:
        with pytest.raises(RunAborted) as caught:
            run_sheets(b, sheets, checkpoint=path, max_workers=8, on_result=fails_on_the_fifth)
    aborted = caught.value
    assert isinstance(aborted.error, LookupError) and aborted.__cause__ is aborted.error
    assert "LookupError: my bug" in str(aborted)
    kept = [r for r in aborted.results if r is not None]
    assert len(aborted.results) == 40 and 5 <= len(kept) < 40
    assert all(r.success for r in kept)
    assert {r.sheet_id for r in kept} == set(load_checkpoint(path))
    assert {sheets[i].prompt for i, r in enumerate(aborted.results) if r is not None} == _answered(server)
    assert server.status_counts.get(0, 0) == 0  # nothing was cut
    assert aborted.summary.total == len(kept)
    assert aborted.summary.cost == pytest.approx(_billed(server))


def test_iter_sheets_lets_the_on_result_exception_through_after_keeping_the_rest(key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    sheets = _sheets(24)

    def fails(index: int, result: ExecutionResult) -> None:
        raise KeyError("nope")

    with FakeOpenRouter(latency=0.1) as server, _backend(server, key) as b:
        with pytest.raises(KeyError):
            for _ in iter_sheets(b, sheets, max_workers=6, checkpoint=path, on_result=fails):
                pass
    assert len(_answered(server)) > 1
    assert {s.id for s in sheets if s.prompt in _answered(server)} == set(load_checkpoint(path))


def test_ctrl_c_still_cuts_at_once(key: str) -> None:
    def slow(request: RecordedRequest) -> Optional[Reply]:
        return Reply(delay=5.0) if request.prompt != "p000 " * 20 else None

    with FakeOpenRouter(handler=slow) as server, _backend(server, key) as b:
        def interrupt(index: int, result: ExecutionResult) -> None:
            raise KeyboardInterrupt

        start = time.monotonic()
        with pytest.raises(RunInterrupted) as caught:
            run_sheets(b, _sheets(6), max_workers=6, on_result=interrupt)
        assert time.monotonic() - start < 3.0  # the 5 s answers were cut, not awaited
    assert [r is not None for r in caught.value.results].count(True) == 1


# ----- the command line ----------------------------------------------------------------------

def test_cli_max_cost(tmp_path: Path, fake: FakeOpenRouter, env_key: str, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"{s.prompt}\n" for s in _sheets(12)), encoding="utf-8")
    out = tmp_path / "o.jsonl"
    base = ["run", str(prompts), "-o", str(out), "--base-url", fake.base_url, "--no-progress", "-w", "1",
            "-m", MODEL]
    with OpenRouterBackend(model=MODEL, base_url=fake.base_url) as b:
        one = b.execute_sheet(Sheet(("z999 " * 20).strip())).cost  # the CLI strips each line
    assert one is not None
    fake.reset_counts()
    assert main([*base, "--max-cost", str(3.5 * one)]) == 1
    err = capsys.readouterr().err
    assert "spending cap" in err and "8 sheets not sent" in err
    assert len(out.read_text().splitlines()) == 4 and fake.request_count == 4
    assert all(json.loads(line)["result"]["success"] for line in out.read_text().splitlines())
    assert main([*base, "--max-cost", "1"]) == 0
    assert sorted(fake.answers_per_prompt.values()) == [1] * 12
    assert main([*base, "--max-cost", "0"]) == 2
    assert "--max-cost: must be a number > 0" in capsys.readouterr().err
