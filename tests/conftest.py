"""Shared fixtures: a fresh fake server per test, unique keys (so no two tests share a throttle)."""

from __future__ import annotations

import signal
import uuid
from typing import Iterator

import pytest

from openrouter_sync import OpenRouterBackend, RetryPolicy
from openrouter_sync.testing import FakeOpenRouter

NO_RETRY = RetryPolicy(max_attempts=1)
FAST_RETRY = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05, max_wait_seconds=2.0)

# A suite started in the background by a shell without job control inherits SIGINT ignored, and so
# would every process it starts (Python then raises no KeyboardInterrupt): the Ctrl-C tests need it
# delivered, as in a terminal. A handler (unlike an ignore) is not inherited: children get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def _runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("runtime"))


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch, _runtime_dir: str) -> None:
    """Tests never see the developer's real key, proxy or shared-state settings; the default shared
    state lives in a directory of this run (``$XDG_RUNTIME_DIR``), not in the user's own."""
    for name in ("OPENROUTER_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                 "OPENROUTER_SYNC_SHARED_STATE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("XDG_RUNTIME_DIR", _runtime_dir)


@pytest.fixture
def key() -> str:
    return f"sk-or-v1-{uuid.uuid4().hex}{uuid.uuid4().hex}"


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch, key: str) -> str:
    monkeypatch.setenv("OPENROUTER_API_KEY", key)
    return key


@pytest.fixture
def fake() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter(max_lifetime=120) as server:
        yield server


@pytest.fixture
def backend(fake: FakeOpenRouter, env_key: str) -> Iterator[OpenRouterBackend]:
    with OpenRouterBackend(model="openai/gpt-4o-mini", base_url=fake.base_url, retry_policy=FAST_RETRY) as b:
        yield b
