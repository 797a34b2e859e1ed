"""The outcome of one call: ``ExecutionResult``."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, TypeVar

from ._log import redact
from .errors import error_for

_Class = TypeVar("_Class", bound=type)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def with_slots(cls: _Class) -> _Class:
    """A dataclass rebuilt with ``__slots__`` of its fields (what ``dataclass(slots=True)`` does on
    Python 3.10+, for 3.9 too): no per-instance ``__dict__``, so a result costs a pointer per field.

    Pickling (every protocol) and ``copy`` go through ``__getstate__``/``__setstate__`` (the field
    values, in order; a dict of them, as pickles of the class without slots hold, is read too)."""
    names = tuple(f.name for f in dataclasses.fields(cls))
    body = {key: value for key, value in cls.__dict__.items()
            if key not in names and key not in ("__dict__", "__weakref__")}
    body["__slots__"] = names

    def __getstate__(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in names)

    def __setstate__(self: Any, state: Any) -> None:
        pairs = state.items() if isinstance(state, dict) else zip(names, state)
        for name, value in pairs:
            if name in names:
                object.__setattr__(self, name, value)

    body["__getstate__"], body["__setstate__"] = __getstate__, __setstate__
    rebuilt: _Class = type(cls)(cls.__name__, cls.__bases__, body)
    rebuilt.__qualname__ = cls.__qualname__
    return rebuilt


@with_slots
@dataclass
class ExecutionResult:
    """What one prompt produced: the answer or a typed failure, with usage and timing.

    ``success`` is True only for a usable answer; every failure carries an ``error_type``
    (the documentation's "Results and errors" page has every outcome) and an ``exit_code`` (the
    HTTP status where there is one).
    """

    success: bool
    stdout: str
    stderr: str
    duration_seconds: float
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    exit_reason: str = "completed"
    started_at: datetime = field(default_factory=utc_now)
    rate_limited: bool = False
    rate_limit_wait_seconds: Optional[float] = None
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    model: Optional[str] = None
    tokens_used: Optional[int] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    # Additions beyond the reference; all optional.
    attempts: int = 1
    retry_wait_seconds: float = 0.0
    cost: Optional[float] = None
    finish_reason: Optional[str] = None
    generation_id: Optional[str] = None
    provider: Optional[str] = None
    reasoning: Optional[str] = None
    cached_tokens: Optional[int] = None
    reasoning_tokens: Optional[int] = None
    status_code: Optional[int] = None
    sheet_id: Optional[str] = None
    from_checkpoint: bool = False
    unanswered_attempts: int = 0  # attempts sent but never answered (a read timeout, a dropped connection):
    #                               the server may have finished, and billed, each of them
    system_fingerprint: Optional[str] = None
    warnings: list[str] = field(default_factory=list)  # what was dropped from the server's answer, and why
    # The whole answer (issue 25): tool calls and the raw body are contract fields; the rest mirror
    # what the body says (None: it did not say).
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # as the API returns them, folded for a stream
    raw: Optional[dict[str, Any]] = field(default=None, repr=False)  # the last attempt's parsed body
    #                                     (a stream: folded), redacted; not in repr (it may be large)
    refusal: Optional[str] = None  # message.refusal: the model declined (error_type "refused")
    images: Optional[list[Any]] = None  # message.images (image output)
    annotations: Optional[list[Any]] = None  # message.annotations (e.g. web-search citations)
    logprobs: Optional[dict[str, Any]] = None  # choices[0].logprobs
    reasoning_details: Optional[list[Any]] = None  # message.reasoning_details
    native_finish_reason: Optional[str] = None  # the provider's own finish reason
    cost_details: Optional[dict[str, Any]] = None  # usage.cost_details
    cache_write_tokens: Optional[int] = None  # usage.prompt_tokens_details.cache_write_tokens
    choices: Optional[list[dict[str, Any]]] = None  # every choice, when the answer has more than one (n > 1)
    response_headers: Optional[dict[str, str]] = None  # the last answer's headers (names in lower case),
    #                                                   the values of secret-bearing ones redacted

    def __post_init__(self) -> None:
        if self.success and self.exit_code not in (None, 0):
            raise ValueError(
                f"a successful result cannot have a non-zero exit_code, got {self.exit_code}"
            )

    @property
    def output(self) -> str:
        """``stdout`` and ``stderr`` joined by a newline, stripped."""
        return (self.stdout + "\n" + self.stderr).strip()

    @property
    def text(self) -> str:
        """The answer's text (``stdout``)."""
        return self.stdout

    @property
    def texts(self) -> list[str]:
        """The text of every choice (``n > 1``), in order; ``[stdout]`` for an answer with one."""
        if not self.choices:
            return [self.stdout]
        from .classify import choice_text

        return [choice_text(choice) for choice in self.choices]

    def json(self) -> Any:
        """Parse the answer as JSON (for ``response_format`` calls).

        Tolerates a Markdown code fence around the JSON. Raises ``ValueError`` naming the
        problem when the call failed or the answer is not valid JSON.
        """
        if not self.success:
            raise ValueError(f"no JSON: the call failed ({self.error_type}): {self.error_message}")
        text = self.stdout.strip()
        if text.startswith("```"):
            text = text.split("\n", 1)[1] if "\n" in text else ""
            text = text.rsplit("```", 1)[0]
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            preview = self.stdout[:80].replace("\n", " ")
            raise ValueError(f"the answer is not valid JSON ({exc}): {preview!r}") from None

    def raise_for_error(self) -> ExecutionResult:
        """Raise the matching ``OpenRouterError`` subclass if the call failed; else return self."""
        if not self.success:
            raise error_for(self)
        return self

    def to_dict(self, *, include_raw: bool = True) -> dict[str, Any]:
        """A JSON-ready dict of every field (``started_at`` as ISO 8601); ``include_raw=False``
        leaves out ``raw`` (the whole body: the largest field), which ``from_dict`` then restores as None."""
        if include_raw:
            data = dataclasses.asdict(self)
        else:
            data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "raw"}
        data["started_at"] = self.started_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionResult:
        """Rebuild a result from :meth:`to_dict` output; unknown keys are ignored.

        Raises ``ValueError`` naming the field when a value has the wrong type (a hand-edited or
        foreign record), so such a record is never mistaken for a real answer."""
        if not isinstance(data, dict):
            raise ValueError(f"a result must be a JSON object, got {type(data).__name__}")
        # One look-up a field: its name as ``__init__`` was compiled with it (a keyword argument whose
        # name is another string object costs a string comparison with every parameter before it) and
        # the types it allows; a value exactly of one of them (JSON's own types: the common case) is
        # taken as it is, any other is checked by ``_loose``.
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            known = _FIELDS.get(name)
            if known is not None:
                kwargs[known[0]] = value if type(value) in known[1] else _loose(name, value, known[1])
        if not all(isinstance(item, str) for item in kwargs.get("warnings", [])):
            raise ValueError("result field 'warnings' must be a list of strings")
        calls = kwargs.get("tool_calls")
        if calls is not None and not all(isinstance(call, dict) for call in calls):
            raise ValueError("result field 'tool_calls' must be a list of objects")
        for required in ("success", "stdout", "stderr", "duration_seconds"):
            if required not in kwargs:
                raise ValueError(f"result field {required!r} is missing")
        for name in _SHARED_FIELDS:  # one string for all the results that say the same (a resume holds many)
            value = kwargs.get(name)
            if type(value) is str:
                kwargs[name] = sys.intern(value)
        started = data.get("started_at")
        if isinstance(started, str):
            kwargs["started_at"] = datetime.fromisoformat(started)
        return cls(**kwargs)

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
        return redact(f"ExecutionResult({parts})")

    def __str__(self) -> str:
        if self.success:
            head = f"ok {self.model or ''} ({self.tokens_used or 0} tokens, {self.duration_seconds:.2f}s)"
            return redact(f"{head}\n{self.stdout}")
        return redact(f"failed [{self.error_type}, exit {self.exit_code}] {self.error_message or self.stderr}")

    def _repr_html_(self) -> str:
        from .display import result_html

        return result_html(self)


