"""What one call sends: the resolved settings (``CallSpec``), the messages and the JSON body."""

from __future__ import annotations

import difflib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from ._log import register_secret

#: The documented request fields of ``/chat/completions`` (OpenRouter's and OpenAI's), passed
#: through as given (per call, per sheet, per override). A name not listed is sent too, with an
#: ``UnknownOptionWarning`` (an error with ``strict_options=True``); one within a typo of a listed
#: name is an error (``temprature=``), since sending it would silently drop the setting meant.
REQUEST_OPTIONS = frozenset({
    # OpenRouter
    "models", "provider", "reasoning", "plugins", "transforms", "route", "usage", "top_k", "repetition_penalty",
    "min_p", "top_a", "include_reasoning", "structured_outputs", "image_config", "session_id", "debug",
    "cache_control", "verbosity", "prediction",
    # OpenAI's chat completions
    "response_format", "stop", "top_p", "seed", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs",
    "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "user", "stream_options",
    "max_completion_tokens", "n", "modalities", "audio", "metadata", "service_tier", "store", "web_search_options",
    "reasoning_effort", "prompt_cache_key", "safety_identifier", "functions", "function_call",
})
#: Body fields the library itself writes: not options (``messages=``, ``stream()``).
RESERVED = frozenset({"messages", "prompt", "stream"})
MAX_TIMEOUT = 1_000_000.0  # seconds (11.5 days): anything longer is a mistake, and overflows socket timeouts
#: Keys an override dict may hold: the three of the reference, the request options, and the escape hatches.
OVERRIDE_KEYS = frozenset({"model", "temperature", "max_tokens"}) | REQUEST_OPTIONS | {"extra_body", "extra_headers"}
#: Header names whose values are credentials: registered for redaction wherever they are given.
SECRET_HEADER = re.compile(r"authorization|key|token|secret|password|cookie|session", re.IGNORECASE)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class UnknownOptionWarning(UserWarning):
    """A request option this library does not know was sent as given (``strict_options=True``: an error)."""


