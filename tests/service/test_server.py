"""`meshbridge serve`: the gated HTTP face of a mesh, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from meshbridge.service import Service

from .conftest import ServiceFactory

TOKEN = "token-for-the-api-client"
BATCH_TOKEN = "token-for-the-batch-client"
CONFIG = f"""
[server]
listen = "127.0.0.1:0"
max_body_bytes = 2000
grace_period = 5.0
[server.clients.app]
token = "{TOKEN}"
source = "api"
[server.clients.nightly]
token = "{BATCH_TOKEN}"
source = "batch"
api_key_id = "nightly-key"
[providers.local]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
reply_tokens = 6
[providers.keyed]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
require_api_key_id = true
[providers.slow]
kind = "fake"
time_to_first_token = 1000
"""
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
CHAT = {"model": "fake-small", "messages": PROMPT}


def requests(service: Service, provider: str, **labels: str) -> float:
    """meshbridge_requests_total of ``provider``, summed over the other labels."""
    total = 0.0
    for family in service.mesh.registry.collect():
        for s in family.samples:
            if s.name != "meshbridge_requests_total" or s.labels["provider"] != provider:
                continue
            if all(s.labels[k] == v for k, v in labels.items()):
                total += s.value
    return total


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_gate_answers_401_before_any_provider(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    url = f"{service.url}/local/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, bearer("wrong-token-000"), {"Authorization": f"Basic {TOKEN}"}):
            async with session.post(url, json=CHAT, headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await response.json())["error"]["type"] == "authentication_error"
        async with session.post(f"{service.url}/nowhere/x", headers=bearer("nope")) as response:
            assert response.status == 401  # unauthenticated callers do not learn the providers
    assert requests(service, "local") == 0


async def test_unknown_provider_is_a_404_naming_the_known_ones(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{service.url}/nowhere/v1/models", headers=bearer(TOKEN)) as response,
    ):
        assert response.status == 404
        error = (await response.json())["error"]
    assert error["providers"] == ["keyed", "local", "slow"]
    assert "known providers: keyed, local, slow" in error["message"]


async def test_oversized_bodies_get_413(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    url = f"{service.url}/local/v1/chat/completions"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"x" * 100

    async with aiohttp.ClientSession(headers=bearer(TOKEN)) as session:
        async with session.post(url, data=b"x" * 2001) as response:
            assert response.status == 413
            assert (await response.json())["error"]["limit"] == 2000
        async with session.post(url, data=chunks()) as response:  # chunked: no Content-Length
            assert response.status == 413
    assert requests(service, "local") == 0


async def test_invalid_json_gets_the_providers_400(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    async with (
        aiohttp.ClientSession(headers=bearer(TOKEN)) as session,
        session.post(f"{service.url}/local/v1/chat/completions", data=b"{oops") as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "invalid JSON" in error["message"]


async def test_sdk_streams_through_the_gate_with_the_server_chosen_source(
    serve: ServiceFactory,
) -> None:
    service = await serve(CONFIG)
    headers = {"X-Meshbridge-Source": "admin"}  # an outside caller cannot choose its Source
    async with openai.AsyncOpenAI(
        base_url=f"{service.url}/local/v1",
        api_key=BATCH_TOKEN,
        default_headers=headers,
        max_retries=0,
    ) as client:
        stream = await client.chat.completions.create(
            model="fake-small", messages=PROMPT, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        whole = await client.chat.completions.create(model="fake-small", messages=PROMPT)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert requests(service, "local", source="batch", outcome="completed") == 2
    assert requests(service, "local", source="admin") == 0
    labels = {"provider": "local", "source": "batch", "model": "fake-small", "type": "output"}
    assert service.mesh.registry.get_sample_value("meshbridge_tokens_total", labels) == 12


async def test_api_key_id_comes_from_the_client_config(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    url = f"{service.url}/keyed/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=CHAT, headers=bearer(BATCH_TOKEN)) as response:
            assert response.status == 200
        async with session.post(url, json=CHAT, headers=bearer(TOKEN)) as response:
            assert response.status == 403
            assert "requires an API key id" in (await response.json())["error"]["message"]


async def test_health_readiness_and_metrics_need_no_token(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{service.url}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        async with session.get(f"{service.url}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["providers"] == ["local", "keyed", "slow"]
        async with session.get(f"{service.url}/local/v1/models", headers=bearer(TOKEN)) as r:
            assert r.status == 200
        async with session.get(f"{service.url}/metrics") as response:
            text = await response.text()
    assert 'meshbridge_requests_total{code="200",method="GET"' in text
    assert 'meshbridge_config_reloads_total{result="success"} 0.0' in text


async def test_one_structured_access_log_line_per_request(
    serve: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await serve(CONFIG)
    with caplog.at_level(logging.INFO, logger="meshbridge.access"):
        async with aiohttp.ClientSession() as session:
            url = f"{service.url}/local/v1/chat/completions"
            async with session.post(url, json=CHAT, headers=bearer(TOKEN)) as response:
                body = await response.read()
            async with session.post(url, json=CHAT) as response:
                assert response.status == 401
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "meshbridge.access"]
    assert len(lines) == 2
    served, denied = lines
    assert {k: served[k] for k in ("provider", "client", "source", "status", "outcome")} == {
        "provider": "local",
        "client": "app",
        "source": "api",
        "status": 200,
        "outcome": "completed",
    }
    assert served["bytes_out"] == len(body)
    assert served["bytes_in"] == len(json.dumps(CHAT))
    assert served["duration_ms"] >= 0
    assert (denied["status"], denied["provider"], denied["client"]) == (401, None, None)


async def test_an_outside_caller_leaving_cancels_the_provider(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    url = f"{service.url}/slow/v1/chat/completions"
    async with aiohttp.ClientSession(headers=bearer(TOKEN)) as session:
        response = await session.post(url, json={**CHAT, "stream": True})
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"data: ")  # the role chunk
        response.close()  # the first token would come after 1000 s
    for _ in range(500):
        if requests(service, "slow", outcome="cancelled") == 1:
            break
        await asyncio.sleep(0.002)
    assert requests(service, "slow", outcome="cancelled") == 1


async def test_stopping_lets_in_flight_streams_finish(serve: ServiceFactory) -> None:
    paced = CONFIG.replace("tokens_per_second = 0\n", "tokens_per_second = 50\n", 1)
    service = await serve(paced)
    url = f"{service.url}/local/v1/chat/completions"
    async with (
        aiohttp.ClientSession(headers=bearer(TOKEN)) as session,
        session.post(url, json={**CHAT, "stream": True}) as response,
    ):
        first = await response.content.readline()
        stopping = asyncio.create_task(service.aclose())
        rest = await response.read()
        await stopping
    assert first.startswith(b"data: ")
    assert rest.endswith(b"data: [DONE]\n\n")
    assert requests(service, "local", outcome="completed") == 1
