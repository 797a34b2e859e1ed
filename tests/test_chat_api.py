"""The whole chat API (issue 25): tool calls, the raw body and its first-class fields, refusals,
content parts, options, servers that are not OpenRouter, stream events and stream deadlines."""

from __future__ import annotations

import csv
import json
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import FAST_RETRY, NO_RETRY

from openrouter_sync import ExecutionResult, OpenRouterBackend, RetryPolicy, Sheet, run_sheets
from openrouter_sync.cli import main
from openrouter_sync.errors import RefusedError
from openrouter_sync.events import ChunkFolder, outcome_of_event_stream
from openrouter_sync.request import UnknownOptionWarning
from openrouter_sync.sse import encode_event
from openrouter_sync.summary import RunSummary
from openrouter_sync.testing import FakeOpenRouter, Reply, fake_reply
from openrouter_sync.tools import append_tool_turn, call_tool

MODEL = "openai/gpt-4o-mini"
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALLS = [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]


def _chunk(delta: dict[str, Any], finish: Any = None, index: int = 0, **extra: Any) -> bytes:
    return encode_event(json.dumps({"id": "gen-1", "model": MODEL, "choices": [
        {"index": index, "delta": delta, "finish_reason": finish, **extra}]}))


# ----- 1. tool calls -------------------------------------------------------------------------------

@pytest.mark.parametrize("streamed", [False, True])
def test_tool_calls_are_a_success_with_the_calls_exactly_as_sent(backend: OpenRouterBackend, fake: FakeOpenRouter,
                                                                  streamed: bool) -> None:
    fake.script(Reply(tool_calls=[{**CALLS[0], "id": "call_a"}, {**CALLS[1], "id": "call_b"}]))
    if streamed:
        with backend.stream("weather?", tools=WEATHER) as stream:
            assert list(stream) == []  # no text
        result = stream.result
        assert result is not None
    else:
        result = backend.execute("weather?", tools=WEATHER)
    assert (result.success, result.finish_reason, result.stdout, result.error_type) == (True, "tool_calls", "", None)
    assert result.tool_calls == [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}]
    assert result.raw is not None
    message = result.raw["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] == result.tool_calls
    assert fake.requests[-1].json["tools"] == WEATHER


def test_no_tool_calls_is_an_empty_list(backend: OpenRouterBackend) -> None:
    result = backend.execute("plain")
    assert result.tool_calls == [] and result.finish_reason == "stop"


def test_interleaved_tool_call_deltas_fold_by_index() -> None:
    folder = ChunkFolder()
    folder.fold('{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":['
                '{"index":0,"id":"c1","type":"function","function":{"name":"a","arguments":""}},'
                '{"index":1,"id":"c2","type":"function","function":{"name":"b","arguments":"{\\"y\\""}}]}}]}')
    folder.fold('{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"x\\":"}}]}}]}')
    folder.fold('{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":":2}"}},'
                '{"index":0,"function":{"arguments":"1}"}}]}}]}')
    folder.fold('{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}')
    assert folder.tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "a", "arguments": '{"x":1}'}},
        {"id": "c2", "type": "function", "function": {"name": "b", "arguments": '{"y":2}'}}]
    outcome = folder.outcome()
    assert outcome.ok and outcome.to_result(requested_model="m", duration=0.0,
                                            started_at=ExecutionResult(True, "", "", 0.0).started_at).tool_calls


def test_tool_call_deltas_without_an_index_are_told_apart_by_id() -> None:
    folder = ChunkFolder()
    folder.fold('{"choices":[{"delta":{"tool_calls":[{"id":"c1","function":{"name":"a","arguments":"{}"}}]}}]}')
    folder.fold('{"choices":[{"delta":{"tool_calls":[{"id":"c2","function":{"name":"b","arguments":"{"}}]}}]}')
    folder.fold('{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"}"}}]}}]}')
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in folder.tool_calls] == [
        ("c1", "a", "{}"), ("c2", "b", "{}")]


