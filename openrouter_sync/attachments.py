"""Attachments in checkpoints: base64 data (images, PDFs, audio in ``messages=``) stored once per file.

A sheet that sends a 2 MB PDF would otherwise repeat it in every record, and a batch of a thousand
such sheets would write 2 GB. Instead, each string of at least ``MIN_CHARS`` characters that holds
base64 data (a ``data:...;base64,...`` URL, or base64 alone as in ``input_audio``) is written once
to ``<checkpoint>.attachments/<2 hex digits>/<sha256 of the string>``, and the record holds
``{"$attachment": "<sha256>", "chars": <length>}`` in its place. ``expand`` puts the strings back
(checking each digest). Files are written atomically (a temporary file, then a rename) with mode
0600, so a crash leaves no half-written attachment, and two runs storing the same file agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from ._log import logger

#: Strings shorter than this stay in the record.
MIN_CHARS = 1024
#: The key of the object that stands for a stored string.
MARKER = "$attachment"
_BASE64 = re.compile(r"[A-Za-z0-9+/_\-\r\n]+=*")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAMED = re.compile(rb'"%s": ?"(%s)"' % (re.escape(MARKER.encode()), _DIGEST.pattern.encode()))  # a marker in a line


def is_attachment(text: str) -> bool:
    """Whether ``text`` is stored as an attachment: long, and a base64 ``data:`` URL or base64 alone."""
    if len(text) < MIN_CHARS:
        return False
    if text.startswith("data:"):
        return ";base64," in text[:256]
    return _BASE64.fullmatch(text) is not None


def folder_for(checkpoint: Path) -> Path:
    """Where the attachments of ``checkpoint`` are stored: ``<checkpoint>.attachments``."""
    return checkpoint.with_name(checkpoint.name + ".attachments")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _file(folder: Path, digest: str) -> Path:
    return folder / digest[:2] / digest


def digests_in(line: bytes) -> set[str]:
    """The digests of the attachments a record's line (as written) refers to."""
    return {digest.decode() for digest in _NAMED.findall(line)}


def remove_unused(folder: Path, used: set[str]) -> int:
    """Remove the attachment files in ``folder`` whose digest is not in ``used``; how many. A folder
    or file that is a symbolic link, and any file not named as an attachment, is left alone."""
    if folder.is_symlink() or not folder.is_dir():
        return 0
    removed = 0
    for part in folder.iterdir():
        if part.is_symlink() or not part.is_dir():
            continue
        for item in part.iterdir():
            if _DIGEST.fullmatch(item.name) and item.name not in used and not item.is_symlink():
                with contextlib.suppress(OSError):
                    item.unlink()
                    removed += 1
    return removed


def _holds(target: Path, digest: str) -> bool:
    """Whether ``target`` exists and holds the data of ``digest`` (a damaged file is written again)."""
    try:
        return hashlib.sha256(target.read_bytes()).hexdigest() == digest
    except OSError:
        return False


class AttachmentStore:
    """Writes the attachments of one checkpoint, each file once; safe to use from many threads.

    ``put`` never raises: when a file cannot be written it returns None (the caller keeps the
    string in the record, so nothing is lost) and ``error`` says why."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.error: Optional[str] = None
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def put(self, text: str) -> Optional[dict[str, Any]]:
        """Store ``text`` (if not stored already) and return the object that stands for it."""
        data = _encode(text)
        digest = hashlib.sha256(data).hexdigest()
        marker = {MARKER: digest, "chars": len(text)}
        with self._lock:
            if digest in self._known:
                return marker
        target = _file(self.folder, digest)
        try:
            if not _holds(target, digest):
                self._write(target, data)
        except OSError as exc:
            with self._lock:
                if self.error is None:
                    self.error = f"{type(exc).__name__}: {exc}"
                    logger.warning("checkpoint attachments %s could not be written (%s); attachments are kept "
                                   "in the records instead", self.folder, self.error)
            return None
        with self._lock:
            self._known.add(digest)
        return marker

    def _write(self, target: Path, data: bytes) -> None:
        if self.folder.is_symlink():
            raise OSError(f"{self.folder} is a symbolic link; refusing to write through it")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def _load(folder: Path, marker: dict[str, Any]) -> Optional[str]:
    digest = marker.get(MARKER)
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        return None
    try:
        data = _file(folder, digest).read_bytes()
    except OSError as exc:
        logger.warning("checkpoint attachment %s is missing (%s); its place holds a reference", digest[:12], exc)
        return None
    if hashlib.sha256(data).hexdigest() != digest:
        logger.warning("checkpoint attachment %s is damaged (its digest differs); its place holds a reference",
                       digest[:12])
        return None
    return data.decode("utf-8", "surrogatepass")


def is_marker(value: Any) -> bool:
    """Whether ``value`` is the object that stands for a stored attachment."""
    return isinstance(value, dict) and len(value) == 2 and MARKER in value and "chars" in value


def expand(value: Any, folder: Path) -> Any:
    """``value`` (parsed JSON) with each attachment reference replaced by the stored string.

    A reference whose file is missing or damaged stays as it is (with a warning). Containers
    without references are returned as they are, not copied."""
    if is_marker(value):
        text = _load(folder, value)
        return value if text is None else text
    if isinstance(value, dict):
        items = {key: expand(item, folder) for key, item in value.items()}
        return value if all(items[key] is value[key] for key in value) else items
    if isinstance(value, list):
        expanded = [expand(item, folder) for item in value]
        return value if all(new is old for new, old in zip(expanded, value)) else expanded
    return value
