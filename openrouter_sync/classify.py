"""Turn an HTTP answer (or a network failure) into an ``Outcome``: the one place that decides what happened.

Every function here is total: whatever bytes, headers or JSON shapes a server sends, the
result is an ``Outcome`` with an ``ErrorType``, never an exception.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Optional, Union

from ._log import REDACTED, may_hold_secret, redact, redact_data
from .error_types import ErrorType, error_type_for_status
from .result import ExecutionResult
from .waits import wait_from_body, wait_from_headers, wait_from_text

MAX_MESSAGE = 2000  # characters of a server's error text kept in a result
_SNIPPET = 300
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
#: Network failures after which the server may have done (and billed) the work.
UNANSWERED = frozenset({ErrorType.TIMEOUT, ErrorType.CONNECTION, ErrorType.TRUNCATED_RESPONSE})


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (legal in JSON, unencodable in UTF-8) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """A server's text for a result: redacted (echoed fragments of a key too) before it is cut, so
    no part of a key survives at the cut; at most ``limit`` characters."""
    text = redact(clean_text(text[:2 * limit]), fragments=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class Outcome:
    """One attempt's verdict. ``error_type`` is None for a usable answer.

    ``sent`` says whether the whole request reached the server; ``scope`` names what a 429
    limits (None: the whole key, ``"model"``: the requested model, ``"free"``: the free-model
    quota); ``reader`` is the open event stream of a streamed answer that has begun; ``body``,
    ``content`` and ``headers`` are the answer's parsed body, bytes and headers (for ``raw`` and
    ``response_headers``, built only for the outcome that becomes the result).
    """

    error_type: Optional[ErrorType]
    exit_code: int
    message: str = ""
    status: Optional[int] = None
    data: Optional[dict[str, Any]] = None
    retry_after: Optional[float] = None
    retry_source: Optional[str] = None
    generation_id: Optional[str] = None
    partial_text: str = ""
    sent: bool = True
    scope: Optional[str] = None
    reader: Any = field(default=None, compare=False, repr=False)
    completion: Optional[Completion] = field(default=None, compare=False, repr=False)
    body: Optional[dict[str, Any]] = field(default=None, compare=False, repr=False)  # the parsed body, any status
    content: Optional[bytes] = field(default=None, compare=False, repr=False)  # the bytes ``body`` came from
    headers: Optional[Mapping[str, str]] = field(default=None, compare=False, repr=False)
    final: bool = False  # no further attempt, whatever the type (e.g. the call's read timeouts are used up)

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def rate_limited(self) -> bool:
        return self.error_type == ErrorType.RATE_LIMIT

    @property
    def unanswered(self) -> bool:
        """The request was sent but no complete answer came: the server may have billed it."""
        return self.sent and self.error_type in UNANSWERED

    def to_result(self, *, requested_model: str, duration: float, started_at: datetime, attempts: int = 1,
                  waited: float = 0.0, unanswered: int = 0) -> ExecutionResult:
        """The ``ExecutionResult`` for this outcome."""
        if self.error_type is None and self.data is not None:
            completion = self.completion or parse_completion(self.data)
            if completion is not None:
                result = completion.to_result(requested_model, duration, started_at, self.generation_id)
                result.attempts, result.retry_wait_seconds = attempts, waited
                result.unanswered_attempts = unanswered
                self._attach(result)
                return result
        message = self.message
        result = ExecutionResult(
            success=False, stdout=self.partial_text, stderr=message, duration_seconds=duration,
            exit_code=self.exit_code, exit_reason=_EXIT_REASONS.get(self.error_type, "completed"),
            started_at=started_at, rate_limited=self.rate_limited,
            rate_limit_wait_seconds=self.retry_after if self.rate_limited else None,
            error_type=self.error_type or ErrorType.INVALID_RESPONSE, error_message=message, model=requested_model,
            attempts=attempts, retry_wait_seconds=waited, status_code=self.status,
            generation_id=meta_str(self.generation_id), unanswered_attempts=unanswered,
        )
        if self.data is not None:  # a 200 that failed: keep what it says of usage and model
            apply_usage(result, self.data)
            result.model = meta_str(self.data.get("model")) or requested_model
            choice = _first_choice(self.data)
            result.finish_reason = meta_str(choice.get("finish_reason"))
            said = choice.get("message")
            apply_message(result, self.data, choice, said if isinstance(said, dict) else {})
        self._attach(result)
        return result

    def _attach(self, result: ExecutionResult) -> None:
        """Set ``raw`` (redacted: a copy only where a secret may be) and ``response_headers``."""
        body = self.body if self.body is not None else self.data
        if body is not None:
            content = self.content
            if not result.success:  # a server's error text may echo pieces of the key, as error_message does
                # (searched for in bodies up to 64 KiB: the fragment search is slow on a huge hostile one)
                size = len(content if content is not None else self.partial_text)
                result.raw = redact_data(body, fragments=size <= 65536)
            elif content is not None and not may_hold_secret(content.decode("utf-8", "replace")):
                result.raw = body  # one quick test of the bytes spares walking the body (the common case)
            else:
                result.raw = redact_data(body)
            if result.choices is not None and result.raw is not body:
                raw_choices = result.raw.get("choices")
                result.choices = raw_choices if isinstance(raw_choices, list) else None
        if self.headers is not None:
            result.response_headers = public_headers(self.headers)


#: exit_reason of a failed result ("killed" for a cancelled call, as run_sheets' cancelled sheets say)
_EXIT_REASONS: dict[Optional[ErrorType], str] = {ErrorType.TIMEOUT: "timeout", ErrorType.CANCELLED: "killed"}


#: The largest token count a server's answer may give (no real answer comes near: a trillion).
MAX_COUNT = 10**12
#: The largest cost in USD an answer may report (anything above is no real price).
MAX_COST = 1e6


def _as_int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(result: ExecutionResult, usage: Mapping[str, Any], name: str, where: str = "usage") -> Optional[int]:
    """``usage[name]`` as a token count: an integer from 0 to ``MAX_COUNT``. Any other number (a
    4,300-digit one would make every repr, record and summary fail) is dropped, and the result's
    ``warnings`` say so."""
    raw = usage.get(name)
    if isinstance(raw, float) and math.isinf(raw):  # an integer of more than 40 digits (see ``loads``)
        raw = MAX_COUNT + 1 if raw > 0 else -1
    value = _as_int(raw)
    if value is None or 0 <= value <= MAX_COUNT:
        return value
    result.warnings.append(f"{where}.{name} dropped: {'negative' if value < 0 else 'above any real count'}")
    return None


def _as_str(value: Any) -> Optional[str]:
    return clean_text(value) if isinstance(value, str) else None


def meta_str(value: Any) -> Optional[str]:
    """A short label a server sent (model, id, provider, ...): cleaned, at most 300 characters, any
    key in it redacted (a server may echo the key anywhere); None when it is not a string."""
    return redact(clean_text(value[:_SNIPPET])) if isinstance(value, str) else None


def apply_usage(result: ExecutionResult, data: Mapping[str, Any]) -> None:
    """Copy tokens and cost from a body's ``usage`` (whatever types it holds) onto a result."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return
    prompt = _count(result, usage, "prompt_tokens")
    completion = _count(result, usage, "completion_tokens")
    result.input_tokens = prompt
    result.output_tokens = completion
    result.tokens_used = prompt + completion if prompt is not None and completion is not None \
        else _count(result, usage, "total_tokens")
    cost = usage.get("cost")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        try:
            result.cost = float(cost) if math.isfinite(cost) and 0 <= cost <= MAX_COST else None
        except OverflowError:  # an integer too large for a float: no usable cost
            result.cost = None
        if result.cost is None:
            result.warnings.append(f"usage.cost dropped: not a number from 0 to {MAX_COST:g} (USD)")
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        result.cached_tokens = _count(result, details, "cached_tokens", "usage.prompt_tokens_details")
        result.cache_write_tokens = _count(result, details, "cache_write_tokens", "usage.prompt_tokens_details")
    cost_details = usage.get("cost_details")
    if isinstance(cost_details, dict):
        result.cost_details = cost_details
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict):
        result.reasoning_tokens = _count(result, details, "reasoning_tokens", "usage.completion_tokens_details")


