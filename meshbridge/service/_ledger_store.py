"""The ledger's database: an engine per URL, migrations, writes and pruning.

Synchronous SQLAlchemy, by design: the ledger's writer is a thread of its
own (``_ledger.py``), Alembic is synchronous, and SQLite's driver is too (an
async SQLite driver is a thread behind a queue anyway); readers on the event
loop run their queries with ``asyncio.to_thread``.

Rules of the store:

1. SQLite runs in WAL mode (readers never block the writer, and the workers
   of ``serve --workers`` can share one file), with a busy timeout; a new
   database file is created with mode 0600 (prompts may be in it), in the
   state directory by default (mode 0700, as is a missing folder it makes).
2. PostgreSQL sessions run in UTC, connect within 5 s and give up a
   statement after 30 s, so a database that hangs is a failed write (the
   writer then spools) rather than a writer stuck for good.
3. Migrations run at start, once at a time across processes (a PostgreSQL
   advisory lock; a file lock beside a SQLite database), and only when the
   database is behind: a database at the head is not locked at all.
4. Inserts are idempotent: a record whose id is already stored is skipped,
   so replaying a spool twice stores each record once.
5. The insert is the one hot statement (every call is a row): compiled once,
   its rows converted by the column types' bind processors and handed to the
   driver's own ``executemany`` in SQLAlchemy's transaction, it costs about a
   third of what ``Connection.execute`` costs per row.
6. The writer shares the GIL with the event loop: rows are made in slices
   of 64, and the GIL is offered to the loop after each, so a batch stalls
   no request for more than a slice (about a millisecond) at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, delete, event, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.sql.dml import Insert

from meshbridge import CallRecord

from ._ledger_schema import calls, row_of
from ._private_dir import make_private_dir, state_dir

__all__ = ["Store"]

log = logging.getLogger("meshbridge.ledger")

# _alembic_later: Alembic is imported where a schema is checked or migrated,
# not with this module: that is 150 ms of every `meshbridge` command that
# opens no ledger (check, routes, reload, kinds).

VERSION_TABLE: Final = "meshbridge_alembic_version"
_MIGRATIONS: Final = Path(__file__).with_name("_migrations")
_LOCK_KEY: Final = 0x6D62_6C65_6467_6572  # "mbledger": the advisory lock of migrations
_PRUNE_CHUNK: Final = 5000  # rows per DELETE, so a prune never holds a long lock
_SLICE: Final = 64  # rows made between two offers of the GIL to the event loop (rule 6)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


class Store:
    """The database behind one ledger URL.

    Args:
        url: a SQLAlchemy URL (``sqlite+pysqlite:///PATH`` or
            ``postgresql+psycopg://...``; see ``_ledger_config.database_url``).
        create: False to refuse a SQLite file that does not exist yet (a
            reader), instead of creating it.

    Raises:
        FileNotFoundError: ``create`` is False and there is no such database file.
        OSError: the SQLite file's directory cannot be made or used.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self.path: Path | None = None
        if self.dialect == "sqlite":
            self.path = Path(parsed.database or "")
            self._prepare_file(self.path, create)
            self.engine: Engine = create_engine(
                parsed,
                paramstyle="named",  # rows as dicts, as psycopg's pyformat takes them too
                connect_args={"timeout": 10.0, "check_same_thread": False},
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            connect = {
                "connect_timeout": 5,
                "options": "-c timezone=UTC -c statement_timeout=30000",
                "keepalives": 1,
                "keepalives_idle": 10,
                "tcp_user_timeout": 30_000,  # ms unacknowledged before the socket fails
            }
            self.engine = create_engine(
                parsed,
                pool_size=2,
                max_overflow=4,
                pool_pre_ping=True,
                pool_recycle=1800,
                connect_args=connect,
            )

        dialect = self.engine.dialect
        self._statement = str(self._insert().compile(dialect=dialect))
        self._processors = [
            (name, process)
            for name, column in calls.columns.items()
            if (process := column.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]

    @staticmethod
    def _prepare_file(path: Path, create: bool) -> None:
        if path.exists():
            return
        if not create:
            raise FileNotFoundError(f"no ledger database at {path}")
        if path.parent == state_dir() or not path.parent.exists():
            make_private_dir(path.parent)
        with contextlib.suppress(FileExistsError):  # another worker made it meanwhile
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))

    @property
    def where(self) -> str:
        """The database, as a log line may name it (never its password)."""
        return self.engine.url.render_as_string(hide_password=True)

    # -- schema ------------------------------------------------------------------

    def revision(self) -> str | None:
        """The schema's Alembic revision (None: an empty database)."""
        with self.engine.connect() as connection:
            from alembic.runtime.migration import MigrationContext  # see _alembic_later

            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()

    @staticmethod
    def head() -> str | None:
        """The revision this meshbridge's migrations lead to."""
        from alembic.script import ScriptDirectory  # see _alembic_later

        return ScriptDirectory(str(_MIGRATIONS)).get_current_head()

    def migrate(self) -> None:
        """Upgrade the schema to :meth:`head` (rule 3)."""
        found, head = self.revision(), self.head()
        if found == head:
            return
        log.info("ledger: upgrading the schema of %s from %s to %s", self.where, found, head)
        with self._migration_lock() as connection:
            from alembic import command  # see _alembic_later
            from alembic.config import Config as AlembicConfig

            config = AlembicConfig()
            config.set_main_option("script_location", str(_MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[Connection]:
        if self.path is not None:
            fd = os.open(f"{self.path}.migrate-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "r+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                with self.engine.begin() as connection:
                    yield connection
        else:
            with self.engine.begin() as connection:
                connection.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})"))
                yield connection

    # -- rows ----------------------------------------------------------------------

    def _insert(self) -> Insert:
        if self.dialect == "postgresql":
            return postgresql.insert(calls).on_conflict_do_nothing(index_elements=[calls.c.id])
        return sqlite.insert(calls).on_conflict_do_nothing(index_elements=[calls.c.id])

    def insert(self, records: Sequence[CallRecord]) -> None:
        """Store ``records`` (their prompts as given) in one transaction; ids
        already stored are skipped (rule 4).

        The statement is SQLAlchemy's, compiled once for the dialect; each
        row goes through the columns' own bind processors, then to the
        driver's executemany, which is what SQLAlchemy would do, less its
        per-row bookkeeping (rules 5 and 6)."""
        if not records:
            return
        processors = self._processors
        rows = []
        for start in range(0, len(records), _SLICE):
            for record in records[start : start + _SLICE]:
                row = row_of(record, record.prompt)
                for name, process in processors:
                    row[name] = process(row[name])
                rows.append(row)
            time.sleep(0)  # rule 6: the event loop's thread gets the GIL between slices
        with self.engine.begin() as connection:
            cursor = connection.connection.cursor()  # the driver's own: no per-row wrapping
            try:
                cursor.executemany(self._statement, rows)
            finally:
                cursor.close()

    def prune(self, before: datetime) -> int:
        """Delete the calls that started before ``before``, a chunk per
        transaction; returns how many were deleted."""
        deleted = 0
        while True:
            chunk = select(calls.c.id).where(calls.c.started < before).limit(_PRUNE_CHUNK)
            with self.engine.begin() as connection:
                count = connection.execute(delete(calls).where(calls.c.id.in_(chunk))).rowcount
            deleted += count
            if count < _PRUNE_CHUNK:
                return deleted

    def dispose(self) -> None:
        self.engine.dispose()
