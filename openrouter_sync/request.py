"""What one call sends: the resolved settings (``CallSpec``), the messages and the JSON body."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

#: Request fields passed through to ``/chat/completions`` as given (per call, per sheet, per override).
REQUEST_OPTIONS = frozenset({
    "models", "provider", "response_format", "reasoning", "stop", "top_p", "top_k", "seed",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_p", "top_a", "logit_bias",
    "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "plugins",
    "transforms", "user", "route", "verbosity", "usage", "prediction",
})
#: Keys an override dict may hold: the three of the reference, the request options, and the escape hatch.
OVERRIDE_KEYS = frozenset({"model", "temperature", "max_tokens"}) | REQUEST_OPTIONS | {"extra_body"}


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
    return float(value)


def check_options(options: Mapping[str, Any], allowed: frozenset[str] = REQUEST_OPTIONS, what: str = "option") -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(allowed))} "
            "(pass anything else in extra_body={...})"
        )


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
        return None if self.output_log_path is None else self.output_log_path.with_suffix(".stdout.log")

    @property
    def stderr_log(self) -> Optional[Path]:
        return None if self.output_log_path is None else self.output_log_path.with_suffix(".stderr.log")

    def payload(self, stream: bool = False) -> dict[str, Any]:
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
        if extra:
            body.update(extra)
        return body

    def body(self, stream: bool = False) -> bytes:
        return json.dumps(self.payload(stream), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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