_NONE = type(None)
#: What from_dict accepts for each field (started_at is parsed separately).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "success": (bool,), "stdout": (str,), "stderr": (str,), "duration_seconds": (float, int),
    "exit_code": (int, _NONE), "exit_signal": (int, _NONE), "exit_reason": (str,), "rate_limited": (bool,),
    "rate_limit_wait_seconds": (float, int, _NONE), "error_type": (str, _NONE), "error_message": (str, _NONE),
    "model": (str, _NONE), "tokens_used": (int, _NONE), "input_tokens": (int, _NONE), "output_tokens": (int, _NONE),
    "attempts": (int,), "retry_wait_seconds": (float, int), "cost": (float, int, _NONE),
    "finish_reason": (str, _NONE), "generation_id": (str, _NONE), "provider": (str, _NONE),
    "reasoning": (str, _NONE), "cached_tokens": (int, _NONE), "reasoning_tokens": (int, _NONE),
    "status_code": (int, _NONE), "sheet_id": (str, _NONE), "from_checkpoint": (bool,),
    "unanswered_attempts": (int,), "system_fingerprint": (str, _NONE), "warnings": (list,),
    "tool_calls": (list,), "raw": (dict, _NONE), "refusal": (str, _NONE), "images": (list, _NONE),
    "annotations": (list, _NONE), "logprobs": (dict, _NONE), "reasoning_details": (list, _NONE),
    "native_finish_reason": (str, _NONE), "cost_details": (dict, _NONE), "cache_write_tokens": (int, _NONE),
    "choices": (list, _NONE), "response_headers": (dict, _NONE),
}
#: Fields whose values repeat from result to result (a few models, providers, reasons): from_dict
#: interns them, so that a million restored results do not hold a million copies of each.
_SHARED_FIELDS = ("model", "provider", "exit_reason", "finish_reason", "native_finish_reason", "error_type")
#: Each field's name (the string the dataclass's ``__init__`` was compiled with) and what from_dict accepts.
_FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    f.name: (f.name, _FIELD_TYPES[f.name]) for f in dataclasses.fields(ExecutionResult) if f.name in _FIELD_TYPES}


def _loose(name: str, value: Any, kinds: tuple[type, ...]) -> Any:
    """A value of field ``name`` that is not exactly of a type it allows: one of a subclass (not a
    bool where numbers are asked), an int where only floats are (made a float); else ``ValueError``."""
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return float(value) if float in kinds and int not in kinds and isinstance(value, int) else value
    raise ValueError(f"result field {name!r} has the wrong type ({type(value).__name__})")
