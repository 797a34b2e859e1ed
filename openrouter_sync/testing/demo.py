"""Offline mode: the real OpenRouter when a key is set, else the built-in fake server (and say so)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Optional, TextIO

from .server import FakeOpenRouter

OFFLINE_ENV = "OPENROUTER_SYNC_OFFLINE"
OFFLINE_NOTICE = ("OFFLINE: answers come from openrouter-sync's built-in fake server on 127.0.0.1, "
                  "not from a model. Set OPENROUTER_API_KEY to use OpenRouter.")
OFFLINE_NOTICE_WITH_KEY = ("OFFLINE: answers come from openrouter-sync's built-in fake server on 127.0.0.1, "
                           "not from a model (offline was asked for; OPENROUTER_API_KEY is set but not used).")


def offline_wanted(mode: Optional[str] = None, api_key_env: str = "OPENROUTER_API_KEY") -> bool:
    """Whether to run offline. ``mode`` (else ``$OPENROUTER_SYNC_OFFLINE``): ``1``/``yes``/``true``
    always, ``auto`` when the key variable is empty, anything else never."""
    value = (mode if mode is not None else os.environ.get(OFFLINE_ENV, "")).strip().lower()
    if value in ("1", "yes", "true", "on", "always"):
        return True
    if value == "auto":
        return not os.environ.get(api_key_env)
    return False


@contextlib.contextmanager
def demo_backend(offline: Optional[str] = "auto", notice: Optional[TextIO] = None,
                 **backend_options: Any) -> Iterator[Any]:
    """An ``OpenRouterBackend``: on OpenRouter, or (per ``offline``, see ``offline_wanted``) on a
    fake server started for the occasion, announced on ``notice`` (stderr by default)."""
    from ..backend import OpenRouterBackend

    if not offline_wanted(offline, backend_options.get("api_key_env", "OPENROUTER_API_KEY")):
        with OpenRouterBackend(**backend_options) as backend:
            yield backend
        return
    has_key = bool(os.environ.get(backend_options.get("api_key_env", "OPENROUTER_API_KEY")))
    print(OFFLINE_NOTICE_WITH_KEY if has_key else OFFLINE_NOTICE, file=notice or sys.stderr, flush=True)
    with FakeOpenRouter() as server:
        backend_options.update(base_url=server.base_url, api_key="offline-fake-key")
        with OpenRouterBackend(**backend_options) as backend:
            yield backend
