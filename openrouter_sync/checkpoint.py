"""Checkpoints (and the CLI's results file): one JSON line per finished sheet, read back to resume.

A record (one line, ASCII only: ``ensure_ascii``, so no answer can make a write fail)::

    {"id": "fact-1", "index": 0, "label": "line 1",
     "settings": {"model": "...", "temperature": 0.7, "max_tokens": 16384, "options": {...},
                  "endpoint": "https://openrouter.ai/api/v1"},
     "result": {"success": true, "cost": 0.0001, ...the rest of ExecutionResult.to_dict()...},
     "sheet": {"prompt": "...", "metadata": {...}}}

The fields come in that order so that a resume reads what decides reuse (the id, the settings,
``success`` and ``cost``) from a line's head without parsing the answer (``CheckpointIndex``);
records of the older layout (``sheet`` before ``settings``) are still read, in full.

Answers, reasoning and prompts are kept as they were, except that the secrets the library knows
of (the API key and the other credentials given to it) are replaced by ``[REDACTED]``; error
texts are redacted like log lines (anything shaped like a key, too). ``raw`` (the response body)
and ``response_headers`` are kept only with ``keep_raw=True``; the other fields of the whole
answer (``refusal``, ``images``, ``logprobs``, ...) are left out while they hold their defaults
(None, ``[]``), which is what ``from_dict`` restores, so records stay small. Base64
attachments (``data:`` URLs and the like, in ``messages`` and in ``raw``) are stored once per
file in ``<checkpoint>.attachments/`` and referenced from the records (see
``openrouter_sync.attachments``); keep that folder with the file.

The latest valid record of an id wins. A successful record is reused only when its ``settings``
equal the settings the sheet would be sent with now. A line that is not a valid record (torn,
hand-edited, of another shape) is skipped with a warning naming the line, and its sheet runs
again (or an earlier valid record of its id is used); a line whose head is valid but whose answer
is not is found, and skipped the same way, when its sheet is reached.

While a run writes a checkpoint it holds an exclusive lock (POSIX ``flock``) on the file itself,
whatever name or link it is reached by, and ``<checkpoint>.lock`` names its pid (removed when the
run ends; a symbolic link or a file of another user there is refused, never written to). On
platforms without ``fcntl`` (Windows) there is no lock, so do not point two runs at one checkpoint
there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import stat
import threading
from array import array
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional, Union

from . import attachments
from ._files import QUIET, UnsafeFile, open_private
from ._log import logger, redact, redact_secrets
from .classify import MAX_COUNT
from .error_types import ErrorType
from .request import check_sheet_content
from .result import ExecutionResult

try:
    import fcntl
except ImportError:  # Windows: no advisory lock (documented)
    fcntl = None  # type: ignore[assignment]

PathLike = Union[str, Path]
Settings = dict[str, Any]
#: Result fields of the library's or a server's error text: redacted like a log line before they are written.
_ERROR_FIELDS = ("stderr", "error_message")
#: Sheet fields kept in a record (so a results file says what was asked).
_SHEET_FIELDS = ("prompt", "system", "messages", "metadata")
#: Where base64 attachments are stored apart (see ``openrouter_sync.attachments``): the sheet's
#: messages and the result's raw body; first-class result fields keep theirs inline.
_ATTACHING_SHEET_FIELD, _ATTACHING_RESULT_FIELD = "messages", "raw"
#: Result fields holding a count, which must be within what an answer can give (``MAX_COUNT``).
_COUNT_FIELDS = ("tokens_used", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "attempts",
                 "unanswered_attempts", "exit_code", "status_code")
#: Result fields written only when they hold something (from_dict gives the rest their defaults).
_DEFAULTED_FIELDS = ("tool_calls", "refusal", "images", "annotations", "logprobs", "reasoning_details",
                     "native_finish_reason", "cost_details", "cache_write_tokens", "choices")
#: How many ignored lines are named one by one in the log.
_NAMED_LINES = 20


class CheckpointError(Exception):
    """A checkpoint cannot be used as asked; raised before anything is sent."""


class CheckpointLocked(CheckpointError):
    """Another run (in this or another process) is writing the same checkpoint."""


class CheckpointMismatch(CheckpointError, ValueError):
    """The checkpoint holds answers made with other settings (raised with ``on_mismatch="refuse"``).

    ``found`` lists ``(index, key, difference)`` for each such sheet."""

    def __init__(self, message: str, found: Optional[list[tuple[int, str, str]]] = None) -> None:
        super().__init__(message)
        self.found = found or []


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, odd objects strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


_PLAIN = (int, float, type(None))


def endpoint_of(backend: Any, tag: Optional[str] = None) -> str:
    """What a checkpoint records as the endpoint: ``tag`` if given, else the backend's base URL."""
    return tag if tag is not None else str(getattr(backend, "base_url", ""))


