"""Limits of `meshbridge serve`, shared through a real Redis: across the
workers of one server and across servers, through an outage of Redis, and
the nonces of signed peer requests with them."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from meshbridge.service import Service, load_config

from ..redis_server import RedisServer
from .conftest import Run
from .test_cli import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serve-processes")]

TOKEN = "a-token-for-the-limits-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


def served() -> str:
    """A gated server with one client (source ``batch``) and the fake provider ``local``."""
    return f"""
[server]
listen = "127.0.0.1:0"
[server.clients.ci]
token = "{TOKEN}"
source = "batch"
[providers.local]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
"""


def config_text(redis: RedisServer, prefix: str, extra: str = "") -> str:
    return f"""{served()}reply_tokens = 2
[limits.hundred]
match = {{ source = "batch" }}
requests_per_minute = 100
[store]
url = "redis://127.0.0.1:{redis.port}/0"
prefix = "{prefix}"
{extra}
"""


async def burst(url: str, count: int) -> tuple[Counter[int], list[float]]:
    """``count`` calls at once, on new connections (spread over the workers)."""
    connector = aiohttp.TCPConnector(force_close=True, limit=64)
    async with aiohttp.ClientSession(headers=AUTH, connector=connector) as session:

        async def one() -> tuple[int, float | None]:
            async with session.post(f"{url}/local/v1/chat/completions", json=CHAT) as r:
                await r.read()
                wait = r.headers.get("Retry-After")
                return r.status, float(wait) if wait is not None else None

        results = await asyncio.gather(*(one() for _ in range(count)))
    statuses = Counter(status for status, _ in results)
    waits = [wait for status, wait in results if status == 429 and wait is not None]
    return statuses, waits


async def test_a_thousand_calls_to_four_workers_sharing_redis_admit_exactly_the_minutes_hundred(
    run: Run, tmp_path: Path, redis_server: RedisServer
) -> None:
    config = tmp_path / "meshbridge.toml"
    config.write_text(config_text(redis_server, "rpm-workers"))
    process, log = await run("serve", str(config), "--workers", "4")
    match = await wait_for(log, r"serving 4 workers on (http://127\.0\.0\.1:\d+)")
    started = time.monotonic()
    statuses, waits = await burst(match[1], 1000)
    took = time.monotonic() - started
    assert set(statuses) <= {200, 429}, statuses
    assert 99 <= statuses[200] <= 101, statuses  # +-1: a window edge during the burst
    assert len(waits) == statuses[429]
    # each refusal waits for the oldest admitted call to leave the minute
    assert all(60 - took - 1 <= wait <= 60 for wait in waits), (min(waits), max(waits), took)
    process.terminate()
    assert await process.wait() == 0


async def test_two_servers_on_one_redis_share_the_limit(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    text = config_text(redis_server, "two-servers").replace(
        "requests_per_minute = 100", "requests_per_minute = 10"
    )
    path = tmp_path / "meshbridge.toml"
    path.write_text(text)
    async with Service(load_config(path), port=0) as one, Service(load_config(path), port=0) as two:
        first, _ = await burst(one.url, 6)
        second, waits = await burst(two.url, 6)
    assert (first[200], second[200], second[429]) == (6, 4, 2)
    assert all(55 <= wait <= 60 for wait in waits)


async def test_redis_down_keeps_the_gateway_serving_then_the_limit_comes_back(
    tmp_path: Path, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    text = config_text(own_redis, "outage").replace(
        "requests_per_minute = 100", "requests_per_minute = 3"
    )
    path = tmp_path / "meshbridge.toml"
    path.write_text(text + 'on_store_failure = "open"\ntimeout = 0.2\n')
    async with Service(load_config(path), port=0) as service:
        before, _ = await burst(service.url, 5)
        own_redis.kill()
        during, _ = await burst(service.url, 5)  # open: admitted, unlimited, logged
        own_redis.start()  # an empty Redis: the minute starts again
        await asyncio.sleep(1.2)  # the store is left alone a second after a failure
        after, _ = await burst(service.url, 5)
        errors = service.mesh.registry.get_sample_value(
            "meshbridge_store_errors_total", {"operation": "admit"}
        )
    assert (before[200], before[429]) == (3, 2)
    assert during[200] == 5
    assert (after[200], after[429]) == (3, 2)
    assert errors is not None
    assert errors >= 1
    assert "the limit store answers again" in caplog.text


async def test_closed_on_store_failure_refuses_with_503_while_redis_is_down(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    path = tmp_path / "meshbridge.toml"
    path.write_text(
        config_text(own_redis, "closed") + 'on_store_failure = "closed"\ntimeout = 0.2\n'
    )
    async with Service(load_config(path), port=0) as service:
        own_redis.kill()
        connector = aiohttp.TCPConnector(force_close=True)
        url = f"{service.url}/local/v1/chat/completions"
        async with (
            aiohttp.ClientSession(headers=AUTH, connector=connector) as session,
            session.post(url, json=CHAT) as r,
        ):
            body = json.loads(await r.read())
            assert r.status == 503
            assert r.headers["x-meshbridge-reason"] == "store-unavailable"
            assert "limit store is unreachable" in body["error"]["message"]


def budget_config(folder: Path) -> str:
    return f"""{served()}reply_tokens = 30
[limits.month]
match = {{ source = "batch" }}
spend_per_month = 100.0
[prices."fake-small"]
input = 1000000.0
output = 1000000.0
[ledger]
url = "sqlite:///{folder}/ledger.sqlite3"
"""


async def spend(url: str, count: int) -> list[int]:
    """``count`` calls one after another, each asking for at most 30 tokens."""
    ask = {**CHAT, "max_tokens": 30}
    statuses = []
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for _ in range(count):
            async with session.post(f"{url}/local/v1/chat/completions", json=ask) as r:
                await r.read()
                statuses.append(r.status)
    return statuses


async def test_a_restart_keeps_a_month_budgets_spend_from_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "meshbridge.toml"
    path.write_text(budget_config(tmp_path))  # a dollar a token, 100 a month, in-process
    async with Service(load_config(path), port=0) as service:
        # about 32 tokens a call: the fourth passes 100 (a call admitted below
        # the budget finishes), the fifth is refused
        statuses = await spend(service.url, 6)
    assert statuses[:4] == [200] * 4
    assert statuses[4:] == [429, 429]
    async with Service(load_config(path), port=0) as again:
        assert await spend(again.url, 1) == [429]  # this month's spend came from the ledger
        limiter = again.mesh.limiter
        assert limiter is not None
        used = {(u.limit, u.kind): u.used for u in await limiter.usage()}
    assert used[("month", "spend_per_month")] >= 100.0
