"""Shards (a stable share of a batch by sheet id), compact (the latest record of each sheet, atomically,
never under a running batch) and export merging shards in input order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from openrouter_sync import CheckpointLocked, OpenRouterBackend, RetryPolicy, Sheet, iter_sheets, run_sheets
from openrouter_sync.checkpoint import Checkpoint
from openrouter_sync.cli import main
from openrouter_sync.resultsfile import compact, latest_records
from openrouter_sync.shards import in_shard, parse_shard, shard_of
from openrouter_sync.testing import FakeOpenRouter

SHEETS = [Sheet(f"question {i}", id=f"q{i}") for i in range(40)]


@pytest.mark.parametrize("bad", ["0/3", "4/3", "x", "1/0", "1/", "-1/3", (0, 2), (1, True), "1/2/3"])
def test_bad_shards_are_refused_clearly(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"shard|K must"):
        parse_shard(bad)
    with OpenRouterBackend(base_url="http://127.0.0.1:9/api/v1", api_key="k" * 40) as backend, \
            pytest.raises(ValueError, match=r"shard|K must"):
        run_sheets(backend, ["a"], shard=bad)


def test_shares_are_stable_and_cover_every_sheet_once() -> None:
    assert parse_shard("2/3") == (2, 3) == parse_shard((2, 3)) and parse_shard(None) is None
    keys = [f"sheet-{i}" for i in range(3000)]
    owners = [[k for k in range(1, 4) if in_shard(key, (k, 3))] for key in keys]
    assert all(len(found) == 1 for found in owners)
    sizes = [sum(found == [k] for found in owners) for k in range(1, 4)]
    assert all(900 < size < 1100 for size in sizes), sizes
    assert shard_of("sheet-7", 3) == shard_of("sheet-7", 3)  # the same in every process: no salted hash()


@pytest.mark.socket
def test_shards_run_each_sheet_once_and_keep_their_indexes(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    paths = [tmp_path / f"r{k}.jsonl" for k in (1, 2, 3)]
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=RetryPolicy(max_attempts=1)) as b:
        lists = [run_sheets(b, SHEETS, checkpoint=path, shard=f"{k}/3") for k, path in zip((1, 2, 3), paths)]
        streamed = {index for index, _, _ in iter_sheets(b, iter(SHEETS), shard=(2, 3))}
    assert fake.request_count == len(SHEETS) + len(streamed)
    for k, results in zip((1, 2, 3), lists):
        assert len(results) == len(SHEETS) and results.summary.total == sum(r is not None for r in results)
        for index, result in enumerate(results):
            assert (result is not None) == in_shard(SHEETS[index].key, (k, 3))
            if result is not None:
                assert result.sheet_id == SHEETS[index].id and f"question {index}" in result.stdout
    assert streamed == {i for i, r in enumerate(lists[1]) if r is not None}
    merged = list(latest_records(paths))
    assert [r.index for r in merged] == list(range(len(SHEETS))) and [r.id for r in merged] == [s.id for s in SHEETS]
    out = tmp_path / "all.jsonl"
    assert main(["export", *map(str, paths), "-o", str(out)]) == 0
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == list(range(len(SHEETS)))


@pytest.mark.socket
def test_compact_keeps_the_latest_record_of_each_sheet(fake: FakeOpenRouter, key: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.jsonl"
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=RetryPolicy(max_attempts=1)) as b:
        run_sheets(b, SHEETS[:5], checkpoint=path)
        run_sheets(b, SHEETS[:5], checkpoint=path, resume=False)  # a rerun: five superseded records
        with path.open("a") as handle:
            handle.write('{"id": "torn", "index": 9, "resu\n')
        lines = path.read_text().splitlines()
        path.chmod(0o640)
        report = compact(path)
        assert (report.kept, report.dropped) == (5, 6) and report.bytes_after < report.bytes_before
        assert path.read_text().splitlines() == lines[5:10]  # the latest ones, byte for byte, in file order
        assert path.stat().st_mode & 0o777 == 0o640
        assert not list(tmp_path.glob(".run.jsonl.*"))  # no temporary file left
        fake.reset_counts()
        again = run_sheets(b, SHEETS[:5], checkpoint=path)
    assert fake.request_count == 0 and all(r.from_checkpoint for r in again)
    assert main(["compact", str(path)]) == 0 and "kept 5 records" in capsys.readouterr().err


def test_compact_is_refused_while_a_run_holds_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("")
    running = Checkpoint(path)
    try:
        with pytest.raises(CheckpointLocked):
            compact(path)
        assert main(["compact", str(path)]) == 1 and "nothing was changed" in capsys.readouterr().err
    finally:
        running.close()
    assert compact(path).kept == 0


def test_compact_removes_the_attachments_only_dropped_records_used(fake: FakeOpenRouter, key: str,
                                                                   tmp_path: Path) -> None:
    import base64
    import random

    from openrouter_sync.attachments import folder_for

    rng = random.Random(7)
    old, new, shared = ("data:image/png;base64," + base64.b64encode(rng.randbytes(3000)).decode() for _ in range(3))

    def sheet(image: str) -> Sheet:
        parts = [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": image}},
                 {"type": "image_url", "image_url": {"url": shared}}]
        return Sheet(messages=[{"role": "user", "content": parts}], id="a")

    path = tmp_path / "run.jsonl"
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, retry_policy=RetryPolicy(max_attempts=1)) as b:
        run_sheets(b, [sheet(old)], checkpoint=path)
        run_sheets(b, [sheet(new)], checkpoint=path, resume=False)  # the first record is superseded
        folder = folder_for(path)
        assert sorted(p.read_text() for p in folder.rglob("*") if p.is_file()) == sorted([old, new, shared])
        (folder / "notes.txt").write_text("not an attachment")
        report = compact(path)
        assert (report.kept, report.dropped, report.attachments_removed) == (1, 1, 1)
        assert "1 unused attachment(s) removed" in str(report)
        assert sorted(p.read_text() for p in folder.rglob("*") if p.is_file() and p.parent != folder) \
            == sorted([new, shared])
        assert (folder / "notes.txt").exists()
        fake.reset_counts()
        (again,) = run_sheets(b, [sheet(new)], checkpoint=path)
    assert again.from_checkpoint and fake.request_count == 0