def settings_for(backend: Any, sheet: Any, endpoint: str) -> Optional[Settings]:
    """The settings ``sheet`` would be sent with (model, temperature, max_tokens, request options,
    endpoint), or None when they cannot be resolved (an invalid sheet: it runs, and fails)."""
    resolve = getattr(backend, "spec_for_sheet", None)
    try:
        if resolve is None:  # a backend of another kind: what its attributes say
            model, temperature, max_tokens, options = (getattr(backend, "model", None),
                                                       getattr(backend, "temperature", None),
                                                       getattr(backend, "max_tokens", None), {})
        else:
            spec = resolve(sheet)
            model, temperature, max_tokens, options = spec.model, spec.temperature, spec.max_tokens, spec.options
        options = {k: v for k, v in dict(options).items() if v is not None}
        settings: Settings = {"endpoint": endpoint, "max_tokens": max_tokens, "model": model, "options": options,
                              "temperature": temperature}
        plain = not options and type(model) is str and type(endpoint) is str and type(max_tokens) in _PLAIN \
            and type(temperature) in _PLAIN and (type(temperature) is not float or math.isfinite(temperature))
        return settings if plain else _jsonable(settings)  # (what JSON reads back; the common case is that already)
    except (ValueError, TypeError):
        return None


def _plain_key(value: Any) -> Optional[str]:
    """Options or overrides as a memo key: ``""`` for none, else their JSON text (key order aside),
    which tells apart exactly what the settings record (``1``, ``1.0`` and ``true`` differ; a tuple
    and a list do not, as in a record); None when they are not a dict with string names and plain
    JSON values (no key: resolved every time)."""
    if type(value) is not dict:
        return None
    if not value:
        return ""
    if not all(type(name) is str for name in value):
        return None
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return None


class SettingsMemo:
    """``settings_for(backend, sheet, endpoint)`` for one run, resolved once per combination of the
    backend's defaults and a sheet's overrides.

    What a sheet is sent with apart from its content (model, temperature, max_tokens, request
    options) depends only on the backend's defaults (its model, temperature, max_tokens,
    ``default_options``, ``strict_options`` and applied overrides) and the sheet's ``overrides``:
    those are the key, read from the backend for every sheet (so a setting changed mid-run counts
    from the next sheet on, as without the memo). Each sheet's own content (messages, timeout) is
    still checked as a call checks it (an invalid sheet has no settings). Only resolutions that
    succeeded are remembered; a backend of another kind, a subclass that resolves sheets its own
    way, or options that are not plain JSON are resolved every time by ``settings_for``."""

    def __init__(self, backend: Any, endpoint: str) -> None:
        from .backend import OpenRouterBackend  # (not at import: the checkpoint module stays light)

        kind = type(backend)
        self._backend = backend
        self._endpoint = endpoint
        self._known = isinstance(backend, OpenRouterBackend) \
            and kind.spec_for_sheet is OpenRouterBackend.spec_for_sheet \
            and kind._defaults is OpenRouterBackend._defaults  # type: ignore[comparison-overlap]
        self._memo: dict[tuple[Any, ...], Settings] = {}

    def _key(self, sheet: Any) -> Optional[tuple[Any, ...]]:
        defaults = self._backend._defaults()
        options, overrides = _plain_key(defaults.options), _plain_key(sheet.overrides or {})
        if options is None or overrides is None:
            return None
        model, temperature, max_tokens = defaults.model, defaults.temperature, defaults.max_tokens
        return (type(model), model, type(temperature), temperature, type(max_tokens), max_tokens, defaults.strict,
                options, overrides)

    def __call__(self, sheet: Any) -> Optional[Settings]:
        if not self._known:
            return settings_for(self._backend, sheet, self._endpoint)
        key = self._key(sheet)
        if key is None:
            return settings_for(self._backend, sheet, self._endpoint)
        settings = self._memo.get(key)
        if settings is None:
            settings = settings_for(self._backend, sheet, self._endpoint)
            if settings is not None:
                self._memo[key] = settings
            return settings
        try:
            check_sheet_content(sheet)
        except (ValueError, TypeError):
            return None
        return settings


def describe_difference(stored: Optional[Settings], current: Optional[Settings]) -> str:
    """``model 'a/b' (now 'c/d')``: what differs between two settings, for messages."""
    if stored is None:
        return "settings not recorded (a record from an older version)"
    if current is None:
        return "the sheet's settings are invalid now"
    parts = [f"{name} {stored.get(name)!r} (now {current.get(name)!r})"
             for name in ("model", "temperature", "max_tokens", "options", "endpoint")
             if stored.get(name) != current.get(name)]
    return ", ".join(parts) or "settings differ"


def _valid_settings(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("model"), str)
            and isinstance(value.get("temperature"), (int, float)) and not isinstance(value.get("temperature"), bool)
            and isinstance(value.get("max_tokens"), int) and not isinstance(value.get("max_tokens"), bool)
            and isinstance(value.get("options"), dict) and isinstance(value.get("endpoint"), str))


@dataclass
class Record:
    """One valid checkpoint line."""

    id: str
    result: ExecutionResult
    index: Optional[int] = None
    label: Optional[str] = None
    settings: Optional[Settings] = None  # None: written by a version that did not record them
    sheet: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the line as read
    path: Optional[Path] = field(default=None, repr=False)  # the file it was read from (CheckpointIndex)


