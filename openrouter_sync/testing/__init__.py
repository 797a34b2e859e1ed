"""Test your code offline: a local fake OpenRouter server (standard library only).

    from openrouter_sync.testing import FakeOpenRouter, Reply
    with FakeOpenRouter() as server:
        backend = OpenRouterBackend(base_url=server.base_url, api_key="test-key")
        backend.execute("hi").stdout == fake_reply("hi", backend.model)

Script answers with ``server.script(Reply(429, headers={"Retry-After": "1"}), Reply())``; inject
faults with ``RateLimit`` and ``Faults``; read what arrived in ``server.requests``.
"""

from .server import FakeOpenRouter, Faults, RateLimit, RecordedRequest, Reply, fake_reply

__all__ = ["FakeOpenRouter", "Faults", "RateLimit", "RecordedRequest", "Reply", "fake_reply"]
