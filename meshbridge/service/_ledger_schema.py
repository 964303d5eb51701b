"""The ledger's table, as SQLAlchemy Core sees it, and a record as a row.

One table, ``meshbridge_calls``, one row per caller request. The schema is
made and upgraded by the Alembic migrations in ``_migrations/`` (a test
holds this module and the migrated database equal).

Rules of the table:

1. ``id`` is the record's UUIDv7: unique (a record written twice, by a spool
   replayed after a crash, is kept once), and sorted by start time, so the
   newest calls are the highest ids and a cursor on ``id`` is stable under
   inserts of new calls.
2. ``started`` is a UTC timestamp (``timestamptz`` on PostgreSQL; text that
   sorts as time on SQLite), so Grafana's time macros work on it.
3. ``model`` is the model that answered, else the one asked for: the one
   column the model filter and group use.
4. ``duration_bucket`` is the duration on a log scale of 1% steps: the
   percentiles of a summary are counted from it in one ``GROUP BY``, which
   both dialects run the same way (see :func:`bucket_seconds`).
5. Few indexes, since every insert pays for each: ``started`` (Grafana's
   time filters, retention) and, on PostgreSQL, ``(api_key_id, started)``.
   On SQLite the table is its primary key's b-tree, in time order: a time
   range is a range of ids (``id_at``), read in order without an index, and
   an index on the key led SQLite to a plan five times slower for the key
   leaderboard. Sources, clients, providers and models are a few values
   each: a scan of the time range beats an index of them.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
)

from meshbridge import CallRecord

__all__ = [
    "BUCKET_STEP",
    "GROUPS",
    "bucket_of",
    "bucket_seconds",
    "calls",
    "id_at",
    "metadata",
    "record_of",
    "row_of",
]

BUCKET_STEP: Final = 1.01  # each duration bucket is 1% wider than the last
_BUCKET_FLOOR: Final = 1e-6  # seconds: bucket 0 holds everything up to a microsecond
_MAX_BUCKET: Final = 32_767
_MAX_TEXT: Final = 2048  # path and names are cut to this many characters


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both dialects."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

calls = Table(
    "meshbridge_calls",
    metadata,
    Column("id", Uuid(as_uuid=False), primary_key=True),
    Column("started", UTCDateTime(), nullable=False),
    Column("duration", Float(), nullable=False),
    Column("duration_bucket", SmallInteger(), nullable=False),
    Column("ttfb", Float()),
    Column("ttft", Float()),
    Column("source", String()),
    Column("api_key_id", String()),
    Column("client", String()),
    Column("peer", String()),
    Column("target", String(), nullable=False),
    Column("provider", String(), nullable=False),
    Column("attempts", SmallInteger(), nullable=False),
    Column("fallback", Boolean(), nullable=False),
    Column("reason", String()),
    Column("method", String(), nullable=False),
    Column("path", Text(), nullable=False),
    Column("status", SmallInteger(), nullable=False),
    Column("outcome", String(), nullable=False),
    Column("request_model", String()),
    Column("response_model", String()),
    Column("model", String()),
    Column("input_tokens", BigInteger()),
    Column("output_tokens", BigInteger()),
    Column("cached_input_tokens", BigInteger()),
    Column("reasoning_tokens", BigInteger()),
    Column("tool_calls", JSON(), nullable=False),
    Column("trace_id", String()),
    Column("prompt", Text()),
    # Time ranges: Grafana's queries and retention (rule 5).
    Index("ix_meshbridge_calls_started", "started"),
    # One key's calls, on PostgreSQL only (rule 5).
    Index("ix_meshbridge_calls_api_key_id", "api_key_id", "started").ddl_if(dialect="postgresql"),
    sqlite_with_rowid=False,  # the table is its primary key's b-tree: rows in id (time) order
)

# --group-by names -> the column they group on ("day" is computed, see _ledger_query.py).
GROUPS: Final = {
    "key": calls.c.api_key_id,
    "source": calls.c.source,
    "client": calls.c.client,
    "provider": calls.c.provider,
    "model": calls.c.model,
}


def id_at(seconds: float, *, after: bool = False) -> str:
    """The lowest UUIDv7 of the millisecond of ``seconds`` (``after``: of the
    next millisecond): every call that started at or after that time has an
    id at least this (rule 1), so a time range is also a range of ids."""
    ms = math.floor(seconds * 1000) + (1 if after else 0)
    return str(uuid.UUID(int=(ms & (2**48 - 1)) << 80))


def bucket_of(seconds: float) -> int:
    """The duration bucket of ``seconds`` (rule 4)."""
    if not seconds > _BUCKET_FLOOR:  # NaN too
        return 0
    return min(math.ceil(math.log(seconds / _BUCKET_FLOOR, BUCKET_STEP)), _MAX_BUCKET)


def bucket_seconds(bucket: int) -> float:
    """The duration a bucket stands for: its geometric middle, within 0.5%
    of every duration in it."""
    return _BUCKET_FLOOR * BUCKET_STEP ** (bucket - 0.5) if bucket > 0 else _BUCKET_FLOOR


def _cut(value: str | None, limit: int = _MAX_TEXT) -> str | None:
    """``value`` cut to ``limit`` characters, as a database takes text: no
    NUL (PostgreSQL refuses it) and no lone surrogate (not UTF-8)."""
    if value is None:
        return None
    if len(value) > limit:
        value = value[:limit]
    if not value.isascii():  # the common case needs no encoding to know it is fine
        try:
            value.encode()
        except UnicodeEncodeError:
            value = value.encode(errors="replace").decode()
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def row_of(record: CallRecord, prompt: str | None) -> dict[str, Any]:
    """The row of ``record``, with ``prompt`` (already redacted and cut) as its prompt."""
    return {
        "id": record.id,
        "started": datetime.fromtimestamp(record.started, UTC),
        "duration": record.duration,
        "duration_bucket": bucket_of(record.duration),
        "ttfb": record.ttfb,
        "ttft": record.ttft,
        "source": _cut(record.source),
        "api_key_id": _cut(record.api_key_id),
        "client": _cut(record.client),
        "peer": _cut(record.peer),
        "target": _cut(record.target),
        "provider": _cut(record.provider),
        "attempts": record.attempts,
        "fallback": record.fallback,
        "reason": _cut(record.reason),
        "method": _cut(record.method, 16),
        "path": _cut(record.path),
        "status": record.status,
        "outcome": _cut(record.outcome, 16),
        "request_model": _cut(record.request_model),
        "response_model": _cut(record.response_model),
        "model": _cut(record.response_model or record.request_model),
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cached_input_tokens": record.cached_input_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "tool_calls": [_cut(name) for name in record.tool_calls],
        "trace_id": _cut(record.trace_id, 64),
        "prompt": _cut(prompt, len(prompt)) if prompt is not None else None,
    }


def record_of(row: Mapping[str, Any]) -> CallRecord:
    """The record a stored row (or a spooled one) holds."""
    started = row["started"]
    if isinstance(started, datetime):
        started = started.timestamp()
    return CallRecord(
        id=str(row["id"]),
        started=float(started),
        duration=row["duration"],
        ttfb=row["ttfb"],
        ttft=row["ttft"],
        source=row["source"],
        api_key_id=row["api_key_id"],
        client=row["client"],
        peer=row["peer"],
        target=row["target"],
        provider=row["provider"],
        attempts=row["attempts"],
        fallback=bool(row["fallback"]),
        reason=row["reason"],
        method=row["method"],
        path=row["path"],
        status=row["status"],
        outcome=row["outcome"],
        request_model=row["request_model"],
        response_model=row["response_model"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cached_input_tokens=row["cached_input_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        tool_calls=tuple(row["tool_calls"] or ()),
        trace_id=row["trace_id"],
        prompt=row["prompt"],
    )
