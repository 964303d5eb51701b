"""The fake provider, driven by the official SDKs through the mesh."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from aiohttp import web
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from meshbridge import ConfigError, Mesh
from meshbridge.providers import OptionReader, ProviderContext, fake

from ..helpers import settle
from .conftest import CANCELLED, AnthropicFactory, OpenAIFactory, context, sample, watched

INSTANT = fake.FakeOptions(tokens_per_second=0, time_to_first_token=0, reply_tokens=12)
# 5 tokens: Hello there , mesh !
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there, mesh!"}]
MESSAGES: list[MessageParam] = [{"role": "user", "content": "Hello there, mesh!"}]


async def start(
    mesh: Mesh, options: fake.FakeOptions = INSTANT, name: str = "local"
) -> web.Application:
    app = watched(fake.create_app(options, context(mesh, name)))
    mesh.register(name, app)
    await mesh.start()
    return app


def test_options_report_every_error_with_its_key_path() -> None:
    reader = OptionReader(
        {"tokens_per_second": "fast", "reply_tokens": 0, "models": "one", "colour": "red"},
        "providers.local",
    )
    fake.parse_options(reader)
    with pytest.raises(ConfigError) as caught:
        reader.finish()
    paths = [where for where, _ in caught.value.errors]
    assert paths == [
        "providers.local.tokens_per_second",
        "providers.local.reply_tokens",
        "providers.local.models",
        "providers.local.colour",
    ]
    assert "expected a number >= 0" in str(caught.value)


def test_options_defaults() -> None:
    reader = OptionReader({}, "providers.local")
    assert fake.parse_options(reader) == fake.FakeOptions()
    reader.finish()


async def test_chat_completion_is_deterministic_with_real_usage(
    mesh: Mesh, openai_sdk: OpenAIFactory
) -> None:
    await start(mesh)
    client = openai_sdk(mesh, "local")
    first = await client.chat.completions.create(model="fake-small", messages=PROMPT)
    again = await client.chat.completions.create(model="fake-small", messages=PROMPT)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (5, 12)
    labels = {"provider": "local", "source": "agents", "model": "fake-small"}
    assert sample(mesh.registry, "meshbridge_tokens_total", **labels, type="input") == 10
    assert sample(mesh.registry, "meshbridge_tokens_total", **labels, type="output") == 24


async def test_streamed_chat_completion_matches_and_reports_usage(
    mesh: Mesh, openai_sdk: OpenAIFactory
) -> None:
    await start(mesh)
    client = openai_sdk(mesh, "local", source="batch")
    whole = await client.chat.completions.create(model="fake-small", messages=PROMPT)
    stream = await client.chat.completions.create(
        model="fake-small",
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert text == whole.choices[0].message.content
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == 12
    ttft = {"provider": "local", "source": "batch", "model": "fake-small"}
    assert sample(mesh.registry, "meshbridge_time_to_first_token_seconds_count", **ttft) == 1


async def test_max_tokens_cuts_the_reply(mesh: Mesh, openai_sdk: OpenAIFactory) -> None:
    await start(mesh)
    client = openai_sdk(mesh, "local")
    answer = await client.chat.completions.create(
        model="fake-small",
        messages=PROMPT,
        max_completion_tokens=3,
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3


async def test_messages_stream_has_the_real_event_sequence(mesh: Mesh) -> None:
    await start(mesh)
    body = {"model": "fake-claude", "max_tokens": 3, "messages": PROMPT, "stream": True}
    async with (
        mesh.session(source="agents") as session,
        session.post("http://local/v1/messages", json=body) as response,
    ):
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [
            line.decode().removeprefix("event: ").strip()
            async for line in response.content
            if line.startswith(b"event: ")
        ]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_anthropic_sdk_messages(mesh: Mesh, anthropic_sdk: AnthropicFactory) -> None:
    await start(mesh)
    client = anthropic_sdk(mesh, "local")
    whole = await client.messages.create(model="fake-claude", max_tokens=100, messages=MESSAGES)
    async with client.messages.stream(
        model="fake-claude",
        max_tokens=100,
        messages=MESSAGES,
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert whole.content[0].type == "text"
    assert text == whole.content[0].text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 12)
    count = await client.messages.count_tokens(model="fake-claude", messages=MESSAGES)
    assert count.input_tokens == 5


async def test_models_in_both_shapes(
    mesh: Mesh, openai_sdk: OpenAIFactory, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh)
    listed = await openai_sdk(mesh, "local").models.list()
    assert [m.id for m in listed.data] == ["fake-small", "fake-large"]
    models = await anthropic_sdk(mesh, "local").models.list()
    assert [m.id for m in models.data] == ["fake-small", "fake-large"]


async def test_invalid_json_is_a_provider_shaped_400(mesh: Mesh) -> None:
    await start(mesh)
    async with mesh.session() as session:
        chat = await session.post("http://local/v1/chat/completions", data=b"{oops")
        messages = await session.post(
            "http://local/v1/messages", data=b"[1, 2", headers={"anthropic-version": "2023-06-01"}
        )
        assert (chat.status, messages.status) == (400, 400)
        openai_error = await chat.json()
        anthropic_error = await messages.json()
    assert openai_error["error"]["type"] == "invalid_request_error"
    assert "invalid JSON" in openai_error["error"]["message"]
    assert anthropic_error["type"] == "error"
    assert anthropic_error["error"]["type"] == "invalid_request_error"


async def test_sdks_raise_on_bad_requests(
    mesh: Mesh, openai_sdk: OpenAIFactory, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh)
    with pytest.raises(openai.BadRequestError, match="messages"):
        await openai_sdk(mesh, "local").chat.completions.create(
            model="fake-small", messages=[], extra_body={"messages": "not a list"}
        )
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await anthropic_sdk(mesh, "local").messages.create(
            model="fake-claude",
            max_tokens=0,
            messages=MESSAGES,
        )


async def test_fail_every_gives_handler_errors(mesh: Mesh) -> None:
    await start(mesh, fake.FakeOptions(tokens_per_second=0, time_to_first_token=0, fail_every=2))
    body = {"model": "fake-small", "messages": PROMPT}
    async with mesh.session(source="api") as session:
        statuses = []
        for _ in range(4):
            async with session.post("http://local/v1/chat/completions", json=body) as response:
                statuses.append(response.status)
    assert statuses == [200, 500, 200, 500]
    errors = sample(
        mesh.registry, "meshbridge_handler_errors_total", provider="local", source="api"
    )
    assert errors == 2


async def test_sdk_closing_a_stream_cancels_the_handler(
    mesh: Mesh, openai_sdk: OpenAIFactory
) -> None:
    # the first token comes after 1000 s: the handler is waiting when the caller leaves
    slow = fake.FakeOptions(time_to_first_token=1000)
    app = await start(mesh, slow)
    stream = await openai_sdk(mesh, "local").chat.completions.create(
        model="fake-small",
        messages=PROMPT,
        stream=True,
    )
    async for chunk in stream:
        assert chunk.choices[0].delta.role == "assistant"
        break
    await stream.close()
    assert await settle(lambda: app[CANCELLED] == ["/v1/chat/completions"])
    labels = {"provider": "local", "source": "agents", "method": "POST", "code": "200"}
    assert await settle(
        lambda: (
            sample(mesh.registry, "meshbridge_requests_total", **labels, outcome="cancelled") == 1
        )
    )


async def test_model_labels_are_bounded(mesh: Mesh) -> None:
    await start(mesh)
    async with mesh.session(source="api") as session:
        for model in ("fake-small", "anything-a-caller-likes", "and-another"):
            body = {"model": model, "messages": PROMPT}
            async with session.post("http://local/v1/chat/completions", json=body) as response:
                assert (await response.json())["model"] == model
    labels = {"provider": "local", "source": "api", "type": "output"}
    assert sample(mesh.registry, "meshbridge_tokens_total", **labels, model="fake-small") == 12
    assert sample(mesh.registry, "meshbridge_tokens_total", **labels, model="other") == 24


async def test_tokens_are_counted_in_the_metrics_of_the_mesh_the_request_came_through(
    mesh: Mesh,
) -> None:
    for name in ("one", "two"):
        mesh.register(name, fake.create_app(INSTANT, ProviderContext(name)))
    await mesh.start()
    async with mesh.session(source="api") as session:
        for name in ("one", "two"):
            body = {"model": "fake-small", "messages": PROMPT}
            async with session.post(f"http://{name}/v1/chat/completions", json=body) as response:
                assert json.loads(await response.read())["usage"]["completion_tokens"] == 12
    for name in ("one", "two"):
        labels = {"provider": name, "source": "api", "model": "fake-small", "type": "output"}
        assert sample(mesh.registry, "meshbridge_tokens_total", **labels) == 12
