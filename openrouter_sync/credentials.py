"""The API key: read from the environment (lazily, until found), cleaned, checked, never shown.

The key is known to redaction while its owner is open: ``release()`` (a backend's ``close()``)
gives it back, and the next ``get()`` holds it again."""

from __future__ import annotations

import os
import threading
from typing import Optional

from ._log import Secrets


class ApiKey:
    """Where the key comes from. ``get()`` returns the key, or None and the reason there is none.

    ``required=False`` (a server that needs no key): a missing key is ``""``, and requests carry no
    ``Authorization`` header; a key that is set but malformed is still refused."""

    def __init__(self, env: str, explicit: Optional[str] = None, required: bool = True) -> None:
        self.env = env
        self.required = required
        self._explicit = explicit
        self._key: Optional[str] = None
        self._lock = threading.Lock()
        self._secrets = Secrets()
        if explicit is not None and not isinstance(explicit, str):
            raise TypeError(f"api_key must be a string, got {type(explicit).__name__}")
        self.get()

    def get(self, hold: bool = True) -> tuple[Optional[str], str]:
        """``(key, "")`` or ``(None, why)``; reads the environment again while no key was found.
        ``hold``: the key is about to be used, so redaction must know it (again, after a release)."""
        key = self._key
        if key is not None:
            if hold and not self._secrets.held:
                self._secrets.hold()  # used again after a release
            return key, ""
        raw = self._explicit if self._explicit is not None else os.environ.get(self.env)
        if hold:
            self._secrets.hold()
        self._secrets.add(raw)
        value = (raw or "").strip()
        source = "api_key" if self._explicit is not None else f"environment variable {self.env}"
        if not value and not self.required:
            return "", ""
        if not value:
            return None, (f"API key not found in environment variable: {self.env}. "
                          f"Set it with: export {self.env}=your-key")
        if any(ord(c) < 33 or ord(c) == 127 or ord(c) > 255 for c in value):
            return None, (f"the API key in {source} contains spaces, line breaks or other characters a key "
                          "cannot have (a pasted line?); no request was sent")
        self._secrets.add(value)
        with self._lock:
            self._key = value
        return value, ""

    def hide(self, value: str) -> None:
        """Another credential (a custom auth header's value) redacted as long as the key is held."""
        self._secrets.add(value)

    def release(self) -> None:
        """Stop holding the key for redaction (its owner closed); ``get()`` holds it again."""
        self._secrets.release()

    @property
    def present(self) -> bool:
        return self.get(hold=False)[0] is not None
