"""The reference backend's mutable per-sheet state: overrides, preamble, extensions, output log path.

Kept for compatibility with code written against the reference (``apply_overrides`` before a
sheet, ``clear_overrides`` after it, under ``override_lock``). Code that runs sheets from many
threads should use ``execute_sheet(Sheet(...))``, which reads none of this.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .request import OVERRIDE_KEYS, check_max_tokens, check_model, check_options, check_temperature

SETTINGS = ("model", "temperature", "max_tokens")


def _coerce(value: Any, kind: type, name: str) -> Any:
    """``float("0.5")`` / ``int("100")`` as the reference's apply_overrides does; a clear error otherwise."""
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    return value


class SheetState:
    """What ``apply_overrides`` changed (to restore it), and the preamble, extensions and log path.

    The three settings themselves live on the backend as public attributes, as in the reference;
    this object changes them on the backend it is given and remembers the values to restore.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._saved: Optional[dict[str, Any]] = None
        self.options: dict[str, Any] = {}
        self.preamble: Optional[str] = None
        self.extensions: list[str] = []
        self.output_log_path: Optional[Path] = None

    def apply(self, target: Any, overrides: Mapping[str, Any]) -> None:
        """Set ``target.model`` / ``temperature`` / ``max_tokens`` and request options until :meth:`clear`."""
        if not overrides:
            return
        check_options(overrides, OVERRIDE_KEYS, "override")
        values: dict[str, Any] = {}
        if "model" in overrides:
            values["model"] = check_model(str(overrides["model"]))
        if "temperature" in overrides:
            value = overrides["temperature"]
            values["temperature"] = None if value is None else check_temperature(_coerce(value, float, "temperature"))
        if "max_tokens" in overrides:
            value = overrides["max_tokens"]
            values["max_tokens"] = None if value is None else check_max_tokens(_coerce(value, int, "max_tokens"))
        with self.lock:
            if self._saved is None:
                self._saved = {name: getattr(target, name) for name in SETTINGS}
            for name, value in values.items():
                setattr(target, name, value)
            self.options = {k: v for k, v in overrides.items() if k not in SETTINGS}

    def clear(self, target: Any) -> None:
        """Restore what :meth:`apply` changed; a no-op when nothing was applied."""
        with self.lock:
            if self._saved is None:
                return
            for name, value in self._saved.items():
                setattr(target, name, value)
            self._saved = None
            self.options = {}

    def base(self, target: Any) -> tuple[str, Optional[float], Optional[int]]:
        """The target's settings as they were before any override (what sheets start from)."""
        saved = self._saved
        if saved is not None:
            return saved["model"], saved["temperature"], saved["max_tokens"]
        return target.model, target.temperature, target.max_tokens

    def set_preamble(self, preamble: Optional[str]) -> None:
        if preamble is not None and not isinstance(preamble, str):
            raise TypeError(f"preamble must be a string or None, got {type(preamble).__name__}")
        self.preamble = preamble

    def set_extensions(self, extensions: Sequence[str]) -> None:
        if isinstance(extensions, str):
            raise TypeError("extensions must be a list of strings, not a string")
        self.extensions = [e for e in extensions if isinstance(e, str) and e.strip()]

    def set_output_log_path(self, path: Optional[Path]) -> None:
        self.output_log_path = None if path is None else Path(path)
