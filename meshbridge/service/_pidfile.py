"""The pid file of ``meshbridge serve``, and signalling the right process.

The rules, because a pid file is a way to make us signal some process:

1. The pid file lives in a directory only its owner can write: by default
   ``$XDG_RUNTIME_DIR/meshbridge`` (else the state directory), created with
   mode 0700. A directory that belongs to another user or that group or
   others can write is refused, for reading and for writing (``/tmp`` is
   such a directory): see ``_private_dir.py``.
2. It is written to a new file in that directory and renamed into place, so
   a symbolic link planted at its name is replaced, never written through.
   It is read without following links, and only if we own it.
3. Before a signal is sent, ``/proc/PID`` must show that the process is
   ``meshbridge serve`` of that config (its command line names ``meshbridge``,
   ``serve`` and a path that resolves, from the process's working directory,
   to the config file). The signal then goes through a pidfd opened before
   the check, so a pid reused meanwhile gets nothing. Where there is no
   ``/proc``, nothing is signalled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ._config import Config
from ._private_dir import UnsafeDirectory, check_private_dir, make_private_dir, state_dir

__all__ = [
    "PidFileError",
    "pid_dir",
    "pid_file_for",
    "read_pid_file",
    "remove_pid_file",
    "running_serve",
    "signal_serve",
    "write_pid_file",
]


class PidFileError(Exception):
    """The pid file cannot be used safely, or the pid is not the right process."""


def pid_dir() -> Path:
    """The directory of default pid files (see the module's rules)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return Path(runtime, "meshbridge")
    return state_dir()


def pid_file_for(config: Config) -> Path:
    """Where ``serve`` writes its pid: ``server.pid_file``, or a file in
    :func:`pid_dir` named after the config's absolute path (so ``meshbridge
    reload CONFIG`` finds it)."""
    if config.server.pid_file is not None:
        return config.server.pid_file
    digest = hashlib.sha256(str(config.path.resolve()).encode()).hexdigest()[:16]
    return pid_dir() / f"{digest}.pid"


def _check_dir(directory: Path) -> None:
    try:
        check_private_dir(directory)
    except UnsafeDirectory as exc:
        raise PidFileError(str(exc)) from None


def write_pid_file(path: Path) -> None:
    """Write our pid to ``path``, creating the default directory if it is
    the one in use.

    Raises:
        PidFileError: the directory is not private to us, or cannot be written.
    """
    directory = path.parent
    if directory == pid_dir():
        try:
            make_private_dir(directory)
        except UnsafeDirectory as exc:
            raise PidFileError(str(exc)) from None
    _check_dir(directory)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise PidFileError(f"{directory}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o644)
            file.write(f"{os.getpid()}\n")
        os.replace(temp, path)  # a link at `path` is replaced, not followed
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise PidFileError(f"{path}: {exc.strerror or exc}") from None


def read_pid_file(path: Path) -> int:
    """The pid in ``path``.

    Raises:
        PidFileError: there is no such file, or it is not safe to trust
            (a link, not ours, in a directory others can write) or holds no pid.
    """
    _check_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise PidFileError(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd) as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise PidFileError(f"{path} is not a regular file of ours")
        text = file.read(32).strip()
    if not text.isdigit() or int(text) <= 0:
        raise PidFileError(f"{path} holds no pid ({text!r})")
    return int(text)


def remove_pid_file(path: Path) -> None:
    """Remove ``path`` if it still holds our pid."""
    with contextlib.suppress(OSError, PidFileError):
        if read_pid_file(path) == os.getpid():
            path.unlink()


def _is_serve(args: Sequence[str], cwd: str, config: Path | None) -> bool:
    if "serve" not in args:
        return False
    at = args.index("serve")
    if not any(Path(arg).name.startswith("meshbridge") for arg in args[:at]):
        return False  # `meshbridge serve`, `python -m meshbridge serve`, .../bin/meshbridge
    if config is None:
        return True
    target = config.resolve()
    return any(Path(cwd, arg).resolve() == target for arg in args[at + 1 :] if arg[:1] != "-")


def _check_serves(pid: int, config: Path | None) -> None:
    proc = Path("/proc", str(pid))
    if not Path("/proc/self").exists():
        raise PidFileError(f"cannot check what pid {pid} runs: this system has no /proc")
    try:
        args = [os.fsdecode(a) for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        cwd = os.readlink(proc / "cwd")
    except FileNotFoundError:
        raise PidFileError(f"no process has pid {pid}") from None
    except PermissionError:
        raise PidFileError(f"pid {pid} belongs to another user") from None
    if not _is_serve(args, cwd, config):
        what = f"`meshbridge serve {config}`" if config else "`meshbridge serve`"
        runs = " ".join(args)
        raise PidFileError(f"pid {pid} is not {what}: it runs {runs[:200]!r}")


def running_serve(path: Path, config: Path) -> int | None:
    """The pid the pid file ``path`` holds if that process is another running
    ``meshbridge serve`` of ``config`` (then a second one must not start: it
    would overwrite the pid file, and delete it when it stops); else None."""
    try:
        pid = read_pid_file(path)
        if pid == os.getpid():
            return None
        _check_serves(pid, config)
    except PidFileError:
        return None
    return pid


def signal_serve(pid: int, config: Path | None, signum: int = signal.SIGHUP) -> None:
    """Send ``signum`` to ``pid`` if it is ``meshbridge serve`` of ``config``
    (of any config when None).

    Raises:
        PidFileError: it is not, it cannot be checked, or it cannot be signalled.
    """
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):  # no pidfd: Linux < 5.3, or gone
        pidfd = os.pidfd_open(pid)
    try:
        _check_serves(pid, config)
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        raise PidFileError(f"no process has pid {pid}") from None
    except OSError as exc:
        raise PidFileError(f"cannot signal pid {pid}: {exc.strerror or exc}") from None
    finally:
        if pidfd is not None:
            os.close(pidfd)
