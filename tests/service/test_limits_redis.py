"""The limiter with the shared Redis store: workers, outages, restarts.

A real redis-server; "workers" are limiters of their own (each with its own
store and connections), in this process, in threads with their own event
loops, and in processes of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from meshbridge import CallIdentity, Estimate, Limit, Limiter, Price, Refusal, Ticket, TokenUsage
from meshbridge.service import RedisStore

from ..redis_server import RedisServer
from ._limit_worker import CALLER, RPM

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


Make = Callable[..., Limiter]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Limiters on RedisStores (one each, as separate workers would have)."""
    made: list[Limiter] = []

    def build(server: RedisServer, limits: list[Limit], prefix: str, **kwargs: Any) -> Limiter:
        limiter = Limiter(limits, store=RedisStore(server.url, prefix=prefix), **kwargs)
        made.append(limiter)
        return limiter

    yield build
    for limiter in made:
        await limiter.aclose()


async def test_redis_killed_mid_run_fails_open_then_the_workers_share_again(
    own_redis: RedisServer, make: Make
) -> None:
    clock, registry = Clock(), CollectorRegistry()
    limits = [Limit("agents", {"source": "agents"}, requests_per_minute=5)]
    a = make(own_redis, limits, "p", clock=clock, registry=registry, retry_interval=1.0)
    b = make(own_redis, limits, "p", clock=clock)
    for worker in (a, b, a, b, a):
        assert isinstance(await worker.admit(CALLER), Ticket)
    assert isinstance(await b.admit(CALLER), Refusal)  # the five are shared

    own_redis.kill()
    during = await a.admit(CALLER)
    assert isinstance(during, Ticket)
    assert not during.recorded  # open: admitted, counted nowhere
    assert registry.get_sample_value("meshbridge_store_up") == 0
    assert registry.get_sample_value("meshbridge_store_errors_total", {"operation": "admit"}) == 1
    await a.settle(during, None)  # the store is still down: nothing raises

    own_redis.start()  # empty: nothing was saved
    clock.now += 1.0  # retry_interval: the store is asked again
    for worker in (a, b, a, b, a):
        assert isinstance(await worker.admit(CALLER), Ticket)
    assert isinstance(await a.admit(CALLER), Refusal)
    assert isinstance(await b.admit(CALLER), Refusal)
    assert registry.get_sample_value("meshbridge_store_up") == 1


async def test_redis_killed_mid_run_fails_closed_when_asked_then_recovers(
    own_redis: RedisServer, make: Make
) -> None:
    clock = Clock()
    limits = [Limit("agents", {"source": "agents"}, concurrent=10)]
    limiter = make(own_redis, limits, "p", clock=clock, on_store_failure="closed",
                   retry_interval=0.5)  # fmt: skip
    assert isinstance(await limiter.admit(CALLER), Ticket)
    own_redis.kill()
    for _ in range(3):
        refusal = await limiter.admit(CALLER)
        assert isinstance(refusal, Refusal)
        assert (refusal.status, refusal.reason) == (503, "store-unavailable")
    own_redis.start()
    clock.now += 0.5
    assert isinstance(await limiter.admit(CALLER), Ticket)


