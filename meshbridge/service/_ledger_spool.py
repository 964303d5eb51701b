"""The ledger's spool: records kept on local disk while the database is
down or slow, replayed into it when it answers again.

Rules of the spool:

1. A spool is a directory of JSON-lines files, one record a line, private to
   its user (0700, files 0600), one directory per database (named after a
   digest of its URL), so records are only ever replayed into the database
   they were meant for.
2. Each writer holds one file, the lowest-numbered one it can lock
   (``flock``): the workers of ``serve --workers`` never share a file, and a
   restarted process takes over a file left by one that died.
3. The spool is bounded by ``max_bytes`` per file: a record that would pass
   the bound is not written (the caller counts it as dropped).
4. Replay reads the whole file and inserts it; only once every record is
   stored is the file emptied. A crash in between replays it again, which
   the store's idempotent inserts make harmless. Files that no process holds
   (a worker that is gone for good) are replayed and removed by whichever
   writer can lock them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Final

from meshbridge import CallRecord

from ._private_dir import make_private_dir

__all__ = ["Spool", "spool_dir"]

_MAX_FILES: Final = 1024


def spool_dir(base: Path, url: str) -> Path:
    """The spool directory of the database at ``url`` (rule 1)."""
    return base / "ledger-spool" / hashlib.sha256(url.encode()).hexdigest()[:16]


_FIELDS: Final = tuple(f.name for f in dataclasses.fields(CallRecord))
_SLICE: Final = 64  # lines made between two offers of the GIL to the event loop


def _line(record: CallRecord) -> bytes:
    data = {name: getattr(record, name) for name in _FIELDS}  # asdict() copies deeply: slow
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _records(raw: bytes) -> Iterator[CallRecord]:
    for line in raw.splitlines():
        try:
            data = json.loads(line)
            data["tool_calls"] = tuple(data["tool_calls"])
            yield CallRecord(**data)
        except (ValueError, TypeError, KeyError):
            continue  # a line cut short by a crash: nothing to replay


def _open_locked(path: Path) -> IO[bytes] | None:
    """``path`` opened for appending and locked, or None if another holds it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    file = os.fdopen(os.open(path, flags, 0o600), "a+b")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # a holder may have removed the file (empty) before it let go of the lock
        if os.fstat(file.fileno()).st_ino != os.stat(path, follow_symlinks=False).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        file.close()
        return None
    return file


class Spool:
    """One writer's spool file (see the module's rules).

    Args:
        directory: from :func:`spool_dir`; created if missing.
        max_bytes: the most the file may hold.

    Raises:
        UnsafeDirectory: the directory is not private to this user.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = make_private_dir(directory)
        self.max_bytes = max_bytes
        self._file: IO[bytes] | None = None
        for slot in range(_MAX_FILES):
            self._file = _open_locked(directory / f"spool-{slot}.jsonl")
            if self._file is not None:
                self.path = directory / f"spool-{slot}.jsonl"
                break
        else:
            raise OSError(f"{directory}: all {_MAX_FILES} spool files are in use")
        self.bytes = os.fstat(self._file.fileno()).st_size
        self.records = self._count()

    def _count(self) -> int:
        assert self._file is not None
        self._file.seek(0)
        return sum(1 for _ in _records(self._file.read()))

    def append(self, records: list[CallRecord]) -> int:
        """Write as many of ``records`` as fit under the bound; returns how many."""
        assert self._file is not None
        out = bytearray()
        kept = 0
        for record in records:
            line = _line(record)
            if self.bytes + len(out) + len(line) > self.max_bytes:
                break
            out += line
            kept += 1
            if not kept % _SLICE:
                time.sleep(0)  # the writer shares the GIL with the event loop
        if out:
            self._file.write(out)
            self._file.flush()
            self.bytes += len(out)
            self.records += kept
        return kept

    def replay(self, store: Callable[[list[CallRecord]], None], batch: int) -> int:
        """Hand the file's records to ``store`` in batches, then empty it
        (rule 4); returns how many. Whatever ``store`` raises leaves the file as it was."""
        assert self._file is not None
        if not self.bytes:
            return 0
        self._file.seek(0)
        count = _replay(self._file.read(), store, batch)
        self._file.truncate(0)
        self.bytes = self.records = 0
        return count

    def adopt(self, store: Callable[[list[CallRecord]], None], batch: int) -> int:
        """Replay and remove the spool files no process holds (rule 4)."""
        count = 0
        for path in sorted(self.directory.glob("spool-*.jsonl")):
            if path == self.path:
                continue
            with contextlib.suppress(OSError):
                orphan = _open_locked(path)
                if orphan is None:
                    continue
                with orphan:
                    orphan.seek(0)
                    count += _replay(orphan.read(), store, batch)
                    path.unlink()
        return count

    def close(self) -> None:
        """Let the file go; an empty one is removed."""
        if self._file is None:
            return
        if not self.bytes:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._file.close()
        self._file = None


def _replay(raw: bytes, store: Callable[[list[CallRecord]], None], batch: int) -> int:
    records = list(_records(raw))
    for start in range(0, len(records), batch):
        store(records[start : start + batch])
    return len(records)