def test_a_tool_loop_takes_a_few_lines(backend: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    seen: list[str] = []

    def get_weather(city: str) -> dict[str, Any]:
        seen.append(city)
        return {"city": city, "sky": "clear"}

    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    rounds = 0
    while True:  # the fake calls the first tool, then answers the tool's result in text
        rounds += 1
        result = backend.execute(messages=messages, tools=WEATHER)
        if not append_tool_turn(messages, result, {"get_weather": get_weather}):
            break
    assert rounds == 2 and seen == ["Weather in Paris?"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    call = messages[1]["tool_calls"][0]
    assert messages[2] == {"role": "tool", "tool_call_id": call["id"],
                           "content": '{"city": "Weather in Paris?", "sky": "clear"}'}
    assert fake.requests[-1].json["messages"][1]["tool_calls"] == [call]  # sent back as received
    assert "tool results" in result.stdout and result.finish_reason == "stop"


def test_call_tool_reports_model_mistakes_to_the_model() -> None:
    functions = {"f": lambda x: x * 2}
    assert call_tool({"function": {"name": "f", "arguments": '{"x": 2}'}}, functions) == 4
    assert "no tool named 'g'" in call_tool({"function": {"name": "g", "arguments": "{}"}}, functions)
    assert "not valid JSON" in call_tool({"function": {"name": "f", "arguments": '{"x": '}}, functions)
    assert "must be a JSON object" in call_tool({"function": {"name": "f", "arguments": "[1]"}}, functions)


def test_append_tool_turn_raises_for_a_failed_call(backend: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    backend.retry_policy = NO_RETRY
    fake.script(Reply(400))
    messages: list[dict[str, Any]] = []
    with pytest.raises(Exception, match="bad_request"):
        append_tool_turn(messages, backend.execute("x", tools=WEATHER), {})
    assert messages == []


def test_the_openai_sdk_parses_the_fake_servers_tool_calls(fake: FakeOpenRouter) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test-" + uuid.uuid4().hex, max_retries=0)
    fake.script(Reply(tool_calls=[{**CALLS[0], "id": "call_p"}]), Reply(tool_calls=[{**CALLS[0], "id": "call_s"}]))
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w"}], tools=WEATHER)
    call = plain.choices[0].message.tool_calls[0]
    assert (plain.choices[0].finish_reason, call.id, call.function.name, json.loads(call.function.arguments)) == (
        "tool_calls", "call_p", "get_weather", {"city": "Paris"})
    with client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "w"}],
                                        tools=WEATHER) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (final.choices[0].finish_reason, call.id, call.function.name, json.loads(call.function.arguments)) == (
        "tool_calls", "call_s", "get_weather", {"city": "Paris"})
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_reply("hi", MODEL)


# ----- 2. raw and the first-class fields -----------------------------------------------------------

def test_raw_is_the_body_and_a_stream_folds_to_the_same_shape(backend: OpenRouterBackend) -> None:
    plain = backend.execute("same", reasoning={"effort": "low"})
    with backend.stream("same", reasoning={"effort": "low"}) as stream:
        text = "".join(stream)
    streamed = stream.result
    assert streamed is not None and plain.raw is not None and streamed.raw is not None
    assert plain.raw["object"] == streamed.raw["object"] == "chat.completion"
    for raw in (plain.raw, streamed.raw):
        assert raw["choices"][0]["message"]["content"] == text == plain.stdout
        assert raw["choices"][0]["message"]["reasoning"] == plain.reasoning
        assert raw["usage"]["total_tokens"] == plain.tokens_used
    assert plain.raw["choices"][0].keys() <= streamed.raw["choices"][0].keys() | {"logprobs"}


