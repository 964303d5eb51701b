"""A provider moved out of the process: two real `meshbridge serve` processes
on 127.0.0.1, A's `remote` providers signing for their callers, B serving
them. The test process is a third meshbridge, with an in-process mesh on A's
router table."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import aiohttp
import openai
import pytest
from httpx_aiohttp.httpx2 import AiohttpTransport

from meshbridge import Mesh
from meshbridge.providers import PEER_HEADER, sign_identity

from .test_cli import scrape, wait_for

pytestmark = pytest.mark.integration

SECRET = "the-secret-a-and-b-share-0000001"
TOKEN = "token-of-the-ci-client-on-a"
B_CONFIG = """
[server]
listen = "127.0.0.1:0"
pid_file = "{dir}/b.pid"
grace_period = 1.0
[server.peers.a]
secret_env = "MB_TEST_PEER_SECRET"
[providers.billing]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
reply_tokens = 20
[providers.endless]                # 1000 tokens at 5 per second: cancelled long before the end
kind = "fake"
tokens_per_second = 5
time_to_first_token = 0
reply_tokens = 1000
"""
A_CONFIG = f"""
[server]
listen = "127.0.0.1:0"
pid_file = "{{dir}}/a.pid"
grace_period = 1.0
[server.clients.ci]
token = "{TOKEN}"
source = "batch"
[providers.billing]                # was: kind = "fake" ... (the one change to move it out)
kind = "remote"
url = "{{b}}/billing"
peer_secret_env = "MB_TEST_PEER_SECRET"
[providers.endless]
kind = "remote"
url = "{{b}}/endless"
peer_secret_env = "MB_TEST_PEER_SECRET"
"""
STREAM = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


class Serve(Protocol):
    async def __call__(self, config: Path) -> str: ...


@pytest.fixture
async def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Serve]:
    """Start ``meshbridge serve CONFIG``; its URL once it listens. Killed on teardown."""
    monkeypatch.setenv("MB_TEST_PEER_SECRET", SECRET)
    processes: list[asyncio.subprocess.Process] = []

    async def start(config: Path) -> str:
        log = tmp_path / f"{config.stem}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshbridge", "serve", str(config), stdout=out, stderr=out
            )
        processes.append(process)
        return (await wait_for(log, r"serving [\w, -]+ on (http://127\.0\.0\.1:\d+)"))[1]

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def hop(serve: Serve, tmp_path: Path) -> tuple[str, str, Path]:
    """B, then A pointing at B: their URLs, and A's config."""
    b_config, a_config = tmp_path / "b.toml", tmp_path / "a.toml"
    b_config.write_text(B_CONFIG.format(dir=tmp_path))
    b = await serve(b_config)
    a_config.write_text(A_CONFIG.format(dir=tmp_path, b=b))
    a = await serve(a_config)
    return a, b, a_config


@pytest.fixture
async def mesh_on_a(hop: tuple[str, str, Path]) -> AsyncIterator[Mesh]:
    """An in-process mesh of A's router table (remote providers to B)."""
    mesh = Mesh.from_config(hop[2])
    async with mesh:
        yield mesh


def requests(samples: dict[str, float], provider: str, source: str, outcome: str) -> float:
    return sum(
        value
        for key, value in samples.items()
        if key.startswith("meshbridge_requests_total{")
        and f"provider={provider}," in key
        and f"source={source}" in key
        and f"outcome={outcome}," in key
    )


async def test_the_openai_sdk_streams_across_the_hop_as_its_own_source(
    hop: tuple[str, str, Path], mesh_on_a: Mesh
) -> None:
    _, b, _ = hop

    def session() -> aiohttp.ClientSession:
        connector = mesh_on_a.connector(provider="billing", source="agents", api_key_id="team-7")
        return aiohttp.ClientSession(connector=connector)

    http = openai.DefaultAioHttpClient(transport=AiohttpTransport(client=session))
    async with openai.AsyncOpenAI(
        base_url="http://billing/v1", api_key="sk-caller", http_client=http, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="fake-small",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        words, usage = [], None
        async for chunk in stream:
            words += [c.delta.content for c in chunk.choices if c.delta.content]
            usage = chunk.usage or usage
    assert usage is not None
    assert usage.completion_tokens == 20
    assert len(words) == 20  # a chunk per token, each as it came
    on_b = await scrape(b)
    assert requests(on_b, "billing", "agents", "completed") == 1
    tokens = "meshbridge_tokens_total{model=fake-small,provider=billing,source=agents,type=output}"
    assert on_b[tokens] == 20
    here = mesh_on_a.registry.get_sample_value(
        "meshbridge_requests_total",
        {"provider": "billing", "source": "agents", "method": "POST", "code": "200",
         "outcome": "completed"},
    )  # fmt: skip
    assert here == 1


async def test_a_gateway_callers_source_holds_on_both_sides(hop: tuple[str, str, Path]) -> None:
    a, b, _ = hop
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{a}/billing/v1/chat/completions", json=STREAM, headers=auth) as r,
    ):
        assert r.status == 200
        assert (await r.read()).endswith(b"data: [DONE]\n\n")
    on_a, on_b = await scrape(a), await scrape(b)
    assert requests(on_a, "billing", "batch", "completed") == 1
    assert requests(on_b, "billing", "batch", "completed") == 1
    assert on_b["meshbridge_peer_auth_failures_total{peer=a,reason=bad-signature}"] == 0


