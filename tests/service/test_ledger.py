"""The usage ledger on its own: records handed to it as the mesh hands them,
read back through LedgerReader, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from meshbridge.service import LedgerConfig, LedgerReader, UsageFilter
from meshbridge.service._ledger_schema import metadata  # what the queries are built on

from .ledger_helpers import DIALECTS, make_record, new_ledger, rows_in, url_for

pytestmark = pytest.mark.parametrize("dialect", DIALECTS)


@pytest.fixture
def url(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return url_for(dialect, tmp_path, request)


@pytest.fixture
def reading(url: str) -> Iterator[Callable[[], LedgerReader]]:
    """Opens readers of the test's ledger; closed on teardown."""
    readers: list[LedgerReader] = []

    def open_reader() -> LedgerReader:
        readers.append(LedgerReader(LedgerConfig(url=url)))
        return readers[-1]

    yield open_reader
    for opened in readers:
        opened.close()


async def test_a_record_is_stored_and_read_back_field_for_field(url: str, tmp_path: Path) -> None:
    record = make_record(
        peer="edge", reason="circuit_open", trace_id="ab" * 16, tool_calls=("a", "b")
    )
    ledger = new_ledger(url, tmp_path)
    await ledger.start()
    ledger.record(record)
    await ledger.aclose()
    (stored,) = rows_in(url)
    assert stored.started == pytest.approx(record.started, abs=1e-5)
    assert dataclasses.replace(stored, started=record.started) == record


