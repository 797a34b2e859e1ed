"""The library's logger and the redaction that keeps API keys and other credentials out of every record.

Known secrets (API keys, proxy and Redis passwords, custom auth headers) are held by reference
count: each owner (a backend's key, a transport's proxy, a Redis state) registers its secrets
while it is open and releases them when it closes, so a process that serves many keys in turn
keeps only those in use (and the last ``RECENT`` released, so results read just after a backend
closed are still redacted). Finding them costs the same whatever their number: a secret of
``LONG`` or more characters is found through a table of its ``FRAGMENT``-character slices, looked
up at every ``FRAGMENT``-th position of a text (any occurrence covers one such aligned slice);
shorter ones (passwords) are searched for one by one, and they are few.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict, deque
from typing import Any, Iterable, Optional
from urllib.parse import quote, unquote

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

FRAGMENT = 8  # an error text that echoes this many characters of a known (long) secret is redacted there
LONG = 2 * FRAGMENT - 1  # a secret this long always covers one FRAGMENT-aligned slice of a text it is in
MIN_SECRET = 4  # shorter values are not remembered (they would redact ordinary words)
RECENT = 32  # released secrets still redacted (the most recent ones)

_lock = threading.Lock()
_pending: deque[str] = deque()  # releases not yet carried out (see release_secret)
_counts: dict[str, int] = {}  # secret -> owners holding it (0: released, kept among the recent)
_recent: OrderedDict[str, None] = OrderedDict()  # released secrets, oldest first
_short: tuple[str, ...] = ()  # known secrets shorter than LONG, longest first
_slices: dict[str, tuple[str, ...]] = {}  # FRAGMENT-character slice -> the long known secrets that contain it


def _add(value: str) -> None:
    global _short
    if len(value) < LONG:
        _short = tuple(sorted((*_short, value), key=len, reverse=True))
        return
    for i in range(len(value) - FRAGMENT + 1):
        piece = value[i:i + FRAGMENT]
        have = _slices.get(piece, ())
        if value not in have:
            _slices[piece] = (*have, value)


def _drop(value: str) -> None:
    global _short
    if len(value) < LONG:
        _short = tuple(s for s in _short if s != value)
        return
    for i in range(len(value) - FRAGMENT + 1):
        piece = value[i:i + FRAGMENT]
        left = tuple(s for s in _slices.get(piece, ()) if s != value)
        if left:
            _slices[piece] = left
        else:
            _slices.pop(piece, None)


def register_secret(value: Optional[str]) -> None:
    """Hold a secret (a key, a password): it is redacted everywhere until ``release_secret`` is
    called as many times. Values shorter than ``MIN_SECRET`` characters are ignored."""
    if not value or len(value) < MIN_SECRET:
        return
    with _lock:
        _settle()
        count = _counts.get(value)
        if count is None:
            _add(value)
        elif count == 0:
            _recent.pop(value, None)
        _counts[value] = (count or 0) + 1
        _settle()  # releases a finalizer gave back meanwhile


def release_secret(value: Optional[str]) -> None:
    """Give back one hold of ``register_secret``; a secret nobody holds is forgotten (after the
    ``RECENT`` secrets released after it). Safe from a finalizer: it never waits for the lock (the
    garbage collector may run one while this thread holds it); a release that finds the lock taken
    is settled by the next call that takes it."""
    if not value or len(value) < MIN_SECRET:
        return
    _pending.append(value)
    if _lock.acquire(blocking=False):
        try:
            _settle()
        finally:
            _lock.release()


def _settle() -> None:
    """Carry out the releases given back so far (with ``_lock`` held)."""
    while _pending:
        value = _pending.popleft()
        count = _counts.get(value)
        if not count:
            continue
        _counts[value] = count - 1
        if count > 1:
            continue
        _recent[value] = None
        while len(_recent) > RECENT:
            old, _ = _recent.popitem(last=False)
            del _counts[old]
            _drop(old)


def known_secrets() -> int:
    """How many secrets redaction knows right now (held, or recently released)."""
    return len(_counts)


class Secrets:
    """The secrets one owner holds (a backend's key, a transport's proxy passwords): registered by
    ``hold()`` (and ``add``), given back by ``release()``; ``hold()`` again after a release."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values = list(dict.fromkeys(v for v in values if v))
        self._held = False
        self._mutex = threading.Lock()
        self.hold()

    def add(self, value: Optional[str]) -> None:
        with self._mutex:
            if not value or value in self._values:
                return
            self._values.append(value)
            if self._held:
                register_secret(value)

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        if self._held:
            return
        with self._mutex:
            if not self._held:
                self._held = True
                for value in self._values:
                    register_secret(value)

    def release(self) -> None:
        with self._mutex:
            if self._held:
                self._held = False
                for value in self._values:
                    release_secret(value)

    def __repr__(self) -> str:
        return f"Secrets({len(self._values)} held)" if self._held else f"Secrets({len(self._values)} released)"


