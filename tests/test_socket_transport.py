"""Against a real local server: connection reuse, many threads, hard deadlines, default retries."""

from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from openrouter_sync import OpenRouterBackend, RetryPolicy
from openrouter_sync.testing import FakeOpenRouter, Reply, fake_reply

pytestmark = pytest.mark.socket
NO_RETRY = RetryPolicy(max_attempts=1)


def test_sequential_calls_reuse_one_connection(fake: FakeOpenRouter, env_key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url) as b:
        for i in range(50):
            assert b.execute(f"call {i}").success
    assert fake.request_count == 50
    assert fake.connection_count == 1


def test_64_threads_share_one_backend(env_key: str) -> None:
    with FakeOpenRouter(latency=0.02) as fake, OpenRouterBackend(base_url=fake.base_url, pool_size=64) as b:
        prompts = [f"thread prompt {i}" for i in range(64)]
        barrier = threading.Barrier(64)

        def call(prompt: str) -> str:
            barrier.wait()
            result = b.execute(prompt)
            assert result.success, result.error_message
            return result.stdout

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Connection pool is full" would be an error
            with ThreadPoolExecutor(64) as pool:
                answers = list(pool.map(call, prompts))
        assert answers == [fake_reply(p, b.model) for p in prompts]
        assert fake.connection_count <= 64
        assert sorted(fake.answers_per_prompt.values()) == [1] * 64


def test_deadline_beats_a_trickling_server(fake: FakeOpenRouter, env_key: str) -> None:
    fake.script(Reply(trickle=0.05))  # ~600 bytes at 20 bytes/s: half a minute if not cut
    with OpenRouterBackend(base_url=fake.base_url, retry_policy=NO_RETRY) as b:
        start = time.monotonic()
        r = b.execute("slow", timeout_seconds=0.6)
        elapsed = time.monotonic() - start
    assert (r.success, r.error_type, r.exit_code, r.exit_reason) == (False, "timeout", 408, "timeout")
    assert elapsed < 1.6


def test_deadline_beats_a_silent_server(fake: FakeOpenRouter, env_key: str) -> None:
    fake.script(Reply(hang=3))
    with OpenRouterBackend(base_url=fake.base_url, retry_policy=NO_RETRY, timeout_seconds=0.5) as b:
        start = time.monotonic()
        r = b.execute("silent")
        assert time.monotonic() - start < 1.5
    assert r.error_type == "timeout"


def test_connection_survives_a_deadline(fake: FakeOpenRouter, env_key: str) -> None:
    """After a deadline cuts a connection, the next call works (on a fresh connection)."""
    fake.script(Reply(trickle=0.05))
    with OpenRouterBackend(base_url=fake.base_url, retry_policy=NO_RETRY) as b:
        assert b.execute("slow", timeout_seconds=0.3).error_type == "timeout"
        assert b.execute("next").success


def test_default_policy_retries_transient_failures(fake: FakeOpenRouter, env_key: str) -> None:
    fake.script(Reply(429, {"Retry-After": "0.05"}), Reply(502), Reply(reset=True), Reply(truncate=True), Reply())
    policy = RetryPolicy(backoff_base=0.01, backoff_max=0.02)
    with OpenRouterBackend(base_url=fake.base_url, retry_policy=policy) as b:
        r = b.execute("flaky")
    assert r.success and r.stdout == fake_reply("flaky", b.model)
    assert r.attempts == 5
    assert r.retry_wait_seconds >= 0.05
    assert fake.request_count == 5


def test_default_policy_never_retries_permanent_failures(fake: FakeOpenRouter, env_key: str) -> None:
    for status in (400, 401, 403, 404, 413, 422, 402):
        fake.reset_counts()
        fake.script(Reply(status))
        with OpenRouterBackend(base_url=fake.base_url) as b:
            r = b.execute("no")
        assert r.exit_code == status and fake.request_count == 1


def test_connection_refused_is_a_result(env_key: str) -> None:
    with OpenRouterBackend(base_url="http://127.0.0.1:9/api/v1", retry_policy=NO_RETRY) as b:
        r = b.execute("x")
    assert (r.error_type, r.exit_code) == ("connection", 503)
    assert r.stderr.startswith("Connection error: ")


def test_a_broken_connection_is_told_by_its_message_not_a_tuple() -> None:
    """urllib3's ProtocolError carries (message, cause): the result quotes the message once."""
    import http.client

    import requests
    import urllib3

    from openrouter_sync.deadline import Deadline
    from openrouter_sync.transport import TransportError, map_network_errors

    cause = http.client.IncompleteRead(b"abcd", 562)
    broken = requests.exceptions.ChunkedEncodingError(
        urllib3.exceptions.ProtocolError(f"Connection broken: {cause!r}", cause))
    deadline = Deadline.after(30)
    with pytest.raises(TransportError) as caught:
        with map_network_errors(deadline, reading=True):
            raise broken
    deadline.finish()
    assert str(caught.value) == ("the answer was cut off: ProtocolError: Connection broken: "
                                 "IncompleteRead(4 bytes read, 562 more expected)")