def test_raw_redacts_an_echoed_key_and_is_none_without_a_body(backend: OpenRouterBackend, fake: FakeOpenRouter,
                                                               env_key: str) -> None:
    fake.script(Reply(message={"content": f"your key is {env_key}"}))
    result = backend.execute("echo")
    assert result.success and result.raw is not None
    assert env_key not in json.dumps(result.raw) and "[REDACTED]" in result.raw["choices"][0]["message"]["content"]
    backend.retry_policy = NO_RETRY
    fake.script(Reply(401, body={"error": {"code": 401, "message": f"bad key {env_key}"}}))
    failed = backend.execute("bad")
    assert failed.error_type == "authentication" and failed.raw is not None
    assert env_key not in json.dumps(failed.raw) and failed.raw["error"]["code"] == 401
    fake.script(Reply(reset=True))
    assert backend.execute("dropped").raw is None


def test_first_class_fields(backend: OpenRouterBackend, fake: FakeOpenRouter) -> None:
    images = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    annotations = [{"type": "url_citation", "url_citation": {"url": "https://example.com", "title": "Ex"}}]
    details = [{"type": "reasoning.text", "text": "think"}]
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]}
    body = {"id": "gen-x", "model": MODEL, "choices": [
        {"index": 0, "finish_reason": "stop", "native_finish_reason": "end_turn", "logprobs": logprobs,
         "message": {"role": "assistant", "content": "one", "images": images, "annotations": annotations,
                     "reasoning_details": details}},
        {"index": 1, "finish_reason": "stop", "message": {"role": "assistant", "content": "two"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "cost": 0.5, "cost_details": {"upstream": 0.4},
                  "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 7}}}
    fake.script(Reply(body=body, headers={"X-Request-Id": "req-1", "X-Api-Key": "hidden-value-123"}))
    result = backend.execute("all", n=2)
    assert result.success and fake.requests[-1].json["n"] == 2
    assert (result.images, result.annotations, result.reasoning_details, result.logprobs) == (
        images, annotations, details, logprobs)
    assert (result.native_finish_reason, result.cost_details, result.cache_write_tokens, result.cached_tokens) == (
        "end_turn", {"upstream": 0.4}, 7, 3)
    assert result.choices is not None and len(result.choices) == 2 and result.texts == ["one", "two"]
    assert result.response_headers is not None and result.response_headers["x-request-id"] == "req-1"
    assert result.response_headers["x-api-key"] == "[REDACTED]"
    assert result.response_headers["content-type"] == "application/json"
    assert backend.execute("one choice").texts == [fake_reply("one choice", MODEL)]


def test_streamed_first_class_fields_and_choices() -> None:
    events = [_chunk({"role": "assistant", "content": "a", "annotations": [{"u": 1}]}, logprobs={"content": [1]}),
              _chunk({"content": "x"}, index=1),
              _chunk({"content": "b", "images": [{"i": 1}]}, logprobs={"content": [2]}),
              _chunk({}, "stop", native_finish_reason="end_turn"), _chunk({}, "stop", index=1), b"data: [DONE]\n\n"]
    outcome = outcome_of_event_stream(events)
    assert outcome.ok and outcome.data is not None
    first, second = outcome.data["choices"]
    assert first["message"]["content"] == "ab" and second["message"]["content"] == "x"
    assert first["logprobs"] == {"content": [1, 2]} and first["native_finish_reason"] == "end_turn"
    assert first["message"]["annotations"] == [{"u": 1}] and first["message"]["images"] == [{"i": 1}]


def test_to_dict_can_leave_raw_out_and_from_dict_restores_the_new_fields(backend: OpenRouterBackend,
                                                                        fake: FakeOpenRouter) -> None:
    fake.script(Reply(tool_calls=[CALLS[0]]))
    result = backend.execute("w", tools=WEATHER)
    full, small = result.to_dict(), result.to_dict(include_raw=False)
    assert "raw" not in small and full["raw"] == result.raw and result.raw is not None
    back = ExecutionResult.from_dict(json.loads(json.dumps(full)))
    assert back.tool_calls == result.tool_calls and back.raw == result.raw
    assert back.response_headers == result.response_headers
    assert ExecutionResult.from_dict(json.loads(json.dumps(small))).raw is None
    with pytest.raises(ValueError, match="tool_calls"):
        ExecutionResult.from_dict({**small, "tool_calls": ["not an object"]})


def test_a_checkpoint_keeps_tool_calls(fake: FakeOpenRouter, env_key: str, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    with OpenRouterBackend(model=MODEL, base_url=fake.base_url, retry_policy=FAST_RETRY) as b:
        first = run_sheets(b, [Sheet("w", id="w", overrides={"tools": WEATHER})], checkpoint=path)
        again = run_sheets(b, [Sheet("w", id="w", overrides={"tools": WEATHER})], checkpoint=path)
    assert first[0].tool_calls and again[0].from_checkpoint and again[0].tool_calls == first[0].tool_calls
    stored = json.loads(path.read_text().splitlines()[0])["result"]
    assert stored["tool_calls"] == first[0].tool_calls and first[0].response_headers
    assert not {"raw", "response_headers", "refusal", "images", "choices"} & stored.keys()  # defaults: left out


# ----- 3. refusals, 4. content parts -------------------------------------------------------------

@pytest.mark.parametrize("streamed", [False, True])
def test_a_refusal_is_its_own_failure_and_is_not_retried(backend: OpenRouterBackend, fake: FakeOpenRouter,
                                                         streamed: bool) -> None:
    fake.script(Reply(message={"content": None, "refusal": "I can't help with that."}))
    if streamed:
        with backend.stream("forbidden") as stream:
            list(stream)
        result = stream.result
        assert result is not None
    else:
        result = backend.execute("forbidden")
    assert (result.success, result.error_type, result.attempts, fake.request_count) == (False, "refused", 1, 1)
    assert result.refusal == "I can't help with that." and "I can't help with that." in (result.error_message or "")
    assert result.cost is not None  # it was billed
    with pytest.raises(RefusedError):
        result.raise_for_error()
    assert RunSummary.from_results([result]).by_error_type == {"refused": 1}


@pytest.mark.parametrize("streamed", [False, True])
def test_content_as_parts_is_read(backend: OpenRouterBackend, fake: FakeOpenRouter, streamed: bool) -> None:
    parts = [{"type": "thinking", "thinking": "let me see"}, {"type": "text", "text": "Hello "},
             {"type": "image_url", "image_url": {"url": "https://x"}}, {"type": "text", "text": "world"}]
    if streamed:
        stream_body = b"".join([_chunk({"role": "assistant", "content": parts}), _chunk({}, "stop"),
                                b"data: [DONE]\n\n"])
        fake.script(Reply(headers={"Content-Type": "text/event-stream"}, body=stream_body))
        with backend.stream("parts") as stream:
            assert "".join(stream) == "Hello world"
        result = stream.result
        assert result is not None
    else:
        fake.script(Reply(message={"content": parts}))
        result = backend.execute("parts")
    assert (result.success, result.stdout, result.reasoning, fake.request_count) == (True, "Hello world",
                                                                                      "let me see", 1)
    if not streamed:
        assert result.raw is not None and result.raw["choices"][0]["message"]["content"] == parts


# ----- 5. options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("modalities", ["image", "text"]), ("web_search_options", {"search_context_size": "low"}),
    ("max_completion_tokens", 50), ("n", 2), ("image_config", {"aspect_ratio": "16:9"}),
    ("metadata", {"run": "1"}), ("session_id", "s-1"), ("service_tier", "flex"), ("include_reasoning", True),
    ("structured_outputs", True), ("reasoning_effort", "low"), ("store", False), ("audio", {"voice": "alloy"}),
])
def test_documented_options_pass_through(backend: OpenRouterBackend, fake: FakeOpenRouter, name: str,
                                         value: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a documented option is no warning
        assert backend.execute("opt", **{name: value}).success
    assert fake.requests[-1].json[name] == value


def test_unknown_options_warn_and_are_sent_strict_mode_refuses(backend: OpenRouterBackend, fake: FakeOpenRouter,
                                                               env_key: str) -> None:
    with pytest.warns(UnknownOptionWarning, match="'brand_new_field'"):
        assert backend.execute("x", brand_new_field={"a": 1}).success
    assert fake.requests[-1].json["brand_new_field"] == {"a": 1}
    with pytest.raises(ValueError, match="did you mean 'temperature'"):
        backend.execute("x", temprature=0.1)
    with pytest.raises(ValueError, match="the library sets it"):
        backend.execute("x", stream=True)
    strict = OpenRouterBackend(model=MODEL, base_url=fake.base_url, strict_options=True)
    with pytest.raises(ValueError, match="strict_options"):
        strict.execute("x", brand_new_field=1)
    with pytest.raises(ValueError, match="strict_options"):
        OpenRouterBackend(strict_options=True, default_options={"brand_new_field": 1})
    assert strict.execute("x", extra_body={"brand_new_field": 1}).success  # the escape hatch


def test_none_leaves_max_tokens_and_temperature_out(fake: FakeOpenRouter, env_key: str) -> None:
    b = OpenRouterBackend(model=MODEL, base_url=fake.base_url, max_tokens=None, temperature=None)  # type: ignore[arg-type]
    assert b.execute("x").success
    assert "max_tokens" not in fake.requests[-1].json and "temperature" not in fake.requests[-1].json
    default = OpenRouterBackend(model=MODEL, base_url=fake.base_url)
    assert (default.max_tokens, default.temperature) == (16384, 0.7)
    default.execute("y", max_tokens=None, temperature=None)
    assert "max_tokens" not in fake.requests[-1].json and "temperature" not in fake.requests[-1].json
    default.execute("z", max_completion_tokens=3)
    sent = fake.requests[-1].json
    assert sent["max_completion_tokens"] == 3 and "max_tokens" not in sent and sent["temperature"] == 0.7
    with pytest.raises(ValueError, match="max_completion_tokens must be >= 1"):
        default.execute("z", max_completion_tokens=0)
    with pytest.raises(ValueError, match="max_tokens must be >= 1, got 0"):
        OpenRouterBackend(max_tokens=0)


# ----- 6. servers other than OpenRouter ---------------------------------------------------------------

@pytest.fixture
def vllm() -> Iterator[FakeOpenRouter]:
    """A keyless vLLM-style server: ``/v1``, no key wanted."""
    with FakeOpenRouter(keyless=True, max_lifetime=60) as server:
        yield server


def test_a_keyless_server_gets_no_authorization_and_no_attribution(vllm: FakeOpenRouter) -> None:
    b = OpenRouterBackend(model=MODEL, base_url=vllm.url + "/v1", api_key_env="SURELY_UNSET_KEY_25")
    assert b.availability_check() and "not needed" in repr(b)
    result = b.execute("local")
    assert result.success and result.stdout == fake_reply("local", MODEL)
    with b.stream("local") as stream:
        assert "".join(stream) == result.stdout
    for request in vllm.requests:
        assert "authorization" not in request.headers
        assert not {"http-referer", "x-title", "x-openrouter-title"} & request.headers.keys()
    titled = OpenRouterBackend(model=MODEL, base_url=vllm.url + "/v1", app_title="my-app", require_key=False)
    titled.execute("x")
    assert vllm.requests[-1].headers["x-title"] == "my-app" and "http-referer" not in vllm.requests[-1].headers


def test_openrouter_still_requires_a_key_unless_told(fake: FakeOpenRouter) -> None:
    b = OpenRouterBackend(model=MODEL, base_url=fake.base_url, api_key_env="SURELY_UNSET_KEY_25")
    assert b.execute("x").error_type == "configuration" and fake.request_count == 0
    keyless = OpenRouterBackend(model=MODEL, base_url=fake.base_url, api_key_env="SURELY_UNSET_KEY_25",
                                require_key=False, retry_policy=NO_RETRY)
    assert keyless.execute("x").error_type == "authentication"  # sent, without a key: the server says 401
    assert "authorization" not in fake.requests[-1].headers and fake.requests[-1].headers["http-referer"]


def test_an_api_key_header_server_and_its_secret_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    secret = f"azure-{uuid.uuid4().hex}"
    with FakeOpenRouter(key_header="api-key", require_key=secret, max_lifetime=60) as server:
        b = OpenRouterBackend(model=MODEL, base_url=server.url + "/openai/v1", default_headers={"api-key": secret},
                              retry_policy=NO_RETRY)
        ok = b.execute("azure")
        per_call = OpenRouterBackend(model=MODEL, base_url=server.url + "/v1", retry_policy=NO_RETRY)
        also = per_call.execute("azure", extra_headers={"api-key": secret})
        assert server.requests[-1].headers["api-key"] == secret and "authorization" not in server.requests[-1].headers
        refused = per_call.execute("azure")
        server.script(Reply(401, body={"error": {"code": 401, "message": f"bad api-key {secret}"}}))
        echoed = b.execute("azure")
    assert ok.success and also.success and refused.error_type == "authentication"
    shown = [repr(echoed), str(echoed), json.dumps(echoed.to_dict(), default=str), caplog.text, repr(b)]
    assert echoed.error_type == "authentication" and all(secret not in text for text in shown)
    with pytest.raises(ValueError, match="not a valid header name"):
        OpenRouterBackend(default_headers={"bad name": "x"})
    with pytest.raises(ValueError, match="control character"):
        OpenRouterBackend(default_headers={"X-Ok": "a\r\nInjected: 1"})


def test_extra_headers_are_not_request_settings(fake: FakeOpenRouter, env_key: str, tmp_path: Path) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    with OpenRouterBackend(model=MODEL, base_url=fake.base_url) as b:
        run_sheets(b, [Sheet("h", id="h", overrides={"extra_headers": {"X-Trace-Token": secret}})],
                   checkpoint=tmp_path / "c.jsonl")
    assert fake.requests[-1].headers["x-trace-token"] == secret and "extra_headers" not in fake.requests[-1].json
    assert secret not in (tmp_path / "c.jsonl").read_text()


def test_the_cli_talks_to_a_keyless_server_and_sends_headers(vllm: FakeOpenRouter,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--base-url", vllm.url + "/v1", "-m", MODEL, "-H", "X-Team: blue", "hello"]) == 0
    assert capsys.readouterr().out.strip() == fake_reply("hello", MODEL)
    request = vllm.requests[-1]
    assert "authorization" not in request.headers and request.headers["x-team"] == "blue"
    assert main(["ask", "hello"]) == 2  # OpenRouter's endpoint still needs the key
    assert "OPENROUTER_API_KEY is not set" in capsys.readouterr().err


# ----- 8. streams --------------------------------------------------------------------------------------

def test_stream_events_yield_reasoning_text_and_tool_calls_as_they_arrive(backend: OpenRouterBackend,
                                                                           fake: FakeOpenRouter) -> None:
    with backend.stream("think", reasoning={"effort": "low"}) as stream:
        events = list(stream.events())
    kinds = [e.type for e in events]
    assert kinds[0] == "reasoning" and set(kinds) == {"reasoning", "text"}
    assert "".join(e.text for e in events if e.type == "text") == fake_reply("think", MODEL)
    assert stream.result is not None and stream.result.reasoning == events[0].text
    fake.script(Reply(tool_calls=[{**CALLS[0], "id": "call_e"}]))
    with backend.stream("w", tools=WEATHER) as stream:
        calls = list(stream.events())
    assert {e.type for e in calls} == {"tool_call"} and all(e.tool_call_id == "call_e" for e in calls)
    assert "".join(e.text for e in calls) == '{"city": "Paris"}' and calls[-1].name == "get_weather"
    assert stream.result is not None and stream.result.tool_calls[0]["id"] == "call_e"


def test_a_stream_that_keeps_sending_outlives_its_timeout(fake: FakeOpenRouter, env_key: str) -> None:
    b = OpenRouterBackend(model=MODEL, base_url=fake.base_url, timeout_seconds=0.4, retry_policy=NO_RETRY)
    fake.script(Reply(trickle=0.15))  # a piece every 0.15 s, about 1 s in all
    with b.stream("a prompt long enough for many pieces") as stream:
        text = "".join(stream)
    assert stream.result is not None and stream.result.success and stream.result.duration_seconds > 0.6
    assert text == fake_reply("a prompt long enough for many pieces", MODEL)


def test_a_stalled_stream_is_cut_and_the_whole_stream_is_bounded(fake: FakeOpenRouter, env_key: str) -> None:
    b = OpenRouterBackend(model=MODEL, base_url=fake.base_url, timeout_seconds=0.3, retry_policy=NO_RETRY)
    fake.script(Reply(trickle=1.0))  # a stall of 1 s after the first piece
    with b.stream("stall") as stream:
        list(stream)
    stalled = stream.result
    assert stalled is not None and stalled.error_type == "timeout" and "stalled" in (stalled.error_message or "")
    assert stalled.stdout and stalled.duration_seconds < 0.9  # the first piece kept; cut at the stall
    bounded = OpenRouterBackend(model=MODEL, base_url=fake.base_url, timeout_seconds=0.5,
                                retry_policy=RetryPolicy(max_attempts=1, max_elapsed_seconds=0.7))
    fake.script(Reply(trickle=0.15))
    with bounded.stream("a prompt long enough for many pieces") as stream:
        list(stream)
    cut = stream.result
    assert cut is not None and cut.error_type == "timeout" and "max_elapsed_seconds" in (cut.error_message or "")
    assert 0.6 < cut.duration_seconds < 1.0


def test_a_stream_that_never_answers_is_sent_twice_not_eight_times(fake: FakeOpenRouter, env_key: str) -> None:
    policy = RetryPolicy(backoff_base=0.01, backoff_max=0.02)  # the default 8 attempts
    b = OpenRouterBackend(model=MODEL, base_url=fake.base_url, timeout_seconds=0.3, retry_policy=policy)
    fake.script(*[Reply(delay=1.0)] * 8)
    with b.stream("silent") as stream:
        list(stream)
    assert stream.result is not None and stream.result.error_type == "timeout"
    assert stream.result.attempts == 2 and fake.request_count == 2
    assert RetryPolicy().max_read_timeouts == 2
    with pytest.raises(ValueError, match="max_read_timeouts"):
        RetryPolicy(max_read_timeouts=0)


# ----- summary and export ------------------------------------------------------------------------------

def test_summary_and_export_tell_tool_call_answers_from_empty_ones(fake: FakeOpenRouter, env_key: str,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "in.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"id": "tool", "prompt": "w", "tools": WEATHER}, {"id": "empty", "prompt": "e"},
        {"id": "text", "prompt": "t"}]))
    fake.script(Reply(tool_calls=[CALLS[0]]))

    def handler(request: Any) -> Any:
        return Reply(message={"content": ""}) if request.prompt == "e" else None
    fake.handler = handler
    out = tmp_path / "out.jsonl"
    assert main(["run", str(prompts), "-o", str(out), "--base-url", fake.base_url, "-m", MODEL, "-w", "1",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "3 ok (1 tool-call answer, 1 empty)" in err and "empty answers (no text, no tool calls): empty" in err
    assert main(["export", str(out), "-o", str(tmp_path / "final.csv")]) == 0
    assert "1 tool-call answer, 1 empty" in capsys.readouterr().err
    rows = {row["id"]: row for row in csv.DictReader((tmp_path / "final.csv").open(encoding="utf-8"))}
    assert json.loads(rows["tool"]["tool_calls"])[0]["function"]["name"] == "get_weather"
    assert rows["empty"]["tool_calls"] == "" and rows["empty"]["answer"] == ""
    summary = RunSummary.from_results([ExecutionResult(True, "", "", 0.0, tool_calls=[{"id": "c"}]),
                                       ExecutionResult(True, " ", "", 0.0), ExecutionResult(True, "a", "", 0.0)])
    assert (summary.tool_call_answers, summary.empty) == (1, ["#1"])
