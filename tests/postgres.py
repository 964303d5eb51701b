"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries,
a cluster in a temporary directory, on a free 127.0.0.1 port and a Unix
socket there, run by the ``postgres`` user when the tests run as root (the
server refuses root). Started by the session fixture of ``tests/conftest.py``
and stopped by its pid; the directory goes with it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from .helpers import missing

__all__ = ["PostgresServer", "find_postgres", "require_postgres", "running_postgres"]


def find_postgres() -> Path | None:
    """The bin directory of the newest PostgreSQL installed, or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def require_postgres() -> Path:
    """Skip without PostgreSQL, but fail under ``CI=true``."""
    bindir = find_postgres()
    if bindir is None:
        missing("PostgreSQL is not installed (`make system-deps` installs Debian's postgresql)")
    return bindir


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A new cluster, started; stopped by its pid and removed on the way out.
    Skipped without PostgreSQL, a failure under ``CI=true``."""
    server = PostgresServer.create(require_postgres())
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One cluster; :meth:`stop` and :meth:`start` again keep its data and port."""

    bindir: Path
    directory: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    _databases: int = 0

    @classmethod
    def create(cls, bindir: Path) -> PostgresServer:
        directory = Path(tempfile.mkdtemp(prefix="meshbridge-pg-"))
        server = cls(bindir, directory)
        if os.getuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
        server._run([str(bindir / "initdb"), "-D", str(server.data), "-A", "trust",
                     "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions"])  # fmt: skip
        return server

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "SIGTERM"] if setpriv else []
        if os.getuid() == 0:
            if not setpriv:
                pytest.fail("setpriv is needed to run PostgreSQL as the postgres user")
            prefix += ["--reuid=postgres", "--regid=postgres", "--init-groups"]
        return [*prefix, "--", *argv] if prefix else list(argv)

    def _run(self, argv: Sequence[str]) -> None:
        done = subprocess.run(self._as_owner(argv), capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.fail(f"{argv[0]} failed: {done.stderr.decode(errors='replace')}")

    def start(self) -> None:
        """Start the server (bounded) and wait until it takes connections."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "fsync": "off",  # a throwaway cluster: durability is not under test
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log = (self.directory / "postgres.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                self._as_owner(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"postgres exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"postgres did not take connections in 30 s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: connections are cut), SIGKILL after 10 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        path = self.directory / "postgres.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; returns its URL."""
        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)
