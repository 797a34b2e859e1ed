"""What a checkpoint record keeps: answers as they were (but for our secrets), attachments once, raw on request."""

from __future__ import annotations

import base64
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from openrouter_sync import ExecutionResult, OpenRouterBackend, RetryPolicy, Sheet, run_sheets
from openrouter_sync.attachments import MARKER, folder_for
from openrouter_sync.checkpoint import load_checkpoint, read_records, record_data
from openrouter_sync.cli import main
from openrouter_sync.testing import FakeOpenRouter, RecordedRequest, Reply

pytestmark = pytest.mark.socket
MODEL = "openai/gpt-4o-mini"
EXAMPLE = "sk-proj-EXAMPLE" + "a1b2c3d4" * 4  # a key-shaped example in a text: not a secret of ours
_rng = random.Random(7)
IMAGE = "data:image/png;base64," + base64.b64encode(_rng.randbytes(120_000)).decode()
PDF = "data:application/pdf;base64," + base64.b64encode(_rng.randbytes(90_000)).decode()
AUDIO = base64.b64encode(_rng.randbytes(30_000)).decode()  # input_audio data: base64 alone


def _backend(server: FakeOpenRouter, key: str) -> OpenRouterBackend:
    return OpenRouterBackend(model=MODEL, base_url=server.base_url, api_key=key,
                             retry_policy=RetryPolicy(backoff_base=0.01, backoff_max=0.05))


