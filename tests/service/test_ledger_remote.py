"""Across a `remote` hop, each side records the call: A with the client that
called it, B with the peer that signed and the original caller's identity."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from .conftest import ServiceFactory
from .ledger_helpers import rows_in

SECRET = "the-secret-a-and-b-share-0000001"
TOKEN = "token-of-the-ci-client-on-a"
B_CONFIG = """
[server]
listen = "127.0.0.1:0"
[server.peers.edge]
secret_env = "MB_TEST_PEER_SECRET"
[ledger]
url = "sqlite:///{dir}/b.sqlite3"
[providers.billing]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
"""
A_CONFIG = """
[server]
listen = "127.0.0.1:0"
[server.clients.ci]
token = "{token}"
source = "batch"
api_key_id = "team-a"
[ledger]
url = "sqlite:///{dir}/a.sqlite3"
[providers.billing]
kind = "remote"
url = "{b}/billing"
peer_secret_env = "MB_TEST_PEER_SECRET"
"""
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


async def test_the_receiving_side_records_the_original_caller_and_the_peer(
    serve: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_TEST_PEER_SECRET", SECRET)
    b = await serve(B_CONFIG.format(dir=tmp_path))
    a = await serve(A_CONFIG.format(dir=tmp_path, token=TOKEN, b=b.url))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(f"{a.url}/billing/v1/chat/completions", json=CHAT) as reply,
    ):
        assert reply.status == 200
        usage = (await reply.json())["usage"]
    for service in (a, b):
        assert service.ledger is not None
        await service.ledger.flush()
    (on_a,) = rows_in(f"sqlite:///{tmp_path}/a.sqlite3")
    (on_b,) = rows_in(f"sqlite:///{tmp_path}/b.sqlite3")
    assert (on_a.client, on_a.peer, on_a.source, on_a.api_key_id) == ("ci", None, "batch", "team-a")
    assert (on_b.client, on_b.peer, on_b.source, on_b.api_key_id) == (
        None,
        "edge",
        "batch",
        "team-a",
    )
    assert on_b.output_tokens == usage["completion_tokens"]
    assert on_a.output_tokens is None  # the remote kind relays bytes: B, which served it, counts
    assert on_b.started >= on_a.started
    assert on_b.duration <= on_a.duration
