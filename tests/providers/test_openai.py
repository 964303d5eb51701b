"""The openai provider: the official SDK through the mesh, a real upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletionMessageParam

from meshbridge import ConfigError, Mesh
from meshbridge.providers import OptionReader
from meshbridge.providers import openai as openai_kind

from ..helpers import settle
from . import upstreams as up
from .conftest import (
    CANCELLED,
    OpenAIFactory,
    Upstream,
    consume,
    context,
    drain,
    sample,
    watched,
)

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
CHAT = {"model": "gpt-test", "messages": PROMPT}  # for raw requests


async def start(
    mesh: Mesh, upstream: TestServer | str, name: str = "openai", **options: object
) -> web.Application:
    """Register an openai provider proxying ``upstream``, start the mesh."""
    url = upstream if isinstance(upstream, str) else str(upstream.make_url("/"))
    raw = {"upstream": url, "api_key_env": "UPSTREAM_KEY", **options}
    reader = OptionReader(raw, f"providers.{name}", environ={"UPSTREAM_KEY": "sk-configured"})
    parsed = openai_kind.parse_options(reader)
    reader.finish()
    app = watched(openai_kind.create_app(parsed, context(mesh, name)))
    mesh.register(name, app)
    await mesh.start()
    return app


def chat_upstream() -> web.Application:
    return up.upstream_app(
        ("POST", "/v1/chat/completions", up.chat),
        ("POST", "/v1/responses", up.responses),
        ("GET", "/v1/models", up.models),
    )


def outcome(mesh: Mesh, result: str, code: str = "200", source: str = "agents") -> float:
    labels = {"provider": "openai", "source": source, "method": "POST", "code": code}
    return sample(mesh.registry, "meshbridge_requests_total", **labels, outcome=result)


def tokens(mesh: Mesh, kind: str, model: str = "gpt-test-2024", source: str = "agents") -> float:
    labels = {"provider": "openai", "source": source, "model": model, "type": kind}
    return sample(mesh.registry, "meshbridge_tokens_total", **labels)


def test_options_errors_name_their_key_paths() -> None:
    reader = OptionReader(
        {"upstream": "ftp://example.com", "api_key_env": "NOT_SET", "timeout": 0, "extra": 1},
        "providers.openai",
        environ={},
    )
    openai_kind.parse_options(reader)
    with pytest.raises(ConfigError) as caught:
        reader.finish()
    assert [where for where, _ in caught.value.errors] == [
        "providers.openai.upstream",
        "providers.openai.api_key_env",
        "providers.openai.timeout",
        "providers.openai.extra",
    ]
    assert "environment variable NOT_SET is not set" in str(caught.value)
    missing = OptionReader({}, "providers.openai")
    openai_kind.parse_options(missing)
    assert [f"{where}: {what}" for where, what in missing.errors] == [
        "providers.openai.upstream: missing: expected an http:// or https:// URL"
    ]


async def test_sdk_chat_completion_records_usage(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    await start(mesh, await upstream(chat_upstream()))
    answer = await openai_sdk(mesh, "openai").chat.completions.create(
        model="gpt-test", messages=PROMPT
    )
    assert answer.choices[0].message.content == "Hello"
    assert (tokens(mesh, "input"), tokens(mesh, "cache_read"), tokens(mesh, "output")) == (5, 2, 3)
    assert outcome(mesh, "completed") == 1


async def test_sdk_stream_is_relayed_event_by_event(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/chat/completions", up.gated_chat)))
    await start(mesh, server)
    stream = await openai_sdk(mesh, "openai").chat.completions.create(
        model="gpt-test", messages=PROMPT, stream=True
    )
    async with asyncio.timeout(10):  # a relay that buffered would never deliver the first event
        first = await anext(aiter(stream))
    assert first.choices[0].delta.content == "Hel"
    server.app[up.GATE].set()  # the upstream sends the rest only now
    rest = [c.choices[0].delta.content async for c in stream]
    assert rest == ["lo"]
    assert outcome(mesh, "completed") == 1


async def test_streams_ask_for_usage_unless_the_caller_chose(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    server = await upstream(chat_upstream())
    await start(mesh, server)
    client = openai_sdk(mesh, "openai", source="batch")
    stream = await client.chat.completions.create(model="gpt-test", messages=PROMPT, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello"
    sent = json.loads(server.app[up.SEEN][0][1])
    assert sent["stream_options"] == {"include_usage": True}
    assert tokens(mesh, "output", source="batch") == 3
    ttft = {"provider": "openai", "source": "batch", "model": "gpt-test-2024"}
    assert sample(mesh.registry, "meshbridge_time_to_first_token_seconds_count", **ttft) == 1
    chosen = await client.chat.completions.create(
        model="gpt-test", messages=PROMPT, stream=True, stream_options={"include_usage": False}
    )
    assert [c async for c in chosen if not c.choices] == []
    assert json.loads(server.app[up.SEEN][1][1])["stream_options"] == {"include_usage": False}


async def test_stream_usage_can_be_turned_off(mesh: Mesh, upstream: Upstream) -> None:
    server = await upstream(chat_upstream())
    await start(mesh, server, stream_usage=False)
    async with (
        mesh.session() as session,
        session.post("http://openai/v1/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        await r.read()
    assert "stream_options" not in json.loads(server.app[up.SEEN][0][1])


async def test_key_injected_unless_the_caller_brings_one_and_no_internal_headers(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    server = await upstream(chat_upstream())
    await start(mesh, server)
    internal = {
        "X-Meshbridge-Source": "admin",
        "X-Internal-Tenant": "t-1",
        "Cookie": "session=secret",
        "X-Forwarded-For": "10.0.0.1",
        "OpenAI-Organization": "org-1",
    }
    async with (
        mesh.session(source="api") as session,
        session.post("http://openai/v1/chat/completions", json=CHAT, headers=internal) as r,
    ):
        assert r.status == 200
        assert r.headers["x-request-id"] == "req-upstream-1"
        assert "Set-Cookie" not in r.headers
    await openai_sdk(mesh, "openai").chat.completions.create(model="gpt-test", messages=PROMPT)
    (injected, _), (own, _) = server.app[up.SEEN]
    assert injected["Authorization"] == "Bearer sk-configured"
    assert own["Authorization"] == "Bearer sk-caller"
    assert injected["OpenAI-Organization"] == "org-1"
    for name in ("X-Meshbridge-Source", "X-Internal-Tenant", "Cookie", "X-Forwarded-For"):
        assert name not in injected
    assert injected["Host"] == f"127.0.0.1:{server.port}"


async def test_responses_api_stream_records_usage(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    await start(mesh, await upstream(chat_upstream()))
    client = openai_sdk(mesh, "openai")
    stream = await client.responses.create(model="gpt-test", input="Hi", stream=True)
    deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
    assert deltas == ["Hi", "!"]
    assert (tokens(mesh, "input"), tokens(mesh, "cache_read"), tokens(mesh, "output")) == (5, 4, 2)


async def test_models_pass_through(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    await start(mesh, await upstream(chat_upstream()))
    listed = await openai_sdk(mesh, "openai").models.list()
    assert [m.id for m in listed.data] == ["gpt-test"]


async def test_upstream_errors_pass_through_with_their_body(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/chat/completions", up.rate_limited)))
    await start(mesh, server)
    with pytest.raises(openai.RateLimitError, match="slow down") as caught:
        await openai_sdk(mesh, "openai").chat.completions.create(model="gpt-test", messages=PROMPT)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body == {"message": "slow down", "type": "rate_limit_error", "code": "rate"}


async def test_invalid_json_is_a_400_and_never_reaches_the_upstream(
    mesh: Mesh, upstream: Upstream
) -> None:
    server = await upstream(chat_upstream())
    await start(mesh, server)
    async with (
        mesh.session() as session,
        session.post("http://openai/v1/chat/completions", data=b"{nope") as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "invalid JSON" in error["message"]
    assert server.app[up.SEEN] == []


async def test_refused_connection_is_a_provider_shaped_502(
    mesh: Mesh, closed_port: int, openai_sdk: OpenAIFactory
) -> None:
    await start(mesh, f"http://127.0.0.1:{closed_port}")
    with pytest.raises(openai.InternalServerError) as caught:
        await openai_sdk(mesh, "openai").chat.completions.create(model="gpt-test", messages=PROMPT)
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "bad_gateway"
    assert "unreachable" in caught.value.body["message"]


async def test_hanging_upstream_answers_504_after_the_timeout(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/chat/completions", up.hang)))
    await start(mesh, server, timeout=0.2)
    with pytest.raises(openai.InternalServerError) as caught:
        await openai_sdk(mesh, "openai").chat.completions.create(model="gpt-test", messages=PROMPT)
    assert caught.value.status_code == 504
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_timeout"
    assert await settle(lambda: server.app[CANCELLED] == ["/v1/chat/completions"])


@pytest.mark.parametrize(
    ("handler", "why"),
    [
        (up.die_mid_stream, b"upstream stream broke"),
        (up.broken_sse, b"not JSON"),
        (up.unfinished_sse, b"ended before its final event"),
    ],
)
async def test_a_broken_upstream_stream_ends_the_callers_stream_with_an_error(
    mesh: Mesh,
    upstream: Upstream,
    handler: up.Handler,
    why: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/chat/completions", handler)))
    await start(mesh, server)
    received = bytearray()
    async with (
        mesh.session(source="agents") as session,
        session.post("http://openai/v1/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await drain(r, received)
    events = received.decode().strip().split("\n\n")
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hel"
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "bad_gateway"
    assert why in error["message"].encode()
    assert await settle(lambda: outcome(mesh, "error") == 1)
    # the mesh logs one line for the broken stream, not a traceback
    ours = [r for r in caplog.records if r.name == "meshbridge"]
    assert [r.levelname for r in ours] == ["WARNING"]
    assert "provider 'openai' ended a stream with an error" in ours[0].getMessage()
    assert why.decode() in ours[0].getMessage()
    assert ours[0].exc_info is None
    provider_server = [r for r in caplog.records if r.name == "aiohttp.server" and r.exc_info]
    assert all("upstream died" in str(r.exc_info[1]) for r in provider_server if r.exc_info)


async def test_a_silent_upstream_stream_times_out_instead_of_hanging(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/chat/completions", up.silent_stream)))
    await start(mesh, server, read_timeout=0.2)
    stream = await openai_sdk(mesh, "openai").chat.completions.create(
        model="gpt-test", messages=PROMPT, stream=True
    )
    with pytest.raises(openai.APIError, match="went silent"):
        await consume(stream)
    assert await settle(lambda: outcome(mesh, "error") == 1)


async def test_sdk_closing_a_stream_cancels_the_provider_and_the_upstream(
    mesh: Mesh, upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    server = await upstream(up.upstream_app(("POST", "/v1/chat/completions", up.silent_stream)))
    app = await start(mesh, server)
    stream = await openai_sdk(mesh, "openai").chat.completions.create(
        model="gpt-test", messages=PROMPT, stream=True
    )
    async for chunk in stream:
        assert chunk.choices[0].delta.content == "Hel"
        break
    await stream.close()
    assert await settle(lambda: app[CANCELLED] == ["/v1/chat/completions"])
    assert await settle(lambda: server.app[CANCELLED] == ["/v1/chat/completions"])
    assert await settle(lambda: outcome(mesh, "cancelled") == 1)


async def test_model_labels_fold_to_other_past_the_limit(mesh: Mesh, upstream: Upstream) -> None:
    await start(mesh, await upstream(chat_upstream()), max_models=1)
    async with mesh.session(source="agents") as session:
        for _ in range(2):
            async with session.post("http://openai/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
    assert tokens(mesh, "output") == 6  # the upstream answers with one model name

    allow = Mesh()
    try:
        server = await upstream(chat_upstream())
        await start(allow, server, models=["gpt-4o"])
        async with (
            allow.session(source="agents") as session,
            session.post("http://openai/v1/chat/completions", json=CHAT) as r,
        ):
            assert r.status == 200
        assert tokens(allow, "output", model="other") == 3
        assert tokens(allow, "output") == 0
    finally:
        await allow.aclose()


async def test_two_instances_of_the_kind_reach_their_own_upstreams(
    mesh: Mesh, upstream: Upstream
) -> None:
    first, second = await upstream(chat_upstream()), await upstream(chat_upstream())
    for name, server in (("one", first), ("two", second)):
        url = str(server.make_url("/"))
        reader = OptionReader({"upstream": url}, f"providers.{name}")
        options = openai_kind.parse_options(reader)
        mesh.register(name, openai_kind.create_app(options, context(mesh, name)))
    await mesh.start()
    async with mesh.session() as session:
        for name in ("one", "two", "two"):
            async with session.post(f"http://{name}/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
    assert (len(first.app[up.SEEN]), len(second.app[up.SEEN])) == (1, 2)
    assert "Authorization" not in first.app[up.SEEN][0][0]  # no key configured, none brought
