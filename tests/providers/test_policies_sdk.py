"""Traffic policies as the official SDKs see them: one clean answer, or an error they parse."""

from __future__ import annotations

import anthropic
import openai
import pytest

from meshbridge import CircuitBreaker, Mesh, Policy
from meshbridge.providers import ProviderContext, fake

from .conftest import AnthropicFactory, OpenAIFactory

INSTANT = {"tokens_per_second": 0.0, "time_to_first_token": 0.0, "reply_tokens": 6}
DOWN = fake.FakeOptions(**INSTANT, outage_for=3600.0, outage_status=529)  # type: ignore[arg-type]
UP = fake.FakeOptions(**INSTANT)  # type: ignore[arg-type]
FAST = (0.001, 0.005)


async def start(mesh: Mesh, policy: Policy) -> None:
    mesh.register("primary", fake.create_app(DOWN, ProviderContext("primary")), policy=policy)
    mesh.register("backup", fake.create_app(UP, ProviderContext("backup")))
    await mesh.start()


def fallback_policy() -> Policy:
    return Policy(retries=1, retry_backoff=FAST, fallback=("backup",))


async def test_openai_sdk_streams_from_the_fallback_of_a_provider_answering_529(
    mesh: Mesh, openai_sdk: OpenAIFactory
) -> None:
    await start(mesh, fallback_policy())
    stream = await openai_sdk(mesh, "primary").chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert len(text.split()) >= 4
    labels = {"provider": "primary", "fallback": "backup", "source": "agents"}
    assert mesh.registry.get_sample_value("meshbridge_fallbacks_total", labels) == 1
    calls = {"target": "primary", "source": "agents", "code": "200", "outcome": "completed"}
    assert mesh.registry.get_sample_value("meshbridge_calls_total", calls) == 1


async def test_anthropic_sdk_stream_helper_reads_the_fallback_of_a_provider_answering_529(
    mesh: Mesh, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh, fallback_policy())
    client = anthropic_sdk(mesh, "primary")
    async with client.messages.stream(
        model="fake-claude", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6


async def test_an_open_circuit_is_an_error_each_sdk_parses(
    mesh: Mesh, openai_sdk: OpenAIFactory, anthropic_sdk: AnthropicFactory
) -> None:
    breaker = CircuitBreaker(failures=1, interval=60.0, open_for=60.0)
    await start(mesh, Policy(circuit_breaker=breaker))
    oai = openai_sdk(mesh, "primary")
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "Hi"}
    ]
    with pytest.raises(openai.APIStatusError) as tripped:
        await oai.chat.completions.create(model="fake-small", messages=messages)
    assert tripped.value.status_code == 529  # the provider's own answer opens the circuit
    with pytest.raises(openai.InternalServerError) as refused:
        await oai.chat.completions.create(model="fake-small", messages=messages)
    assert refused.value.status_code == 503
    assert refused.value.response.headers["x-meshbridge-reason"] == "circuit-open"
    assert "circuit of 'primary' is open" in refused.value.message
    claude = anthropic_sdk(mesh, "primary")
    with pytest.raises(anthropic.InternalServerError) as refused_too:
        await claude.messages.create(
            model="fake-claude", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert refused_too.value.status_code == 503
    body = refused_too.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "overloaded_error"
    assert refused_too.value.response.headers["Retry-After"] == "60"


def attempts(mesh: Mesh, provider: str) -> float:
    """Requests ``provider`` served, every attempt counted."""
    return sum(
        sample.value
        for family in mesh.registry.collect()
        if family.name == "meshbridge_requests"
        for sample in family.samples
        if sample.name == "meshbridge_requests_total" and sample.labels["provider"] == provider
    )


async def down(mesh: Mesh, retries: int) -> None:
    mesh.register(
        "primary",
        fake.create_app(DOWN, ProviderContext("primary")),
        policy=Policy(retries=retries, retry_backoff=FAST),
    )
    await mesh.start()


async def test_the_openai_sdks_own_retries_do_not_multiply_the_meshs(
    mesh: Mesh, openai_sdk: OpenAIFactory
) -> None:
    await down(mesh, retries=2)
    client = openai_sdk(mesh, "primary", max_retries=openai.DEFAULT_MAX_RETRIES)  # 2
    with pytest.raises(openai.APIStatusError) as failed:
        await client.chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": "Hi"}]
        )
    assert failed.value.status_code == 529
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert attempts(mesh, "primary") == 3  # 1 + the mesh's retries, not 3 x 3


async def test_the_anthropic_sdks_own_retries_do_not_multiply_the_meshs(
    mesh: Mesh, anthropic_sdk: AnthropicFactory
) -> None:
    await down(mesh, retries=2)
    client = anthropic_sdk(mesh, "primary", max_retries=anthropic.DEFAULT_MAX_RETRIES)  # 2
    with pytest.raises(anthropic.APIStatusError) as failed:
        await client.messages.create(
            model="fake-claude", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert failed.value.status_code == 529
    assert attempts(mesh, "primary") == 3


async def test_sdks_still_retry_what_the_mesh_did_not(
    mesh: Mesh, openai_sdk: OpenAIFactory
) -> None:
    await down(mesh, retries=0)  # the mesh leaves retries to the caller
    client = openai_sdk(mesh, "primary", max_retries=1)
    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": "Hi"}]
        )
    assert attempts(mesh, "primary") == 2