def _known_spans(text: str, step: int) -> list[tuple[int, int]]:
    """Spans of ``text`` that are known secrets (``step=FRAGMENT``), or, with ``step=1``, every
    run of FRAGMENT or more characters of a long known secret."""
    spans: list[tuple[int, int]] = []
    slices, short = _slices, _short
    if slices:
        candidates: set[str] = set()
        last = len(text) - FRAGMENT
        for i in range(0, last + 1, step):
            found = slices.get(text[i:i + FRAGMENT])
            if found is not None:
                if step == 1:
                    spans.append((i, i + FRAGMENT))
                else:
                    candidates.update(found)
        for secret in candidates:
            start = text.find(secret)
            while start >= 0:
                spans.append((start, start + len(secret)))
                start = text.find(secret, start + 1)
    for secret in short:
        if secret in text:
            start = text.find(secret)
            while start >= 0:
                spans.append((start, start + len(secret)))
                start = text.find(secret, start + 1)
    return spans


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the union of ``spans`` replaced by ``REDACTED``."""
    if not spans:
        return text
    spans.sort()
    out, at = [], 0
    start, end = spans[0]
    for s, e in spans[1:]:
        if s <= end:
            end = max(end, e)
            continue
        out += [text[at:start], REDACTED]
        at, start, end = end, s, e
    out += [text[at:start], REDACTED, text[end:]]
    return "".join(out)


def redact(text: str, fragments: bool = False) -> str:
    """Return ``text`` with every known secret and every key-shaped token replaced.

    ``fragments=True`` (for text a server sent back, which may echo part of a key) also replaces
    every run of ``FRAGMENT`` or more characters of a known secret of ``LONG`` or more."""
    if not text:
        return text
    if _slices or _short:
        text = _replace(text, _known_spans(text, 1 if fragments else FRAGMENT))
    return _PATTERNS.sub(REDACTED, text)


def secret_spans(text: str) -> list[tuple[int, int]]:
    """Where ``redact`` would replace something in ``text``, as (start, end) pairs."""
    spans = [m.span() for m in _PATTERNS.finditer(text)]
    spans.extend(_known_spans(text, FRAGMENT))
    return spans


def split_userinfo(url: str) -> tuple[str, str, str]:
    """``(scheme, userinfo, rest)`` of a URL, robust to a password with ``#``, ``/``, ``?`` or
    ``@`` left unencoded: the userinfo runs to the last ``@`` before the host (``urlsplit`` would
    read such a password as a port, a path or a fragment, and show it in its errors)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return "", "", url.strip()
    at = rest.rfind("@")
    return scheme, (rest[:at] if at >= 0 else ""), (rest[at + 1:] if at >= 0 else rest)


def encode_userinfo(url: str) -> str:
    """``url`` with its user name and password percent-encoded, however they were written: a
    password with an unencoded ``#``, ``/``, ``?`` or ``@`` (``http://user:Hunter2#pass@proxy``)
    would otherwise be read as a fragment, a path or a query by URL parsers (urllib3, redis-py),
    which then refuse the URL and quote it whole in their errors, or send a wrong password. An
    already encoded one stays as it is (both decode it again)."""
    scheme, userinfo, rest = split_userinfo(url)
    if not scheme or not userinfo:
        return url
    user, colon, password = userinfo.partition(":")
    encoded = quote(unquote(user), safe="") + (colon + quote(unquote(password), safe="") if colon else "")
    return f"{scheme}://{encoded}@{rest}"


def password_forms(*passwords: str) -> tuple[str, ...]:
    """Every form a password may be shown in: as written, decoded and encoded, and the pieces a
    URL parser may cut it into (at ``#/?@:&=``); longest first."""
    forms = {p for p in passwords if p}
    forms |= {unquote(form) for form in forms} | {unquote(form.replace("+", " ")) for form in forms}
    forms |= {quote(form, safe="") for form in forms} | {quote(form) for form in forms}
    pieces = {piece for form in forms for piece in re.split(r"[#/?@:&=]", form) if len(piece) >= 3}
    return tuple(sorted((form for form in forms | pieces if form), key=len, reverse=True))


def url_secrets(url: str) -> tuple[str, ...]:
    """The forms of the password (and the whole userinfo) in a URL's user part (see ``password_forms``)."""
    _, userinfo, _ = split_userinfo(url)
    if not userinfo:
        return ()
    return password_forms(userinfo.split(":", 1)[1], userinfo) if ":" in userinfo else password_forms(userinfo)


def redact_url(url: str) -> str:
    """``url`` as shown to users: scheme, user name, host, port and path; never a password, the
    query (which may hold one) or the fragment."""
    scheme, userinfo, rest = split_userinfo(url)
    if not scheme:
        return "(not a URL)"
    user = userinfo.split(":", 1)[0]
    where = re.split(r"[?#]", rest, maxsplit=1)[0]
    return f"{scheme}://{user + '@' if user else ''}{where}{'?...' if '?' in rest else ''}"


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
    if not text or not (_slices or _short):
        return text
    return _replace(text, _known_spans(text, FRAGMENT))


def may_hold_secret(text: str) -> bool:
    """A fast test: False only when ``redact(text)`` would change nothing (every secret shape holds
    ``sk-`` or ``bearer``; the known secrets are searched as substrings while they are few, else
    through the slice table). For whole response bodies, where running the redaction itself costs
    more than parsing the JSON."""
    low = text.lower()
    if "sk-" in low or "bearer" in low:
        return True
    known = tuple(_counts)
    if len(known) <= 8:
        return any(secret in text for secret in known)
    return bool(_known_spans(text, FRAGMENT))


def redact_data(data: Any, fragments: bool = False) -> Any:
    """``data`` (parsed JSON) with ``redact`` applied to every string in it, keys included; the same
    object when nothing changes, else a copy (the input is never modified). ``fragments`` as in ``redact``."""
    if isinstance(data, str):
        if not fragments and not may_hold_secret(data):
            return data
        cleaned = redact(data, fragments)
        return data if cleaned == data else cleaned
    if isinstance(data, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, value in data.items():
            new_key = redact_data(key, fragments)
            new_value = redact_data(value, fragments)
            changed = changed or new_key is not key or new_value is not value
            out[new_key] = new_value
        return out if changed else data
    if isinstance(data, list):
        items = [redact_data(item, fragments) for item in data]
        return items if any(new is not old for new, old in zip(items, data)) else data
    return data
