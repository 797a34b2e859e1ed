"""``Sheet``: one unit of work for ``execute_sheet`` and ``run_sheets``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .request import (
    OVERRIDE_KEYS,
    check_max_tokens,
    check_messages,
    check_model,
    check_options,
    check_temperature,
    check_timeout,
)


@dataclass
class Sheet:
    """A prompt with everything that is particular to it.

    ``overrides`` may hold ``model``, ``temperature``, ``max_tokens``, any request option
    (``provider``, ``response_format``, ``reasoning``, ...) and ``extra_body``. ``id`` names the
    sheet in checkpoints; when omitted it is derived from the content (see :attr:`key`).
    ``metadata`` is yours: it is kept in checkpoint records, never sent. ``label`` names the sheet
    in summaries (default: its ``id``, else ``#<index>``); it is not part of the key.
    """

    prompt: str = ""
    id: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    preamble: Optional[str] = None
    extensions: list[str] = field(default_factory=list)
    output_log_path: Optional[Path] = None
    timeout_seconds: Optional[float] = None
    system: Optional[str] = None
    messages: Optional[list[dict[str, Any]]] = None
    metadata: dict[str, Any] = field(default_factory=dict)
    label: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"Sheet.prompt must be a string, got {type(self.prompt).__name__}")
        if self.id is not None and not isinstance(self.id, str):
            self.id = str(self.id)
        if not isinstance(self.overrides, dict):
            raise TypeError(f"Sheet.overrides must be a dict, got {type(self.overrides).__name__}")
        check_options(self.overrides, OVERRIDE_KEYS, "override")
        if "model" in self.overrides:
            check_model(self.overrides["model"])
        if "temperature" in self.overrides:
            check_temperature(self.overrides["temperature"])
        if "max_tokens" in self.overrides:
            check_max_tokens(self.overrides["max_tokens"])
        if isinstance(self.extensions, str):
            raise TypeError("Sheet.extensions must be a list of strings, not a string")
        self.extensions = [e for e in self.extensions if e and e.strip()]
        if self.output_log_path is not None and not isinstance(self.output_log_path, Path):
            self.output_log_path = Path(self.output_log_path)
        if self.timeout_seconds is not None:
            check_timeout(self.timeout_seconds)
        if self.messages is not None:
            self.messages = check_messages(self.messages)
        if not self.prompt and self.messages is None:
            raise ValueError("a Sheet needs a non-empty prompt or messages")

    @property
    def key(self) -> str:
        """The id used in checkpoints: ``id`` if given, else a digest of what is sent.

        The digest covers prompt, messages, system, preamble, extensions and overrides, so the
        same sheet gets the same key in every run, and an edited sheet gets a new one.
        """
        if self.id is not None:
            return self.id
        content = json.dumps(
            [self.prompt, self.messages, self.system, self.preamble, self.extensions, self.overrides],
            sort_keys=True, default=str, ensure_ascii=False,
        )
        return "sha1-" + hashlib.sha1(content.encode("utf-8")).hexdigest()[:16]


SheetLike = Union[Sheet, str]


def as_sheet(item: Any) -> Sheet:
    """A ``Sheet`` from a sheet or a plain prompt string (or a dict of Sheet fields)."""
    if isinstance(item, Sheet):
        return item
    if isinstance(item, str):
        return Sheet(prompt=item)
    if isinstance(item, dict):
        return Sheet(**item)
    raise TypeError(f"a sheet must be a Sheet, a str or a dict, got {type(item).__name__}")


class SheetKeys:
    """Assigns checkpoint keys in input order: explicit ids must be unique; a derived id that
    repeats (the same prompt twice) gets a ``#2``, ``#3``... suffix so each copy runs."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def assign(self, index: int, sheet: Sheet) -> str:
        key = sheet.key
        if key in self._seen:
            if sheet.id is not None:
                raise ValueError(f"sheet id {key!r} is used twice (at indexes {self._seen[key]} and {index}); "
                                 "ids must be unique")
            n = 2
            while f"{key}#{n}" in self._seen:
                n += 1
            key = f"{key}#{n}"
        self._seen[key] = index
        return key