def _identity(data: dict[str, Any]) -> tuple[str, Optional[int], Optional[str]]:
    """A record's id, input index and label, checked; ``ValueError`` saying which is wrong."""
    key = data.get("id")
    if not isinstance(key, str) or not key:
        raise ValueError("'id' is missing or not a string")
    index = data.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise ValueError("'index' is not an integer")
    label = data.get("label")
    if label is not None and not isinstance(label, str):
        raise ValueError("'label' is not a string")
    return key, index, label


def _settings_field(data: dict[str, Any]) -> Optional[Settings]:
    """A record's settings (None: not recorded), checked; ``ValueError`` when of another shape."""
    settings = data.get("settings")
    if settings is not None and not _valid_settings(settings):
        raise ValueError("'settings' is not of the expected shape")
    return settings  # type: ignore[no-any-return]


def _parse(data: Any) -> Record:
    """A ``Record`` from a parsed line; ``ValueError`` saying what is wrong otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    key, index, label = _identity(data)
    sheet = data.get("sheet", {})
    if not isinstance(sheet, dict):
        raise ValueError("'sheet' is not an object")
    settings = _settings_field(data)
    raw_result = data.get("result")
    if not isinstance(raw_result, dict):
        raise ValueError("'result' is not an object")
    try:
        result = ExecutionResult.from_dict(raw_result)
    except Exception as exc:  # any bad shape: from_dict says which field
        raise ValueError(f"'result' is not a valid result ({exc})") from None
    # What reuse and summaries rely on, checked here whatever from_dict lets through.
    if not isinstance(result.success, bool) or not isinstance(result.stdout, str):
        raise ValueError("'result.success' or 'result.stdout' has the wrong type")
    if isinstance(result.duration_seconds, bool) or not isinstance(result.duration_seconds, (int, float)) \
            or not math.isfinite(result.duration_seconds):
        raise ValueError("'result.duration_seconds' is not a finite number")
    for name in _COUNT_FIELDS:  # a hand-made or hostile count would make every summary and repr fail
        value = getattr(result, name, None)
        if isinstance(value, int) and not 0 <= value <= MAX_COUNT:
            raise ValueError(f"'result.{name}' is out of range")
    return Record(key, result, index, label, settings, sheet, data=data)


def _readable(path: Path) -> bool:
    """Whether ``path`` holds records to read: a missing file has none, nor (with a warning) a device
    or a pipe (/dev/full reads zeros forever)."""
    if not path.exists():
        return False
    if not path.is_file():
        logger.warning("checkpoint %s is not a regular file; nothing is read from it", path)
        return False
    return True


def scan_records(path: PathLike) -> Iterator[Record]:
    """Every valid record of a checkpoint, in file order (a superseded one too). A missing file has none.

    Lines that are not valid records are skipped with a warning naming the line (a torn last
    line after a crash, a hand-edited or foreign record); their sheets run again.
    """
    path = Path(path)
    if not _readable(path):
        return
    old = bad = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = _parse(_loads(line))
            except (ValueError, RecursionError) as exc:
                bad += 1
                if bad <= _NAMED_LINES:
                    why = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)[:200]
                    logger.warning("%s, line %d: ignored (%s); that sheet will run again", path, number, why)
                continue
            record.line = number
            old += record.settings is None
            yield record
    if bad > _NAMED_LINES:
        logger.warning("%s: %d more lines ignored (%d in all)", path, bad - _NAMED_LINES, bad)
    if old:
        logger.warning("%s: %d record(s) do not say which settings made them (an older version wrote them); "
                       "their sheets will run again", path, old)


#: Whitespace JSON allows between tokens.
_BLANK = re.compile(r"[ \t\n\r]*")
_scan_value = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
#: The fields a line of the current layout has before ``result`` (each at most once).
_HEAD_FIELDS = ("id", "index", "label", "settings")
_NOT_JSON = "not valid JSON"
#: What CheckpointIndex keeps of a record (bits of its ``flags``).
_SUCCESS, _VERIFIED, _INVALID = 1, 2, 4
_NO_INDEX = -(1 << 62)
#: A line as this version writes it, up to its settings: an id and a label without escapes.
_FAST_HEAD = re.compile(r'\{"id": "([^"\\]+)", "index": (\d+|null), (?:"label": "[^"\\]*", )?"settings": ')
#: What follows the settings in such a line, up to the result's cost.
_FAST_RESULT = re.compile(r', "result": \{"success": (true|false), "cost": (null|\d+(?:\.\d+)?(?:e[-+]?\d+)?)[,}]')


def _token(text: str, pos: int, char: str) -> int:
    """The position after ``char`` (whitespace before it skipped); ValueError when it is not there."""
    pos = _BLANK.match(text, pos).end()  # type: ignore[union-attr]
    if text[pos:pos + 1] != char:
        raise ValueError(_NOT_JSON)
    return pos + 1


def _name(text: str, pos: int) -> tuple[str, int]:
    """An object's member name and the position of its value (after the colon)."""
    pos = _token(text, pos, '"')
    name, pos = scanstring(text, pos)
    pos = _token(text, pos, ":")
    return name, _BLANK.match(text, pos).end()  # type: ignore[union-attr]


