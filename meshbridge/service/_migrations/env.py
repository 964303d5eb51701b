"""Alembic's environment: migrate the connection the service hands over
(``config.attributes["connection"]``), or, for a developer's ``alembic``
command, the database of ``MESHBRIDGE_LEDGER_URL``."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from meshbridge.service._ledger_schema import metadata

VERSION_TABLE = "meshbridge_alembic_version"  # beside other apps' alembic_version


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if isinstance(given, Connection):
    _migrate(given)
else:
    engine = create_engine(os.environ["MESHBRIDGE_LEDGER_URL"])
    with engine.connect() as connection:
        _migrate(connection)
    engine.dispose()
