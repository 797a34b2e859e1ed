"""The command line, in-process, against the fake server (or its own offline one)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrouter_sync.cli import build_parser, main
from openrouter_sync.testing import FakeOpenRouter, RecordedRequest, Reply, fake_reply

pytestmark = pytest.mark.socket
Capsys = pytest.CaptureFixture[str]


def _prompts(tmp_path: Path, text: str = "first\n\nsecond\nthird\n", name: str = "p.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----- offline and the key -------------------------------------------------------------------

def test_run_offline_then_resume(tmp_path: Path, capsys: Capsys) -> None:
    prompts = _prompts(tmp_path)
    out = tmp_path / "out.jsonl"
    assert main(["run", "--offline", str(prompts), "-o", str(out), "--no-progress", "-m", "a/b"]) == 0
    err = capsys.readouterr().err
    assert "OFFLINE" in err and "3 sheets: 3 ok" in err
    records = _records(out)
    assert [r["result"]["stdout"] for r in sorted(records, key=lambda r: r["index"])] == [
        fake_reply(p, "a/b") for p in ("first", "second", "third")]
    assert main(["run", str(prompts), "-o", str(out), "--offline", "--no-progress", "-m", "a/b"]) == 0
    err = capsys.readouterr().err
    assert "(3 from checkpoint, 0 sent now)" in err
    assert "this run sent nothing" in err and "tokens 0" not in err


def test_offline_is_a_flag_and_a_mode(tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = _prompts(tmp_path, "one\n")
    assert main(["ask", "--offline", "q"]) == 0
    assert capsys.readouterr().out.strip() == fake_reply("q", "minimax/minimax-m1-80k")
    assert main(["run", "--offline=typo", str(prompts), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "ignored explicit argument 'typo'" in capsys.readouterr().err
    assert main(["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--offline-mode", "sometimes"]) == 2
    assert main(["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--offline", "--offline-mode", "auto"]) == 2
    assert not (tmp_path / "o.jsonl").exists()
    capsys.readouterr()
    assert main(["run", str(prompts), "-o", str(tmp_path / "a.jsonl"), "--offline-mode", "auto",
                 "--no-progress"]) == 0
    assert "OFFLINE" in capsys.readouterr().err
    monkeypatch.setenv("OPENROUTER_SYNC_OFFLINE", "auto")
    assert main(["run", str(prompts), "-o", str(tmp_path / "b.jsonl"), "--no-progress"]) == 0
    monkeypatch.setenv("OPENROUTER_SYNC_OFFLINE", "perhaps")
    assert main(["run", str(prompts), "-o", str(tmp_path / "c.jsonl")]) == 2
    assert "OPENROUTER_SYNC_OFFLINE must be auto, always or never" in capsys.readouterr().err


def test_without_a_key_nothing_is_sent_or_written(tmp_path: Path, fake: FakeOpenRouter, capsys: Capsys) -> None:
    prompts = _prompts(tmp_path)
    out = tmp_path / "out.jsonl"
    assert main(["run", str(prompts), "-o", str(out), "--base-url", fake.base_url]) == 2
    err = capsys.readouterr().err
    assert "set OPENROUTER_API_KEY or use --offline" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["ask", "hello", "--base-url", fake.base_url]) == 2
    assert "set OPENROUTER_API_KEY or use --offline" in capsys.readouterr().err
    assert main(["check", "--base-url", fake.base_url]) == 1
    said = capsys.readouterr().out
    assert "MISSING" in said and "nothing was sent" in said and "NOT reachable" not in said
    assert fake.request_count == 0 and not fake.requests


def test_offline_records_are_not_reused_online(tmp_path: Path, fake: FakeOpenRouter, env_key: str) -> None:
    prompts = _prompts(tmp_path, "one\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", str(prompts), "-o", str(out), "--offline", "--no-progress"]) == 0
    assert main(["run", str(prompts), "-o", str(out), "--base-url", fake.base_url, "--no-progress"]) == 2
    assert main(["run", str(prompts), "-o", str(out), "--base-url", fake.base_url, "--no-progress", "--force"]) == 0
    assert fake.request_count == 1


def test_offline_auto_uses_the_key_when_set(tmp_path: Path, fake: FakeOpenRouter, env_key: str) -> None:
    prompts = _prompts(tmp_path, "real\n")
    assert main(["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--offline-mode", "auto", "--base-url",
                 fake.base_url, "--no-progress"]) == 0
    assert fake.request_count == 1


# ----- settings remembered -------------------------------------------------------------------

@pytest.mark.parametrize("change", [["-m", "other/model"], ["--temperature", "0"], ["--max-tokens", "9"]])
def test_a_rerun_with_other_settings_refuses_or_redoes(tmp_path: Path, fake: FakeOpenRouter, env_key: str,
                                                       capsys: Capsys, change: list[str]) -> None:
    prompts = _prompts(tmp_path, "one\ntwo\n")
    out = tmp_path / "out.jsonl"
    base = ["run", str(prompts), "-o", str(out), "--base-url", fake.base_url, "--no-progress"]
    assert main(base) == 0
    fake.reset_counts()
    before = out.read_text()
    assert main(base + change) == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and "--force" in err and "--fresh" in err
    assert fake.request_count == 0 and out.read_text() == before
    assert main([*base, *change, "--force"]) == 0
    assert fake.request_count == 2
    fake.reset_counts()
    assert main(base + change) == 0 and fake.request_count == 0  # now they match
    assert main([*base, *change, "--fresh"]) == 0 and fake.request_count == 2


def test_other_content_is_other_sheets(tmp_path: Path, fake: FakeOpenRouter, env_key: str) -> None:
    prompts = _prompts(tmp_path, "one\n")
    base = ["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--base-url", fake.base_url, "--no-progress"]
    assert main(base) == 0
    assert main([*base, "--system", "be brief"]) == 0  # a sheet without an id is named by its content
    assert fake.request_count == 2 and fake.requests[-1].json["messages"][0]["content"] == "be brief"


def test_per_sheet_options_in_jsonl_are_settings_too(tmp_path: Path, fake: FakeOpenRouter, env_key: str) -> None:
    src = tmp_path / "in.jsonl"
    out = tmp_path / "o.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "hi", "seed": 1}) + "\n")
    assert main(["run", str(src), "-o", str(out), "--base-url", fake.base_url, "--no-progress"]) == 0
    src.write_text(json.dumps({"id": "a", "prompt": "hi", "seed": 2}) + "\n")
    assert main(["run", str(src), "-o", str(out), "--base-url", fake.base_url, "--no-progress"]) == 2
    assert fake.request_count == 1


# ----- the output file -----------------------------------------------------------------------

def test_output_must_be_a_results_file(tmp_path: Path, capsys: Capsys) -> None:
    prompts = _prompts(tmp_path)
    assert main(["run", str(prompts), "-o", str(tmp_path), "--offline"]) == 2
    assert "is a directory" in capsys.readouterr().err
    for name, content in (("notes.txt", "my notes\n"), ("victim.py", "print('hi')\n"), ("x.jsonl", '{"a": 1}\n')):
        target = tmp_path / name
        target.write_text(content)
        assert main(["run", str(prompts), "-o", str(target), "--offline"]) == 2
        assert "not an openrouter-sync results file" in capsys.readouterr().err
        assert target.read_text() == content
    assert main(["run", str(prompts), "-o", str(prompts), "--offline"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert prompts.read_text() == "first\n\nsecond\nthird\n"


def test_results_keep_prompt_metadata_and_settings(tmp_path: Path, capsys: Capsys) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "hello", "metadata": {"row": 7}}) + "\n"
                   + json.dumps({"prompt": "bye", "temperature": 0.2}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["run", str(src), "-o", str(out), "--offline", "--no-progress", "-m", "x/y"]) == 0
    by_prompt = {r["sheet"]["prompt"]: r for r in _records(out)}
    assert by_prompt["hello"]["sheet"]["metadata"] == {"row": 7} and by_prompt["hello"]["id"] == "a"
    assert by_prompt["hello"]["settings"]["model"] == "x/y" and by_prompt["bye"]["settings"]["temperature"] == 0.2
    assert by_prompt["bye"]["label"] == "line 2"


def test_export_latest_record_per_id_in_input_order(tmp_path: Path, fake: FakeOpenRouter, env_key: str,
                                                    capsys: Capsys) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"s{i}", "prompt": f"p{i}", "metadata": {"n": i}}) + "\n"
                           for i in range(5)))
    out = tmp_path / "o.jsonl"
    fake.handler = lambda request: Reply(400) if request.prompt == "p3" else None
    base = ["run", str(src), "-o", str(out), "--base-url", fake.base_url, "--no-progress", "--attempts", "1"]
    assert main([*base, "-w", "5"]) == 1
    fake.handler = None
    assert main(base) == 0  # only p3 again: its success is the newer record
    assert len(_records(out)) == 6
    capsys.readouterr()
    assert main(["export", str(out)]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in exported] == [f"s{i}" for i in range(5)]
    assert all(r["result"]["success"] for r in exported)
    target = tmp_path / "final.csv"
    assert main(["export", str(out), "-o", str(target)]) == 0
    rows = list(csv.DictReader(target.open(encoding="utf-8", newline="")))
    assert [row["prompt"] for row in rows] == [f"p{i}" for i in range(5)]
    assert rows[3]["success"] == "True" and rows[3]["answer"] == fake_reply("p3", "minimax/minimax-m1-80k")
    assert json.loads(rows[2]["metadata"]) == {"n": 2}
    assert main(["export", str(out), "-o", str(out)]) == 2
    assert main(["export", str(src)]) == 2  # not a results file


# ----- input ---------------------------------------------------------------------------------

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
    ('{"prompt": "ok"}\n{"prompt": \n', "in.jsonl, line 2: not valid JSON"),
    ('{"prompt": "ok"}\n{"promt": "typo"}\n', "in.jsonl, line 2: unknown field(s) 'promt'"),
    ('{"id": "x"}\n', "in.jsonl, line 1: needs 'prompt' or 'messages'"),
    ('["a list"]\n', "in.jsonl, line 1: expected a JSON object"),
    ('{"prompt": "x", "temperature": 9}\n', "in.jsonl, line 1"),
    ('{"id": "a", "prompt": "x"}\n\n{"id": "a", "prompt": "y"}\n', "in.jsonl, line 3: id 'a' is used twice "
                                                                    "(first on line 1)"),
    ("\n\n", "in.jsonl: no prompts"),
])
def test_bad_input_names_the_file_and_line(tmp_path: Path, capsys: Capsys, content: str, message: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    assert main(["run", str(src), "-o", str(tmp_path / "o.jsonl"), "--offline"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_binary_input_names_the_file(tmp_path: Path, capsys: Capsys) -> None:
    src = tmp_path / "image.txt"
    src.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert main(["run", str(src), "-o", str(tmp_path / "o.jsonl"), "--offline"]) == 2
    err = capsys.readouterr().err
    assert "image.txt, line 1, column 1: not UTF-8 text" in err and "Traceback" not in err


def test_format_by_extension_or_flag_and_bom(tmp_path: Path, capsys: Capsys) -> None:
    txt = tmp_path / "p.txt"
    txt.write_bytes('\ufeff{"looks": "like json"}\nsecond\n'.encode())
    out = tmp_path / "o.jsonl"
    assert main(["run", str(txt), "-o", str(out), "--offline", "--no-progress"]) == 0
    assert {r["sheet"]["prompt"] for r in _records(out)} == {'{"looks": "like json"}', "second"}
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_bytes('\ufeff{"prompt": "with a BOM"}\n'.encode())
    assert main(["run", str(jsonl), "-o", str(tmp_path / "o2.jsonl"), "--offline", "--no-progress"]) == 0
    as_text = tmp_path / "batch.input"
    as_text.write_text('{"prompt": "jsonl by flag"}\n')
    assert main(["run", str(as_text), "-o", str(tmp_path / "o3.jsonl"), "--offline", "--no-progress",
                 "--format", "jsonl"]) == 0
    assert _records(tmp_path / "o3.jsonl")[0]["sheet"]["prompt"] == "jsonl by flag"


def test_missing_input_file(tmp_path: Path, capsys: Capsys) -> None:
    assert main(["run", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "o.jsonl"), "--offline"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_stdin_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbffrom stdin\n")))
    assert main(["run", "-", "-o", str(tmp_path / "o.jsonl"), "--offline", "--no-progress"]) == 0
    assert "1 sheet: 1 ok" in capsys.readouterr().err
    assert _records(tmp_path / "o.jsonl")[0]["sheet"]["prompt"] == "from stdin"


# ----- the summary ---------------------------------------------------------------------------

def test_summary_names_failures_and_cut_answers(tmp_path: Path, fake: FakeOpenRouter, env_key: str,
                                                capsys: Capsys) -> None:
    cut = {"id": "g", "model": "m/x", "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
           "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "half"}}]}

    def handler(request: RecordedRequest) -> Reply:
        if request.prompt == "bad":
            return Reply(400, body={"error": {"code": 400, "message": "this prompt is refused"}})
        return Reply(body=cut)

    fake.handler = handler
    prompts = _prompts(tmp_path, "ok\nbad\n")
    assert main(["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--base-url", fake.base_url,
                 "--no-progress", "--attempts", "1"]) == 1
    err = capsys.readouterr().err
    assert "2 sheets: 1 ok, 1 failed" in err
    assert "line 2: bad_request" in err and "this prompt is refused" in err
    assert 'cut by the token limit (finish_reason "length"): 1 sheet: line 1' in err
    assert "cost unknown" in err and "$0.000000" not in err
    assert "1 sheet retried" not in err and "sha1-" not in err


def test_ask_from_stdin_and_its_footer(monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("what now\n"))
    assert main(["ask", "-", "--offline", "-m", "m/x"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == fake_reply("what now", "m/x")
    assert "m/x" in captured.err and "None" not in captured.err


def test_ask_says_when_the_answer_was_cut(fake: FakeOpenRouter, env_key: str, capsys: Capsys) -> None:
    fake.handler = lambda request: Reply(body={"id": "g", "model": "m/x", "choices": [
        {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "half"}}]})
    main(["ask", "q", "--base-url", fake.base_url])
    assert "cut by the token limit" in capsys.readouterr().err


# ----- options -------------------------------------------------------------------------------

def test_models_and_check(capsys: Capsys) -> None:
    assert main(["models", "--free", "--offline"]) == 0
    out = capsys.readouterr().out
    assert ":free" in out and "gpt-4o-mini" not in out
    assert main(["check", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "reachable" in out and "key limits" in out


@pytest.mark.parametrize("argv", [["models", "-m", "x/y"], ["check", "--temperature", "1"], ["check", "-m", "a/b"],
                                  ["models", "--workers", "3"]])
def test_models_and_check_refuse_options_that_mean_nothing_to_them(argv: list[str], capsys: Capsys) -> None:
    assert main([*argv, "--offline"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "name"), [
    ("--temperature", "7", "--temperature"), ("-w", "0", "-w/--workers"), ("--workers", "x", "-w/--workers"),
    ("--max-tokens", "0", "--max-tokens"), ("--timeout", "-1", "--timeout"), ("--timeout", "inf", "--timeout"),
    ("--rpm", "nan", "--rpm"), ("--attempts", "0", "--attempts"),
])
def test_bad_option_values_use_the_cli_names(tmp_path: Path, capsys: Capsys, option: str, value: str,
                                             name: str) -> None:
    prompts = _prompts(tmp_path, "a\n")
    assert main(["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--offline", option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {name}" in err and "max_workers" not in err


def test_every_option_has_help_with_its_default() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():  # type: ignore[attr-defined]
        for action in sub._actions:
            if action.dest in ("help",) or not action.option_strings:
                continue
            assert action.help and ("default" in action.help or action.required), (name, action.dest)
    run_help = subparsers.choices["run"].format_help()  # type: ignore[attr-defined]
    assert "minimax/minimax-m1-80k" in run_help and "OPENROUTER_MODEL" in run_help


def test_failed_sheets_make_a_non_zero_exit(tmp_path: Path, fake: FakeOpenRouter, env_key: str) -> None:
    fake.script(Reply(400))
    prompts = _prompts(tmp_path, "a\nb\n")
    assert main(["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--base-url", fake.base_url,
                 "--workers", "1", "--no-progress"]) == 1


@pytest.mark.subprocess
def test_module_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "openrouter_sync", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "openrouter-sync" in done.stdout


def test_a_results_file_torn_in_its_first_record_is_still_resumed(tmp_path: Path, capsys: Capsys) -> None:
    prompts = _prompts(tmp_path, "one\ntwo\n")
    out = tmp_path / "o.jsonl"
    assert main(["run", str(prompts), "-o", str(out), "--offline", "--no-progress"]) == 0
    out.write_text(out.read_text().splitlines()[0][:30])  # killed while writing the first record
    assert main(["run", str(prompts), "-o", str(out), "--offline", "--no-progress"]) == 0
    assert "2 sheets: 2 ok" in capsys.readouterr().err


@pytest.mark.subprocess
def test_ctrl_c_keeps_what_finished_and_a_rerun_resumes(tmp_path: Path, key: str) -> None:
    import os
    import signal
    import time

    prompts = _prompts(tmp_path, "".join(f"prompt {i}\n" for i in range(60)))
    out = tmp_path / "o.jsonl"
    env = {**os.environ, "OPENROUTER_API_KEY": key}
    with FakeOpenRouter(latency=0.3) as server:
        argv = [sys.executable, "-m", "openrouter_sync", "run", str(prompts), "-o", str(out), "--base-url",
                server.base_url, "-w", "4", "--no-progress"]
        child = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not out.exists() or len(out.read_text().splitlines()) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=10)
        assert child.returncode == 130 and "run the same command again to resume" in err
        done = len(_records(out))
        server.reset_counts()
        rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0 and f"({done} from checkpoint, {60 - done} sent now)" in rerun.stderr
        assert server.request_count == 60 - done
