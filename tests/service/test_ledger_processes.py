"""The ledger through real processes: `meshbridge usage` reading what
`serve` recorded, and `serve --workers 4` writing to one PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from meshbridge.service import Service, load_config

from .conftest import Run
from .ledger_helpers import rows_in
from .test_cli import wait_for

pytestmark = pytest.mark.integration

CONFIG = """
[server]
listen = "127.0.0.1:0"
grace_period = 2.0
[server.clients.ci]
token = "token-of-the-ci-client"
source = "agents"
api_key_id = "team-a"
[server.clients.web]
token = "token-of-the-web-client"
source = "web"
api_key_id = "team-b"
[ledger]
{ledger}
[providers.llm]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
"""
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


async def usage(config: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshbridge", "usage", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def call(url: str, token: str, count: int, *, new_connections: bool = False) -> None:
    connector = aiohttp.TCPConnector(force_close=new_connections)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def one() -> int:
            async with session.post(f"{url}/llm/v1/chat/completions", json=CHAT) as reply:
                await reply.read()
                return reply.status

        assert await asyncio.gather(*(one() for _ in range(count))) == [200] * count


async def test_meshbridge_usage_sums_and_lists_what_serve_recorded(tmp_path: Path) -> None:
    config = tmp_path / "meshbridge.toml"
    config.write_text(CONFIG.format(ledger='url = "sqlite:///ledger.sqlite3"'))
    async with Service(load_config(config), port=0) as service:
        await call(service.url, "token-of-the-ci-client", 3)
        await call(service.url, "token-of-the-web-client", 2)
    status, out, _ = await usage(config, "--group-by", "key", "--format", "json")
    assert status == 0
    by_key = {row["api_key_id"]: row for row in json.loads(out)}
    assert {k: row["calls"] for k, row in by_key.items()} == {"team-a": 3, "team-b": 2}
    assert by_key["team-a"]["p50_ms"] > 0
    status, out, _ = await usage(config, "--calls", "--client", "web", "--format", "csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["client"], r["api_key_id"], r["status"]) for r in rows] == [
        ("web", "team-b", "200")
    ] * 2
    status, out, _ = await usage(config, "--since", "1h", "--group-by", "client")
    assert out.splitlines()[0].split()[:3] == ["CLIENT", "CALLS", "ERRORS"]
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["ci", "3"], ["web", "2"]]
    status, _, err = await usage(config, "--since", "last tuesday")
    assert status == 2
    assert "--since: expected an ISO 8601 time" in err


async def test_meshbridge_usage_says_when_nothing_was_recorded(tmp_path: Path) -> None:
    config = tmp_path / "meshbridge.toml"
    config.write_text(CONFIG.format(ledger='url = "sqlite:///never-written.sqlite3"'))
    status, _, err = await usage(config)
    assert status == 1
    assert "no ledger database at" in err
    assert not (tmp_path / "never-written.sqlite3").exists()


async def test_four_workers_write_every_call_once_to_one_postgresql(
    run: Run, tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_TEST_LEDGER_URL", postgres_url)
    config = tmp_path / "meshbridge.toml"
    config.write_text(CONFIG.format(ledger='url_env = "MB_TEST_LEDGER_URL"'))
    process, log = await run("serve", str(config), "--workers", "4")
    # four interpreters importing SQLAlchemy at once, on a shared machine: 30 s
    url = (await wait_for(log, r"serving 4 workers on (http://127\.0\.0\.1:\d+)", rounds=3000))[1]
    calls = 200
    for _ in range(4):  # on new connections: the kernel spreads them over the workers
        await call(url, "token-of-the-ci-client", calls // 4, new_connections=True)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=60) == 0
    stored = rows_in(postgres_url)
    assert len(stored) == calls
    assert len({r.id for r in stored}) == calls
    assert {(r.client, r.api_key_id, r.status) for r in stored} == {("ci", "team-a", 200)}
