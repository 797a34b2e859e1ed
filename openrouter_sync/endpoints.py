"""The other endpoints: ``/models``, ``/key`` and ``/generation`` as functions over a transport,
with small typed records for their answers."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ._log import logger
from .classify import MAX_COUNT, Outcome, classify_response, loads, network_outcome
from .deadline import Deadline
from .error_types import ErrorType
from .errors import ConfigurationError, OpenRouterError, error_for
from .result import ExecutionResult, utc_now
from .transport import Transport, TransportError

GET_TIMEOUT = 30.0


def _number(value: Any) -> Optional[float]:
    """Prices and amounts arrive as strings or numbers; None when absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> Optional[int]:
    """A count (tokens, a context length): None when absent, not a number, or out of any real range."""
    number = _number(value)
    return None if number is None or not 0 <= number <= MAX_COUNT else int(number)


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


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
        """True for a ``:free`` model id, or when both prices are 0."""
        return self.id.endswith(":free") or (self.prompt_price == 0 and self.completion_price == 0)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> ModelInfo:
        """One entry of ``GET /models``' ``data``; prices given as strings become floats, odd values None."""
        pricing: Mapping[str, Any] = item["pricing"] if isinstance(item.get("pricing"), dict) else {}
        params = item.get("supported_parameters")
        params = params if isinstance(params, list) else ()
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
        """The ``data`` object of ``GET /key``; values of the wrong type become None."""
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
        """The ``data`` object of ``GET /generation``; values of the wrong type become None."""
        return cls(id=str(data.get("id", "")), model=_text(data.get("model")),
                   provider=_text(data.get("provider_name")),
                   total_cost=_number(data.get("total_cost")), tokens_prompt=_int(data.get("tokens_prompt")),
                   tokens_completion=_int(data.get("tokens_completion")),
                   native_tokens_prompt=_int(data.get("native_tokens_prompt")),
                   native_tokens_completion=_int(data.get("native_tokens_completion")),
                   latency_ms=_number(data.get("latency")), generation_time_ms=_number(data.get("generation_time")),
                   finish_reason=_text(data.get("finish_reason")), raw=data)


def get_data(transport: Transport, path: str, *, key: Optional[str], timeout: float,
             params: Optional[Mapping[str, str]] = None) -> Any:
    """``GET path`` and return the answer's ``data``; raises an ``OpenRouterError`` when the call fails."""
    started_at, start = utc_now(), time.monotonic()
    timeout = min(GET_TIMEOUT, timeout)
    try:
        response, content = transport.request("GET", path, Deadline.after(timeout), key=key, params=params)
    except TransportError as exc:
        prefix = {ErrorType.TIMEOUT: f"Timeout after {timeout:g}s: ", ErrorType.CONNECTION: "Connection error: "}
        outcome = network_outcome(exc.error_type, prefix.get(exc.error_type, "") + str(exc), sent=exc.sent)
    else:
        if response.status == 200:
            try:
                body = loads(content)
            except (ValueError, RecursionError):
                body = None
            if isinstance(body, dict):
                return body.get("data")
            outcome = Outcome(ErrorType.INVALID_RESPONSE, 502, f"GET {path}: the answer is not the expected JSON", 200)
        else:
            outcome = classify_response(response.status, response.headers, content)
    result = outcome.to_result(requested_model="", duration=time.monotonic() - start, started_at=started_at)
    result.model = None
    raise error_for(result)


def _require(key: Optional[str], why: str) -> str:
    if key is None:
        raise ConfigurationError(ExecutionResult(False, "", why, 0.0, exit_code=1, error_type=ErrorType.CONFIGURATION,
                                                 error_message=why))
    return key


def list_models(transport: Transport, key: Optional[str], *, timeout: float, free: bool = False) -> list[ModelInfo]:
    """The models ``GET /models`` lists (``free=True``: only those that cost nothing)."""
    data = get_data(transport, "/models", key=key, timeout=timeout)
    models = [ModelInfo.from_api(item) for item in data or [] if isinstance(item, dict)] \
        if isinstance(data, list) else []
    return [m for m in models if m.is_free] if free else models


def key_info(transport: Transport, key: Optional[str], why: str, *, timeout: float) -> KeyInfo:
    """Limits and usage of the key (``GET /key``)."""
    data = get_data(transport, "/key", key=_require(key, why), timeout=timeout)
    return KeyInfo.from_api(data if isinstance(data, dict) else {})


def generation(transport: Transport, key: Optional[str], why: str, generation_id: str, *,
               timeout: float) -> GenerationInfo:
    """Stats of one generation (``GET /generation?id=``); may 404 for a short while after the request."""
    if not isinstance(generation_id, str) or not generation_id:
        raise ValueError("generation_id must be a non-empty string")
    data = get_data(transport, "/generation", key=_require(key, why), timeout=timeout, params={"id": generation_id})
    return GenerationInfo.from_api(data if isinstance(data, dict) else {})


def health_check(transport: Transport, key: Optional[str], *, timeout: float) -> bool:
    """True when ``GET /models`` with the key answers 200; False without a key or on any failure."""
    if key is None:
        logger.warning("health check failed: no usable API key")
        return False
    try:
        get_data(transport, "/models", key=key, timeout=min(10.0, timeout))
    except OpenRouterError as exc:
        logger.warning("health check failed: %s", exc)
        return False
    return True
