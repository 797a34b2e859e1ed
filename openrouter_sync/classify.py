"""Turn an HTTP answer (or a network failure) into an ``Outcome``: the one place that decides what happened."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Optional

from . import errors as E
from ._log import redact
from .result import ExecutionResult
from .waits import wait_from_body, wait_from_headers

_MAX_DETAIL = 300


@dataclass(frozen=True)
class Outcome:
    """One attempt's verdict. ``error_type`` is None for a usable answer."""

    error_type: Optional[str]
    exit_code: int
    message: str = ""
    status: Optional[int] = None
    data: Optional[dict[str, Any]] = None
    retry_after: Optional[float] = None
    retry_source: Optional[str] = None
    generation_id: Optional[str] = None
    partial_text: str = ""

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def rate_limited(self) -> bool:
        return self.error_type == E.RATE_LIMIT

    def to_result(
        self,
        *,
        requested_model: str,
        duration: float,
        started_at: datetime,
        attempts: int = 1,
        waited: float = 0.0,
    ) -> ExecutionResult:
        """Build the ``ExecutionResult`` for this outcome."""
        if self.error_type is None and self.data is not None:
            return completion_result(
                self.data, requested_model, duration, started_at, attempts, waited, self.generation_id
            )
        message = redact(self.message)
        result = ExecutionResult(
            success=False,
            stdout=self.partial_text,
            stderr=message,
            duration_seconds=duration,
            exit_code=self.exit_code,
            exit_reason="timeout" if self.error_type == E.TIMEOUT else "completed",
            started_at=started_at,
            rate_limited=self.rate_limited,
            rate_limit_wait_seconds=self.retry_after if self.rate_limited else None,
            error_type=self.error_type,
            error_message=message,
            model=requested_model,
            attempts=attempts,
            retry_wait_seconds=waited,
            status_code=self.status,
            generation_id=self.generation_id,
        )
        if self.data is not None:  # a 200 that failed: keep what usage it reported
            _apply_usage(result, self.data)
            result.model = self.data.get("model") or requested_model
        return result


def _as_int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _apply_usage(result: ExecutionResult, data: Mapping[str, Any]) -> None:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return
    prompt = _as_int(usage.get("prompt_tokens"))
    completion = _as_int(usage.get("completion_tokens"))
    result.input_tokens = prompt
    result.output_tokens = completion
    if prompt is not None and completion is not None:
        result.tokens_used = prompt + completion
    else:
        result.tokens_used = _as_int(usage.get("total_tokens"))
    cost = usage.get("cost")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        result.cost = float(cost)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        result.cached_tokens = _as_int(details.get("cached_tokens"))
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict):
        result.reasoning_tokens = _as_int(details.get("reasoning_tokens"))


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, None, or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def completion_result(
    data: Mapping[str, Any],
    requested_model: str,
    duration: float,
    started_at: datetime,
    attempts: int = 1,
    waited: float = 0.0,
    generation_id: Optional[str] = None,
) -> ExecutionResult:
    """The successful result of a completion body already known to be usable."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    reasoning = message.get("reasoning")
    result = ExecutionResult(
        success=True,
        stdout=message_text(message.get("content")),
        stderr="",
        duration_seconds=duration,
        exit_code=0,
        started_at=started_at,
        model=data.get("model") or requested_model,
        attempts=attempts,
        retry_wait_seconds=waited,
        finish_reason=choice.get("finish_reason"),
        generation_id=data.get("id") or generation_id,
        provider=data.get("provider"),
        reasoning=reasoning if isinstance(reasoning, str) else None,
        status_code=200,
    )
    _apply_usage(result, data)
    return result


def _error_detail(data: Any) -> tuple[str, Any]:
    """The server's own message from an error body, and its ``error`` object."""
    if not isinstance(data, dict):
        return "", None
    error = data.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        metadata: dict[str, Any] = error["metadata"] if isinstance(error.get("metadata"), dict) else {}
        extras = []
        reasons = metadata.get("reasons")
        if reasons:
            extras.append("reasons: " + ", ".join(map(str, reasons)) if isinstance(reasons, list) else str(reasons))
        flagged = metadata.get("flagged_input")
        if flagged:
            extras.append(f"flagged input: {str(flagged)[:_MAX_DETAIL]!r}")
        provider = metadata.get("provider_name")
        raw = metadata.get("raw")
        if raw:
            label = f"provider {provider}" if provider else "provider"
            extras.append(f"{label}: {str(raw)[:_MAX_DETAIL]}")
        elif provider:
            extras.append(f"provider {provider}")
        if extras:
            message = f"{message} ({'; '.join(extras)})" if message else "; ".join(extras)
        return message, error
    if isinstance(error, str):
        return error, error
    text = data.get("message")
    return (text, None) if isinstance(text, str) else ("", None)