async def test_aclose_writes_everything_queued_in_batches(url: str, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    ledger = new_ledger(url, tmp_path, registry, batch_size=50, flush_interval=30)
    await ledger.start()
    records = [make_record(api_key_id=f"k{i % 3}") for i in range(1234)]
    for record in records:
        ledger.record(record)
    await ledger.aclose()
    assert {r.id for r in rows_in(url)} == {r.id for r in records}
    assert registry.get_sample_value("meshbridge_ledger_written_total") == 1234
    assert registry.get_sample_value("meshbridge_ledger_queue_depth") == 0


async def test_flush_returns_once_what_was_queued_is_stored(url: str, tmp_path: Path) -> None:
    ledger = new_ledger(url, tmp_path, flush_interval=30)  # only a full batch or flush wakes it
    await ledger.start()
    try:
        ledger.record(make_record())
        await ledger.flush()
        assert len(rows_in(url)) == 1
    finally:
        await ledger.aclose()


async def test_a_full_queue_drops_records_and_counts_them(url: str, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    ledger = new_ledger(url, tmp_path, registry, queue_size=3)
    for _ in range(5):  # before start: nothing takes the queue
        ledger.record(make_record())
    assert registry.get_sample_value("meshbridge_ledger_queue_depth") == 3
    await ledger.start()
    await ledger.aclose()
    ledger.record(make_record())  # after close: counted, not kept
    assert len(rows_in(url)) == 3
    dropped = {
        reason: registry.get_sample_value("meshbridge_ledger_dropped_total", {"reason": reason})
        for reason in ("queue_full", "spool_full", "rejected", "closed")
    }
    assert dropped == {"queue_full": 2, "spool_full": 0, "rejected": 0, "closed": 1}


async def test_a_record_written_twice_is_stored_once(url: str, tmp_path: Path) -> None:
    record = make_record()
    for _ in range(2):  # as a spool replayed again after a crash would
        ledger = new_ledger(url, tmp_path)
        await ledger.start()
        ledger.record(record)
        await ledger.aclose()
    assert [r.id for r in rows_in(url)] == [record.id]


async def test_prompts_are_kept_only_when_asked_redacted_then_cut(url: str, tmp_path: Path) -> None:
    secret = "my key is sk-live-0123456789 and \x00 more"
    off = new_ledger(url, tmp_path)
    await off.start()
    off.record(make_record(prompt=secret))
    await off.aclose()
    assert [r.prompt for r in rows_in(url)] == [None]

    def redact(prompt: str) -> str:
        return prompt.replace("sk-live-0123456789", "[key]")

    on = new_ledger(url, tmp_path, record_prompts=True, prompt_max_chars=20, redact=redact)
    await on.start()
    on.record(make_record(prompt=secret))
    await on.aclose()
    newest = rows_in(url)[0]
    assert newest.prompt == "my key is [key] and "


def raises(prompt: str) -> str:
    raise RuntimeError("bug in the hook")


def returns_a_number(prompt: str) -> int:
    return len(prompt)


@pytest.mark.parametrize("hook", [raises, returns_a_number])
async def test_a_redact_hook_that_fails_stores_no_prompt_and_loses_no_call(
    url: str, tmp_path: Path, hook: object
) -> None:
    ledger = new_ledger(url, tmp_path, record_prompts=True, redact=hook)
    await ledger.start()
    ledger.record(make_record(prompt="secret"))
    ledger.record(make_record(prompt=None))
    await ledger.aclose()
    assert [r.prompt for r in rows_in(url)] == [None, None]
    assert ledger.metrics.dropped["rejected"] == 0


async def test_text_a_database_cannot_hold_is_stored_cleaned(url: str, tmp_path: Path) -> None:
    ledger = new_ledger(url, tmp_path, record_prompts=True)
    await ledger.start()
    ledger.record(make_record(prompt="nul \x00 and lone \ud800", path="/v1/\x00"))
    await ledger.aclose()
    (stored,) = rows_in(url)
    assert (stored.prompt, stored.path) == ("nul \ufffd and lone ?", "/v1/\ufffd")


async def test_retention_deletes_the_calls_older_than_retention_days(
    url: str, tmp_path: Path
) -> None:
    now = time.time()
    old, recent = make_record(started=now - 40 * 86400), make_record(started=now - 20 * 86400)
    later = [now]  # the ledger's wall clock, moved by the test
    ledger = new_ledger(url, tmp_path, retention_days=30, clock=lambda: later[0])
    await ledger.start()
    try:
        ledger.record(old)
        ledger.record(recent)
        await ledger.flush()
        await ledger.prune()  # the background pruning may have run first: same result
        assert [r.id for r in rows_in(url)] == [recent.id]
        later[0] = now + 15 * 86400
        assert await ledger.prune() == 1
        assert rows_in(url) == []
        assert ledger.metrics.pruned >= 1
    finally:
        await ledger.aclose()


async def test_a_summary_sums_calls_errors_and_tokens_per_group(
    url: str, tmp_path: Path, reading: Callable[[], LedgerReader]
) -> None:
    ledger = new_ledger(url, tmp_path)
    await ledger.start()
    for i in range(10):
        ledger.record(make_record(api_key_id="team-a", input_tokens=10, output_tokens=i))
    ledger.record(make_record(api_key_id="team-b", status=502, outcome="completed"))
    ledger.record(make_record(api_key_id="team-b", status=0, outcome="error", input_tokens=None))
    ledger.record(make_record(api_key_id=None, status=0, outcome="cancelled"))
    await ledger.aclose()
    found = {row.group: row for row in reading().summary(UsageFilter(), "key")}
    assert list(found) == ["team-a", "team-b", None]  # the most called first
    a, b, unset = found["team-a"], found["team-b"], found[None]
    assert (a.calls, a.errors, a.input_tokens, a.output_tokens) == (10, 0, 100, 45)
    assert (a.cached_input_tokens, a.reasoning_tokens) == (40, 10)
    assert (b.calls, b.errors, b.input_tokens) == (2, 2, 12)
    assert (unset.calls, unset.errors) == (1, 0)  # a caller that left is not an error
    (total,) = reading().summary(UsageFilter())
    assert (total.group, total.calls, total.errors) == (None, 13, 2)


async def test_summary_percentiles_are_within_half_a_percent(
    url: str, tmp_path: Path, reading: Callable[[], LedgerReader]
) -> None:
    durations = [0.001 * 1.37**i for i in range(40)]  # 1 ms to 200 s
    ledger = new_ledger(url, tmp_path)
    await ledger.start()
    for seconds in durations:
        ledger.record(make_record(duration=seconds))
    await ledger.aclose()
    (row,) = reading().summary(UsageFilter())
    ranked = sorted(durations)
    assert row.p50_seconds == pytest.approx(ranked[19], rel=0.005)  # nearest rank: ceil(.5 * 40)
    assert row.p95_seconds == pytest.approx(ranked[37], rel=0.005)  # ceil(.95 * 40) = 38


async def test_summaries_filter_and_group_by_every_dimension(
    url: str, tmp_path: Path, reading: Callable[[], LedgerReader]
) -> None:
    day = datetime(2025, 3, 1, 23, 30, tzinfo=UTC).timestamp()
    ledger = new_ledger(url, tmp_path, retention_days=0)
    await ledger.start()
    ledger.record(make_record(started=day, source="web", client=None, provider="llm"))
    ledger.record(make_record(started=day + 3600, source="agents", provider="backup",
                              response_model="fake-large", fallback=True))  # fmt: skip
    ledger.record(make_record(started=day + 7200, source="agents", api_key_id="team-b"))
    await ledger.aclose()
    read = reading()
    by_day = read.summary(UsageFilter(), "day")
    assert [(r.group, r.calls) for r in by_day] == [("2025-03-01", 1), ("2025-03-02", 2)]
    by_model = read.summary(UsageFilter(), "model")
    assert {(r.group, r.calls) for r in by_model} == {("fake-small", 2), ("fake-large", 1)}
    assert {r.group for r in read.summary(UsageFilter(), "client")} == {"ci", None}
    assert {r.group for r in read.summary(UsageFilter(), "provider")} == {"llm", "backup"}
    assert {r.group for r in read.summary(UsageFilter(), "source")} == {"web", "agents"}
    since = datetime(2025, 3, 2, tzinfo=UTC)
    only = UsageFilter(since=since, source="agents", api_key_id="team-a", provider="backup",
                       model="fake-large", client="ci")  # fmt: skip
    assert [r.calls for r in read.summary(only)] == [1]
    until = UsageFilter(until=since + timedelta(hours=1))
    assert [r.calls for r in read.summary(until)] == [2]
    with pytest.raises(ValueError, match="group_by must be one of key, source"):
        read.summary(UsageFilter(), "color")


async def test_pages_of_calls_neither_repeat_nor_skip_while_calls_come_in(
    url: str, tmp_path: Path, reading: Callable[[], LedgerReader]
) -> None:
    ledger = new_ledger(url, tmp_path, retention_days=0)  # calls of 2023 and 2027
    await ledger.start()
    first = [make_record(started=1_700_000_000 + i) for i in range(25)]
    for record in first:
        ledger.record(record)
    await ledger.flush()
    read = reading()
    seen: list[str] = []
    page, cursor = read.calls(UsageFilter(), limit=10)
    seen += [r.id for r in page]
    for i in range(5):  # newer calls arrive between pages
        ledger.record(make_record(started=1_800_000_000 + i))
    await ledger.flush()
    while cursor is not None:
        page, cursor = read.calls(UsageFilter(), limit=10, cursor=cursor)
        seen += [r.id for r in page]
    await ledger.aclose()
    assert seen == [r.id for r in reversed(first)]
    with pytest.raises(ValueError, match="not a cursor"):
        read.calls(UsageFilter(), cursor="bogus")
    with pytest.raises(ValueError, match="limit must be from 1 to 1000"):
        read.calls(UsageFilter(), limit=0)


async def test_the_migrated_schema_is_the_one_the_queries_use(url: str, tmp_path: Path) -> None:
    ledger = new_ledger(url, tmp_path)
    await ledger.start()
    await ledger.aclose()
    driver = "postgresql+psycopg" if url.startswith("postgresql") else "sqlite+pysqlite"
    engine = create_engine(make_url(url).set(drivername=driver))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, metadata)
    engine.dispose()
    ours = [d for d in differences if "meshbridge_alembic_version" not in str(d)]
    if driver.startswith("sqlite"):  # the key's index is made on PostgreSQL only
        assert [(d[0], d[1].name) for d in ours] == [
            ("add_index", "ix_meshbridge_calls_api_key_id")
        ]
    else:
        assert ours == []