def _value(text: str, pos: int) -> tuple[Any, int]:
    try:
        value, end = _scan_value(text, pos)
    except StopIteration:
        raise ValueError(_NOT_JSON) from None
    return value, end


def _loads(text: str) -> Any:
    """``json.loads(text)`` without its Python wrapper (a tenth of its time on a record): the value
    after any leading whitespace, and nothing but whitespace after it; ValueError otherwise."""
    value, end = _value(text, _BLANK.match(text).end())  # type: ignore[union-attr]
    if _BLANK.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise ValueError(_NOT_JSON)
    return value


@dataclass
class Head:
    """What a line of the current layout says before its answer: enough to decide reuse."""

    id: str
    index: Optional[int]
    settings: Optional[Settings]
    settings_text: str  # the settings as written (a cache key: equal texts are equal settings)
    success: bool
    cost: Any


def read_head(text: str) -> Optional[Head]:
    """The head of a line of the current layout (id, index, label, settings, then the result's
    ``success`` and ``cost``), parsed without parsing the answer; None for a line of another layout
    (read it in full). ``ValueError`` saying what is wrong with a head that is not valid."""
    if not text.startswith('{"id": '):
        return None
    fields: dict[str, Any] = {}
    settings_text = ""
    pos = 1
    try:
        while True:
            name, pos = _name(text, pos)
            if name == "result":
                break
            if name not in _HEAD_FIELDS or name in fields:
                return None
            start = pos
            fields[name], pos = _value(text, pos)
            if name == "settings":
                settings_text = text[start:pos]
            pos = _token(text, pos, ",")
        pos = _token(text, pos, "{")
        name, pos = _name(text, pos)
        if name != "success":
            return None
        success, pos = _value(text, pos)
        pos = _token(text, pos, ",")
        name, pos = _name(text, pos)
        if name != "cost":
            return None
        cost, pos = _value(text, pos)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        raise ValueError(_NOT_JSON) from None
    if not text.rstrip().endswith("}"):
        raise ValueError(_NOT_JSON)  # torn: the line ends inside the record
    key, index, _ = _identity(fields)
    settings = _settings_field(fields)
    if not isinstance(success, bool):
        raise ValueError("'result.success' or 'result.stdout' has the wrong type")
    return Head(key, index, settings, settings_text, success, cost)


