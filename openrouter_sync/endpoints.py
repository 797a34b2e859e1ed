"""Small typed records for ``/models``, ``/key`` and ``/generation``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional


def _number(value: Any) -> Optional[float]:
    """Prices and amounts arrive as strings or numbers; None when absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> Optional[int]:
    number = _number(value)
    return None if number is None else int(number)


@dataclass(frozen=True)
class ModelInfo:
    """One model: prices in USD per token, as numbers."""

    id: str
    name: str = ""
    context_length: Optional[int] = None
    prompt_price: Optional[float] = None
    completion_price: Optional[float] = None
    supported_parameters: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_free(self) -> bool:
        return self.id.endswith(":free") or (self.prompt_price == 0 and self.completion_price == 0)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> ModelInfo:
        pricing: Mapping[str, Any] = item["pricing"] if isinstance(item.get("pricing"), dict) else {}
        params = item.get("supported_parameters") or ()
        return cls(id=str(item.get("id", "")), name=str(item.get("name") or ""),
                   context_length=_int(item.get("context_length")), prompt_price=_number(pricing.get("prompt")),
                   completion_price=_number(pricing.get("completion")),
                   supported_parameters=tuple(str(p) for p in params), raw=item)


@dataclass(frozen=True)
class KeyInfo:
    """The key's limits and usage (USD credits). ``limit`` None means unlimited."""

    label: str = ""
    limit: Optional[float] = None
    limit_remaining: Optional[float] = None
    usage: Optional[float] = None
    usage_daily: Optional[float] = None
    is_free_tier: Optional[bool] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> KeyInfo:
        free = data.get("is_free_tier")
        return cls(label=str(data.get("label") or ""), limit=_number(data.get("limit")),
                   limit_remaining=_number(data.get("limit_remaining")), usage=_number(data.get("usage")),
                   usage_daily=_number(data.get("usage_daily")),
                   is_free_tier=free if isinstance(free, bool) else None, raw=data)


@dataclass(frozen=True)
class GenerationInfo:
    """What one generation cost and took (times in milliseconds, as the API gives them)."""

    id: str
    model: Optional[str] = None
    provider: Optional[str] = None
    total_cost: Optional[float] = None
    tokens_prompt: Optional[int] = None
    tokens_completion: Optional[int] = None
    native_tokens_prompt: Optional[int] = None
    native_tokens_completion: Optional[int] = None
    latency_ms: Optional[float] = None
    generation_time_ms: Optional[float] = None
    finish_reason: Optional[str] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> GenerationInfo:
        return cls(id=str(data.get("id", "")), model=data.get("model"), provider=data.get("provider_name"),
                   total_cost=_number(data.get("total_cost")), tokens_prompt=_int(data.get("tokens_prompt")),
                   tokens_completion=_int(data.get("tokens_completion")),
                   native_tokens_prompt=_int(data.get("native_tokens_prompt")),
                   native_tokens_completion=_int(data.get("native_tokens_completion")),
                   latency_ms=_number(data.get("latency")), generation_time_ms=_number(data.get("generation_time")),
                   finish_reason=data.get("finish_reason"), raw=data)