#: One encoder for every body (``json.dumps`` with non-default arguments builds a new one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def request_headers(app_url: Optional[str], app_title: Optional[str],
                    extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The headers every request carries (the key's ``Authorization`` is added per request):
    the attribution headers when ``app_url`` / ``app_title`` are given, then ``extra`` (which
    may replace any of them)."""
    from ._version import __version__

    # Nothing more: copied, checked and sent, each header costs about 27,000 CPU instructions a
    # request (no ``Accept``: a plain call gets JSON anyway; a streamed one asks for ``text/event-stream``).
    headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate"}
    if app_url:
        headers["HTTP-Referer"] = app_url
    if app_title:
        headers["X-Title"] = headers["X-OpenRouter-Title"] = app_title
    headers["User-Agent"] = f"openrouter-sync/{__version__}"
    if extra:
        headers.update(extra)
    return headers


def is_openrouter_url(url: str) -> bool:
    """Whether ``url`` is OpenRouter's endpoint: its host is ``openrouter.ai`` (or a subdomain), or its
    path ends in ``/api/v1``, OpenRouter's layout (its look-alikes, proxies and this library's fake
    server keep it; vLLM, Ollama, LiteLLM and OpenAI serve ``/v1``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return host == "openrouter.ai" or host.endswith(".openrouter.ai") or parts.path.rstrip("/").endswith("/api/v1")


def check_headers(headers: Any, what: str = "default_headers",
                  hide: Callable[[str], None] = register_secret) -> dict[str, str]:
    """A dict of valid header names to string values; the values of credential headers
    (``Authorization``, ``api-key``, ``X-Api-Key``, ...) are given to ``hide`` (by default held
    for redaction for good; a backend passes its key's holder, released when it closes)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(f"{what} must be a dict of header names to strings, got {type(headers).__name__}")
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{what}: {name!r:.60} is not a valid header name")
        if not isinstance(value, str):
            raise ValueError(f"{what}[{name!r}] must be a string, got {type(value).__name__}")
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise ValueError(f"{what}[{name!r}] contains a line break or another control character")
        if SECRET_HEADER.search(name):
            hide(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                hide(token)
        out[name] = value
    return out


def check_model(model: Any) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must be a non-empty string")
    return model


def check_max_tokens(value: Any, name: str = "max_tokens") -> Optional[int]:
    """None (the field is left out of the body), or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
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


def check_temperature(value: Any) -> Optional[float]:
    """None (the field is left out of the body: the server's default), or a number from 0 to 2."""
    if value is None:
        return None
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


def check_options(options: Mapping[str, Any], allowed: frozenset[str] = REQUEST_OPTIONS, what: str = "option",
                  strict: bool = False) -> None:
    """Refuse a name the library writes itself, or one a typo away from a known name (a
    ``ValueError`` suggesting it); warn of any other unknown name (``strict``: refuse it)."""
    if not options or not options.keys() - allowed:
        return
    for name in sorted(options.keys() - allowed, key=str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} names must be non-empty strings, got {name!r}")
        if name in RESERVED:
            raise ValueError(f"{name!r} is not an {what}: the library sets it (use messages=... or stream())")
        if name in OVERRIDE_KEYS:  # e.g. max_tokens in default_options: a setting of its own
            raise ValueError(f"{name!r} is not an {what} here: pass {name}=... itself")
        close = difflib.get_close_matches(name, allowed | OVERRIDE_KEYS, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"unknown {what} {name!r}: did you mean {close[0]!r}? (to send {name!r} as it is, "
                             f"pass extra_body={{{name!r}: ...}})")
        if strict:
            raise ValueError(f"unknown {what} {name!r} (strict_options=True); known: {', '.join(sorted(allowed))} "
                             "(pass anything else in extra_body={...})")
        warnings.warn(f"unknown {what} {name!r}: sent as given; a server that does not know it may ignore it or "
                      "answer 400 (strict_options=True makes this an error)", UnknownOptionWarning, stacklevel=5)


def check_settings(*, model: Any, api_key_env: Any, max_tokens: Any, temperature: Any, timeout_seconds: Any,
                   connect_timeout: Any, pool_size: Any, requests_per_minute: Any, max_response_bytes: Any,
                   default_options: Mapping[str, Any], strict: bool = False) -> None:
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
    check_options(default_options, REQUEST_OPTIONS | {"extra_body", "extra_headers"}, strict=strict)


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
    temperature: Optional[float]  # None: left out of the body
    max_tokens: Optional[int]  # None: left out (also when ``max_completion_tokens`` is set)
    timeout: float
    messages: tuple[dict[str, Any], ...]
    options: Mapping[str, Any]
    output_log_path: Optional[Path] = None
    sheet_id: Optional[str] = None
    headers: Optional[Mapping[str, str]] = None  # extra_headers: sent with this call only

    @property
    def stdout_log(self) -> Optional[Path]:
        """``<output_log_path>.stdout.log``, or None without an output log path."""
        return None if self.output_log_path is None else self.output_log_path.with_suffix(".stdout.log")

    @property
    def stderr_log(self) -> Optional[Path]:
        """``<output_log_path>.stderr.log``, or None without an output log path."""
        return None if self.output_log_path is None else self.output_log_path.with_suffix(".stderr.log")

    def payload(self, stream: bool = False) -> dict[str, Any]:
        """The request body as a dict: model, messages, max_tokens, temperature (each left out when None,
        max_tokens also when max_completion_tokens is set), the options that are not None, then
        ``extra_body`` merged over all of it; a stream also asks for its usage chunk."""
        body: dict[str, Any] = {"model": self.model, "messages": list(self.messages)}
        if self.max_tokens is not None and self.options.get("max_completion_tokens") is None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
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
    temperature: Optional[float]
    max_tokens: Optional[int]
    timeout: float
    options: Mapping[str, Any]
    strict: bool = False  # an unknown request option is an error, not a warning


def resolve(defaults: Defaults, overrides: Mapping[str, Any], messages: tuple[dict[str, Any], ...], *,
            timeout: Optional[float] = None, output_log_path: Optional[Path] = None,
            sheet_id: Optional[str] = None, what: str = "override") -> CallSpec:
    """The call: ``defaults``, then ``overrides`` (``model``, ``temperature``, ``max_tokens``, request
    options, ``extra_body``, ``extra_headers``), each checked (``what`` names them in errors)."""
    if overrides:
        check_options(overrides, OVERRIDE_KEYS, what, defaults.strict)
    model = check_model(overrides.get("model", defaults.model))
    temperature = check_temperature(overrides.get("temperature", defaults.temperature))
    max_tokens = check_max_tokens(overrides.get("max_tokens", defaults.max_tokens))
    options = dict(defaults.options)
    for key, value in overrides.items():
        if key not in ("model", "temperature", "max_tokens"):
            options[key] = value
    headers = None
    if "extra_headers" in options:  # headers, not body fields (nor settings a checkpoint records)
        headers = check_headers(options.pop("extra_headers"), "extra_headers") or None
    if options.get("max_completion_tokens") is not None:
        check_max_tokens(options["max_completion_tokens"], "max_completion_tokens")
    if options:
        bad = sorted(k for k, v in options.items() if not _json_safe(v))
        if bad:
            raise ValueError(f"request options must be valid JSON (no NaN, infinity or objects JSON cannot hold): "
                             f"{', '.join(bad)}")
    timeout = defaults.timeout if timeout is None else check_timeout(timeout)
    return CallSpec(model, temperature, max_tokens, timeout, messages, options, output_log_path, sheet_id, headers)


def sheet_messages(sheet: Any) -> tuple[dict[str, Any], ...]:
    """A ``Sheet``'s messages (its prompt, preamble, extensions, system and messages), checked."""
    return build_messages(sheet.prompt, preamble=sheet.preamble, extensions=sheet.extensions,
                          system=sheet.system, messages=sheet.messages)


def spec_for_sheet(defaults: Defaults, sheet: Any) -> CallSpec:
    """The call for a ``Sheet``: everything per-sheet comes from the sheet."""
    return resolve(defaults, sheet.overrides or {}, sheet_messages(sheet), timeout=sheet.timeout_seconds,
                   output_log_path=sheet.output_log_path, sheet_id=sheet.id)


def check_sheet_content(sheet: Any) -> None:
    """Raise as ``spec_for_sheet`` would for what is the sheet's own, whatever the defaults and
    overrides: its messages and its timeout (the rest of a call depends only on those two)."""
    sheet_messages(sheet)
    if sheet.timeout_seconds is not None:
        check_timeout(sheet.timeout_seconds)