def _cost(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0 else 0.0


class CheckpointIndex:
    """Where the records of one or more checkpoints lie, read in one streaming pass.

    Per record it keeps only what decides reuse (a settings number, the success flag, the byte
    range and line of the record, the sheet's input index, the id's previous record): about 40
    bytes, plus the id once per sheet. Answers are parsed only when asked for (``record``), so
    memory does not grow with the size of the answers. Lines of the current layout are read by
    their head (``read_head``); others are parsed in full. Invalid lines are skipped with a
    warning naming the line; one whose head is valid but whose answer is not is found (and
    skipped the same way, for the id's earlier record) when ``record`` reads it. ``spent`` is what
    the records read say their answers cost (superseded ones too). Files named later count as
    written later (the latest record of an id wins across files, as within one).
    """

    def __init__(self, paths: Iterable[PathLike] = ()) -> None:
        self.paths: list[Path] = []
        self.spent = 0.0
        #: Lines skipped while reading (not valid records).
        self.skipped = 0
        self._latest: dict[str, int] = {}
        self._offset = array("q")
        self._length = array("q")
        self._line = array("q")
        self._file = array("H")
        self._settings_of = array("i")
        self._flags = array("B")
        self._prev = array("q")
        self._index = array("q")
        self._settings: list[Settings] = []
        self._settings_by_text: dict[str, int] = {}
        self._settings_by_value: dict[str, int] = {}
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        for path in paths:
            self.add(path)

    def __len__(self) -> int:
        return len(self._latest)

    def __contains__(self, key: object) -> bool:
        return key in self._latest

    def __iter__(self) -> Iterator[str]:
        """The ids, in the order they first appear."""
        return iter(self._latest)

    @property
    def records(self) -> int:
        """How many valid-looking records were read (superseded ones too)."""
        return len(self._offset)

    def _settings_number(self, settings: Optional[Settings], text: str) -> int:
        if settings is None:
            return -1
        number = self._settings_by_text.get(text) if text else None
        if number is None:
            canonical = json.dumps(settings, sort_keys=True)
            number = self._settings_by_value.get(canonical)
            if number is None:
                number = self._settings_by_value[canonical] = len(self._settings)
                self._settings.append(settings)
            if text:
                self._settings_by_text[text] = number
        return number

    def _append(self, key: str, index: Optional[int], settings: int, success: bool, verified: bool, offset: int,
                length: int, line: int, file: int) -> None:
        entry = len(self._offset)
        self._prev.append(self._latest.get(key, -1))
        self._latest[key] = entry
        self._offset.append(offset)
        self._length.append(length)
        self._line.append(line)
        self._file.append(file)
        self._settings_of.append(settings)
        self._flags.append((_SUCCESS if success else 0) | (_VERIFIED if verified else 0))
        self._index.append(_NO_INDEX if index is None else index)

    def _fast_head(self, text: str, last: list[Any]) -> Optional[tuple[str, Optional[int], int, bool, Any]]:
        """``(id, index, settings number, success, cost)`` of a line exactly as this version writes
        it (an id without escapes, the settings of the line before), by two regular expressions;
        None when the line is otherwise (``read_head`` decides then)."""
        head = _FAST_HEAD.match(text)
        if head is None:
            return None
        pos = head.end()
        settings_text, number = last
        if not settings_text or not text.startswith(settings_text, pos):
            return None
        tail = _FAST_RESULT.match(text, pos + len(settings_text))
        if tail is None or not text.endswith("}\n"):
            return None
        index, cost = head.group(2), tail.group(2)
        return (head.group(1), None if index == "null" else int(index), number, tail.group(1) == "true",
                None if cost == "null" else float(cost))

    def add(self, path: PathLike) -> None:
        """Read one more file (a missing one has no records); its records count as the latest."""
        path = Path(path)
        file = len(self.paths)
        self.paths.append(path)
        if not _readable(path):
            return
        old = bad = 0
        offset = 0
        last: list[Any] = ["", -1]  # the settings text of the line before, and its number
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                text = raw.decode("utf-8", "replace")
                fast = self._fast_head(text, last)
                if fast is not None:
                    key, index, settings, success, cost = fast
                    self.spent += _cost(cost)
                    self._append(key, index, settings, success, False, start, len(raw), number, file)
                    continue
                try:
                    head = read_head(text)
                    if head is None:  # another layout: parsed in full (and then known valid)
                        record = _parse(_loads(text))
                        settings = self._settings_number(record.settings, "")
                        success, cost, verified = record.result.success, record.result.cost, True
                        key, index, stored = record.id, record.index, record.settings
                    else:
                        settings = self._settings_number(head.settings, head.settings_text)
                        if head.settings is not None:
                            last[:] = [head.settings_text, settings]
                        success, cost, verified = head.success, head.cost, False
                        key, index, stored = head.id, head.index, head.settings
                except (ValueError, RecursionError) as exc:
                    bad += 1
                    if bad <= _NAMED_LINES:
                        why = _NOT_JSON if isinstance(exc, (json.JSONDecodeError, RecursionError)) else str(exc)[:200]
                        logger.warning("%s, line %d: ignored (%s); that sheet will run again", path, number, why)
                    continue
                old += stored is None
                self.spent += _cost(cost)
                self._append(key, index, settings, success, verified, start, len(raw), number, file)
        self.skipped += bad
        if bad > _NAMED_LINES:
            logger.warning("%s: %d more lines ignored (%d in all)", path, bad - _NAMED_LINES, bad)
        if old:
            logger.warning("%s: %d record(s) do not say which settings made them (an older version wrote them); "
                           "their sheets will run again", path, old)

    def head(self, key: str) -> Optional[tuple[bool, Optional[Settings]]]:
        """``(success, settings)`` of the latest record of ``key`` not known to be invalid, from the index."""
        entry = self._latest.get(key, -1)
        while entry >= 0 and self._flags[entry] & _INVALID:
            entry = self._prev[entry]
        if entry < 0:
            return None
        number = self._settings_of[entry]
        return bool(self._flags[entry] & _SUCCESS), (self._settings[number] if number >= 0 else None)

    def other_settings_before(self, key: str, settings: Optional[Settings]) -> bool:
        """Whether an earlier successful record of ``key`` (not known to be invalid) names other
        settings than ``settings``, from the index: if the latest proves invalid, that one counts."""
        entry = self._latest.get(key, -1)
        entry = self._prev[entry] if entry >= 0 else -1
        while entry >= 0:
            number = self._settings_of[entry]
            if self._flags[entry] & _SUCCESS and not self._flags[entry] & _INVALID \
                    and (self._settings[number] if number >= 0 else None) != settings:
                return True
            entry = self._prev[entry]
        return False

    def index_of(self, key: str) -> Optional[int]:
        """The input index the latest record of ``key`` names (None: none)."""
        entry = self._latest.get(key, -1)
        value = self._index[entry] if entry >= 0 else _NO_INDEX
        return None if value == _NO_INDEX else value

    def record(self, key: str) -> Optional[Record]:
        """The latest valid record of ``key``, parsed from its line (None: it has none)."""
        entry = self._latest.get(key, -1)
        while entry >= 0:
            if not self._flags[entry] & _INVALID:
                record = self._load(key, entry)
                if record is not None:
                    return record
            entry = self._prev[entry]
        return None

    def latest_entry(self, key: str) -> Optional[int]:
        """The entry number of the latest valid record of ``key`` (parsed, to be sure), or None."""
        entry = self._latest.get(key, -1)
        while entry >= 0:
            if not self._flags[entry] & _INVALID and self._load(key, entry) is not None:
                return entry
            entry = self._prev[entry]
        return None

    def entry_place(self, entry: int) -> tuple[int, int]:
        """``(file number, byte offset)`` of an entry's line."""
        return self._file[entry], self._offset[entry]

    def entry_bytes(self, entry: int) -> bytes:
        """An entry's line, as written."""
        return self._read(entry)

    def _read(self, entry: int) -> bytes:
        file = self._file[entry]
        with self._lock:
            fd = self._fds.get(file)
            if fd is None:
                fd = self._fds[file] = os.open(self.paths[file], os.O_RDONLY | QUIET)
        length, offset = self._length[entry], self._offset[entry]
        data = os.pread(fd, length, offset)
        while len(data) < length:  # pread may return less than asked (rarely, for a regular file)
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def _load(self, key: str, entry: int) -> Optional[Record]:
        number = self._line[entry]
        path = self.paths[self._file[entry]]
        try:
            data = self._read(entry)
            record = _parse(_loads(data.decode("utf-8", "replace")))
            settings = self._settings_of[entry]
            if record.id != key or record.result.success != bool(self._flags[entry] & _SUCCESS) \
                    or record.settings != (self._settings[settings] if settings >= 0 else None):
                raise ValueError("its head and its body disagree")
        except OSError as exc:
            logger.warning("%s, line %d: could not be read again (%s); that sheet will run again", path, number, exc)
            return None
        except (ValueError, RecursionError) as exc:
            with self._lock:
                self._flags[entry] |= _INVALID
            why = _NOT_JSON if isinstance(exc, (json.JSONDecodeError, RecursionError)) else str(exc)[:200]
            logger.warning("%s, line %d: ignored (%s); that sheet will run again", path, number, why)
            return None
        record.line, record.path = number, path
        return record

    def in_input_order(self) -> list[str]:
        """The ids sorted by the input index of their latest record (ids without one last), ties in the
        order they first appear."""
        keys = list(self._latest)
        latest, indexes, last = self._latest, self._index, 1 << 62
        return sorted(keys, key=lambda key: indexes[latest[key]] if indexes[latest[key]] != _NO_INDEX else last)

    def close(self) -> None:
        """Close the files ``record`` reads from (the index itself stays usable: they reopen)."""
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def read_records(path: PathLike) -> dict[str, Record]:
    """Every id's latest valid record, in the order ids first appear (see ``scan_records``)."""
    return {record.id: record for record in scan_records(path)}


def recorded_cost(record: Record) -> float:
    """What a record says its answer cost (0 when it says nothing usable)."""
    cost = record.result.cost
    return float(cost) if isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0 else 0.0


def load_checkpoint(path: PathLike, settings: Optional[Settings] = None) -> dict[str, ExecutionResult]:
    """The successful results a checkpoint holds, by sheet id (each id's latest record).

    With ``settings``, only those made with exactly these settings (see ``settings_for``)."""
    done: dict[str, ExecutionResult] = {}
    folder = attachments.folder_for(Path(path))
    for key, record in read_records(path).items():
        if record.result.success and (settings is None or record.settings == settings):
            record.result.from_checkpoint = True
            done[key] = _with_attachments(record.result, folder)
    return done


def record_data(record: Record, path: PathLike) -> dict[str, Any]:
    """The line of ``record`` as parsed, with the attachments it refers to put back (for exports)."""
    expanded: dict[str, Any] = attachments.expand(record.data, attachments.folder_for(Path(path)))
    return expanded


def _kept(value: Any, store: Optional[attachments.AttachmentStore]) -> Any:
    """``value`` as a record keeps it: registered secrets redacted in every string; with ``store``,
    base64 attachments replaced by references to their stored copy."""
    if isinstance(value, str):
        if store is not None and attachments.is_attachment(value):
            marker = store.put(value)
            if marker is not None:
                return marker
        return redact_secrets(value)
    if isinstance(value, dict):
        return {name: _kept(item, store) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_kept(item, store) for item in value]
    return value


def _with_attachments(result: ExecutionResult, folder: Path) -> ExecutionResult:
    """``result`` with the attachments its ``raw`` refers to put back."""
    value = getattr(result, _ATTACHING_RESULT_FIELD, None)
    expanded: Any = attachments.expand(value, folder) if isinstance(value, dict) else value
    return result if expanded is value else dataclasses.replace(result, **{_ATTACHING_RESULT_FIELD: expanded})


class _Lock:
    """One run per results file: an exclusive, non-blocking ``flock`` on the file itself, so a
    second run through a symbolic or hard link to it (another name, the same file) is refused
    too; and ``<path>.lock`` naming the holder's pid, removed again on release.

    The file is opened without waiting (a FIFO planted there cannot hang the run) and must be a
    regular file. ``<path>.lock`` is opened as ``open_private`` opens files in shared places: a
    symbolic link, FIFO, device or directory there, or a file of another user, is refused and never
    written to (a planted ``<results>.lock -> ~victim/file`` used to be truncated)."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: Optional[int] = None
        self._pid_fd: Optional[int] = None
        if fcntl is None:
            return
        for _ in range(20):
            fd = _open_results(path)
            if fd is None:  # a character device (/dev/null, /dev/full): written to as it is, not locked
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                holder = _holder(self.path) or _holder(Path(os.path.realpath(path)).with_name(
                    os.path.basename(os.path.realpath(path)) + ".lock"))
                who = f"process {holder}" if holder else "another run"
                raise CheckpointLocked(f"{path} is in use by {who} (lock {self.path}); wait for that run to "
                                       "finish or use another file") from None
            try:
                current, mine = os.stat(path), os.fstat(fd)
                same = (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev)
            except OSError:
                same = False
            if same:
                break
            os.close(fd)  # replaced as we opened it: lock the new one
        else:
            raise CheckpointLocked(f"{path}: could not lock it; it keeps being replaced")
        self._fd = fd
        try:
            self._pid_fd = open_private(str(self.path))
            os.ftruncate(self._pid_fd, 0)
            os.write(self._pid_fd, str(os.getpid()).encode("ascii"))
        except OSError as exc:
            self.release()
            why = exc if isinstance(exc, UnsafeFile) else exc.strerror or exc
            raise CheckpointError(f"{path}: refusing to use the lock file {self.path}: {why} (remove it if it "
                                  "is not yours)") from None

    def release(self) -> None:
        if self._pid_fd is not None:
            try:
                os.unlink(self.path)  # while still holding the lock on the results file
            except OSError:
                pass
            os.close(self._pid_fd)
            self._pid_fd = None
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _open_results(path: Path) -> Optional[int]:
    """The results file opened (created if missing) without waiting, to lock; None for a
    character device (nothing to lock); a ``CheckpointError`` for a FIFO, socket, directory or
    block device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | QUIET, 0o644)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be opened as a checkpoint: {exc.strerror or exc}") from None
    try:
        kind = os.fstat(fd).st_mode
    except OSError:
        kind = 0
    if stat.S_ISREG(kind):
        return fd
    os.close(fd)
    if stat.S_ISCHR(kind):
        return None
    raise CheckpointError(f"{path} is not a regular file (a FIFO, socket, block device or directory); name a "
                          "results file")


