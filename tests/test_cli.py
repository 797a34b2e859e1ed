"""The command line, in-process, against the fake server (or its own offline one)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrouter_sync.cli import main
from openrouter_sync.testing import FakeOpenRouter, Reply, fake_reply

pytestmark = pytest.mark.socket


def test_run_offline_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("first\n\nsecond\nthird\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", str(prompts), "-o", str(out), "--offline", "--no-progress", "-m", "a/b"]) == 0
    err = capsys.readouterr().err
    assert "OFFLINE" in err and "3 sheets: 3 ok" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["result"]["stdout"] for r in sorted(records, key=lambda r: r["index"])] == [
        fake_reply(p, "a/b") for p in ("first", "second", "third")]
    assert main(["run", str(prompts), "-o", str(out), "--offline", "--no-progress", "-m", "a/b"]) == 0
    assert "(3 from checkpoint)" in capsys.readouterr().err


def test_offline_records_are_not_reused_online(tmp_path: Path, fake: FakeOpenRouter, env_key: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", str(prompts), "-o", str(out), "--offline", "--no-progress"]) == 0
    assert main(["run", str(prompts), "-o", str(out), "--base-url", fake.base_url, "--no-progress"]) == 0
    assert fake.request_count == 1


def test_offline_auto_uses_the_key_when_set(tmp_path: Path, fake: FakeOpenRouter, env_key: str) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("real\n")
    assert main(["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--offline=auto", "--base-url",
                 fake.base_url, "--no-progress"]) == 0
    assert fake.request_count == 1


def test_jsonl_input_with_options(tmp_path: Path, fake: FakeOpenRouter, env_key: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "hello", "model": "x/y", "temperature": 0.1}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "hi"}], "provider": {"sort": "price"}})
                   + "\n")
    assert main(["run", str(src), "-o", str(tmp_path / "o.jsonl"), "--base-url", fake.base_url,
                 "--system", "be terse", "--no-progress"]) == 0
    sent = {r.prompt: r.json for r in fake.requests}
    assert sent["hello"]["model"] == "x/y" and sent["hello"]["temperature"] == 0.1
    assert sent["hello"]["messages"][0] == {"role": "system", "content": "be terse"}
    assert sent["hi"]["provider"] == {"sort": "price"}


@pytest.mark.parametrize(("content", "message"), [
    ('{"prompt": "ok"}\n{"prompt": \n', "line 2: not valid JSON"),
    ('{"prompt": "ok"}\n{"promt": "typo"}\n', "line 2: unknown field(s) 'promt'"),
    ('{"id": "x"}\n', "line 1: needs 'prompt' or 'messages'"),
    ('["a list"]\n', "line 1: expected a JSON object"),
    ('{"prompt": "x", "temperature": 9}\n', "line 1"),
    ("\n\n", "no prompts"),
])
def test_bad_input_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                  message: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    assert main(["run", str(src), "-o", str(tmp_path / "o.jsonl"), "--offline"]) == 2
    assert message in capsys.readouterr().err


def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "o.jsonl"), "--offline"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_failed_sheets_make_a_non_zero_exit(tmp_path: Path, fake: FakeOpenRouter, env_key: str) -> None:
    src = tmp_path / "p.txt"
    src.write_text("a\nb\n")
    fake.script(Reply(400))
    assert main(["run", str(src), "-o", str(tmp_path / "o.jsonl"), "--base-url", fake.base_url, "--workers", "1",
                 "--no-progress"]) == 1


def test_stdin_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
    assert main(["run", "-", "-o", str(tmp_path / "o.jsonl"), "--offline", "--no-progress"]) == 0
    assert "1 sheets: 1 ok" in capsys.readouterr().err


def test_ask_streams(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "what now", "--offline", "-m", "m/x"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == fake_reply("what now", "m/x")


def test_models_and_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--free", "--offline"]) == 0
    out = capsys.readouterr().out
    assert ":free" in out and "gpt-4o-mini" not in out
    assert main(["check", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "reachable" in out and "key limits" in out


def test_check_without_key_fails(fake: FakeOpenRouter, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--base-url", fake.base_url]) == 1
    assert "MISSING" in capsys.readouterr().out


def test_bad_option_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "p.txt"
    src.write_text("a\n")
    assert main(["run", str(src), "-o", str(tmp_path / "o.jsonl"), "--offline", "--temperature", "7"]) == 2
    assert "temperature" in capsys.readouterr().err


@pytest.mark.subprocess
def test_module_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "openrouter_sync", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "openrouter-sync" in done.stdout
