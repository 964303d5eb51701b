"""The ledger when PostgreSQL goes away or hangs: requests do not wait, records
are spooled and replayed, what the spool cannot hold is counted. Each test has
a PostgreSQL cluster of its own, stopped, frozen and started by the test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from meshbridge import Mesh
from meshbridge.providers import ProviderContext, fake
from meshbridge.service import Ledger

from ..postgres import PostgresServer, running_postgres
from .ledger_helpers import make_record, new_ledger, rows_in

pytestmark = pytest.mark.integration

INSTANT = fake.FakeOptions(tokens_per_second=0, time_to_first_token=0, reply_tokens=3)
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}
WORKERS = 4  # a loop with room to spare: a slower request is the ledger's doing, not a queue


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    """A cluster of the test's own: the test stops and starts it."""
    with running_postgres() as server:
        yield server


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(f"meshbridge_ledger_{name}", labels) or 0.0


async def until(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_postgresql_down_then_hanging_slows_no_request_and_loses_no_record(
    server: PostgresServer, tmp_path: Path
) -> None:
    url = server.new_database()
    registry = CollectorRegistry()
    ledger = new_ledger(url, tmp_path, registry, flush_interval=0.1)
    mesh = Mesh(registry=registry, ledger=ledger)
    mesh.register("llm", fake.create_app(INSTANT, ProviderContext("llm")))
    await mesh.start()
    phase = "before"
    calls: dict[str, int] = {"before": 0, "down": 0, "hanging": 0, "after": 0}

    async def caller() -> None:
        async with mesh.session(source="agents") as session:
            while (at := phase) != "done":
                async with session.post("http://llm/v1/chat/completions", json=CHAT) as reply:
                    assert reply.status == 200
                    await reply.read()
                calls[at] += 1
                await asyncio.sleep(0.005)  # bounded load: ~WORKERS * 150 calls a second at most

    metrics = ledger.metrics
    try:
        callers = [asyncio.create_task(caller()) for _ in range(WORKERS)]
        await until(lambda: calls["before"] > 100 and metrics.written > 0, "calls recorded")
        phase = "down"
        await asyncio.to_thread(server.stop)  # never on the loop: it waits for the process
        await until(
            lambda: calls["down"] > 100 and metrics.write_errors > 0 and metrics.spooled > 0,
            "calls spooled while the database is down",
        )
        await asyncio.to_thread(server.start)
        await until(lambda: sample(registry, "spool_records") == 0, "the spool to be replayed")
        written = metrics.written
        phase = "hanging"  # connected, and no answer to anything: a writer waits for good
        server.freeze()
        try:
            hung = time.monotonic() + 1.0  # ten flush intervals: the writer is stuck in one
            await until(lambda: calls["hanging"] > 100 and time.monotonic() > hung, "calls")
            stuck = metrics.written
        finally:
            server.thaw()
        phase = "after"
        await until(lambda: calls["after"] > 100, "calls after the outage")
        phase = "done"
        await asyncio.gather(*callers)
        await until(lambda: sample(registry, "spool_records") == 0, "the spool to be replayed")
        await ledger.flush()
    finally:
        server.thaw()
        await mesh.aclose()
    # What proves that requests never wait for the ledger is what the callers
    # did while it could not write: calls went on, answered 200, in both outages.
    assert calls["down"] > 100, calls
    assert calls["hanging"] > 100, calls
    assert stuck - written <= 500, "the ledger wrote while its database hung"  # one batch at most
    total = sum(calls.values())
    stored = rows_in(url)
    assert len(stored) == total
    assert len({r.id for r in stored}) == total
    assert sample(registry, "spooled_total") > 0
    assert sample(registry, "replayed_total") == sample(registry, "spooled_total")
    assert sample(registry, "write_errors_total") > 0
    assert (
        sum(sample(registry, "dropped_total", reason=r) for r in ("queue_full", "spool_full")) == 0
    )


async def test_what_the_spool_cannot_hold_is_counted_and_the_rest_replayed(
    server: PostgresServer, tmp_path: Path
) -> None:
    url = server.new_database()
    server.stop()
    registry = CollectorRegistry()
    ledger = new_ledger(url, tmp_path, registry, spool_max_bytes=20_000)
    await ledger.start()  # the database is down from the start: records go to the spool
    try:
        for _ in range(200):
            ledger.record(make_record())
        await ledger.flush()
        kept = sample(registry, "spool_records")
        assert 0 < kept < 200
        assert sample(registry, "dropped_total", reason="spool_full") == 200 - kept
        assert sample(registry, "database_up") == 0
        await asyncio.to_thread(server.start)
        await until(lambda: sample(registry, "spool_records") == 0, "the spool to be replayed")
    finally:
        await ledger.aclose()
    assert len(rows_in(url)) == kept
    assert sample(registry, "replayed_total") == kept
    assert sample(registry, "database_up") == 1


async def test_a_spool_left_by_a_ledger_that_closed_while_down_is_replayed_by_the_next(
    server: PostgresServer, tmp_path: Path
) -> None:
    url = server.new_database()
    server.stop()
    first = new_ledger(url, tmp_path)
    await first.start()
    records = [make_record() for _ in range(30)]
    for record in records:
        first.record(record)
    await first.aclose()  # the database never came back: the spool file stays
    server.start()
    second: Ledger = new_ledger(url, tmp_path)
    await second.start()  # replays what it finds before it writes anything new
    await second.aclose()
    assert {r.id for r in rows_in(url)} == {r.id for r in records}
    assert second.metrics.replayed == 30