def _holder(lock: Path) -> str:
    """The pid in a lock file, if it is a readable regular file that holds one."""
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | QUIET)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)
    return text if text.isdigit() else ""


class Checkpoint:
    """A checkpoint in use by one run: locked, indexed once (``CheckpointIndex``), appended to from
    worker threads.

    ``restore(key, settings)`` gives the stored answer when it may be reused (parsed from its line
    only then, attachments put back); ``write`` never raises: a result that cannot be serialised is
    written in a reduced form (its sheet and an ``internal_error``, no answer; ``reduced`` counts
    them) and the records after it are still written; when the file cannot be written (disk full,
    ...) it logs a warning once, stops writing, and ``error``/``unwritten`` say so. ``spent`` is the
    cost the records read say was paid (every record, superseded ones too: money spent on the batch).
    ``keep_raw`` says whether a result's ``raw`` is written.
    """

    def __init__(self, path: PathLike, *, resume: bool = True, fsync: bool = False, keep_raw: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise CheckpointError(f"{self.path} is a directory, not a checkpoint file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _Lock(self.path)
        self.keep_raw = keep_raw
        self.attachments = attachments.AttachmentStore(attachments.folder_for(self.path))
        self.index = CheckpointIndex()
        try:
            if resume:
                self.index.add(self.path)
            #: What the records read say their answers cost, superseded records included (money spent).
            self.spent = self.index.spent
            self._handle: Optional[IO[str]] = self._open()
        except BaseException:
            self.index.close()
            self._lock.release()
            raise
        self._fsync = fsync
        self._mutex = threading.Lock()
        self.error: Optional[str] = None
        self.unwritten = 0
        self.reduced = 0  # records written without their answer (it could not be serialised)

    def _open(self) -> IO[str]:
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                needs_newline = existing.read(1) != b"\n"
        handle = open(self.path, "a", encoding="ascii")  # noqa: SIM115 (closed in close())
        if needs_newline:  # a torn last line: end it so the next record starts clean
            handle.write("\n")
            handle.flush()
        return handle

    def stored(self, key: str) -> Optional[Record]:
        """The latest valid record of ``key`` read at the start (parsed now), or None."""
        return self.index.record(key)

    def restore(self, key: str, settings: Optional[Settings]) -> Optional[ExecutionResult]:
        """The stored answer for ``key`` if it succeeded and was made with ``settings``; else None.

        Parsed from its line on each call (a new result every time)."""
        if settings is None or key not in self.index:
            return None
        record = self.index.record(key)
        if record is None or not record.result.success or record.settings != settings:
            return None
        result = record.result
        result.from_checkpoint, result.sheet_id = True, key
        return _with_attachments(result, self.attachments.folder)

    def mismatch(self, key: str, settings: Optional[Settings]) -> Optional[str]:
        """Why the stored answer for ``key`` cannot be reused (other settings), or None.

        Decided from the index when its latest record is a failure, or matches ``settings`` with no
        earlier success made with other settings; else the latest valid record is parsed (a latest
        one that matches but whose answer is torn leaves the earlier one to decide)."""
        head = self.index.head(key)
        if head is None or not head[0]:
            return None
        if settings is not None and head[1] == settings and not self.index.other_settings_before(key, settings):
            return None
        record = self.index.record(key)
        if record is None or not record.result.success or (settings is not None and record.settings == settings):
            return None
        return describe_difference(record.settings, settings)

    def write(self, key: str, index: int, result: ExecutionResult, *, settings: Optional[Settings] = None,
              sheet: Any = None, label: Optional[str] = None) -> bool:
        """Append one record (whole line, flushed). Never raises; False when it was not written."""
        try:
            line = self._line(key, index, result, settings, sheet, label)
        except Exception as exc:  # a value that cannot be written (a bug, or a hostile answer): reduced, not lost
            why = f"{type(exc).__name__}: {str(exc)[:200]}"
            logger.warning("checkpoint %s: the record for %s could not be serialised (%s); a reduced record "
                           "(the sheet and this error, no answer) is written, and the sheet will run again on "
                           "resume", self.path, key, why)
            line = self._reduced(key, index, result, settings, sheet, label, why)
            with self._mutex:
                self.reduced += 1
        with self._mutex:
            if self._handle is None or self.error is not None:
                self.unwritten += 1
                return False
            try:
                self._handle.write(line)
                self._handle.flush()
                if self._fsync:
                    os.fsync(self._handle.fileno())
            except (OSError, ValueError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                self.unwritten += 1
                logger.warning("checkpoint %s could not be written (%s): the run goes on, but finished sheets "
                               "are no longer recorded and will run again on resume", self.path, self.error)
                return False
        return True

    def _reduced(self, key: str, index: int, result: ExecutionResult, settings: Optional[Settings], sheet: Any,
                 label: Optional[str], why: str) -> str:
        """The record of a sheet whose result cannot be serialised: its sheet (when that can be),
        a failed result that says why, and no answer (so a resume runs the sheet again)."""
        duration = result.duration_seconds if isinstance(result.duration_seconds, float) \
            and math.isfinite(result.duration_seconds) else 0.0
        message = f"the result could not be recorded ({why})"
        reduced = ExecutionResult(success=False, stdout="", stderr=message, duration_seconds=duration, exit_code=1,
                                  exit_reason="error", error_type=ErrorType.INTERNAL_ERROR, error_message=message,
                                  sheet_id=key)
        safe_label = label if isinstance(label, str) else None
        for kept_sheet, kept_settings in ((sheet, settings), (None, settings), (None, None)):
            try:
                return self._line(key, index, reduced, kept_settings, kept_sheet, safe_label)
            except Exception:  # the sheet (or settings) itself cannot be written: drop it too
                continue
        data = reduced.to_dict()
        data = {"success": data.pop("success"), "cost": data.pop("cost"), **data}
        return json.dumps({"id": key, "index": index, "result": data}, ensure_ascii=True) + "\n"

    def _line(self, key: str, index: int, result: ExecutionResult, settings: Optional[Settings], sheet: Any,
              label: Optional[str]) -> str:
        """The record as one line: answers and prompts as they were, except for the registered secrets
        (the key, ...); error texts redacted like log lines; base64 attachments stored once, apart."""
        data = result.to_dict(include_raw=self.keep_raw)  # no copy of a raw body that is not kept
        data.pop("from_checkpoint", None)
        if not self.keep_raw:
            data.pop("response_headers", None)
        for name in _DEFAULTED_FIELDS:
            if not data.get(name, True):
                del data[name]
        store = self.attachments
        data = {name: redact(value) if name in _ERROR_FIELDS and isinstance(value, str) else
                _kept(value, store if name == _ATTACHING_RESULT_FIELD else None) for name, value in data.items()}
        # The order read_head relies on: id, index, label, settings, then result (success and cost
        # first), then the sheet; what decides reuse is read without parsing the answer.
        record: dict[str, Any] = {"id": key, "index": index}
        if label is not None:
            record["label"] = label
        if settings is not None:
            record["settings"] = settings
        record["result"] = {"success": data.pop("success"), "cost": data.pop("cost", None), **data}
        if sheet is not None:
            kept = {name: getattr(sheet, name, None) for name in _SHEET_FIELDS}
            kept = {name: _kept(value, store if name == _ATTACHING_SHEET_FIELD else None)
                    for name, value in kept.items()}
            record["sheet"] = {name: value for name, value in kept.items() if value}
        return json.dumps(record, ensure_ascii=True, default=str) + "\n"

    def close(self) -> None:
        with self._mutex:
            handle, self._handle = self._handle, None
        try:
            if handle is not None:
                handle.close()
        except OSError as exc:  # the last flush failed (disk full): reported, not raised
            self.error = self.error or f"{type(exc).__name__}: {exc}"
            logger.warning("checkpoint %s: closing failed (%s)", self.path, exc)
        finally:
            self.index.close()
            self._lock.release()
