"""The ledger's Alembic script directory: ``env.py`` and ``versions/``.

The service runs them itself at start (``_ledger_store.migrate``). To write
a new migration, from the repository::

    alembic -c meshbridge/service/_migrations/alembic.ini revision -m "what changes"

with ``MESHBRIDGE_LEDGER_URL`` naming a database at the current head.
"""
