"""Issue 26: the second round of hostile conditions (planted files, answers that wipe a results file,
many keys in one process, leaked proxy passwords, compressed error answers, signals, odd paths).

Each test reproduces the attack: raw-socket servers (``hostile.HostileServer``), real files,
symlinks and FIFOs, real signals to a real CLI process.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hostile import (
    HostileServer,
    Request,
    chunk,
    completion,
    delta_chunk,
    event,
    gzip_bytes,
    head,
    make_backend,
    respond,
    send,
    timed,
)

from openrouter_sync import ExecutionResult, OpenRouterBackend, RetryPolicy, Sheet, run_sheets
from openrouter_sync._log import RECENT, known_secrets, redact
from openrouter_sync.checkpoint import Checkpoint, CheckpointError, CheckpointLocked, read_records
from openrouter_sync.cli import main, read_sheets
from openrouter_sync.errors import OpenRouterError
from openrouter_sync.ratelimit.shared import SharedState
from openrouter_sync.summary import RunSummary

MODEL = "openai/gpt-4o-mini"


def _shown(result: Any, caplog: pytest.LogCaptureFixture, *extra: str) -> list[str]:
    texts = [repr(result), str(result), result.stdout, result.stderr, str(result.error_message), *extra]
    if not result.success:
        try:
            result.raise_for_error()
        except OpenRouterError as exc:
            texts += [str(exc), repr(exc)]
    texts += [record.getMessage() for record in caplog.records]
    return texts


# ----- proxy passwords (item 4) ---------------------------------------------------------------------

@pytest.mark.socket
@pytest.mark.parametrize("password", ["Hunter2#pass", "Hunter2/pass?x", "Hun@ter2#pass", "Hunter2%23pass"])
def test_a_proxy_password_with_url_characters_is_sent_and_never_shown(
        password: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``http://user:Hunter2#pass@proxy``: urllib3 used to refuse the URL and quote it whole (password
    and all) in stderr, repr, the exception and the log. Now the password is sent, and never shown."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    meant = password.replace("%23", "#")
    expected = "Basic " + base64.b64encode(f"user:{meant}".encode()).decode()

    def proxy(sock: socket.socket, request: Request) -> bool:
        seen.append(request.headers.get("proxy-authorization", ""))
        if seen[-1] != expected:
            return respond(sock, 407, {"error": {"message": "proxy auth required"}}, {"Proxy-Authenticate": "Basic"})
        return respond(sock, 200, completion("through the proxy"))

    with HostileServer(proxy) as server:
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://user:{password}@127.0.0.1:{server.port}")
        with OpenRouterBackend(model=MODEL, base_url="http://127.0.0.1:9/api/v1", api_key="sk-or-v1-" + "b" * 64,
                               timeout_seconds=2.0, retry_policy=RetryPolicy(max_attempts=1)) as backend:
            result = backend.execute("hi")
            shown = _shown(result, caplog, repr(backend))
    assert seen == [expected]
    assert result.success and result.stdout == "through the proxy"
    assert not any("Hunter2" in text or "ter2" in text for text in shown)


@pytest.mark.socket
@pytest.mark.parametrize("password", ["Hunter2#pass", "Hunter2/pass"])
def test_a_proxy_password_never_shown_when_the_proxy_is_down(password: str, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://user:{password}@127.0.0.1:{port}")
    out = tmp_path / "results.jsonl"
    with OpenRouterBackend(model=MODEL, base_url="http://127.0.0.1:9/api/v1", api_key="sk-or-v1-" + "c" * 64,
                           timeout_seconds=1.0, retry_policy=RetryPolicy(max_attempts=2)) as backend:
        result = backend.execute("hi")
        [batch] = run_sheets(backend, ["hi"], checkpoint=out)
        try:
            backend.key_info()
        except OpenRouterError as exc:
            raised = [str(exc), repr(exc)]
        shown = _shown(result, caplog, repr(backend), *raised, *_shown(batch, caplog), out.read_text())
    assert result.error_type == "connection"
    assert not any("Hunter2" in text for text in shown)


# ----- many keys in one process (item 3) ------------------------------------------------------------

def test_a_thousand_keys_used_and_closed_leave_only_the_recent_ones_known() -> None:
    """One key per tenant: redaction used to keep every key ever seen and recompile one pattern over
    all of them and their fragments (200 keys: 147 MB, 25 s). Now a closed backend gives its key back."""
    gc.collect()
    before = known_secrets()
    for _ in range(1000):
        key = "tenant-" + uuid.uuid4().hex + uuid.uuid4().hex
        with OpenRouterBackend(api_key=key, base_url="http://127.0.0.1:9/api/v1", share_throttle=False) as backend:
            assert redact(f"echo {key} and {key[10:30]}", fragments=True).count(key[10:30]) == 0
            assert key not in repr(backend)
    assert known_secrets() <= before + RECENT
    dropped = OpenRouterBackend(api_key="dropped-" + uuid.uuid4().hex * 2, base_url="http://127.0.0.1:9/api/v1",
                                share_throttle=False)
    held = known_secrets()
    del dropped
    gc.collect()
    assert known_secrets() <= held  # a backend never closed gives its key back when it is collected


def test_a_key_is_redacted_while_any_backend_holds_it_and_again_after_reuse() -> None:
    key = "shared-" + uuid.uuid4().hex + uuid.uuid4().hex
    first = OpenRouterBackend(api_key=key, base_url="http://127.0.0.1:9/api/v1", share_throttle=False)
    second = OpenRouterBackend(api_key=key, base_url="http://127.0.0.1:9/api/v1", share_throttle=False)
    first.close()
    assert key not in redact(f"x {key} y")  # the second still holds it
    second.close()
    for _ in range(RECENT + 1):  # push it out of the recently released
        other = OpenRouterBackend(api_key="other-" + uuid.uuid4().hex * 2, share_throttle=False)
        other.close()
    assert key in redact(f"x {key} y")  # forgotten: no backend holds it
    second.execute("again")  # used again (fails to connect): known again, not shown
    assert key not in redact(f"x {key} y")
    second.close()


# ----- decoding that matches requests (item 5) ------------------------------------------------------

def _gzip_members(data: bytes, parts: int = 3) -> bytes:
    step = max(1, len(data) // parts)
    return b"".join(gzip_bytes(data[i:i + step]) for i in range(0, len(data), step))


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.socket
@pytest.mark.parametrize("encoding, encode", [
    ("gzip", _gzip_members),  # several members, as `cat a.gz b.gz` or a server's per-chunk flushes give
    ("gzip", lambda data: _gzip_members(data) + b"\x00" * 16),  # then padding, which requests ignores
    ("deflate", _raw_deflate),  # no zlib header, as some servers send it
    ("deflate", zlib.compress),
    ("identity, GZIP", gzip_bytes),  # a list of encodings, identity among them
])
def test_compressed_bodies_decode_as_requests_decodes_them(encoding: str, encode: Callable[[bytes], bytes]) -> None:
    body = encode(json.dumps(completion("one two three " * 50)).encode())
    with HostileServer(lambda sock, request: respond(sock, 200, body, {"Content-Encoding": encoding})) as server:
        backend = make_backend(server, 2.0)
        result = backend.execute("hi")
    assert result.success, result.error_message
    assert result.stdout == "one two three " * 50
    assert server.request_count == 1


@pytest.mark.socket
def test_a_multi_member_gzip_stream_is_read_whole() -> None:
    events = b"".join(event(delta_chunk(word)) for word in ("alpha ", "beta ", "gamma")) + event("[DONE]")
    body = _gzip_members(events, 4)

    def handle(sock: socket.socket, request: Request) -> bool:
        headers = {"Content-Type": "text/event-stream", "Content-Encoding": "gzip", "Transfer-Encoding": "chunked"}
        return send(sock, head(200, headers) + b"".join(chunk(body[i:i + 7]) for i in range(0, len(body), 7))
                    + b"0\r\n\r\n")

    with HostileServer(handle) as server:
        backend = make_backend(server, 2.0)
        with backend.stream("hi") as stream:
            text = "".join(stream)
    assert text == "alpha beta gamma"
    assert stream.result is not None and stream.result.success


@pytest.mark.socket
@pytest.mark.parametrize("status, error_type", [(429, "rate_limit"), (401, "authentication"),
                                                (503, "service_unavailable"), (400, "bad_request")])
@pytest.mark.parametrize("encoding, body", [("br", b"\x1b\x07\x00\xf8\xa5\x40\x52\x29"), ("gzip", b"not gzip at all"),
                                            ("zstd", b"(\xb5/\xfd")])
def test_an_error_status_stays_its_status_whatever_its_body_encoding(status: int, error_type: str, encoding: str,
                                                                     body: bytes) -> None:
    """A br-compressed 401 used to become ``invalid_response`` and be retried 8 times; a br 429 was
    no rate limit, so the throttle never heard of it."""
    headers = {"Content-Encoding": encoding, "Retry-After": "0.05"}
    with HostileServer(lambda sock, request: respond(sock, status, body, headers)) as server:
        policy = RetryPolicy(max_attempts=3, max_wait_seconds=1.0, max_elapsed_seconds=1.5)
        backend = make_backend(server, 2.0, retry_policy=policy)
        result = backend.execute("hi")
    assert (result.error_type, result.exit_code) == (error_type, status)
    assert f"HTTP {status}" in str(result.error_message)
    assert "not gzip" not in str(result.error_message) and "was not asked for" not in str(result.error_message)
    if status == 429:
        assert result.rate_limited and result.rate_limit_wait_seconds == pytest.approx(0.05)
    if error_type in ("authentication", "bad_request"):
        assert server.request_count == 1
    else:  # a refusal naming a wait: retried past max_attempts, until max_elapsed_seconds
        assert server.request_count >= 3


@pytest.mark.socket
def test_a_200_in_an_encoding_not_asked_for_is_still_refused() -> None:
    body = b"\x1b\x07\x00\xf8\xa5\x40\x52\x29"
    with HostileServer(lambda sock, request: respond(sock, 200, body, {"Content-Encoding": "br"})) as server:
        result = make_backend(server, 2.0, retry_policy=RetryPolicy(max_attempts=1)).execute("hi")
    assert result.error_type == "invalid_response" and "'br'" in str(result.error_message)


# ----- no answer can stop a checkpoint (item 2) -----------------------------------------------------

HUGE = "9" * 4300  # two of them add up to 4,301 digits: more than Python converts to text


def _huge_usage_handler(sock: socket.socket, request: Request) -> bool:
    prompt = request.prompt or ""
    body = json.dumps(completion(f"answer to {prompt}")).encode()
    if prompt == "p3":
        usage = f'{{"prompt_tokens": {HUGE}, "completion_tokens": {HUGE}, "total_tokens": -{HUGE}, "cost": 1e999}}'
        body = body[:-1] + b', "usage": ' + usage.encode() + b"}"
    return respond(sock, 200, body)


@pytest.mark.socket
def test_absurd_token_counts_are_dropped_and_every_sheet_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    with HostileServer(_huge_usage_handler) as server:
        backend = make_backend(server, 2.0)
        results = run_sheets(backend, [f"p{i}" for i in range(5)], checkpoint=out, max_workers=2)
        sent = server.request_count
        again = run_sheets(backend, [f"p{i}" for i in range(5)], checkpoint=out)
        resent = server.request_count - sent  # a rerun sends nothing: all five were kept
    assert (sent, resent) == (5, 0) and all(r.success for r in results)
    hostile = results[3]
    assert (hostile.input_tokens, hostile.output_tokens, hostile.tokens_used, hostile.cost) == (None, None, None, None)
    assert any("prompt_tokens dropped" in w for w in hostile.warnings), hostile.warnings
    assert any("cost dropped" in w for w in hostile.warnings)
    repr(hostile), str(results.summary), json.dumps(hostile.to_dict(), default=str)  # none raises
    assert len(out.read_text().splitlines()) == 5
    assert [r.stdout for r in again] == [f"answer to p{i}" for i in range(5)]


def test_a_record_that_cannot_be_serialised_is_reduced_and_later_records_still_written(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    checkpoint = Checkpoint(path)
    try:
        bad = ExecutionResult(success=True, stdout="paid for", stderr="", duration_seconds=1.5, exit_code=0)
        bad.tokens_used = 10 ** 5000  # str() refuses it: json.dumps raises ValueError
        loop: dict[str, Any] = {}
        loop["self"] = loop
        assert checkpoint.write("a", 0, bad, sheet=Sheet(prompt="first", metadata=loop)) is True
        good = ExecutionResult(success=True, stdout="fine", stderr="", duration_seconds=0.1, exit_code=0)
        assert checkpoint.write("b", 1, good, sheet=Sheet(prompt="second")) is True
        assert checkpoint.error is None and checkpoint.reduced == 1
    finally:
        checkpoint.close()
    records = read_records(path)
    assert list(records) == ["a", "b"]
    assert records["a"].result.success is False and records["a"].result.error_type == "internal_error"
    assert "could not be recorded" in str(records["a"].result.error_message)
    assert records["a"].result.duration_seconds == 1.5
    assert records["b"].result.stdout == "fine"


@pytest.mark.socket
def test_the_cli_never_calls_a_servers_fault_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"p{i}\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-" + "d" * 64)
    with HostileServer(_huge_usage_handler) as server:
        code = main(["run", str(prompts), "-o", str(out), "--base-url", server.base_url, "--no-progress",
                     "--attempts", "1"])
    assert code == 0, capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 5


@pytest.mark.socket
def test_the_cli_reports_a_failure_after_sending_as_a_failure_not_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-" + "d" * 64)

    def broken(self: Any) -> str:
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    monkeypatch.setattr(RunSummary, "__str__", broken)
    with HostileServer(lambda sock, request: respond(sock, 200, completion("x"))) as server:
        code = main(["run", str(prompts), "-o", str(out), "--base-url", server.base_url, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "run failed after 2 sheets finished" in err and str(out) in err


# ----- files in shared places (item 1) --------------------------------------------------------------

def _plant(kind: str, path: Path, victim: Path) -> None:
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "group-writable":
        path.write_text("")
        path.chmod(0o666)
    elif kind == "other-owner":
        path.write_text("")
        os.chown(path, os.geteuid() + 4242, -1)


KINDS = ["symlink", "hardlink", "fifo", "group-writable",
         pytest.param("other-owner", marks=pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root"))]


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_state_file_is_refused_and_the_victims_file_survives(kind: str, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """``/tmp/myapp.state -> ~victim/notes.txt`` used to be opened O_RDWR|O_CREAT and rewritten."""
    victim = tmp_path / "notes.txt"
    victim.write_text("the victim's notes\n")
    victim.chmod(0o644)
    path = tmp_path / "myapp.state"
    _plant(kind, path, victim)
    state = SharedState(str(path))
    with state.locked() as content:
        assert content is None  # refused: this process keeps its own state
    assert state.usable is False
    state.close()
    assert victim.read_text() == "the victim's notes\n"
    assert any("refused" in r.getMessage() or "cannot be locked" in r.getMessage() for r in caplog.records)


def test_a_new_state_file_is_private_and_used(tmp_path: Path) -> None:
    path = tmp_path / "fresh.state"
    state = SharedState(str(path))
    with state.locked() as content:
        assert content is not None
        content["rate"] = 1.5
    state.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and state.usable
    assert json.loads(path.read_text())["rate"] == 1.5


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_planted_checkpoint_lock_is_refused_and_never_written(kind: str, tmp_path: Path) -> None:
    """``<results>.jsonl.lock -> ~victim/file``: the lock used to truncate the target and write a pid in it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    results = tmp_path / "results.jsonl"
    lock = tmp_path / "results.jsonl.lock"
    if kind == "directory":
        lock.mkdir()
    else:
        _plant(kind, lock, victim)
    with pytest.raises(CheckpointError, match="lock file"):
        Checkpoint(results)
    assert victim.read_text() == "precious\n"
    assert lock.is_symlink() or lock.exists()  # left as it was


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_link_to_the_results_file_does_not_bypass_the_lock(link: str, tmp_path: Path) -> None:
    """The lock was named after the path string: a run through a link ran beside the first."""
    results = tmp_path / "results.jsonl"
    results.write_text("")
    other = tmp_path / "other-name.jsonl"
    if link == "symlink":
        other.symlink_to(results)
    else:
        os.link(results, other)
    first = Checkpoint(results)
    try:
        with pytest.raises(CheckpointLocked):
            Checkpoint(other)
    finally:
        first.close()
    Checkpoint(other).close()  # released: usable through the link
    assert not (tmp_path / "results.jsonl.lock").exists() and not (tmp_path / "other-name.jsonl.lock").exists()