def _bursts_in_threads(url: str, prefix: str, threads: int, calls: int) -> list[dict[str, Any]]:
    """Each thread runs its own event loop and limiter, as the worker processes do."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run() -> None:
        async def one() -> dict[str, Any]:
            limiter = Limiter([RPM], store=RedisStore(url, prefix=prefix))
            outcome = await asyncio.gather(*(limiter.admit(CALLER) for _ in range(calls)))
            await limiter.aclose()
            waits = [r.retry_after for r in outcome if isinstance(r, Refusal)]
            return {"admitted": sum(isinstance(r, Ticket) for r in outcome), "retry_after": waits}

        result = asyncio.run(one())
        with lock:
            results.append(result)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return results


async def _bursts_in_processes(
    url: str, prefix: str, count: int, calls: int
) -> list[dict[str, Any]]:
    argv = [sys.executable, "-m", "tests.service._limit_worker", "burst", url, prefix, str(calls)]
    processes = [
        await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, cwd=REPO)
        for _ in range(count)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), 60)
    assert [p.returncode for p in processes] == [0] * count
    return [json.loads(out) for out, _ in outputs]


@pytest.mark.parametrize("workers", ["processes", "threads"])
async def test_a_thousand_calls_at_once_from_four_workers_admit_exactly_the_limit(
    redis_server: RedisServer, workers: str
) -> None:
    prefix = f"burst-{uuid.uuid4().hex}"
    started = time.time()
    if workers == "processes":
        results = await _bursts_in_processes(redis_server.url, prefix, 4, 250)
    else:
        results = await asyncio.to_thread(_bursts_in_threads, redis_server.url, prefix, 4, 250)
    elapsed = time.time() - started
    assert sum(r["admitted"] for r in results) == RPM.requests_per_minute
    waits = [w for r in results for w in r["retry_after"]]
    assert len(waits) == 900
    # every refusal waits for the oldest of the 100 to leave the window: 60 s
    # from its admission, which was within the burst (each worker reads its
    # own clock before its script runs, so "now" may trail that admission)
    assert all(60 - elapsed <= w <= 60 + elapsed for w in waits), (min(waits), max(waits))


async def test_a_killed_workers_slots_come_back_when_its_leases_expire(
    redis_server: RedisServer, make: Make
) -> None:
    prefix = f"slots-{uuid.uuid4().hex}"
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.service._limit_worker", "hold", redis_server.url, prefix, "2",
        stdout=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        assert await asyncio.wait_for(worker.stdout.readline(), 30) == b"held\n"
        limiter = make(redis_server, [Limit("slots", {"source": "agents"}, concurrent=2)], prefix,
                       lease_seconds=1.0)  # fmt: skip
        await asyncio.sleep(1.5)  # past the first lifetime: the live worker renews its leases
        assert isinstance(await limiter.admit(CALLER), Refusal)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        await worker.wait()
    deadline = time.monotonic() + 5
    while not isinstance(await limiter.admit(CALLER), Ticket):
        assert time.monotonic() < deadline, "the dead worker's slots never came back"
        await asyncio.sleep(0.1)


async def test_budgets_survive_a_restart_in_the_shared_store(
    redis_server: RedisServer, make: Make
) -> None:
    prefix = f"budget-{uuid.uuid4().hex}"
    limits = [Limit("spend", {"api_key_id": "*"}, spend_per_month=0.01)]
    prices = {"gpt-4o": Price(2.5, 10.0)}
    before = Limiter(limits, prices, store=RedisStore(redis_server.url, prefix=prefix))
    ticket = await before.admit(CALLER, Estimate(100, 100, "gpt-4o"))
    assert isinstance(ticket, Ticket)
    await before.settle(ticket, TokenUsage(2000, 1000), "gpt-4o")  # 0.015: over
    await before.aclose()  # the process ends
    after = make(redis_server, limits, prefix, prices=prices)
    refusal = await after.admit(CALLER)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "budget-exhausted"
    (row,) = await after.usage()
    assert row.used == pytest.approx(0.015)


async def test_the_first_use_of_a_nonce_wins_across_stores(redis_server: RedisServer) -> None:
    prefix = f"nonce-{uuid.uuid4().hex}"
    stores = [RedisStore(redis_server.url, prefix=prefix) for _ in range(4)]
    try:
        firsts = await asyncio.gather(*(s.first_use("n1", 0.3) for s in stores for _ in range(5)))
        assert sum(firsts) == 1
        await asyncio.sleep(0.4)
        assert await stores[0].first_use("n1", 0.3)  # the TTL is over: a new first use
    finally:
        for store in stores:
            await store.aclose()


async def meshbridge_limits(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshbridge", "limits", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_the_limits_command_reads_the_shared_counters(
    redis_server: RedisServer, tmp_path: Path, make: Make
) -> None:
    prefix = f"cli-{uuid.uuid4().hex}"
    config = tmp_path / "limits.toml"
    config.write_text(f"""
[providers.openai]
kind = "fake"
[limits.agents]
match = {{ source = "agents" }}
requests_per_minute = 600
concurrent = 50
[limits.per-key]
match = {{ api_key_id = "*" }}
tokens_per_day = 2000000
[store]
url = "{redis_server.url}"
prefix = "{prefix}"
time_zone = "Europe/Paris"
""")
    limits = [Limit("agents", {"source": "agents"}, requests_per_minute=600, concurrent=50),
              Limit("per-key", {"api_key_id": "*"}, tokens_per_day=2_000_000)]  # fmt: skip
    limiter = make(redis_server, limits, prefix, time_zone="Europe/Paris")
    for key in ("k1", "k2", "k1"):
        ticket = await limiter.admit(
            CallIdentity(source="agents", api_key_id=key), Estimate(10, 90)
        )
        assert isinstance(ticket, Ticket)
        await limiter.settle(ticket, TokenUsage(10, 40))
    running = await limiter.admit(CALLER)  # still running: holds a slot
    assert isinstance(running, Ticket)

    doc = json.loads(await meshbridge_limits(str(config), "--format", "json"))
    assert doc["store"] == "redis"
    rows = {(r["limit"], r["kind"], json.dumps(r["caller"])): r for r in doc["usage"]}
    assert rows[("agents", "requests_per_minute", "{}")]["used"] == 4
    assert rows[("agents", "concurrent", "{}")]["remaining"] == 49
    k1 = rows[("per-key", "tokens_per_day", '{"api_key_id": "k1"}')]
    assert (k1["used"], k1["remaining"]) == (100, 2_000_000 - 100)
    assert k1["period"] == datetime.now(ZoneInfo("Europe/Paris")).date().isoformat()
    assert rows[("per-key", "tokens_per_day", '{"api_key_id": "k2"}')]["used"] == 50

    table = (await meshbridge_limits(str(config))).splitlines()
    assert table[0].split() == ["LIMIT", "CALLER", "KIND", "USED", "LIMIT", "REMAINING", "RESETS"]
    assert ["per-key", "api_key_id=k1", "tokens_per_day", "100", "2000000", "1999900"] in [
        line.split()[:6] for line in table
    ]
    await limiter.settle(running, None)
