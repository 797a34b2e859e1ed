"""The backend's public surface as CONTRACT.md fixes it."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import responses

from openrouter_sync import ExecutionResult, OpenRouterBackend, RetryPolicy, Sheet, run_sheets  # noqa: F401
from openrouter_sync.testing import FakeOpenRouter, fake_reply

URL = "https://openrouter.ai/api/v1"


def test_defaults_and_attributes() -> None:
    b = OpenRouterBackend()
    assert (b.model, b.api_key_env, b.max_tokens, b.temperature, b.timeout_seconds) == (
        "minimax/minimax-m1-80k", "OPENROUTER_API_KEY", 16384, 0.7, 300.0)
    assert b.name == "openrouter:minimax/minimax-m1-80k"
    assert b.working_directory is None
    b.working_directory = Path("/tmp")
    assert b.working_directory == Path("/tmp")
    b.close()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": ""}, "model must be a non-empty string"),
    ({"api_key_env": ""}, "api_key_env must be a non-empty string"),
    ({"max_tokens": 0}, "max_tokens must be >= 1, got 0"),
    ({"max_tokens": -5}, "max_tokens must be >= 1, got -5"),
    ({"timeout_seconds": 0}, "timeout_seconds must be > 0, got 0"),
    ({"timeout_seconds": -1.5}, "timeout_seconds must be > 0, got -1.5"),
    ({"temperature": 3}, "temperature must be between 0 and 2, got 3"),
    ({"base_url": "openrouter.ai"}, "base_url must be an http:// or https:// URL"),
    ({"pool_size": 0}, "pool_size must be an integer >= 1"),
])
def test_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        OpenRouterBackend(**kwargs)


def test_retry_policy_type_is_checked() -> None:
    with pytest.raises(TypeError, match="RetryPolicy"):
        OpenRouterBackend(retry_policy={"max_attempts": 1})  # type: ignore[arg-type]


def test_missing_key_is_not_an_error_until_a_call() -> None:
    b = OpenRouterBackend(api_key_env="SURELY_UNSET_OPENROUTER_KEY")
    assert b.availability_check() is False
    assert b.health_check() is False
    with responses.RequestsMock() as mocked:  # any request would fail the test
        result = b.execute("hello")
        assert len(mocked.calls) == 0
    assert (result.success, result.exit_code, result.error_type) == (False, 1, "configuration")
    assert "SURELY_UNSET_OPENROUTER_KEY" in result.stderr


def test_key_set_after_construction_is_used(monkeypatch: pytest.MonkeyPatch, fake: FakeOpenRouter, key: str) -> None:
    b = OpenRouterBackend(base_url=fake.base_url)
    assert not b.availability_check()
    monkeypatch.setenv("OPENROUTER_API_KEY", key)
    assert b.availability_check()
    assert b.execute("late key").success
    assert fake.requests[-1].headers["authorization"] == f"Bearer {key}"


def test_from_config_reads_attributes_and_defaults(key: str) -> None:
    b = OpenRouterBackend.from_config(SimpleNamespace(model="openai/gpt-4o", timeout_seconds=12.0, max_tokens=99))
    assert (b.model, b.timeout_seconds, b.max_tokens, b.temperature, b.api_key_env) == (
        "openai/gpt-4o", 12.0, 99, 0.7, "OPENROUTER_API_KEY")
    b = OpenRouterBackend.from_config(object())
    assert b.model == "minimax/minimax-m1-80k" and b.timeout_seconds == 300.0
    b = OpenRouterBackend.from_config(SimpleNamespace(model=None, api_key_env="MY_KEY", temperature=0.1))
    assert (b.model, b.api_key_env, b.temperature) == ("minimax/minimax-m1-80k", "MY_KEY", 0.1)
    b = OpenRouterBackend.from_config({"model": "a/b", "max_tokens": 5})
    assert (b.model, b.max_tokens) == ("a/b", 5)


def test_override_lifecycle() -> None:
    b = OpenRouterBackend(model="m/base", temperature=0.5, max_tokens=100)
    b.clear_overrides()  # without apply: no-op
    assert b.model == "m/base"
    b.apply_overrides({})
    assert (b.model, b.temperature, b.max_tokens) == ("m/base", 0.5, 100)
    b.apply_overrides({"model": "m/other", "temperature": 1.2, "max_tokens": 7})
    assert (b.model, b.temperature, b.max_tokens) == ("m/other", 1.2, 7)
    b.apply_overrides({"temperature": 0.0})  # a second apply keeps the first originals
    b.clear_overrides()
    assert (b.model, b.temperature, b.max_tokens) == ("m/base", 0.5, 100)
    b.clear_overrides()
    assert b.model == "m/base"
    with pytest.raises(ValueError, match="unknown override 'temprature': did you mean 'temperature'"):
        b.apply_overrides({"temprature": 0.2})  # a typo of a known name: refused
    b.clear_overrides()
    with pytest.raises(ValueError, match="temperature must be between 0 and 2"):
        b.apply_overrides({"temperature": 9})
    assert b.model == "m/base"
    b.apply_overrides({"temperature": "0.25", "max_tokens": "12"})  # coerced, as the reference does
    assert (b.temperature, b.max_tokens) == (0.25, 12)
    b.clear_overrides()
    with pytest.raises(ValueError, match="max_tokens must be a number"):
        b.apply_overrides({"max_tokens": "lots"})


def test_override_lock_is_one_rlock() -> None:
    b = OpenRouterBackend()
    lock = b.override_lock
    assert lock is b.override_lock
    assert isinstance(lock, type(threading.RLock()))
    with lock, lock:  # re-entrant
        b.apply_overrides({"model": "x/y"})
        b.clear_overrides()
    assert OpenRouterBackend().override_lock is not lock


def test_prompt_assembly_and_overrides_reach_the_wire(backend: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    backend.set_preamble("PRE")
    backend.set_prompt_extensions(["EXT1", "  ", "", "EXT2"])
    backend.apply_overrides({"model": "m/over", "max_tokens": 33, "temperature": 0.3})
    result = backend.execute("BODY")
    backend.clear_overrides()
    sent = fake.requests[-1].json
    assert sent["messages"][-1] == {"role": "user", "content": "PRE\nBODY\nEXT1\nEXT2"}
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("m/over", 33, 0.3)
    assert result.model == "m/over"
    backend.set_preamble(None)
    backend.set_prompt_extensions([])
    backend.execute("plain")
    assert fake.requests[-1].json["messages"] == [{"role": "user", "content": "plain"}]
    assert fake.requests[-1].json["model"] == "openai/gpt-4o-mini"


def test_headers_sent(backend: OpenRouterBackend, fake: FakeOpenRouter, env_key: str) -> None:
    backend.execute("hi")
    headers = fake.requests[-1].headers
    assert headers["authorization"] == f"Bearer {env_key}"
    assert headers["content-type"] == "application/json"
    assert headers["http-referer"].startswith("https://")
    assert headers["x-title"] and headers["x-openrouter-title"]
    assert headers["accept-encoding"] == "gzip, deflate"  # both are decoded
    assert headers["user-agent"].startswith("openrouter-sync/")


def test_output_log_files(backend: OpenRouterBackend, fake: FakeOpenRouter, tmp_path: Path) -> None:
    base = tmp_path / "deep" / "folder" / "sheet1"
    backend.set_output_log_path(base)
    ok = backend.execute("log me")
    assert (tmp_path / "deep/folder/sheet1.stdout.log").read_text() == ok.stdout
    backend.apply_overrides({"model": "m/x"})
    from openrouter_sync.testing import Reply
    fake.script(Reply(400))
    bad = backend.execute("bad")
    backend.clear_overrides()
    assert bad.error_type == "bad_request"
    assert "HTTP 400" in (tmp_path / "deep/folder/sheet1.stderr.log").read_text()
    backend.set_output_log_path(None)
    backend.execute("no log")
    assert "no log" not in (tmp_path / "deep/folder/sheet1.stdout.log").read_text()


def test_health_and_availability(fake: FakeOpenRouter, env_key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url) as b:
        assert b.availability_check() is True
        assert b.health_check() is True
        assert fake.requests[-1].path.endswith("/models")
        assert fake.requests[-1].headers["authorization"] == f"Bearer {env_key}"
    with OpenRouterBackend(base_url="http://127.0.0.1:9/api/v1") as b:
        assert b.health_check() is False


@responses.activate
def test_health_check_non_200(env_key: str) -> None:
    responses.get(f"{URL}/models", status=401, json={"error": {"code": 401, "message": "bad key"}})
    assert OpenRouterBackend().health_check() is False


def test_close_is_idempotent_and_context_manager(fake: FakeOpenRouter, env_key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url) as b:
        assert b.execute("x").success
    b.close()
    b.close()


def test_execution_result_shape() -> None:
    names = [f.name for f in dataclasses.fields(ExecutionResult)]
    assert names[:16] == ["success", "stdout", "stderr", "duration_seconds", "exit_code", "exit_signal",
                          "exit_reason", "started_at", "rate_limited", "rate_limit_wait_seconds", "error_type",
                          "error_message", "model", "tokens_used", "input_tokens", "output_tokens"]
    r = ExecutionResult(success=True, stdout=" out ", stderr="", duration_seconds=0.1)
    assert (r.exit_code, r.exit_signal, r.exit_reason) == (None, None, "completed")
    assert (r.rate_limited, r.attempts) == (False, 1)
    assert r.started_at.tzinfo is not None
    assert r.output == "out"
    assert ExecutionResult(False, "a", "b", 0.0).output == "a\nb"
    with pytest.raises(ValueError):
        ExecutionResult(success=True, stdout="", stderr="", duration_seconds=0, exit_code=2)
    ExecutionResult(success=True, stdout="", stderr="", duration_seconds=0, exit_code=0)


def test_result_round_trips_through_dict() -> None:
    r = ExecutionResult(success=False, stdout="", stderr="e", duration_seconds=1.0, exit_code=429,
                        rate_limited=True, rate_limit_wait_seconds=3.0, error_type="rate_limit", cost=0.1)
    again = ExecutionResult.from_dict(r.to_dict())
    assert again == r


def test_result_json_helper() -> None:
    ok = ExecutionResult(True, '```json\n{"a": 1}\n```', "", 0.0, exit_code=0)
    assert ok.json() == {"a": 1}
    with pytest.raises(ValueError, match="not valid JSON"):
        ExecutionResult(True, "nope", "", 0.0).json()
    with pytest.raises(ValueError, match="the call failed"):
        ExecutionResult(False, "", "x", 0.0, error_type="timeout").json()


def test_fake_reply_is_deterministic(backend: OpenRouterBackend) -> None:
    assert backend.execute("same").stdout == fake_reply("same", "openai/gpt-4o-mini")


def test_patched_session_send_sees_the_request(env_key: str) -> None:
    """Test doubles that hook requests.Session.send see our requests; a non-network error is re-raised."""
    from unittest import mock

    import requests

    with mock.patch.object(requests.Session, "send", side_effect=ValueError("not a network error")) as send:
        with pytest.raises(ValueError, match="not a network error"):
            OpenRouterBackend(retry_policy=RetryPolicy(max_attempts=1)).execute("x")
    assert send.call_count == 1


def test_usable_again_after_close(fake: FakeOpenRouter, env_key: str) -> None:
    b = OpenRouterBackend(base_url=fake.base_url)
    assert b.execute("one").success
    b.close()
    assert b.execute("two").success  # a fresh pool, as the reference's lazy client would
    b.close()