async def test_cancelling_on_a_cancels_the_handler_on_b(hop: tuple[str, str, Path]) -> None:
    a, b, _ = hop
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        r = await session.post(f"{a}/endless/v1/chat/completions", json=STREAM, headers=auth)
        assert (await r.content.readline()).startswith(b"data: ")  # streaming from B
        r.close()
    for _ in range(500):
        on_a, on_b = await scrape(a), await scrape(b)
        if requests(on_b, "endless", "batch", "cancelled") == 1:
            break
        await asyncio.sleep(0.01)
    assert requests(on_b, "endless", "batch", "cancelled") == 1
    assert requests(on_a, "endless", "batch", "cancelled") == 1
    in_flight = "meshbridge_requests_in_flight{provider=endless,source=batch}"
    assert on_b.get(in_flight, 0) == 0


async def test_forged_expired_and_replayed_signatures_are_refused_and_counted(
    hop: tuple[str, str, Path],
) -> None:
    _, b, _ = hop
    target = "/billing/v1/models"

    def signed(secret: str = SECRET, now: float | None = None) -> dict[str, str]:
        value = sign_identity(
            secret.encode(), "1", "GET", target, "agents", None,
            now=time.time() if now is None else now, nonce=secrets.token_urlsafe(16),
        )  # fmt: skip
        return {PEER_HEADER: value}

    replay = signed()
    async with aiohttp.ClientSession() as session:

        async def status(headers: dict[str, str]) -> int:
            async with session.get(b + target, headers=headers) as r:
                return r.status

        assert await status(replay) == 200
        assert await status(replay) == 401
        assert await status(signed(secret="not-the-secret-of-anyone-000000")) == 401
        assert await status(signed(now=time.time() - 120)) == 401
        assert await status({}) == 401  # neither a signature nor a token
    on_b = await scrape(b)
    for reason, count in (("replayed", 1), ("bad-signature", 1), ("expired", 1)):
        assert on_b[f"meshbridge_peer_auth_failures_total{{peer=a,reason={reason}}}"] == count
    assert requests(on_b, "billing", "agents", "completed") == 1


async def test_the_demo_drives_a_remote_provider_as_the_compose_stack_does(
    hop: tuple[str, str, Path], tmp_path: Path
) -> None:
    """deploy/compose/demo.toml's shape: the demo's table plus a remote `billing`."""
    _, b, _ = hop
    config = tmp_path / "demo.toml"
    config.write_text(
        f'[server.clients.demo]\ntoken = "{TOKEN}"\n'
        '[providers.local]\nkind = "fake"\ntokens_per_second = 0\n'
        f'[providers.billing]\nkind = "remote"\nurl = "{b}/billing"\n'
        'peer_secret_env = "MB_TEST_PEER_SECRET"\n'
    )
    log = tmp_path / "demo.log"
    with log.open("wb") as output:
        demo = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshbridge", "demo", "--config", str(config),
            "--listen", "127.0.0.1:0", "--duration", "3", stdout=output, stderr=output,
        )  # fmt: skip
    try:
        assert await asyncio.wait_for(demo.wait(), timeout=60) == 0
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    out = log.read_text()
    for source in ("agents", "api", "batch"):
        assert re.search(rf"^billing\s+{source}\s+mesh/openai\s+[1-9]", out, re.M), out
    on_b = await scrape(b)
    for source in ("agents", "api", "batch"):
        assert requests(on_b, "billing", source, "completed") > 0, source
