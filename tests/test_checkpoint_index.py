"""The streaming resume (CheckpointIndex): one pass keeps what decides reuse; answers are parsed only when
handed out; the latest valid record wins; bad lines are skipped with their line named; memory per record."""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from openrouter_sync import ExecutionResult, OpenRouterBackend, Sheet, iter_sheets, run_sheets
from openrouter_sync.checkpoint import Checkpoint, CheckpointIndex, endpoint_of, read_head, settings_for

MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def offline_backend() -> Any:
    """A backend whose server does not exist: every sheet here must come from the checkpoint."""
    with OpenRouterBackend(model=MODEL, base_url="http://127.0.0.1:9/api/v1", api_key="k" * 40) as backend:
        yield backend


def _answer(text: str, cost: float = 0.001) -> ExecutionResult:
    return ExecutionResult(success=True, stdout=text, stderr="", duration_seconds=0.1, exit_code=0, model=MODEL,
                           cost=cost)


def _write(path: Path, backend: Any, sheets: list[Sheet], text: str = "answer") -> None:
    checkpoint = Checkpoint(path)
    try:
        for index, sheet in enumerate(sheets):
            settings = settings_for(backend, sheet, endpoint_of(backend))
            assert checkpoint.write(sheet.key, index, _answer(f"{text} {index}"), settings=settings, sheet=sheet,
                                    label=sheet.label)
    finally:
        checkpoint.close()


def test_a_record_puts_what_decides_reuse_first(tmp_path: Path, offline_backend: Any) -> None:
    path = tmp_path / "c.jsonl"
    _write(path, offline_backend, [Sheet("q", id="a", label="A", metadata={"m": 1})])
    line = path.read_text().splitlines()[0]
    data = json.loads(line)
    assert list(data) == ["id", "index", "label", "settings", "result", "sheet"]
    assert list(data["result"])[:2] == ["success", "cost"]
    head = read_head(line + "\n")
    assert head is not None and (head.id, head.index, head.success, head.cost) == ("a", 0, True, 0.001)
    assert head.settings == data["settings"]


