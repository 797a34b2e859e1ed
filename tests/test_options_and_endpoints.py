"""Request options, messages, result fields, the other endpoints, and the exception style."""

from __future__ import annotations

import pytest

from openrouter_sync import OpenRouterBackend, OpenRouterError, RetryPolicy, Sheet
from openrouter_sync.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InsufficientCreditsError,
    ModerationError,
    ProviderError,
    RateLimitError,
)
from openrouter_sync.testing import FakeOpenRouter, Reply

pytestmark = pytest.mark.socket


@pytest.fixture
def b(fake: FakeOpenRouter, key: str) -> OpenRouterBackend:
    return OpenRouterBackend(model="openai/gpt-4o-mini", base_url=fake.base_url, api_key=key,
                             retry_policy=RetryPolicy(max_attempts=1))


OPTIONS = {
    "models": ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"],
    "provider": {"order": ["OpenAI"], "allow_fallbacks": False, "data_collection": "deny"},
    "reasoning": {"effort": "high"},
    "stop": ["\n\n"],
    "top_p": 0.9,
    "seed": 7,
}


def test_options_pass_through_per_call(b: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    r = b.execute("x", extra_body={"transforms": ["middle-out"], "custom": 1}, **OPTIONS)
    sent = fake.requests[-1].json
    for name, value in OPTIONS.items():
        assert sent[name] == value
    assert sent["transforms"] == ["middle-out"] and sent["custom"] == 1
    assert r.reasoning and r.reasoning.startswith("Thinking about")


def test_options_as_sheet_overrides_and_defaults(fake: FakeOpenRouter, key: str) -> None:
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, default_options={"seed": 1}) as b:
        b.execute_sheet(Sheet("x", overrides={"provider": {"sort": "price"}, "top_p": 0.5}))
        sent = fake.requests[-1].json
        assert sent["provider"] == {"sort": "price"} and sent["top_p"] == 0.5 and sent["seed"] == 1
        b.apply_overrides({"stop": ["END"], "model": "a/b"})
        b.execute("y")
        b.clear_overrides()
        assert fake.requests[-1].json["stop"] == ["END"] and fake.requests[-1].json["model"] == "a/b"
        b.execute("z")
        assert "stop" not in fake.requests[-1].json


def test_typos_of_known_options_are_errors(b: OpenRouterBackend) -> None:
    with pytest.raises(ValueError, match="unknown option 'top_pp': did you mean 'top_p'"):
        b.execute("x", top_pp=0.1)
    with pytest.raises(ValueError, match="unknown override 'provder': did you mean 'provider'"):
        Sheet("x", overrides={"provder": {}})
    with pytest.raises(ValueError, match="unknown option 'max_token'"):
        OpenRouterBackend(default_options={"max_token": 1})


def test_system_prompt_and_messages(b: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    b.execute("question", system="be brief")
    assert fake.requests[-1].json["messages"] == [{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "question"}]
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    b.execute(messages=[*history, {"role": "user", "content": "and now?"}])
    assert fake.requests[-1].json["messages"][-1] == {"role": "user", "content": "and now?"}
    b.execute("follow-up", messages=history)
    assert fake.requests[-1].json["messages"][-1] == {"role": "user", "content": "follow-up"}
    with pytest.raises(ValueError, match="messages"):
        b.execute(messages=[{"content": "no role"}])
    sheet = Sheet(messages=history, system="sys")
    b.execute_sheet(sheet)
    assert fake.requests[-1].json["messages"][0]["role"] == "system"


def test_json_response_format(b: OpenRouterBackend) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True,
                                                     "schema": {"type": "object"}}}
    for fmt in ({"type": "json_object"}, schema):
        data = b.execute("give json", response_format=fmt).json()
        assert data["prompt_chars"] == len("give json")
    with pytest.raises(ValueError, match="not valid JSON"):
        b.execute("plain text").json()


def test_result_fields(b: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    r = b.execute("fields")
    assert r.cost and r.generation_id and r.provider == "FakeProvider" and r.finish_reason == "stop"
    assert r.cached_tokens == 0 and r.reasoning_tokens == 0
    b.max_tokens = 2
    cut = b.execute("a prompt whose answer is longer than two tokens")
    assert cut.success and cut.finish_reason == "length" and cut.output_tokens == 2


def test_list_models(b: OpenRouterBackend) -> None:
    models = b.list_models()
    assert len(models) >= 3 and all(isinstance(m.prompt_price, float) for m in models)
    free = b.list_models(free=True)
    assert free and all(m.is_free for m in free) and len(free) < len(models)


def test_list_models_needs_no_key(fake: FakeOpenRouter) -> None:
    assert OpenRouterBackend(base_url=fake.base_url, api_key_env="NO_KEY_HERE_X").list_models()


def test_key_info_and_generation(b: OpenRouterBackend) -> None:
    info = b.key_info()
    assert info.limit == 10.0 and info.limit_remaining == 9.5 and info.is_free_tier is False
    gen = b.execute("g").generation_id
    stats = b.generation(gen)
    assert stats.id == gen and stats.total_cost and stats.tokens_completion and stats.provider == "FakeProvider"
    with pytest.raises(BadRequestError) as caught:
        b.generation("gen-missing")
    assert caught.value.result.exit_code == 404
    with pytest.raises(ValueError):
        b.generation("")


def test_key_info_without_key(fake: FakeOpenRouter) -> None:
    with pytest.raises(ConfigurationError):
        OpenRouterBackend(base_url=fake.base_url, api_key_env="NO_KEY_HERE_X").key_info()


@pytest.mark.parametrize(("reply", "exc"), [
    (Reply(401), AuthenticationError), (Reply(402), InsufficientCreditsError), (Reply(403), ModerationError),
    (Reply(429), RateLimitError), (Reply(400), BadRequestError), (Reply(502), ProviderError),
    (Reply(200, {}, "error200"), ProviderError),
])
def test_exception_style(b: OpenRouterBackend, fake: FakeOpenRouter, reply: Reply, exc: type) -> None:
    fake.script(reply)
    result = b.execute("x")
    with pytest.raises(exc) as caught:
        result.raise_for_error()
    assert isinstance(caught.value, OpenRouterError) and caught.value.result is result
    assert b.execute("fine").raise_for_error().success
