"""The ledger over HTTP: /admin/api/calls and /admin/api/usage behind the
admin gate, on a real `serve` (in process) with calls of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshbridge.providers import PEER_HEADER
from meshbridge.service import Service

from .conftest import ServiceFactory

CI, OPS, ADMIN = "token-of-the-ci-client", "token-of-the-ops-client", "the-admin-token-0001"
CONFIG = """
[server]
listen = "127.0.0.1:0"
{admin}
[server.clients.ci]
token = "{ci}"
source = "agents"
api_key_id = "team-a"
[server.clients.ops]
token = "{ops}"
source = "ops"
admin = true
[ledger]
url = "sqlite:///{dir}/ledger.sqlite3"
[providers.llm]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
"""
APART = 'admin_listen = "127.0.0.1:0"\nadmin_token_env = "MB_TEST_ADMIN_TOKEN"'
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MB_TEST_ADMIN_TOKEN", ADMIN)


async def start(serve: ServiceFactory, tmp_path: Path, admin: str = APART) -> Service:
    return await serve(CONFIG.format(admin=admin, ci=CI, ops=OPS, dir=tmp_path))


async def calls(service: Service, count: int) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CI}"}) as session:
        for _ in range(count):
            async with session.post(f"{service.url}/llm/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
    assert service.ledger is not None
    await service.ledger.flush()


async def get(url: str, token: str | None = ADMIN, **headers: str) -> tuple[int, Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as reply:
        return reply.status, await reply.json()


async def test_usage_answers_admin_tokens_on_the_admin_listener_only(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    service = await start(serve, tmp_path)
    await calls(service, 5)
    usage = f"{service.admin_url}/admin/api/usage?group_by=key"
    status, body = await get(usage)
    assert status == 200
    (row,) = body["rows"]
    assert body["group_by"] == "key"
    assert (row["group"], row["calls"], row["errors"]) == ("team-a", 5, 0)
    assert row["input_tokens"] > 0
    assert row["p50_seconds"] <= row["p95_seconds"]
    assert (await get(usage, OPS))[0] == 200  # a client marked admin = true
    for token, headers in ((None, {}), (CI, {}), ("x" * 20, {}), (ADMIN, {PEER_HEADER: "x"})):
        status, body = await get(usage, token, **headers)
        assert status == 401, (token, headers)
        assert body["error"]["type"] == "authentication_error"
    status, _ = await get(f"{service.url}/admin/api/usage")  # the public listener
    assert status == 404


async def test_calls_come_in_pages_and_filter(serve: ServiceFactory, tmp_path: Path) -> None:
    service = await start(serve, tmp_path)
    await calls(service, 7)
    base = f"{service.admin_url}/admin/api/calls"
    seen: list[str] = []
    pages = []
    url = f"{base}?limit=3&key=team-a&since=1h"
    while True:
        status, body = await get(url)
        assert status == 200
        pages.append(len(body["calls"]))
        seen += [call["id"] for call in body["calls"]]
        if body["next_cursor"] is None:
            break
        url = f"{base}?limit=3&key=team-a&since=1h&cursor={body['next_cursor']}"
    assert pages == [3, 3, 1]
    assert seen == sorted(seen, reverse=True)
    assert len(set(seen)) == 7
    first = (await get(f"{base}?limit=1"))[1]["calls"][0]
    assert (first["client"], first["source"], first["provider"], first["status"]) == (
        "ci",
        "agents",
        "llm",
        200,
    )
    assert first["started"].endswith("+00:00")
    assert (await get(f"{base}?key=team-b"))[1]["calls"] == []


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("calls?limit=0", "limit must be from 1 to 1000"),
        ("calls?limit=many", "limit: expected a number"),
        ("calls?cursor=bogus", "not a cursor"),
        ("calls?since=yesterday", "since: expected an ISO 8601 time"),
        ("usage?group_by=color", "group_by: expected one of key, source"),
        ("usage?until=2025-13-01", "until: expected an ISO 8601 time"),
    ],
)
async def test_a_bad_parameter_is_a_400_that_names_it(
    serve: ServiceFactory, tmp_path: Path, query: str, complaint: str
) -> None:
    service = await start(serve, tmp_path)
    status, body = await get(f"{service.admin_url}/admin/api/{query}")
    assert status == 400
    assert complaint in body["error"]["message"]


async def test_the_public_listener_serves_the_api_only_when_the_operator_says_so(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    closed = await start(
        serve, tmp_path / "closed", admin='admin_token_env = "MB_TEST_ADMIN_TOKEN"'
    )
    assert (await get(f"{closed.url}/admin/api/usage"))[0] == 404
    opened = await start(
        serve,
        tmp_path / "open",
        admin='admin_token_env = "MB_TEST_ADMIN_TOKEN"\nadmin_api_public = true',
    )
    await calls(opened, 2)
    status, body = await get(f"{opened.url}/admin/api/usage")
    assert status == 200
    assert body["rows"][0]["calls"] == 2
    assert (await get(f"{opened.url}/admin/api/usage", CI))[0] == 401


async def test_without_an_admin_token_the_api_says_how_to_configure_one(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    config = CONFIG.format(admin='admin_listen = "127.0.0.1:0"', ci=CI, ops=OPS, dir=tmp_path)
    service = await serve(config.replace("admin = true\n", ""))
    status, body = await get(f"{service.admin_url}/admin/api/calls")
    assert status == 403
    assert "admin_token_env" in body["error"]["message"]
