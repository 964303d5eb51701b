"""The LLM kinds put the OpenTelemetry GenAI attributes on the mesh's span,
seen through the official SDKs (the fake_llm fixture on a traced mesh)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshbridge import Mesh
from meshbridge.testing import FakeLLM

from ..helpers import settle


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def mesh(exporter: InMemorySpanExporter) -> AsyncIterator[Mesh]:
    """The plugin's ``mesh``, traced (fake_llm registers its provider on it)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Mesh(grace_period=1.0, tracer_provider=provider) as running:
        yield running


async def mesh_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    assert await settle(lambda: len(exporter.get_finished_spans()) == 1)
    (span,) = exporter.get_finished_spans()
    return span


async def test_an_openai_sdk_stream_gets_the_genai_attributes(
    fake_llm: FakeLLM, exporter: InMemorySpanExporter
) -> None:
    fake_llm.script.reply("Sunny in Paris today.")
    stream = await fake_llm.openai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
    assert usage is not None

    span = await mesh_span(exporter)
    attributes = dict(span.attributes or {})
    assert span.name == "POST llm"
    assert {k: v for k, v in attributes.items() if k.startswith("gen_ai.")} == {
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
    }
    assert usage.completion_tokens == 4
    assert attributes["meshbridge.outcome"] == "completed"


async def test_an_anthropic_sdk_message_gets_the_genai_attributes(
    fake_llm: FakeLLM, exporter: InMemorySpanExporter
) -> None:
    message = await fake_llm.anthropic.messages.create(
        model="claude-test",
        max_tokens=50,
        messages=[{"role": "user", "content": "Hello"}],
    )
    span = await mesh_span(exporter)
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["gen_ai.request.model"] == "claude-test"
    assert attributes["gen_ai.usage.input_tokens"] == message.usage.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == message.usage.output_tokens