def test_only_the_sheets_handed_out_are_parsed(tmp_path: Path, offline_backend: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.jsonl"
    sheets = [Sheet(f"q{i}", id=f"s{i}") for i in range(50)]
    _write(path, offline_backend, sheets)
    parsed: list[Any] = []
    real = ExecutionResult.from_dict.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(ExecutionResult, "from_dict",
                        classmethod(lambda cls, data: parsed.append(data) or real(cls, data)))
    got = []
    for _, _, result in iter_sheets(offline_backend, iter(sheets[:3]), checkpoint=path):
        got.append(result)
    assert sorted(r.stdout for r in got) == ["answer 0", "answer 1", "answer 2"]
    assert all(r.from_checkpoint for r in got)
    assert len(parsed) == 3  # not 50: the other answers were never read into memory


def test_the_latest_valid_record_wins_even_when_a_later_answer_is_bad(tmp_path: Path, offline_backend: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A later line whose head is valid but whose answer is not (a hand edit, a foreign tool) is skipped
    when its sheet is reached, naming the line, and the earlier valid record is used."""
    path = tmp_path / "c.jsonl"
    sheets = [Sheet("q0", id="a"), Sheet("q1", id="b")]
    _write(path, offline_backend, sheets, "first")
    lines = path.read_text().splitlines()
    bad = json.loads(lines[0])
    bad["result"]["duration_seconds"] = "slow"  # the head (id, settings, success, cost) still valid
    torn = lines[1][: len(lines[1]) // 2]
    path.write_text("\n".join([*lines, json.dumps(bad), torn]) + "\n")
    with caplog.at_level(logging.WARNING, "openrouter_sync"):
        results = run_sheets(offline_backend, sheets, checkpoint=path)
    assert [r.stdout for r in results] == ["first 0", "first 1"] and all(r.from_checkpoint for r in results)
    assert "line 3: ignored ('result' is not a valid result" in caplog.text
    assert "line 4: ignored (not valid JSON)" in caplog.text


def test_a_line_whose_head_and_body_disagree_is_not_trusted(tmp_path: Path, offline_backend: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """JSON keeps the last of repeated keys: a head saying success and a body saying failure is invalid."""
    path = tmp_path / "c.jsonl"
    sheet = Sheet("q", id="a")
    _write(path, offline_backend, [sheet], "old")
    line = path.read_text().splitlines()[0]
    forged = line[:-1] + ', "id": "other"}'
    path.write_text(line + "\n" + forged.replace('"stdout": "old 0"', '"stdout": "forged"') + "\n")
    with caplog.at_level(logging.WARNING, "openrouter_sync"):
        (result,) = run_sheets(offline_backend, [sheet], checkpoint=path)
    assert result.stdout == "old 0" and "line 2: ignored (its head and its body disagree)" in caplog.text


def test_records_of_the_older_layout_are_read_in_full(tmp_path: Path, offline_backend: Any) -> None:
    path = tmp_path / "c.jsonl"
    sheets = [Sheet("q0", id="a"), Sheet("q1", id="b")]
    _write(path, offline_backend, sheets)
    old = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        result = data.pop("result")
        result = {"success": result.pop("success"), "stdout": result.pop("stdout"), **result}
        old.append(json.dumps({"id": data["id"], "index": data["index"], "sheet": data["sheet"],
                               "settings": data["settings"], "result": result}))
    path.write_text("\n".join(old) + "\n")
    assert read_head(old[0]) is None
    index = CheckpointIndex([path])
    assert len(index) == 2 and index.spent == pytest.approx(0.002)
    results = run_sheets(offline_backend, sheets, checkpoint=path)
    assert [r.stdout for r in results] == ["answer 0", "answer 1"] and all(r.from_checkpoint for r in results)


def test_other_settings_are_still_redone_or_refused(tmp_path: Path, offline_backend: Any) -> None:
    from openrouter_sync import CheckpointMismatch

    path = tmp_path / "c.jsonl"
    sheets = [Sheet("q0", id="a")]
    _write(path, offline_backend, sheets)
    other = Sheet("q0", id="a", overrides={"temperature": 0.1})
    with pytest.raises(CheckpointMismatch, match="temperature"):
        run_sheets(offline_backend, [other], checkpoint=path, on_mismatch="refuse")
    with pytest.raises(CheckpointMismatch, match="temperature"):
        list(iter_sheets(offline_backend, [other], checkpoint=path, on_mismatch="refuse"))


def test_the_index_costs_well_under_200_bytes_a_record(tmp_path: Path, offline_backend: Any) -> None:
    path = tmp_path / "c.jsonl"
    sheet = Sheet("a prompt", id="s0")
    _write(path, offline_backend, [sheet], "x" * 2000)  # a large answer: it must not count
    line = path.read_text()
    n = 20_000
    path.write_text("".join(line.replace('"s0"', f'"s{i}"').replace('"index": 0', f'"index": {i}')
                            for i in range(n)))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = CheckpointIndex([path])
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(index) == n and index.record("s123") is not None
    print(f"{(after - before) / n:.0f} bytes a record")
    assert (after - before) / n < 200, (after - before) / n


def test_a_torn_answer_made_with_these_settings_leaves_the_earlier_one_to_decide(tmp_path: Path,
                                                                                  offline_backend: Any) -> None:
    """The latest record has this run's settings and a valid head, but its answer is bad (skipped); the
    record before it was made with other settings. That one is the latest valid record, so
    ``on_mismatch="refuse"`` refuses (it used to redo the sheet)."""
    from openrouter_sync import CheckpointMismatch

    path = tmp_path / "c.jsonl"
    sheet = Sheet("q0", id="a")
    _write(path, offline_backend, [Sheet("q0", id="a", overrides={"temperature": 0.1})], "other")
    _write(path, offline_backend, [sheet], "this")
    lines = path.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["result"]["duration_seconds"] = "slow"  # the head (id, settings, success, cost) still valid
    path.write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    with pytest.raises(CheckpointMismatch, match="temperature"):
        run_sheets(offline_backend, [sheet], checkpoint=path, on_mismatch="refuse")
    with pytest.raises(CheckpointMismatch, match="temperature"):
        list(iter_sheets(offline_backend, [sheet], checkpoint=path, on_mismatch="refuse"))
    checkpoint = Checkpoint(path)
    try:
        assert checkpoint.mismatch("a", settings_for(offline_backend, sheet, endpoint_of(offline_backend)))
    finally:
        checkpoint.close()
