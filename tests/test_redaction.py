"""The key never shows: logs, reprs, str, exceptions, log files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from openrouter_sync import OpenRouterBackend, RetryPolicy
from openrouter_sync._log import redact, register_secret
from openrouter_sync.testing import FakeOpenRouter, Reply


def test_key_shapes_are_redacted() -> None:
    assert "sk-or-v1-" not in redact("key sk-or-v1-0123456789abcdef0123 here")
    assert "abcdefghij" not in redact("Authorization: Bearer abcdefghijklmnop")
    register_secret("plain-custom-secret-value")
    assert "plain-custom-secret-value" not in redact("x plain-custom-secret-value y")
    prose = "Bearer authentication sends the token in a header."  # ordinary text stays as it is
    assert redact(prose) == prose


def test_key_never_leaks(fake: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                         tmp_path: Path) -> None:
    secret = "custom-format-key-1234567890"  # not key-shaped: known only because it was configured
    monkeypatch.setenv("MY_ROUTER_KEY", secret)
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"code": 401, "message": f"Invalid key {secret} (Bearer {secret})"}}
    fake.script(Reply(401, body=echo), Reply(500, body={"error": {"code": 500, "message": f"oops {secret}"}}))
    with OpenRouterBackend(base_url=fake.base_url, api_key_env="MY_ROUTER_KEY",
                           retry_policy=RetryPolicy(max_attempts=1)) as b:
        b.set_output_log_path(tmp_path / "s")
        results = [b.execute("a"), b.execute("b"), b.execute("c")]
        shown = [repr(b), str(b)]
    for r in results:
        shown += [repr(r), str(r), r.stderr, r.error_message or "", r.output]
        if not r.success:
            try:
                r.raise_for_error()
            except Exception as exc:
                shown.append(str(exc))
                shown.append(repr(exc))
    shown += [rec.getMessage() for rec in caplog.records]
    shown += [p.read_text() for p in tmp_path.iterdir()]
    assert results[0].error_type == "authentication"
    assert "Invalid key" in results[0].error_message
    for text in shown:
        assert secret not in text


def test_key_not_in_connection_error_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-deadbeefdeadbeefdeadbeef")
    with OpenRouterBackend(base_url="http://127.0.0.1:9/x", retry_policy=RetryPolicy(max_attempts=1)) as b:
        r = b.execute("x")
    assert "deadbeef" not in repr(r)


def test_a_release_from_a_finalizer_while_the_lock_is_held_never_deadlocks() -> None:
    """The garbage collector may run a backend's finalizer (which releases its key) inside
    register_secret, with the lock held by the same thread: the release must not wait for it."""
    import threading

    from openrouter_sync import _log

    key = "sk-or-v1-finalizer-" + "f" * 40
    _log.register_secret(key)
    done = threading.Event()

    def release_inside_the_lock() -> None:
        with _log._lock:
            _log.release_secret(key)  # as a finalizer run by the collector there would
        done.set()

    worker = threading.Thread(target=release_inside_the_lock, daemon=True)
    worker.start()
    assert done.wait(5.0), "release_secret waited for a lock its own thread held"
    _log.register_secret("sk-or-v1-another-" + "a" * 40)  # the next call settles the release
    assert _log._counts.get(key) == 0 and not _log._pending