def _lines(path: Path) -> list[dict[str, Any]]:
    """The records of a file, in input order (they are written as sheets finish)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda record: record["index"])


def _messages(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "text", "text": f"question {i}: what do these show?"},
        {"type": "image_url", "image_url": {"url": IMAGE}},
        {"type": "file", "file": {"filename": "report.pdf", "file_data": PDF}},
        {"type": "input_audio", "input_audio": {"data": AUDIO, "format": "wav"}},
    ]}]


# ----- redaction -----------------------------------------------------------------------------

def test_answers_and_prompts_are_kept_as_they_were_but_for_our_secrets(fake: FakeOpenRouter, key: str,
                                                                       tmp_path: Path) -> None:
    said = f"Keys look like {EXAMPLE}; yours is {key}."

    def answer(request: RecordedRequest) -> Optional[Reply]:
        return Reply(body={"id": "gen-1", "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": said, "reasoning": f"mention {EXAMPLE}"}}]})

    fake.handler = answer
    path = tmp_path / "run.jsonl"
    sheets = [Sheet(f"explain {EXAMPLE} (not {key})", system=f"never say {key}"),
              Sheet(messages=[{"role": "user", "content": f"is {EXAMPLE} or {key} a key?"}])]
    with _backend(fake, key) as b:
        first = run_sheets(b, sheets, checkpoint=path)
        assert first[0].stdout == said  # the answer in memory is the server's, untouched
        again = run_sheets(b, sheets, checkpoint=path)
    assert fake.request_count == 2 and all(r.from_checkpoint for r in again)
    kept = said.replace(key, "[REDACTED]")
    assert [r.stdout for r in again] == [kept, kept]
    assert again[0].reasoning == f"mention {EXAMPLE}"
    text = path.read_text()
    assert key not in text
    records = _lines(path)
    assert records[0]["sheet"]["prompt"] == f"explain {EXAMPLE} (not [REDACTED])"
    assert records[0]["sheet"]["system"] == "never say [REDACTED]"
    assert records[1]["sheet"]["messages"] == [{"role": "user", "content": f"is {EXAMPLE} or [REDACTED] a key?"}]


# ----- attachments ---------------------------------------------------------------------------

def test_attachments_are_stored_once_and_resume_and_export_still_work(fake: FakeOpenRouter, key: str,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    sheets = [Sheet(messages=_messages(i)) for i in range(12)]  # no ids: keyed by a digest of the content
    with _backend(fake, key) as b:
        first = run_sheets(b, sheets, checkpoint=path, max_workers=4)
        assert all(r.success for r in first)
        sent = fake.requests[0].json["messages"][0]["content"]
        assert [part for part in sent if part["type"] != "text"] == _messages(0)[0]["content"][1:]  # sent whole
        # Each attachment is in one file; the records hold references only.
        folder = folder_for(path)
        stored = sorted(p for p in folder.rglob("*") if p.is_file())
        assert sorted(p.read_text() for p in stored) == sorted([IMAGE, PDF, AUDIO])
        assert all(p.stat().st_mode & 0o077 == 0 for p in stored)
        one_copy = len(IMAGE) + len(PDF) + len(AUDIO)
        assert path.stat().st_size < one_copy / 10  # twelve records weigh less than a tenth of one copy
        parts = _lines(path)[0]["sheet"]["messages"][0]["content"]
        assert parts[0] == {"type": "text", "text": parts[0]["text"]}
        assert set(parts[1]["image_url"]["url"]) == {MARKER, "chars"}
        assert parts[1]["image_url"]["url"]["chars"] == len(IMAGE)
        # Resume: nothing is sent again.
        again = run_sheets(b, sheets, checkpoint=path, max_workers=4)
        assert fake.request_count == 12 and all(r.from_checkpoint for r in again)
        # A later run with the same attachments writes no new file.
        run_sheets(b, [Sheet(messages=_messages(99))], checkpoint=path)
        assert sorted(p for p in folder.rglob("*") if p.is_file()) == stored
    # The export is whole again, and the records read back the same way.
    exported = tmp_path / "export.jsonl"
    assert main(["export", str(path), "-o", str(exported)]) == 0
    rows = _lines(exported)
    assert sorted(json.dumps(row["sheet"]["messages"]) for row in rows) == sorted(
        json.dumps(_messages(i)) for i in [*range(12), 99])
    record = read_records(path)[sheets[3].key]
    assert record_data(record, path)["sheet"]["messages"] == _messages(3)


def test_a_missing_attachment_costs_the_export_only_that_part(fake: FakeOpenRouter, key: str, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "run.jsonl"
    sheets = [Sheet(messages=_messages(0), id="a")]
    with _backend(fake, key) as b:
        run_sheets(b, sheets, checkpoint=path)
        for stored in folder_for(path).rglob("*"):
            if stored.is_file() and stored.read_text() == IMAGE:
                stored.unlink()
        again = run_sheets(b, sheets, checkpoint=path)
    assert again[0].from_checkpoint and fake.request_count == 1  # resuming does not need the attachments
    with caplog.at_level(logging.WARNING, logger="openrouter_sync"):
        data = record_data(read_records(path)["a"], path)
    parts = data["sheet"]["messages"][0]["content"]
    assert set(parts[1]["image_url"]["url"]) == {MARKER, "chars"}  # the reference stays
    assert parts[2]["file"]["file_data"] == PDF
    assert any("is missing" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("blocker", ["file", "symlink"])
def test_attachments_stay_in_the_record_when_their_folder_is_unusable(fake: FakeOpenRouter, key: str, tmp_path: Path,
                                                                      blocker: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "run.jsonl"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if blocker == "file":
        folder_for(path).write_text("not a folder")
    else:
        folder_for(path).symlink_to(elsewhere)
    with _backend(fake, key) as b, caplog.at_level(logging.WARNING, logger="openrouter_sync"):
        results = run_sheets(b, [Sheet(messages=_messages(i)) for i in range(3)], checkpoint=path)
    assert all(r.success for r in results) and results.summary.checkpoint_error is None
    assert [r["sheet"]["messages"] for r in _lines(path)] == [_messages(i) for i in range(3)]  # nothing lost
    assert not list(elsewhere.iterdir())
    assert sum("attachments" in r.getMessage() for r in caplog.records) == 1


def test_short_and_plain_strings_stay_in_the_record(fake: FakeOpenRouter, key: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    small = "data:image/png;base64," + base64.b64encode(b"tiny").decode()
    prose = "word " * 1000
    messages = [{"role": "user", "content": [{"type": "text", "text": prose},
                                             {"type": "image_url", "image_url": {"url": small}}]}]
    with _backend(fake, key) as b:
        run_sheets(b, [Sheet(messages=messages)], checkpoint=path)
    assert _lines(path)[0]["sheet"]["messages"] == messages
    assert not folder_for(path).exists()


# ----- keep_raw ------------------------------------------------------------------------------

@dataclass(repr=False)
class _WithRaw(ExecutionResult):
    raw: Optional[dict[str, Any]] = None


class _RawBackend:
    """A backend whose results carry ``raw`` (the response body), with an image and a secret in it."""

    model, temperature, max_tokens, base_url = "stub/model", 0.5, 100, "stub://"

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def execute_sheet(self, sheet: Sheet, cancel: Any = None) -> ExecutionResult:
        image = {"type": "image_url", "image_url": {"url": IMAGE}}
        body = {"id": f"gen-{sheet.id}", "echo": f"key {self.secret}, example {EXAMPLE}",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "an image", "images": [image]}}]}
        return _WithRaw(True, "an image", "", 0.01, exit_code=0, raw=body)


def test_keep_raw_writes_the_body_only_when_asked(key: str, tmp_path: Path) -> None:
    from openrouter_sync._log import register_secret

    register_secret(key)
    backend = _RawBackend(key)
    lean, full = tmp_path / "lean.jsonl", tmp_path / "full.jsonl"
    run_sheets(backend, [Sheet(f"q{i}", id=f"q{i}") for i in range(5)], checkpoint=lean)
    run_sheets(backend, [Sheet(f"q{i}", id=f"q{i}") for i in range(5)], checkpoint=full, keep_raw=True)
    assert all("raw" not in r["result"] for r in _lines(lean))
    assert not folder_for(lean).exists()
    raws = [r["result"]["raw"] for r in _lines(full)]
    assert [r["id"] for r in raws] == [f"gen-q{i}" for i in range(5)]
    assert raws[0]["echo"] == f"key [REDACTED], example {EXAMPLE}"
    image = raws[0]["choices"][0]["message"]["images"][0]["image_url"]["url"]
    assert set(image) == {MARKER, "chars"}  # the image is stored once, not five times
    assert len([p for p in folder_for(full).rglob("*") if p.is_file()]) == 1
    assert os.path.getsize(full) < len(IMAGE) / 10
    expanded = record_data(read_records(full)["q2"], full)["result"]["raw"]
    assert expanded["choices"][0]["message"]["images"][0]["image_url"]["url"] == IMAGE
    assert load_checkpoint(full)["q2"].stdout == "an image"
