"""Limits as the official SDKs see them: a 429 they parse as a rate-limit
error, and tokens debited exactly as the provider reported them."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest

from meshbridge import Limit, Limiter, Mesh
from meshbridge.providers import ProviderContext, fake

from .conftest import AnthropicFactory, OpenAIFactory

FAST = fake.FakeOptions(tokens_per_second=0, time_to_first_token=0, reply_tokens=8)
PACED = fake.FakeOptions(tokens_per_second=400, time_to_first_token=0, reply_tokens=20)


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def start(mesh: Mesh, limiter: Limiter, options: fake.FakeOptions = FAST) -> None:
    mesh.set_limiter(limiter)
    mesh.register("llm", fake.create_app(options, ProviderContext("llm")))
    await mesh.start()


async def test_a_refusal_is_a_rate_limit_error_each_sdk_parses_with_its_retry_after(
    mesh: Mesh, openai_sdk: OpenAIFactory, anthropic_sdk: AnthropicFactory
) -> None:
    await start(mesh, Limiter([Limit("one", {}, requests_per_minute=1)], clock=Clock()))
    oai = openai_sdk(mesh, "llm")
    await oai.chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": "Hi"}]
    )
    with pytest.raises(openai.RateLimitError) as refused:
        await oai.chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": "Hi"}]
        )
    assert refused.value.response.headers["x-meshbridge-reason"] == "rate-limited"
    assert refused.value.response.headers["Retry-After"] == "60"
    assert "limit 'one' allows requests_per_minute = 1" in refused.value.message
    with pytest.raises(anthropic.RateLimitError) as refused_too:
        await anthropic_sdk(mesh, "llm").messages.create(
            model="fake-claude", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    body = refused_too.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "rate_limit_error"


async def test_concurrent_sdk_streams_overshoot_tokens_per_minute_by_their_reservations_at_most(
    mesh: Mesh, openai_sdk: OpenAIFactory
) -> None:
    limit = 100
    limiter = Limiter([Limit("tpm", {}, tokens_per_minute=limit)], clock=Clock())
    await start(mesh, limiter, PACED)
    client = openai_sdk(mesh, "llm")
    reported: list[int] = []

    async def one() -> str:
        try:
            stream = await client.chat.completions.create(
                model="fake-small",
                messages=[{"role": "user", "content": "Count to twenty please"}],
                max_tokens=20,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.RateLimitError:
            return "refused"
        async for chunk in stream:
            if chunk.usage is not None:
                reported.append(chunk.usage.total_tokens)
        return "ok"

    outcomes = await asyncio.gather(*(one() for _ in range(12)))
    assert "refused" in outcomes  # the bucket ran dry
    admitted = outcomes.count("ok")
    assert admitted == len(reported)
    # each admission reserved its estimate (20 + its prompt, about 30), so what the
    # streams spent cannot pass the limit by more than the last reservation
    spent = sum(reported)
    assert spent <= limit + 40, (spent, reported)

    async def debited() -> float:
        (use,) = [u for u in await limiter.usage() if u.limit == "tpm"]
        return use.used

    for _ in range(200):  # settlements run after each stream's handler returned
        if await debited() == spent:
            break
        await asyncio.sleep(0.005)
    assert await debited() == spent  # exactly what the fake reported, no reservation left
