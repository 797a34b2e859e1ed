"""The library's logger and the redaction that keeps API keys out of every record."""

from __future__ import annotations

import logging
import re
import threading
from typing import Iterable

logger = logging.getLogger("openrouter_sync")
logger.addHandler(logging.NullHandler())

REDACTED = "[REDACTED]"

# Shapes of secrets that must never be shown, whatever their source.
_PATTERNS = re.compile(
    r"sk-or-v1-[A-Za-z0-9_\-]+"  # OpenRouter keys
    r"|sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}"  # other OpenAI-style keys
    r"|(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?i:bearer)\s+[^\s\"',}]+"  # an Authorization header, whatever the token
    r"|(?i:bearer)\s+(?=[A-Za-z0-9_\-.=:/+]*\d)[A-Za-z0-9_\-.=:/+]{12,}"  # a bearer token in prose (it has digits)
)

_secrets_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_secret_re: re.Pattern[str] | None = None
_fragment_re: re.Pattern[str] | None = None
_redact_re: re.Pattern[str] = _PATTERNS  # the known secrets (longest first), then the shapes: one pass
FRAGMENT = 8  # an error text that echoes this many characters of a known secret is redacted there


def register_secret(value: str | None) -> None:
    """Remember a secret (e.g. whatever the configured key variable holds) so it is always redacted."""
    global _secrets, _secret_re, _redact_re, _fragment_re
    if not value or len(value) < 4 or value in _secrets:
        return
    with _secrets_lock:
        _secrets = _secrets | {value}
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))
        _redact_re = re.compile(f"{_secret_re.pattern}|{_PATTERNS.pattern}")
        grams = {s[i:i + FRAGMENT] for s in _secrets if len(s) >= 2 * FRAGMENT for i in range(len(s) - FRAGMENT + 1)}
        _fragment_re = re.compile("|".join(re.escape(g) for g in sorted(grams))) if grams else None


def redact(text: str, fragments: bool = False) -> str:
    """Return ``text`` with every known secret and every key-shaped token replaced.

    ``fragments=True`` (for text a server sent back, which may echo part of a key) also replaces
    every run of ``FRAGMENT`` or more characters of a known secret."""
    if not text:
        return text
    text = _redact_re.sub(REDACTED, text)
    fragment_re = _fragment_re
    if fragments and fragment_re is not None:
        text = fragment_re.sub(REDACTED, text)
    return text


def secret_spans(text: str) -> list[tuple[int, int]]:
    """Where ``redact`` would replace something in ``text``, as (start, end) pairs."""
    spans = [m.span() for m in _PATTERNS.finditer(text)]
    secret_re = _secret_re
    if secret_re is not None:
        spans.extend(m.span() for m in secret_re.finditer(text))
    return spans


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (and exception text) of a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_filter = RedactingFilter()
logger.addFilter(_filter)


def attach_redaction(handlers: Iterable[logging.Handler]) -> None:
    """Add the redacting filter to handlers (for records that reach them from other loggers)."""
    for handler in handlers:
        if _filter not in handler.filters:
            handler.addFilter(_filter)


def redact_secrets(text: str) -> str:
    """Return ``text`` with the registered secrets (``register_secret``) replaced, and nothing else.

    For text that is the user's own and is kept as it was (answers and prompts in a checkpoint),
    where a key-shaped example (``sk-proj-EXAMPLE...``) is not a key."""
    secret_re = _secret_re
    return secret_re.sub(REDACTED, text) if text and secret_re is not None else text
