"""What the LLM kinds put in a call's record: tokens as the SDK saw them, the
tools the answer called, the last user prompt (when the ledger wants it)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from meshbridge import Mesh
from meshbridge.providers import OptionReader, ProviderContext, fake
from meshbridge.providers import anthropic as anthropic_kind
from meshbridge.providers import openai as openai_kind

from ..helpers import KeptLedger
from .conftest import AnthropicFactory, OpenAIFactory, Upstream

INSTANT = fake.FakeOptions(tokens_per_second=0, time_to_first_token=0, reply_tokens=6)


async def fake_mesh(ledger: KeptLedger) -> tuple[Mesh, web.Application]:
    mesh = Mesh(ledger=ledger)
    app = fake.create_app(INSTANT, ProviderContext("llm"))
    mesh.register("llm", app)
    await mesh.start()
    return mesh, app


async def test_the_openai_sdks_stream_is_recorded_with_its_tool_call_and_usage(
    openai_sdk: OpenAIFactory,
) -> None:
    ledger = KeptLedger(record_prompts=True)
    mesh, app = await fake_mesh(ledger)
    try:
        fake.script(app).tool_call("get_weather", {"city": "Paris"})
        stream = await openai_sdk(mesh, "llm").chat.completions.create(
            model="fake-small",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        usage = chunks[-1].usage
        assert usage is not None
        record = await ledger.one()
    finally:
        await mesh.aclose()
    assert record.tool_calls == ("get_weather",)
    assert (record.input_tokens, record.output_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert record.prompt == "Weather in Paris?"
    assert (record.request_model, record.response_model) == ("fake-small", "fake-small")
    assert (record.source, record.outcome, record.status) == ("agents", "completed", 200)


async def test_the_anthropic_sdks_message_is_recorded_with_its_tool_use_and_usage(
    anthropic_sdk: AnthropicFactory,
) -> None:
    ledger = KeptLedger()
    mesh, app = await fake_mesh(ledger)
    try:
        fake.script(app).tool_call("lookup", {"q": "x"}, text="Let me look.")
        message = await anthropic_sdk(mesh, "llm").messages.create(
            model="fake-claude",
            max_tokens=64,
            messages=[{"role": "user", "content": [{"type": "text", "text": "Find x"}]}],
        )
        record = await ledger.one()
    finally:
        await mesh.aclose()
    assert [b.name for b in message.content if b.type == "tool_use"] == ["lookup"]
    assert record.tool_calls == ("lookup",)
    assert (record.input_tokens, record.output_tokens) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert record.prompt is None  # the ledger does not record prompts


async def responses_with_reasoning(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 0,
            "model": "o-test-2026",
            "status": "completed",
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_1",
                    "name": "search",
                    "arguments": "{}",
                    "status": "completed",
                },
            ],
            "usage": {
                "input_tokens": 20,
                "input_tokens_details": {"cached_tokens": 8},
                "output_tokens": 12,
                "output_tokens_details": {"reasoning_tokens": 9},
                "total_tokens": 32,
            },
        }
    )


def sse(data: dict[str, Any], event: str) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def messages_stream_with_tool_use(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    message: dict[str, Any] = {
        "id": "m1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 1},
    }  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "tu_1", "name": "calc", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use",
         "stop_sequence": None}, "usage": {"output_tokens": 5}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    for name, data in events:
        await response.write(sse(data, name))
    await response.write_eof()
    return response


async def proxy_mesh(ledger: KeptLedger, kind: Any, upstream_url: str) -> Mesh:
    reader = OptionReader({"upstream": upstream_url}, "providers.llm", environ={})
    options = kind.parse_options(reader)
    reader.finish()
    mesh = Mesh(ledger=ledger)
    mesh.register("llm", kind.create_app(options, ProviderContext("llm")))
    await mesh.start()
    return mesh


async def test_a_proxied_responses_answer_is_recorded_with_reasoning_tokens_and_its_tool(
    upstream: Upstream, openai_sdk: OpenAIFactory
) -> None:
    app = web.Application()
    app.router.add_post("/v1/responses", responses_with_reasoning)
    server = await upstream(app)
    ledger = KeptLedger(record_prompts=True)
    mesh = await proxy_mesh(ledger, openai_kind, str(server.make_url("/")))
    try:
        answer = await openai_sdk(mesh, "llm").responses.create(model="o-test", input="Think.")
        record = await ledger.one()
    finally:
        await mesh.aclose()
    assert answer.usage is not None
    assert (record.input_tokens, record.cached_input_tokens) == (20, 8)
    assert (record.output_tokens, record.reasoning_tokens) == (12, 9)
    assert record.tool_calls == ("search",)
    assert (record.request_model, record.response_model) == ("o-test", "o-test-2026")
    assert record.prompt == "Think."


async def test_a_proxied_anthropic_stream_is_recorded_with_its_tool_use(
    upstream: Upstream, anthropic_sdk: AnthropicFactory
) -> None:
    app = web.Application()
    app.router.add_post("/v1/messages", messages_stream_with_tool_use)
    server = await upstream(app)
    ledger = KeptLedger()
    mesh = await proxy_mesh(ledger, anthropic_kind, str(server.make_url("/")))
    try:
        client = anthropic_sdk(mesh, "llm")
        async with client.messages.stream(
            model="claude-test", max_tokens=32, messages=[{"role": "user", "content": "2+2"}]
        ) as stream:
            final = await stream.get_final_message()
        record = await ledger.one()
    finally:
        await mesh.aclose()
    assert final.stop_reason == "tool_use"
    assert record.tool_calls == ("calc",)
    assert (record.input_tokens, record.output_tokens) == (11, 5)
