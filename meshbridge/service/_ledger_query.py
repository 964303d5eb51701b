"""Reading the ledger: summaries and pages of calls, for the CLI and the
admin API alike, from one query builder for both dialects.

Rules of the reader:

1. A summary is one ``GROUP BY (group, duration_bucket)`` query: calls,
   errors and token sums are exact; p50 and p95 are nearest-rank
   percentiles counted over the duration buckets (1% wide), so within 0.5%
   of the exact value. Both databases run the same query.
2. An error is a call that ended in ``error`` or got a status of 400 or more.
3. Pages of calls are newest first, by id (UUIDv7: start order). A page's
   cursor is the last id it holds; the next page holds the ids below it, so
   calls recorded meanwhile (newer ids) never shift or repeat a page.
"""

from __future__ import annotations

import re
import uuid
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, case, func, literal, or_, select

from meshbridge import CallRecord

from ._ledger_config import LedgerConfig, database_url
from ._ledger_schema import GROUPS, bucket_seconds, calls, id_at, record_of
from ._ledger_store import Store

__all__ = [
    "GROUP_BY",
    "MAX_PAGE",
    "OUTCOMES",
    "LedgerReader",
    "UsageFilter",
    "UsageRow",
    "calls_since",
    "parse_when",
]

GROUP_BY: Final = (*GROUPS, "day")
OUTCOMES: Final = ("completed", "error", "cancelled")  # a CallRecord's outcome
MAX_PAGE: Final = 1000
_TOKENS: Final = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
_SPAN: Final = re.compile(r"(\d{1,6})([smhdw])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(value: str, now: datetime, name: str = "time") -> datetime:
    """A point in time: ISO 8601 (a date, or a date and time; UTC unless it
    says otherwise), or a span back from ``now`` such as ``30m``, ``24h``, ``7d``.

    Raises:
        ValueError: neither (the message names ``name``).
    """
    span = _SPAN.fullmatch(value.strip())
    if span is not None:
        return now - timedelta(seconds=int(span[1]) * _UNITS[span[2]])
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{name}: expected an ISO 8601 time (2025-01-31, 2025-01-31T12:00Z) or a span "
            f"back from now (30m, 24h, 7d), got {value[:64]!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which calls: started in ``[since, until)``, and equal to each field given.

    Raises:
        ValueError: ``outcome`` is not one of ``OUTCOMES`` (the message names it).
    """

    since: datetime | None = None
    until: datetime | None = None
    source: str | None = None
    api_key_id: str | None = None
    client: str | None = None
    provider: str | None = None
    model: str | None = None
    outcome: str | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(
                f"outcome: expected one of {', '.join(OUTCOMES)}, got {self.outcome[:32]!r}"
            )

    def where(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.since is not None:  # the ids too: SQLite then reads a range of its table
            found += [calls.c.id >= id_at(self.since.timestamp()), calls.c.started >= self.since]
        if self.until is not None:
            until = self.until.timestamp()
            found += [calls.c.id < id_at(until, after=True), calls.c.started < self.until]
        equal = {"source": self.source, "api_key_id": self.api_key_id, "client": self.client,
                 "provider": self.provider, "model": self.model,
                 "outcome": self.outcome}  # fmt: skip
        found += [calls.c[column] == value for column, value in equal.items() if value is not None]
        return found


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of a summary: a group (None: the calls where it is unset,
    or every call when not grouped) and what its calls cost."""

    group: str | None
    calls: int
    errors: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_tokens: int
    p50_seconds: float
    p95_seconds: float


def _percentile(buckets: Sequence[tuple[int, int]], total: int, percent: int) -> float:
    """Nearest rank over sorted (bucket, count) pairs (rule 1)."""
    cumulative = list(accumulate(count for _, count in buckets))
    at = bisect_left(cumulative, -(-percent * total // 100))  # ceil(p * n / 100)
    return bucket_seconds(buckets[min(at, len(buckets) - 1)][0])


def _group_value(value: object) -> str | None:
    if isinstance(value, date | datetime):
        return value.isoformat()[:10]
    return None if value is None else str(value)


def summary_query(where: Sequence[ColumnElement[bool]], group_by: str | None) -> Select[Any]:
    """The one query of a summary (rule 1)."""
    group: ColumnElement[Any]
    if group_by == "day":
        group = func.date(calls.c.started)
    elif group_by is not None:
        group = GROUPS[group_by]
    else:
        group = literal(None)
    error = or_(calls.c.outcome == "error", calls.c.status >= 400)
    sums = [func.coalesce(func.sum(calls.c[name]), 0) for name in _TOKENS]
    bucket = calls.c.duration_bucket
    query = select(group, bucket, func.count(), func.sum(case((error, 1), else_=0)), *sums)
    keys = [bucket] if group_by is None else [group, bucket]
    return query.where(*where).group_by(*keys)


class LedgerReader:
    """Summaries and calls from the ledger of a ``[ledger]`` config.

    Args:
        config: the config whose database to read (upgraded to this
            meshbridge's schema if behind).

    Raises:
        FileNotFoundError: the SQLite database does not exist (nothing was
            recorded there yet).
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
    """

    def __init__(self, config: LedgerConfig) -> None:
        self.store = Store(database_url(config), create=False)
        try:
            self.store.migrate()
        except BaseException:
            self.store.dispose()
            raise

    def summary(self, where: UsageFilter, group_by: str | None = None) -> list[UsageRow]:
        """Calls, errors, tokens and p50/p95 duration per group (``GROUP_BY``),
        the most called first (by day: oldest first).

        Raises:
            ValueError: ``group_by`` is not one of ``GROUP_BY``.
        """
        if group_by is not None and group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}; got {group_by!r}")
        query = summary_query(where.where(), group_by)
        groups: dict[str | None, list[Any]] = {}
        with self.store.engine.connect() as connection:
            for group, bucket, count, errors, *tokens in connection.execute(query):
                into = groups.setdefault(_group_value(group), [0, 0, [0] * len(_TOKENS), []])
                into[0] += count
                into[1] += errors or 0
                into[2] = [a + int(b) for a, b in zip(into[2], tokens, strict=True)]
                into[3].append((bucket, count))
        rows = []
        for group, (count, errors, tokens, buckets) in groups.items():
            buckets.sort()
            p50, p95 = (_percentile(buckets, count, p) for p in (50, 95))
            used = dict(zip(_TOKENS, tokens, strict=True))
            rows.append(UsageRow(group, count, errors, **used, p50_seconds=p50, p95_seconds=p95))
        if group_by == "day":
            return sorted(rows, key=lambda r: r.group or "")
        return sorted(rows, key=lambda r: (-r.calls, r.group or ""))

    def calls(
        self, where: UsageFilter, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[CallRecord], str | None]:
        """A page of calls, newest first, and the cursor of the next page
        (None: this is the last one); see rule 3.

        Raises:
            ValueError: ``limit`` is not from 1 to ``MAX_PAGE``, or ``cursor``
                is not one this method returned.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be from 1 to {MAX_PAGE}; got {limit}")
        query = select(calls).where(*where.where())
        if cursor is not None:
            try:
                after = str(uuid.UUID(cursor))
            except ValueError:
                raise ValueError(f"not a cursor of this API: {cursor[:64]!r}") from None
            query = query.where(calls.c.id < after)
        query = query.order_by(calls.c.id.desc()).limit(limit + 1)
        with self.store.engine.connect() as connection:
            found = [record_of(dict(row._mapping)) for row in connection.execute(query)]
        more = len(found) > limit
        return found[:limit], found[limit - 1].id if more else None

    def close(self) -> None:
        """Close the database connections it holds."""
        self.store.dispose()

    def __enter__(self) -> LedgerReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def calls_since(config: LedgerConfig, since: float) -> list[CallRecord]:
    """Every call the ledger of ``config`` recorded from ``since`` (seconds
    since the epoch) on, oldest first; none when nothing was recorded yet."""
    try:
        reader = LedgerReader(config)
    except FileNotFoundError:
        return []
    found: list[CallRecord] = []
    with reader:
        where = UsageFilter(since=datetime.fromtimestamp(since, UTC))
        cursor: str | None = None
        while True:
            page, cursor = reader.calls(where, limit=MAX_PAGE, cursor=cursor)
            found += page
            if cursor is None:
                break
    found.reverse()
    return found
