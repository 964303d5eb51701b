"""The anthropic provider: the official SDK through the mesh, a real upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import anthropic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from anthropic.types import MessageParam

from meshbridge import Mesh
from meshbridge.providers import OptionReader
from meshbridge.providers import anthropic as anthropic_kind

from ..helpers import settle
from . import upstreams as up
from .conftest import (
    CANCELLED,
    AnthropicFactory,
    Upstream,
    consume,
    context,
    drain,
    sample,
    watched,
)

PROMPT: list[MessageParam] = [{"role": "user", "content": "Hi"}]
MESSAGE = {"model": "claude-test", "max_tokens": 64, "messages": PROMPT}  # for raw requests
MODEL = "claude-test"


async def start(
    mesh: Mesh, upstream: TestServer | str, name: str = "claude", **options: object
) -> web.Application:
    """Register an anthropic provider proxying ``upstream``, start the mesh."""
    url = upstream if isinstance(upstream, str) else str(upstream.make_url("/"))
    raw = {"upstream": url, "api_key_env": "UPSTREAM_KEY", **options}
    reader = OptionReader(raw, f"providers.{name}", environ={"UPSTREAM_KEY": "sk-ant-configured"})
    parsed = anthropic_kind.parse_options(reader)
    reader.finish()
    app = watched(anthropic_kind.create_app(parsed, context(mesh, name)))
    mesh.register(name, app)
    await mesh.start()
    return app


def messages_upstream() -> web.Application:
    return up.upstream_app(
        ("POST", "/v1/messages", up.messages),
        ("POST", "/v1/messages/count_tokens", up.count_tokens),
        ("GET", "/v1/models", up.anthropic_models),
    )


def tokens(mesh: Mesh, kind: str, source: str = "agents") -> float:
    labels = {"provider": "claude", "source": source, "model": "claude-test", "type": kind}
    return sample(mesh.registry, "meshbridge_tokens_total", **labels)


def outcome(mesh: Mesh, result: str) -> float:
    labels = {"provider": "claude", "source": "agents", "method": "POST", "code": "200"}
    return sample(mesh.registry, "meshbridge_requests_total", **labels, outcome=result)


async def test_sdk_message_records_usage_with_cache_types(
    mesh: Mesh, upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh, await upstream(messages_upstream()))
    message = await anthropic_sdk(mesh, "claude").messages.create(
        model=MODEL, max_tokens=64, messages=PROMPT
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello"
    assert [tokens(mesh, k) for k in ("input", "output", "cache_read", "cache_write")] == [
        11,
        4,
        5,
        6,
    ]


async def test_sdk_stream_records_usage_from_message_start_and_delta(
    mesh: Mesh, upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh, await upstream(messages_upstream()))
    client = anthropic_sdk(mesh, "claude", source="batch")
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=PROMPT) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello"
    assert final.usage.output_tokens == 4
    assert [tokens(mesh, k, "batch") for k in ("input", "output", "cache_read", "cache_write")] == [
        11,
        4,
        5,
        6,
    ]
    ttft = {"provider": "claude", "source": "batch", "model": "claude-test"}
    assert sample(mesh.registry, "meshbridge_time_to_first_token_seconds_count", **ttft) == 1


async def test_stream_is_relayed_event_by_event(
    mesh: Mesh, upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/messages", up.messages)))
    await start(mesh, server)
    client = anthropic_sdk(mesh, "claude")
    stream = await client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=PROMPT,
        stream=True,
        extra_query={"gated": "1"},  # the upstream holds back the rest until the gate opens
    )
    kinds = []
    async with asyncio.timeout(10):  # a relay that buffered would never deliver these
        async for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta":
                break
    server.app[up.GATE].set()
    kinds += [event.type async for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_key_and_version_headers(
    mesh: Mesh, upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    server = await upstream(messages_upstream())
    await start(mesh, server, anthropic_version="2024-01-01")
    async with (
        mesh.session() as session,
        session.post(
            "http://claude/v1/messages", json=MESSAGE, headers={"X-Meshbridge-Source": "admin"}
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["request-id"] == "req-upstream-1"
    await anthropic_sdk(mesh, "claude").messages.create(model=MODEL, max_tokens=64, messages=PROMPT)
    async with (
        mesh.session() as session,
        session.post(
            "http://claude/v1/messages",
            json=MESSAGE,
            headers={"x-api-key": "sk-ant-raw", "anthropic-version": "2023-06-01"},
        ) as r,
    ):
        assert r.status == 200
    (injected, _), (sdk, _), (raw, _) = server.app[up.SEEN]
    assert injected["x-api-key"] == "sk-ant-configured"
    assert injected["anthropic-version"] == "2024-01-01"
    assert "X-Meshbridge-Source" not in injected
    # the SDK brings its key as a bearer token, and its own API version
    sdk_version = anthropic_sdk(mesh, "claude").default_headers["anthropic-version"]
    assert (sdk["Authorization"], sdk.get("x-api-key")) == ("Bearer sk-ant-caller", None)
    assert sdk["anthropic-version"] == sdk_version
    assert (raw["x-api-key"], raw["anthropic-version"]) == ("sk-ant-raw", "2023-06-01")


async def test_count_tokens_and_models_pass_through(
    mesh: Mesh, upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh, await upstream(messages_upstream()))
    client = anthropic_sdk(mesh, "claude")
    counted = await client.messages.count_tokens(model=MODEL, messages=PROMPT)
    assert counted.input_tokens == 42
    models = await client.models.list()
    assert [m.id for m in models.data] == ["claude-test"]
    assert tokens(mesh, "input") == 0  # counting tokens is not using them


async def test_an_upstream_error_event_reaches_the_sdk_and_counts_as_an_error(
    mesh: Mesh, upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh, await upstream(messages_upstream()))
    client = anthropic_sdk(mesh, "claude")
    stream = await client.messages.create(
        model=MODEL, max_tokens=64, messages=PROMPT, stream=True, extra_query={"fail": "1"}
    )
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        await consume(stream)
    assert await settle(lambda: outcome(mesh, "error") == 1)
    assert tokens(mesh, "input") == 11  # message_start had arrived


async def test_upstream_death_mid_stream_is_an_error_event_then_a_cut(
    mesh: Mesh, upstream: Upstream
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/messages", up.anthropic_die_mid_stream)))
    await start(mesh, server)
    received = bytearray()
    async with (
        mesh.session(source="agents") as session,
        session.post("http://claude/v1/messages", json={**MESSAGE, "stream": True}) as r,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await drain(r, received)
    last = received.decode().strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    error = json.loads(last.split("data: ", 1)[1])
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert await settle(lambda: outcome(mesh, "error") == 1)


async def test_errors_are_anthropic_shaped(
    mesh: Mesh, closed_port: int, upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh, f"http://127.0.0.1:{closed_port}", name="down")
    hanging = await upstream(up.upstream_app(("POST", "/v1/messages", up.hang)))
    other = Mesh()
    try:
        await start(other, hanging, name="claude", timeout=0.2)
        with pytest.raises(anthropic.InternalServerError) as slow:
            await anthropic_sdk(other, "claude").messages.create(
                model=MODEL, max_tokens=64, messages=PROMPT
            )
    finally:
        await other.aclose()
    with pytest.raises(anthropic.InternalServerError) as down:
        await anthropic_sdk(mesh, "down").messages.create(
            model=MODEL, max_tokens=64, messages=PROMPT
        )
    assert (down.value.status_code, slow.value.status_code) == (502, 504)
    assert isinstance(down.value.body, dict)
    assert isinstance(slow.value.body, dict)
    assert down.value.body["error"]["type"] == "api_error"
    assert slow.value.body["error"]["type"] == "timeout_error"
    async with mesh.session() as session, session.post("http://down/v1/messages", data=b"{") as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"


async def test_sdk_closing_a_stream_cancels_the_provider(
    mesh: Mesh, upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/messages", up.messages)))
    app = await start(mesh, server)
    stream = await anthropic_sdk(mesh, "claude").messages.create(
        model=MODEL, max_tokens=64, messages=PROMPT, stream=True, extra_query={"gated": "1"}
    )
    async for event in stream:
        if event.type == "content_block_delta":
            break
    await stream.close()
    assert await settle(lambda: app[CANCELLED] == ["/v1/messages"])
    assert await settle(lambda: server.app[CANCELLED] == ["/v1/messages"])
    assert await settle(lambda: outcome(mesh, "cancelled") == 1)
