"""What one call sends: the resolved settings (``CallSpec``), the messages and the JSON body."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

#: Request fields passed through to ``/chat/completions`` as given (per call, per sheet, per override).
REQUEST_OPTIONS = frozenset({
    "models", "provider", "response_format", "reasoning", "stop", "top_p", "top_k", "seed",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_p", "top_a", "logit_bias",
    "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "plugins",
    "transforms", "user", "route", "verbosity", "usage", "prediction", "stream_options",
})
MAX_TIMEOUT = 1_000_000.0  # seconds (11.5 days): anything longer is a mistake, and overflows socket timeouts
#: Keys an override dict may hold: the three of the reference, the request options, and the escape hatch.
OVERRIDE_KEYS = frozenset({"model", "temperature", "max_tokens"}) | REQUEST_OPTIONS | {"extra_body"}


#: One encoder for every body (``json.dumps`` with non-default arguments builds a new one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def request_headers(app_url: str, app_title: str) -> dict[str, str]:
    """The headers every request carries (the key's ``Authorization`` is added per request)."""
    from ._version import __version__

    # Nothing more: copied, checked and sent, each header costs about 27,000 CPU instructions a
    # request (no ``Accept``: a plain call gets JSON anyway; a streamed one asks for ``text/event-stream``).
    return {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate",
            "HTTP-Referer": app_url, "X-Title": app_title, "X-OpenRouter-Title": app_title,
            "User-Agent": f"openrouter-sync/{__version__}"}


def check_model(model: Any) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must be a non-empty string")
    return model


def check_max_tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"max_tokens must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"max_tokens must be >= 1, got {value}")
    return int(value)


def check_rate(value: Any, name: str) -> Optional[float]:
    """None, or a finite number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"temperature must be a number between 0 and 2, got {value!r}")
    if not 0.0 <= value <= 2.0:
        raise ValueError(f"temperature must be between 0 and 2, got {value}")
    return float(value)


def check_timeout(value: Any, name: str = "timeout_seconds") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not math.isfinite(value) or value > MAX_TIMEOUT:
        raise ValueError(f"{name} must be finite and at most {MAX_TIMEOUT:g} seconds, got {value}")
    return float(value)


def check_base_url(url: Any) -> str:
    """An http(s) URL with a host, no credentials, query, fragment or control characters; no trailing slash."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http:// or https:// URL, got {url!r:.80}")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ValueError("base_url must not contain spaces or control characters")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError("base_url must not contain credentials (user:password@); pass the key with api_key_env")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError("base_url must not contain a query string or a fragment")
    if not parts.hostname:
        raise ValueError(f"base_url has no host: {url!r:.80}")
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number from 0 to 65535)
    except ValueError:
        raise ValueError(f"base_url has an invalid port: {url!r:.80}") from None
    return url.rstrip("/")


def check_options(options: Mapping[str, Any], allowed: frozenset[str] = REQUEST_OPTIONS, what: str = "option") -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(allowed))} "
            "(pass anything else in extra_body={...})"
        )


def check_settings(*, model: Any, api_key_env: Any, max_tokens: Any, temperature: Any, timeout_seconds: Any,
                   connect_timeout: Any, pool_size: Any, requests_per_minute: Any, max_response_bytes: Any,
                   default_options: Mapping[str, Any]) -> None:
    """Check a backend's settings before anything is built: a clear ``ValueError`` for the first bad one."""
    check_model(model)
    if not isinstance(api_key_env, str) or not api_key_env.strip():
        raise ValueError("api_key_env must be a non-empty string")
    check_max_tokens(max_tokens)
    check_timeout(timeout_seconds)
    check_temperature(temperature)
    check_timeout(connect_timeout, "connect_timeout")
    check_count(pool_size, "pool_size")
    check_rate(requests_per_minute, "requests_per_minute")
    check_count(max_response_bytes, "max_response_bytes")
    check_options(default_options, REQUEST_OPTIONS | {"extra_body"})


def check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or (
            "content" not in message and "tool_calls" not in message
        ):
            raise ValueError(f"messages[{index}] must be a dict with 'role' and 'content', got {message!r:.80}")
    return [dict(m) for m in messages]


def assemble_prompt(prompt: str, preamble: Optional[str], extensions: Sequence[str]) -> str:
    """The reference's assembly: preamble, prompt, then the extensions, joined by newlines."""
    parts = [preamble] if preamble else []
    parts.append(prompt)
    parts.extend(extensions)
    return "\n".join(parts) if len(parts) > 1 else prompt


