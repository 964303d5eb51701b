"""Directories only their owner can write: where the pid file, the ledger's
SQLite database and its spool live.

Rules, because a file in a directory others can write can be swapped,
planted or read by them:

1. The state directory is ``$XDG_STATE_HOME/meshbridge`` (an absolute
   ``XDG_STATE_HOME`` only), else ``~/.local/state/meshbridge``.
2. A directory we create is created with mode 0700, and so is each missing
   parent we create on the way; it must not be a symbolic link.
3. A directory we use must be a directory, belong to us (or root), and
   give no write permission to group or others (``/tmp`` is refused).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["UnsafeDirectory", "check_private_dir", "make_private_dir", "state_dir"]


class UnsafeDirectory(Exception):
    """A directory that others could write, or that cannot be made or used."""


def state_dir() -> Path:
    """``$XDG_STATE_HOME/meshbridge``, else ``~/.local/state/meshbridge``."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "meshbridge"


def check_private_dir(directory: Path) -> None:
    """Raise :class:`UnsafeDirectory` unless ``directory`` keeps rule 3."""
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise UnsafeDirectory(f"{directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{directory} is not a directory")
    if info.st_uid not in (os.getuid(), 0):
        raise UnsafeDirectory(f"{directory} belongs to another user (uid {info.st_uid})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        raise UnsafeDirectory(f"{directory} can be written by other users (mode {mode:o})")


def make_private_dir(directory: Path) -> Path:
    """Create ``directory`` (mode 0700) if missing, then check it (rules 2, 3).

    Raises:
        UnsafeDirectory: it cannot be created, is a link, or others can write it.
    """
    missing = [directory, *(p for p in directory.parents if not p.exists())]
    try:
        for path in reversed(missing):
            path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UnsafeDirectory(f"{directory}: {exc.strerror or exc}") from None
    if directory.is_symlink():
        raise UnsafeDirectory(f"{directory} is a symbolic link")
    check_private_dir(directory)
    return directory
