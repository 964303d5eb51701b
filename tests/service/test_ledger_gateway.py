"""The usage ledger of `serve`: calls through the real gateway, ending every
way, recorded in SQLite and read back; through the official SDKs too."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx2 as httpx
import openai
import pytest
from httpx_aiohttp.httpx2 import AiohttpTransport

from meshbridge import CallRecord
from meshbridge.service import Service

from .conftest import ServiceFactory
from .ledger_helpers import rows_in

TOKEN = "token-of-the-ci-client"
CONFIG = """
[server]
listen = "127.0.0.1:0"
grace_period = 1.0
max_body_bytes = 1000
[server.clients.ci]
token = "{token}"
source = "agents"
api_key_id = "team-a"
providers = ["llm", "slow", "primary", "backup", "broken", "crashing"]
[ledger]
url = "sqlite:///{dir}/ledger.sqlite3"
flush_interval = 0.05
[providers.llm]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
reply_tokens = 6
[providers.slow]                   # 5 tokens a second: cancelled long before its end
kind = "fake"
tokens_per_second = 5
time_to_first_token = 0
reply_tokens = 1000
[providers.primary]                # down for good: its calls move to backup
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
outage_for = 3600
outage_status = 529
[providers.primary.policy]
fallback = ["backup"]
[providers.backup]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
[providers.broken]                 # the mesh answers every call itself
kind = "fake"
[providers.broken.policy]
fault = {{ abort = 503, abort_ratio = 1.0 }}
[providers.crashing]               # its handler raises on every generation: a 500
kind = "fake"
fail_every = 1
[providers.hidden]                 # outside the client's scope
kind = "fake"
"""
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Records = Callable[[int], Awaitable[list[CallRecord]]]


async def chat(service: Service, provider: str) -> tuple[int, dict[str, str], Any]:
    """A chat completion through the gateway as client ci: status, headers, JSON body."""
    url = f"{service.url}/{provider}/v1/chat/completions"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=CHAT, headers=AUTH) as reply,
    ):
        return reply.status, dict(reply.headers), await reply.json(content_type=None)


@pytest.fixture
async def service(serve: ServiceFactory, tmp_path: Path) -> Service:
    return await serve(CONFIG.format(token=TOKEN, dir=tmp_path))


@pytest.fixture
def records(service: Service, tmp_path: Path) -> Records:
    """The stored records, newest first, once there are ``count`` of them."""

    async def wait(count: int) -> list[CallRecord]:
        assert service.ledger is not None
        for _ in range(200):
            await service.ledger.flush()
            found = await asyncio.to_thread(rows_in, f"sqlite:///{tmp_path}/ledger.sqlite3")
            if len(found) >= count:
                assert len(found) == count, found
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"fewer than {count} records: {found}")

    return wait


async def test_a_unary_call_is_recorded_with_its_caller_and_usage(
    service: Service, records: Records
) -> None:
    _, _, answer = await chat(service, "llm")
    (record,) = await records(1)
    usage = answer["usage"]
    assert (record.client, record.peer, record.source, record.api_key_id) == (
        "ci",
        None,
        "agents",
        "team-a",
    )
    assert (record.target, record.provider, record.method, record.path) == (
        "llm",
        "llm",
        "POST",
        "/v1/chat/completions",
    )
    assert (record.status, record.outcome, record.attempts, record.fallback) == (
        200,
        "completed",
        1,
        False,
    )
    assert (record.input_tokens, record.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert record.request_model == record.response_model == "fake-small"
    assert record.prompt is None  # record_prompts is off by default
    assert record.ttfb is not None
    assert 0 < record.ttfb <= record.duration


async def test_the_openai_sdks_stream_is_recorded_with_the_tokens_it_saw(
    service: Service, records: Records
) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        client = openai.AsyncOpenAI(
            base_url=f"{service.url}/llm/v1", api_key=TOKEN, http_client=http
        )
        stream = await client.chat.completions.create(
            model="fake-small",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None
    (record,) = await records(1)
    assert (record.input_tokens, record.output_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert record.ttft is not None
    assert (record.client, record.status, record.outcome) == ("ci", 200, "completed")


async def test_the_anthropic_sdks_message_is_recorded_with_the_tokens_it_saw(
    service: Service, records: Records
) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        client = anthropic.AsyncAnthropic(
            base_url=f"{service.url}/llm", api_key=TOKEN, http_client=http
        )
        message = await client.messages.create(
            model="fake-small", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        )
    (record,) = await records(1)
    assert (record.input_tokens, record.output_tokens) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert record.path == "/v1/messages"


async def test_a_caller_that_leaves_a_stream_is_recorded_as_cancelled(
    service: Service, records: Records
) -> None:
    body = {**CHAT, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{service.url}/slow/v1/chat/completions", json=body, headers=AUTH) as reply,
    ):
        await reply.content.readline()  # the stream has started; then the caller goes
    (record,) = await records(1)
    assert (record.provider, record.status, record.outcome) == ("slow", 200, "cancelled")
    assert record.output_tokens is not None
    assert record.output_tokens < 1000


async def test_a_handler_that_crashes_is_recorded_as_an_error_not_a_cancel(
    service: Service, records: Records
) -> None:
    url = f"{service.url}/crashing/v1/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=CHAT, headers=AUTH) as r:
        assert (r.status, await r.text()) == (
            500,
            "500 Internal Server Error\n\nServer got itself in trouble",
        )
    (record,) = await records(1)
    assert (record.provider, record.status, record.outcome) == ("crashing", 500, "error")


async def test_a_call_that_failed_over_is_recorded_with_the_provider_that_answered(
    service: Service, records: Records
) -> None:
    status, _, _ = await chat(service, "primary")
    assert status == 200
    (record,) = await records(1)
    assert (record.target, record.provider, record.fallback) == ("primary", "backup", True)
    assert record.attempts >= 2
    assert (record.status, record.outcome) == (200, "completed")


async def test_a_call_the_mesh_refused_is_recorded_with_its_reason(
    service: Service, records: Records
) -> None:
    _, headers, _ = await chat(service, "broken")
    assert headers["x-meshbridge-reason"] == "fault"
    (record,) = await records(1)
    assert (record.provider, record.status, record.reason, record.attempts) == (
        "broken",
        503,
        "fault",
        0,
    )
    assert record.input_tokens is None


async def test_a_call_the_gateway_refused_is_recorded_and_one_without_credentials_is_not(
    service: Service, records: Records
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{service.url}/hidden/v1/x", json=CHAT, headers=AUTH) as r:
            assert r.status == 403
        async with session.post(f"{service.url}/llm/v1/x", data=b"x" * 2000, headers=AUTH) as r:
            assert r.status == 413
        for headers in ({}, {"Authorization": "Bearer wrong-token-0000"}):
            async with session.post(f"{service.url}/llm/v1/x", headers=headers) as r:
                assert r.status == 401
    # two calls in one millisecond: their ids (UUIDv7) need not sort by arrival
    found = {record.target: record for record in await records(2)}
    refused, large = found["hidden"], found["llm"]
    assert (refused.client, refused.source, refused.api_key_id) == ("ci", "agents", "team-a")
    assert (refused.target, refused.status, refused.outcome, refused.attempts) == (
        "hidden",
        403,
        "error",
        0,
    )
    assert refused.reason == "gateway:permission_error"
    assert (large.target, large.status, large.reason) == ("llm", 413, "gateway:request_too_large")


async def test_a_reload_writes_what_is_queued_and_applies_the_prompt_settings(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    path = tmp_path / "config-0.toml"
    text = CONFIG.format(token=TOKEN, dir=tmp_path).replace(
        "flush_interval = 0.05", "flush_interval = 60\nretention_days = 30"
    )
    service = await serve(text)  # written to config-0.toml, which the reload reads again
    await chat(service, "llm")
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    assert rows_in(url) == []  # a minute before the writer's next turn
    path.write_text(text.replace("retention_days = 30", "retention_days = 7"))
    assert await service.reloader.reload()
    assert len(rows_in(url)) == 1
    assert service.ledger is not None
    assert service.ledger.config.retention_days == 7