@dataclass(frozen=True)
class CallSpec:
    """Everything one call needs, resolved before it starts (so later state changes cannot leak in)."""

    model: str
    temperature: float
    max_tokens: int
    timeout: float
    messages: tuple[dict[str, Any], ...]
    options: Mapping[str, Any]
    output_log_path: Optional[Path] = None
    sheet_id: Optional[str] = None

    @property
    def stdout_log(self) -> Optional[Path]:
        """``<output_log_path>.stdout.log``, or None without an output log path."""
        return None if self.output_log_path is None else self.output_log_path.with_suffix(".stdout.log")

    @property
    def stderr_log(self) -> Optional[Path]:
        """``<output_log_path>.stderr.log``, or None without an output log path."""
        return None if self.output_log_path is None else self.output_log_path.with_suffix(".stderr.log")

    def payload(self, stream: bool = False) -> dict[str, Any]:
        """The request body as a dict: model, messages, max_tokens, temperature, the options that are not
        None, then ``extra_body`` merged over all of it; a stream also asks for its usage chunk."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(self.messages),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        extra = None
        for key, value in self.options.items():
            if key == "extra_body":
                extra = value
            elif value is not None:
                body[key] = value
        if stream:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": True})  # else OpenAI-style servers send no usage
        if extra:
            body.update(extra)
        return body

    def body(self, stream: bool = False) -> bytes:
        """The JSON request body. Raises ``ValueError`` for values JSON cannot carry (NaN, infinity)."""
        try:
            text = _ENCODER.encode(self.payload(stream))
        except ValueError:
            bad = sorted(k for k, v in self.options.items() if not _json_safe(v))
            names = ", ".join(bad) or "a value"
            raise ValueError(f"request options must be valid JSON (no NaN or infinity): {names}") from None
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in a prompt: send it escaped, as valid JSON
            return json.dumps(self.payload(stream), separators=(",", ":")).encode("ascii")


def build_messages(
    prompt: Optional[str], *, preamble: Optional[str], extensions: Sequence[str], system: Optional[str],
    messages: Optional[Sequence[Mapping[str, Any]]],
) -> tuple[dict[str, Any], ...]:
    """The message list: an optional system prompt, the given history, then the assembled prompt."""
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if system is not None and not isinstance(system, str):
        raise TypeError(f"system must be a string, got {type(system).__name__}")
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    if messages is not None:
        out.extend(check_messages(messages))
    if prompt or (messages is None and (preamble or extensions)):
        out.append({"role": "user", "content": assemble_prompt(prompt or "", preamble, extensions)})
    elif messages is None:
        raise ValueError("prompt must be a non-empty string (or pass messages=[...])")
    return tuple(out)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Defaults:
    """The settings a call starts from (a backend's, before per-sheet or per-call changes)."""

    model: str
    temperature: float
    max_tokens: int
    timeout: float
    options: Mapping[str, Any]


def resolve(defaults: Defaults, overrides: Mapping[str, Any], messages: tuple[dict[str, Any], ...], *,
            timeout: Optional[float] = None, output_log_path: Optional[Path] = None,
            sheet_id: Optional[str] = None, what: str = "override") -> CallSpec:
    """The call: ``defaults``, then ``overrides`` (``model``, ``temperature``, ``max_tokens``, request
    options, ``extra_body``), each checked (``what`` names them in errors)."""
    if overrides:
        check_options(overrides, OVERRIDE_KEYS, what)
    model = check_model(overrides.get("model", defaults.model))
    temperature = check_temperature(overrides.get("temperature", defaults.temperature))
    max_tokens = check_max_tokens(overrides.get("max_tokens", defaults.max_tokens))
    options = dict(defaults.options)
    for key, value in overrides.items():
        if key not in ("model", "temperature", "max_tokens"):
            options[key] = value
    if options:
        bad = sorted(k for k, v in options.items() if not _json_safe(v))
        if bad:
            raise ValueError(f"request options must be valid JSON (no NaN, infinity or objects JSON cannot hold): "
                             f"{', '.join(bad)}")
    timeout = defaults.timeout if timeout is None else check_timeout(timeout)
    return CallSpec(model, temperature, max_tokens, timeout, messages, options, output_log_path, sheet_id)


def spec_for_sheet(defaults: Defaults, sheet: Any) -> CallSpec:
    """The call for a ``Sheet``: everything per-sheet comes from the sheet."""
    messages = build_messages(sheet.prompt, preamble=sheet.preamble, extensions=sheet.extensions,
                              system=sheet.system, messages=sheet.messages)
    return resolve(defaults, sheet.overrides or {}, messages, timeout=sheet.timeout_seconds,
                   output_log_path=sheet.output_log_path, sheet_id=sheet.id)