def _decode(content: bytes) -> tuple[Any, Optional[str]]:
    """Parse JSON; on failure say whether it looks truncated or simply is not JSON."""
    try:
        return json.loads(content), None
    except (UnicodeDecodeError, ValueError) as exc:
        text = content.decode("utf-8", "replace").strip()
        if not text:
            return None, E.INVALID_RESPONSE
        looks_json = text[:1] in "{["
        at_end = isinstance(exc, json.JSONDecodeError) and (
            exc.pos >= len(text) - 1 or exc.msg.startswith("Unterminated string")
        )
        return None, E.TRUNCATED_RESPONSE if looks_json and at_end else E.INVALID_RESPONSE


def _snippet(content: bytes) -> str:
    text = content.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:120] + ("..." if len(text) > 120 else "")


def classify_response(status: int, headers: Mapping[str, str], content: bytes) -> Outcome:
    """Decide what an HTTP answer means."""
    generation_id = headers.get("X-Generation-Id")
    if status == 200:
        return _classify_ok(headers, content, generation_id)
    data, _ = _decode(content)
    detail, _error = _error_detail(data)
    error_type = E.error_type_for_status(status)
    wait = wait_from_headers(headers) or wait_from_body(data)
    if not detail:
        detail = _snippet(content) or "no details"
    return Outcome(
        error_type=error_type,
        exit_code=status,
        message=f"HTTP {status} ({error_type}): {detail}",
        status=status,
        retry_after=wait[0] if wait else None,
        retry_source=wait[1] if wait else None,
        generation_id=generation_id,
    )


def _classify_ok(headers: Mapping[str, str], content: bytes, generation_id: Optional[str]) -> Outcome:
    data, problem = _decode(content)
    if problem is not None:
        what = "was cut off" if problem == E.TRUNCATED_RESPONSE else "is not JSON"
        return Outcome(
            error_type=problem,
            exit_code=502,
            message=f"HTTP 200 but the body {what} ({len(content)} bytes): {_snippet(content)}",
            status=200,
            generation_id=generation_id,
        )
    if not isinstance(data, dict):
        return Outcome(E.INVALID_RESPONSE, 502, f"HTTP 200 but the body is not an object: {_snippet(content)}", 200)
    choices = data.get("choices")
    error = data.get("error")
    if error and not choices:
        return _provider_error(error, data, "", generation_id, headers)
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return Outcome(
            E.INVALID_RESPONSE, 502, f"HTTP 200 but no choices in the answer: {_snippet(content)}", 200,
            generation_id=generation_id,
        )
    choice = choices[0]
    if choice.get("finish_reason") == "error" or choice.get("error"):
        message = choice.get("message") or {}
        partial = message_text(message.get("content")) if isinstance(message, dict) else ""
        return _provider_error(choice.get("error") or error or {}, data, partial, generation_id, headers)
    return Outcome(None, 0, status=200, data=data, generation_id=generation_id)


def error_code(error: Any) -> tuple[Any, int]:
    """An error object's ``code`` (an int, a numeric string made int, or a name) and the exit code
    it gives a failed result: the code when it is an HTTP error status, else 502."""
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    return code, code if isinstance(code, int) and 400 <= code <= 599 else 502


def _provider_error(
    error: Any, data: dict[str, Any], partial: str, generation_id: Optional[str], headers: Mapping[str, str]
) -> Outcome:
    detail, _ = _error_detail({"error": error})
    code, exit_code = error_code(error)
    wait = wait_from_headers(headers) or wait_from_body({"error": error})
    return Outcome(
        error_type=E.PROVIDER_ERROR,
        exit_code=exit_code,
        message=f"HTTP 200 carrying an error (code {code if code is not None else 'none'}): {detail or 'no details'}",
        status=200,
        data=data,
        retry_after=wait[0] if wait else None,
        retry_source=wait[1] if wait else None,
        generation_id=generation_id,
        partial_text=partial,
    )


def transport_outcome(error_type: str, reason: str, timeout: float) -> Outcome:
    """The outcome of a ``TransportError``, its message in the contract's words."""
    prefix = {E.TIMEOUT: f"Timeout after {timeout:g}s: ", E.CONNECTION: "Connection error: "}
    return network_outcome(error_type, prefix.get(error_type, "") + reason)


def network_outcome(error_type: str, message: str) -> Outcome:
    """The outcome of an attempt that got no complete HTTP answer."""
    if error_type == E.TIMEOUT:
        return Outcome(E.TIMEOUT, 408, message)
    if error_type == E.TRUNCATED_RESPONSE:
        return Outcome(E.TRUNCATED_RESPONSE, 502, message)
    return Outcome(E.CONNECTION, 503, message)
