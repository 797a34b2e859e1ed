"""Results files at scale: ``compact`` (keep the latest record of each sheet) and the records of
several files (the shards of one batch) in input order, both in bounded memory.

Both read the files once through ``CheckpointIndex`` (about 150 bytes per record, whatever the
answers hold) and then read the records they keep one at a time, by their byte range.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from ._log import logger
from .attachments import digests_in, folder_for, remove_unused
from .checkpoint import CheckpointError, CheckpointIndex, Record, _Lock

PathLike = Union[str, Path]

__all__ = ["CompactReport", "compact", "latest_records"]


@dataclass
class CompactReport:
    """What ``compact`` did: records kept and dropped (superseded, or lines that were no valid
    record), the file's size before and after, in bytes, and the attachments removed (stored for
    dropped records only)."""

    path: Path
    kept: int
    dropped: int
    bytes_before: int
    bytes_after: int
    attachments_removed: int = 0

    def __str__(self) -> str:
        removed = f"; {self.attachments_removed} unused attachment(s) removed" if self.attachments_removed else ""
        return (f"{self.path}: kept {self.kept} record(s), dropped {self.dropped} (superseded or invalid); "
                f"{self.bytes_before} -> {self.bytes_after} bytes{removed}")


def compact(path: PathLike, *, fsync: bool = True) -> CompactReport:
    """Rewrite a results file (checkpoint) keeping only the latest valid record of each sheet.

    Records are kept byte for byte, in the order they were written; superseded records, torn and
    foreign lines go (each invalid line named in a warning, as on resume). The new file is
    written next to the old one and renamed over it (``os.replace``) after an ``fsync``, so a
    crash leaves the old file or the new one, never a mix; its mode is the old file's. The
    checkpoint lock is taken first: ``CheckpointLocked`` while a run holds it. Memory: the index
    (see ``CheckpointIndex``), one record at a time and the digests of the attachments the kept
    records use; the others are then removed from ``<file>.attachments/`` (a folder that is a
    symbolic link is left alone).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such results file")
    lock = _Lock(path)
    index = CheckpointIndex()
    try:
        before = path.stat()
        index.add(path)
        keep = bytearray(index.records)  # a byte per record: kept or not (entries are in file order)
        for key in index:
            entry = index.latest_entry(key)
            if entry is not None:
                keep[entry] = 1
        kept = keep.count(1)
        used: set[str] = set()
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".compact", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), before.st_mode & 0o7777)
                for entry in (number for number, flag in enumerate(keep) if flag):
                    line = index.entry_bytes(entry)
                    used |= digests_in(line)
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                out.flush()
                if fsync:
                    os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        if fsync:
            _fsync_folder(path.parent)
        after = path.stat().st_size
        removed = remove_unused(folder_for(path), used)
    finally:
        index.close()
        lock.release()
    report = CompactReport(path, kept, index.records - kept + index.skipped, before.st_size, after, removed)
    logger.info("%s", report)
    return report


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def latest_records(paths: Sequence[PathLike], index: Optional[CheckpointIndex] = None) -> Iterator[Record]:
    """The latest valid record of each sheet across ``paths`` (the shards of one batch; a later
    file's record of a sheet wins over an earlier file's), in input order (by the index each record
    names; records without one last, in the order their ids first appear). One record is parsed at
    a time."""
    own = index is None
    index = index if index is not None else CheckpointIndex(paths)
    try:
        for key in index.in_input_order():
            record = index.record(key)
            if record is not None:
                yield record
    finally:
        if own:
            index.close()
