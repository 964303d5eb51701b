"""The admin page under `serve --workers 2` (real processes): it lists the
workers, which are up and what each has in flight, whichever answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import Run
from .test_cli import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serve-processes")]

TOKEN, ADMIN = "token-of-the-ci-client", "the-admin-token-0001"
CONFIG = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "MB_TEST_ADMIN_TOKEN"
grace_period = 0.5
[server.clients.ci]
token = "{TOKEN}"
source = "agents"
[ledger]
enabled = false
[providers.slow]
kind = "fake"
tokens_per_second = 10
time_to_first_token = 0
reply_tokens = 15
"""
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


async def live(admin: str) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{admin}/admin/api/live") as reply,
    ):
        assert reply.status == 200
        return json.loads(await reply.text())


async def test_the_page_lists_the_workers_and_what_each_has_in_flight(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_TEST_ADMIN_TOKEN", ADMIN)
    config = tmp_path / "meshbridge.toml"
    config.write_text(CONFIG)
    _, log = await run("serve", str(config), "--workers", "2")
    found = await wait_for(log, r"serving 2 workers on (http://\S+) .*admin on (http://[\d.:]+)")
    url, admin = found[1], found[2]
    for _ in range(200):  # each worker's registry is readable once it has started
        workers = (await live(admin))["workers"]
        if workers and all(w["up"] for w in workers):
            break
        await asyncio.sleep(0.05)
    assert [(w["worker"], w["up"]) for w in workers] == [(0, True), (1, True)]
    assert (await live(admin))["worker"] in (0, 1)  # the worker that answered

    async def stream() -> int:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(f"{url}/slow/v1/chat/completions", json=CHAT) as reply,
        ):
            await reply.read()
            return reply.status

    call = asyncio.create_task(stream())  # about 1.5 s of tokens
    try:
        for _ in range(100):
            workers = (await live(admin))["workers"]
            if sum(w["in_flight"] for w in workers) == 1:
                break
            await asyncio.sleep(0.02)
        assert sorted(w["in_flight"] for w in workers) == [0, 1]
    finally:
        assert await call == 200
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{admin}/admin/") as reply,
    ):
        page = await reply.text()
    assert page.count('<tr data-worker="') == 2