def message_text(content: Any) -> Optional[str]:
    """The text of a message's ``content``: a string, None (""), or a list of parts, whose text
    parts are joined (other parts, such as images or ``thinking``, are skipped: ``raw`` keeps them).
    None only for a content of another type."""
    if content is None:
        return ""
    if isinstance(content, str):
        return clean_text(content)
    if isinstance(content, list):
        return clean_text("".join(part_texts(content, TEXT_PARTS)))
    return None


#: Part types whose ``text`` is answer text (None: a part without a type); reasoning part types.
TEXT_PARTS = frozenset({None, "text", "output_text"})
REASONING_PARTS = frozenset({"thinking", "reasoning", "reasoning_text"})


def part_texts(parts: list[Any], kinds: frozenset[Optional[str]]) -> list[str]:
    texts = []
    for part in parts:
        if isinstance(part, str):
            if None in kinds:
                texts.append(part)
        elif isinstance(part, dict) and part.get("type") in kinds:
            text = part.get("text")
            if not isinstance(text, str):
                text = part.get("thinking") if part.get("type") == "thinking" else None
            if isinstance(text, str):
                texts.append(text)
    return texts


def choice_text(choice: Any) -> str:
    """The answer text of one choice of a completion ("" when it has none)."""
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message_text(message.get("content")) if isinstance(message, dict) else None
    return text or ""