# ----- paths given to the CLI (item 6) --------------------------------------------------------------

def _cli(*args: str, timeout: float = 30.0, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OPENROUTER_API_KEY": "sk-or-v1-" + "e" * 64, **(env or {})}
    return subprocess.run([sys.executable, "-m", "openrouter_sync", *args], capture_output=True, text=True,
                          timeout=timeout, env=environment)


@pytest.mark.subprocess
@pytest.mark.parametrize("where", ["output", "lock"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "dangling-symlink", "symlink-to-fifo"])
def test_the_cli_refuses_odd_paths_at_output_and_its_lock_at_once(where: str, kind: str, tmp_path: Path) -> None:
    """A FIFO at -o hung the CLI forever (it read 1 MiB from it); a directory or FIFO at <out>.lock
    gave a traceback. Now: a clear error, exit 2, nothing sent."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    out = tmp_path / "out.jsonl"
    target = out if where == "output" else tmp_path / "out.jsonl.lock"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "device":
        target.symlink_to("/dev/null")
    elif kind == "dangling-symlink":
        target.symlink_to(tmp_path / "missing" / "file")
    else:
        os.mkfifo(tmp_path / "pipe")
        target.symlink_to(tmp_path / "pipe")
    with HostileServer(lambda sock, request: respond(sock, 200, completion("x"))) as server:
        done = _cli("run", str(prompts), "-o", str(out), "--base-url", server.base_url, "--no-progress")
        sent = server.request_count
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "openrouter-sync:" in done.stderr
    assert sent == 0


# ----- input errors name the line (item 8) ----------------------------------------------------------

@pytest.mark.parametrize("data, where", [
    (b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c\x00"}\n', "line 3"),
    (b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n', "line 2"),
    ('{"prompt": "a"}\n{"prompt": "caf\u00e9 \xff"}\n'.encode("utf-8")[:-3] + b"\xc3\n", "line 2"),
    (b"\xef\xbb\xbf" + b'{"prompt": "a"}\n\n{"prompt": \n', "line 3"),
])
def test_jsonl_input_errors_name_the_line(data: bytes, where: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(data)
    assert main(["run", str(source), "-o", str(tmp_path / "o.jsonl"), "--offline", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"in.jsonl, {where}" in err, err
    assert "offset" not in err


def test_a_line_separator_inside_a_jsonl_string_is_not_a_line_break(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "one\u2028two\u0085three"}\n{"prompt": "b"}\n', encoding="utf-8")
    sheets = read_sheets(str(source))
    assert [s.prompt for s in sheets] == ["one\u2028two\u0085three", "b"]


# ----- SIGTERM is a stop (item 7) -------------------------------------------------------------------

def _fast_or_held(sock: socket.socket, request: Request) -> bool:
    if (request.prompt or "").startswith("slow"):
        request.wait(25.0)  # in flight until cut
    return respond(sock, 200, completion(f"answer to {request.prompt}"))


def _wait_for_lines(path: Path, count: int, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while not path.exists() or len(path.read_text().splitlines()) < count:
        assert time.monotonic() < deadline and child.poll() is None, "the run did not get going"
        time.sleep(0.02)


@pytest.mark.subprocess
def test_sigterm_stops_the_cli_like_ctrl_c(tmp_path: Path) -> None:
    """SIGTERM (systemd, Kubernetes) killed the CLI at once: no summary, ``<out>.lock`` left behind."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("fast 1\nfast 2\nslow 1\nslow 2\nfast 3\n")
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OPENROUTER_API_KEY": "sk-or-v1-" + "f" * 64}
    with HostileServer(_fast_or_held, lifetime=40.0) as server:
        child = subprocess.Popen([sys.executable, "-m", "openrouter_sync", "run", str(prompts), "-o", str(out),
                                  "--base-url", server.base_url, "--no-progress", "-w", "2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            _wait_for_lines(out, 2, child)
            time.sleep(0.2)  # the slow ones are in flight
            sent_at = time.monotonic()
            child.send_signal(signal.SIGTERM)
            _, err = child.communicate(timeout=15)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        stopped_in = time.monotonic() - sent_at
    assert child.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "2 of 5 sheets finished" in err, err
    assert "Traceback" not in err
    assert stopped_in < 5.0
    assert not (tmp_path / "out.jsonl.lock").exists()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["sheet"]["prompt"] for line in lines) == ["fast 1", "fast 2"]


LIBRARY_SIGTERM = """
import os, signal, sys, threading, time
from openrouter_sync import OpenRouterBackend, run_sheets
from openrouter_sync.runner import RunInterrupted
backend = OpenRouterBackend(base_url=sys.argv[1], api_key="sk-or-v1-" + "g" * 64, timeout_seconds=30)
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
    run_sheets(backend, ["fast 1", "slow 1", "slow 2"], checkpoint=sys.argv[2], max_workers=3,
               stop_on_sigterm=True)
except RunInterrupted as exc:
    restored = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    print("stopped", exc.signal == signal.SIGTERM, exc.summary.total, restored)
"""


@pytest.mark.subprocess
def test_run_sheets_can_be_told_to_stop_on_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    with HostileServer(_fast_or_held, lifetime=40.0) as server:
        done = subprocess.run([sys.executable, "-c", LIBRARY_SIGTERM, server.base_url, str(out)],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["stopped", "True", "1", "True"]
    assert len(out.read_text().splitlines()) == 1 and not (tmp_path / "run.jsonl.lock").exists()


@pytest.mark.subprocess
def test_sigterm_stops_any_cli_command_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "OPENROUTER_API_KEY": "sk-or-v1-" + "f" * 64}
    with HostileServer(_fast_or_held, lifetime=40.0) as server:
        child = subprocess.Popen([sys.executable, "-m", "openrouter_sync", "ask", "slow question", "--base-url",
                                  server.base_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 20
            while not server.request_count:
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.02)
            child.send_signal(signal.SIGTERM)
            _, err = child.communicate(timeout=15)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 143 and "Traceback" not in err, err


# ----- output logs (the same planted files, in a neighbouring path) ---------------------------------

@pytest.mark.socket
@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_planted_output_log_neither_hangs_the_call_nor_is_written_through(kind: str, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """``<base>.stdout.log`` was opened with ``open(path, "a")``: a FIFO there hung the finished call
    forever, and a link there had the answer appended to whatever it named (``~/.bashrc``)."""
    victim = tmp_path / "bashrc"
    victim.write_text("# mine\n")
    base = tmp_path / "sheet"
    log = tmp_path / "sheet.stdout.log"
    if kind == "fifo":
        os.mkfifo(log)
    else:
        log.symlink_to(victim)
    with HostileServer(lambda sock, request: respond(sock, 200, completion("rm -rf ~"))) as server:
        backend = make_backend(server, 2.0)
        backend.set_output_log_path(base)
        result, took = timed(lambda: backend.execute("hi"))
        [streamed] = run_sheets(backend, [Sheet(prompt="hi", output_log_path=base)], stream=True)
    assert result.success and streamed.success and took < 2.0
    assert victim.read_text() == "# mine\n"
    assert any("output log" in r.getMessage() for r in caplog.records)


def test_a_fifo_as_checkpoint_is_refused_at_once_in_the_library(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    os.mkfifo(path)
    with pytest.raises(CheckpointError, match="not a regular file"):
        run_sheets(OpenRouterBackend(api_key="sk-or-v1-" + "h" * 64, base_url="http://127.0.0.1:9/v1"), ["a"],
                   checkpoint=path)


def test_a_results_file_with_an_absurd_count_is_resumed_without_it(tmp_path: Path) -> None:
    """A record (hand-made, or written before counts were bounded) with a 4,300-digit count would
    make the resumed run's summary raise; it is skipped with a warning and its sheet runs again."""
    path = tmp_path / "run.jsonl"
    good = ExecutionResult(success=True, stdout="kept", stderr="", duration_seconds=0.1, exit_code=0).to_dict()
    bad = dict(good, input_tokens=int(HUGE), output_tokens=int(HUGE), stdout="absurd")
    path.write_text(json.dumps({"id": "a", "index": 0, "result": good}) + "\n"
                    + json.dumps({"id": "b", "index": 1, "result": bad}) + "\n")
    records = read_records(path)
    assert list(records) == ["a"]


# ----- a Redis password with URL characters (item 4, a real redis-server) ---------------------------

@pytest.mark.parametrize("password", ["Hunter2#pass", "Hun/ter2?x@y", "Hunter2%23pass"])
def test_a_redis_password_with_url_characters_authenticates_and_never_shows(
        password: str, caplog: pytest.LogCaptureFixture) -> None:
    """redis-py read ``redis://:Hunter2#pass@host`` as a fragment: the wrong password was sent."""
    from test_redis_state import RedisServer, _require_redis

    from openrouter_sync.ratelimit.redis_state import RedisState

    _require_redis()
    meant = password.replace("%23", "#")
    running = RedisServer(password=meant)
    caplog.set_level(logging.DEBUG, logger="openrouter_sync")
    try:
        store = RedisState(f"redis://:{password}@127.0.0.1:{running.port}/0#app-{uuid.uuid4().hex[:8]}")
        with store.locked() as state:
            assert state is not None  # it authenticated
        shown = [store.path, repr(store)]
        store.close()
        wrong = RedisState(f"redis://:{password}x@127.0.0.1:{running.port}/0#other")
        with wrong.locked() as state:
            assert state is None
        wrong.close()
    finally:
        running.stop()
    shown.append(caplog.text)
    assert not any("Hunter2" in text or "ter2" in text for text in shown), shown


@pytest.mark.parametrize("command", [["models"], ["check"], ["ask", "hi"]])
def test_a_failure_after_talking_to_the_server_is_exit_1_in_every_command(
        command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def answer_the_library_cannot_handle(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    for name in ("list_models", "health_check"):
        monkeypatch.setattr(OpenRouterBackend, name, answer_the_library_cannot_handle)
    monkeypatch.setattr("openrouter_sync.streaming.Stream.__iter__", answer_the_library_cannot_handle)
    assert main([*command, "--offline"]) == 1
    err = capsys.readouterr().err
    assert "failed: ValueError" in err and "Traceback" not in err
