"""Test your code offline: a local fake OpenRouter server (standard library only).

    from openrouter_sync.testing import FakeOpenRouter, Reply
    with FakeOpenRouter() as server:
        backend = OpenRouterBackend(base_url=server.base_url, api_key="test-key")
        backend.execute("hi").stdout == fake_reply("hi", backend.model)

Script answers with ``server.script(Reply(429, headers={"Retry-After": "1"}), Reply())``; inject
faults with ``RateLimit`` and ``Faults``; read what arrived in ``server.requests`` (counters as JSON at
``server.stats_url``). Like OpenRouter, it keeps connections alive and sends streams chunked, with
``: OPENROUTER PROCESSING`` comments and a final usage chunk (see ``FakeOpenRouter`` for
``stream_options`` and the ``:compat`` model marker); ``:free`` models cost 0. A request that
offers ``tools`` is answered with a call of the first one (its results then get a text answer);
``Reply(tool_calls=[...])`` and ``Reply(message={...})`` script other answers.
"""

from .demo import OFFLINE_NOTICE, demo_backend, offline_wanted
from .server import FakeOpenRouter, Faults, RateLimit, RecordedRequest, Reply, fake_reply, tool_call

__all__ = ["OFFLINE_NOTICE", "FakeOpenRouter", "Faults", "RateLimit", "RecordedRequest", "Reply", "demo_backend",
           "fake_reply", "offline_wanted", "tool_call"]