def tool_calls_of(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``message.tool_calls`` as the API returned them (entries that are not objects dropped); [] when none."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return []
    return [call for call in calls if isinstance(call, dict)]


def apply_message(result: ExecutionResult, data: Mapping[str, Any], choice: Mapping[str, Any],
                  message: Mapping[str, Any]) -> None:
    """Copy the first-class fields of a completion's first choice and message onto a result."""
    result.tool_calls = tool_calls_of(message)
    if message:
        refusal = message.get("refusal")
        result.refusal = clean_text(refusal) if isinstance(refusal, str) and refusal else None
        for name in ("images", "annotations", "reasoning_details"):
            value = message.get(name)
            if isinstance(value, list):
                setattr(result, name, value)
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        result.logprobs = logprobs
    result.native_finish_reason = meta_str(choice.get("native_finish_reason"))
    choices = data.get("choices")
    if isinstance(choices, list) and len(choices) > 1:
        result.choices = choices


def _first_choice(data: Mapping[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


@dataclass(frozen=True)
class Completion:
    """The parts of a well-formed completion body that a result needs."""

    data: Mapping[str, Any]
    text: str
    reasoning: Optional[str]
    finish_reason: Optional[str]
    choice: Mapping[str, Any] = field(default_factory=dict)
    message: Mapping[str, Any] = field(default_factory=dict)

    @property
    def refusal(self) -> Optional[str]:
        """The model's refusal (``message.refusal``), if it refused."""
        refusal = self.message.get("refusal")
        return refusal if isinstance(refusal, str) and refusal.strip() else None

    def to_result(self, requested_model: str, duration: float, started_at: datetime,
                  generation_id: Optional[str] = None) -> ExecutionResult:
        data = self.data
        result = ExecutionResult(
            success=True, stdout=self.text, stderr="", duration_seconds=duration, exit_code=0,
            started_at=started_at, model=meta_str(data.get("model")) or requested_model,
            finish_reason=self.finish_reason, generation_id=meta_str(data.get("id")) or meta_str(generation_id),
            provider=meta_str(data.get("provider")), reasoning=self.reasoning, status_code=200,
            system_fingerprint=meta_str(data.get("system_fingerprint")),
        )
        apply_usage(result, data)
        apply_message(result, data, self.choice, self.message)
        return result


def parse_completion(data: Mapping[str, Any], choice: Optional[Mapping[str, Any]] = None) -> Optional[Completion]:
    """A ``Completion`` when ``choices[0].message`` (``choice``, if already found) has the expected shape, else None."""
    if choice is None:
        choice = _first_choice(data)
    message = choice.get("message")
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    text = message_text(content)
    if text is None:
        return None
    reasoning = _as_str(message.get("reasoning"))
    if reasoning is None and isinstance(content, list):  # reasoning given as parts of the content
        reasoning = clean_text("".join(part_texts(content, REASONING_PARTS))) or None
    return Completion(data, text, reasoning, meta_str(choice.get("finish_reason")), choice, message)


#: Header names (lower case) whose values are never shown, and words that mark one as secret.
_SECRET_HEADER_WORDS = ("authorization", "cookie", "key", "token", "secret", "password", "session")


def public_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers as a plain dict, names in lower case (HTTP names are case-insensitive), with the
    values of secret-bearing ones (names with ``key``, ``token``, ``cookie``, ``authorization``, ...)
    and any secret inside other values redacted."""
    lower_items = getattr(headers, "lower_items", None)  # requests' CaseInsensitiveDict: the fast way
    out = dict(lower_items()) if lower_items is not None else {k.lower(): v for k, v in headers.items()}
    names = "\n".join(out)
    if not any(word in names for word in _SECRET_HEADER_WORDS) and not may_hold_secret("\n".join(out.values())):
        return out
    for name, value in out.items():
        out[name] = REDACTED if any(word in name for word in _SECRET_HEADER_WORDS) else redact(value, fragments=True)
    return out


def error_detail(data: Any) -> str:
    """The server's own message from an error body, with the metadata that explains it."""
    if not isinstance(data, dict):
        return ""
    error = data.get("error")
    if isinstance(error, str):
        return error
    if not isinstance(error, dict):
        text = data.get("message")
        return text if isinstance(text, str) else ""
    message = str(error.get("message") or "")
    metadata: dict[str, Any] = error["metadata"] if isinstance(error.get("metadata"), dict) else {}
    extras = []
    reasons = metadata.get("reasons")
    if reasons:
        extras.append("reasons: " + ", ".join(map(str, reasons)) if isinstance(reasons, list) else str(reasons))
    flagged = metadata.get("flagged_input")
    if flagged:
        extras.append(f"flagged input: {str(flagged)[:_SNIPPET]!r}")
    provider, raw = metadata.get("provider_name"), metadata.get("raw")
    if raw:
        extras.append(f"{f'provider {provider}' if provider else 'provider'}: {str(raw)[:_SNIPPET]}")
    elif provider:
        extras.append(f"provider {provider}")
    if extras:
        message = f"{message} ({'; '.join(extras)})" if message else "; ".join(extras)
    return message


def limit_scope(data: Any) -> Optional[str]:
    """What a 429 limits: ``"free"`` (the free-model quota), ``"model"`` (an upstream provider's
    limit on the requested model) or None (the whole key)."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    message = str(error.get("message") or "").lower()
    if "free-models-per" in message or "free model" in message:
        return "free"
    metadata = error.get("metadata")
    if isinstance(metadata, dict) and (metadata.get("provider_name") or metadata.get("raw")):
        return "model"
    return "model" if "provider returned error" in message or "upstream" in message else None


def _parse_int(text: str) -> Any:
    """An integer literal of a server's JSON; one longer than any real number is infinity (Python
    refuses to convert more than 4,300 digits, which would fail the whole answer)."""
    return int(text) if len(text) <= 40 else -math.inf if text.startswith("-") else math.inf


def loads(content: Union[bytes, str]) -> Any:
    """``json.loads`` for what a server sent: absurdly long integers do not fail the whole body."""
    return json.loads(content, parse_int=_parse_int)


def decode_json(content: bytes) -> tuple[Any, Optional[ErrorType]]:
    """Parse JSON; on failure say whether it looks truncated or simply is not JSON."""
    try:
        return loads(content), None
    except RecursionError:
        return None, ErrorType.INVALID_RESPONSE
    except (UnicodeDecodeError, ValueError) as exc:
        text = content.decode("utf-8", "replace").strip()
        if not text:
            return None, ErrorType.INVALID_RESPONSE
        at_end = isinstance(exc, json.JSONDecodeError) and (
            exc.pos >= len(text) - 1 or exc.msg.startswith("Unterminated string"))
        truncated = text[:1] in "{[" and at_end
        return None, ErrorType.TRUNCATED_RESPONSE if truncated else ErrorType.INVALID_RESPONSE


def snippet(content: bytes) -> str:
    """The start of a body, on one line, redacted, for an error message."""
    text = content[:4 * _SNIPPET].decode("utf-8", "replace").strip().replace("\n", " ")
    return bounded(text, _SNIPPET)


def classify_response(status: int, headers: Mapping[str, str], content: bytes) -> Outcome:
    """Decide what an HTTP answer means."""
    generation_id = headers.get("X-Generation-Id")
    if status == 200:
        return _classify_ok(headers, content, generation_id)
    data, _ = decode_json(content)
    error_type = error_type_for_status(status)
    detail = error_detail(data)
    wait = wait_from_headers(headers) or wait_from_body(data)
    if data is None and wait is None and status == 429:
        seconds = wait_from_text(content[:4096].decode("utf-8", "replace"))  # a plain-text 429 body
        wait = (seconds, "body-text") if seconds is not None else None
    if error_type == ErrorType.REDIRECT:
        detail = f"redirect to {headers.get('Location') or 'nowhere'} not followed; {detail or snippet(content)}"
    message = bounded(f"HTTP {status} ({error_type}): {detail or snippet(content) or 'no details'}")
    return Outcome(error_type, status, message, status, retry_after=wait[0] if wait else None,
                   retry_source=wait[1] if wait else None, generation_id=generation_id,
                   scope=limit_scope(data) if status == 429 else None,
                   body=data if isinstance(data, dict) else None, content=content, headers=headers)


def _classify_ok(headers: Mapping[str, str], content: bytes, generation_id: Optional[str]) -> Outcome:
    data, problem = decode_json(content)
    if problem is not None:
        what = "was cut off" if problem == ErrorType.TRUNCATED_RESPONSE else "is not JSON"
        message = f"HTTP 200 but the body {what} ({len(content)} bytes): {snippet(content)}"
        return Outcome(problem, 502, message, 200, generation_id=generation_id, headers=headers)
    if not isinstance(data, dict):
        return Outcome(ErrorType.INVALID_RESPONSE, 502, f"HTTP 200 but the body is not an object: {snippet(content)}",
                       200, generation_id=generation_id, headers=headers)
    choice = _first_choice(data)
    error = data.get("error")
    if error and not choice:
        return provider_error(error, data, "", generation_id, headers, content=content)
    if choice.get("finish_reason") == "error" or choice.get("error"):
        said = choice.get("message")
        partial = message_text(said.get("content")) if isinstance(said, dict) else None
        return provider_error(choice.get("error") or error or {}, data, partial or "", generation_id, headers,
                              content=content)
    completion = parse_completion(data, choice)
    if completion is None:
        return Outcome(ErrorType.INVALID_RESPONSE, 502, f"HTTP 200 but not a completion: {snippet(content)}", 200,
                       generation_id=generation_id, body=data, content=content, headers=headers)
    refusal = completion.refusal
    if refusal is not None:
        return refused(completion, data, generation_id, headers, content)
    return Outcome(None, 0, status=200, data=data, generation_id=generation_id, completion=completion,
                   content=content, headers=headers)


def refused(completion: Completion, data: dict[str, Any], generation_id: Optional[str],
            headers: Optional[Mapping[str, str]], content: Optional[bytes] = None) -> Outcome:
    """The outcome of an answer that is a refusal: its own error type, never retried (the same
    request would be refused again, and billed again)."""
    message = bounded(f"the model refused: {completion.refusal}")
    return Outcome(ErrorType.REFUSED, 200, message, 200, data=data, generation_id=generation_id,
                   partial_text=completion.text, content=content, headers=headers)


def error_code(error: Any) -> tuple[Any, int]:
    """An error object's ``code`` (an int, a numeric string made int, or a name) and the exit code
    it gives a failed result: the code when it is an HTTP error status, else 502."""
    code: Any = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and code.isdigit() and len(code) < 6:
        code = int(code)
    if isinstance(code, bool) or not isinstance(code, (int, str)):
        code = None
    return code, code if isinstance(code, int) and 400 <= code <= 599 else 502


def provider_error(error: Any, data: Optional[dict[str, Any]], partial: str, generation_id: Optional[str],
                   headers: Mapping[str, str], where: str = "HTTP 200 carrying an error",
                   content: Optional[bytes] = None) -> Outcome:
    """The outcome of an error object inside a 200 (top level, in a choice, or mid-stream)."""
    detail = error_detail({"error": error})
    code, exit_code = error_code(error)
    wait = wait_from_headers(headers) or wait_from_body({"error": error})
    message = bounded(f"{where} (code {code if code is not None else 'none'}): {detail or 'no details'}")
    return Outcome(ErrorType.PROVIDER_ERROR, exit_code, message, 200, data=data,
                   retry_after=wait[0] if wait else None, retry_source=wait[1] if wait else None,
                   generation_id=generation_id, partial_text=partial, content=content, headers=headers or None)


def network_outcome(error_type: ErrorType, message: str, *, sent: bool = False, partial: str = "") -> Outcome:
    """The outcome of an attempt that got no complete HTTP answer."""
    exit_code = {ErrorType.TIMEOUT: 408, ErrorType.TRUNCATED_RESPONSE: 502, ErrorType.RESPONSE_TOO_LARGE: 502,
                 ErrorType.INVALID_RESPONSE: 502}.get(error_type, 503)
    return Outcome(error_type, exit_code, bounded(message), sent=sent, partial_text=partial)
