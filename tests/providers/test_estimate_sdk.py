"""The reservation of requests made by the official SDKs, as they send them.

A provider app records each request the SDK sends through the mesh (and
answers 400, so nothing else happens); the estimate is made from exactly
those bytes.
"""

from __future__ import annotations

import anthropic
import openai
import pytest
from aiohttp import web

from meshbridge import Estimate, Mesh, estimate_tokens

from ..helpers import MeshFactory
from .conftest import AnthropicFactory, OpenAIFactory

SEEN: web.AppKey[list[tuple[str, str, bytes]]] = web.AppKey("seen", list)
PROMPT = "Summarise the plot of Hamlet in two sentences."  # 46 bytes


async def record(request: web.Request) -> web.Response:
    request.app[SEEN].append((request.method, request.path, await request.read()))
    error = {"error": {"message": "recorded", "type": "invalid_request_error"}}
    return web.json_response(error, status=400)


def recorder() -> web.Application:
    app = web.Application()
    app[SEEN] = []
    app.router.add_route("*", "/{tail:.*}", record)
    return app


@pytest.fixture
def app() -> web.Application:
    return recorder()


@pytest.fixture
async def mesh(make_mesh: MeshFactory, app: web.Application) -> Mesh:
    return await make_mesh({"llm": app})


def last_estimate(app: web.Application) -> Estimate:
    method, path, body = app[SEEN][-1]
    return estimate_tokens(method, path, body)


async def test_openai_chat_completions(
    mesh: Mesh, app: web.Application, openai_sdk: OpenAIFactory
) -> None:
    client = openai_sdk(mesh, "llm")
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": PROMPT}],
            max_completion_tokens=300,
        )
    estimate = last_estimate(app)
    assert (estimate.output, estimate.model) == (300, "gpt-4o")
    assert 46 / 3 <= estimate.input <= 46 / 3 + 5  # the prompt, and the role


async def test_openai_responses(
    mesh: Mesh, app: web.Application, openai_sdk: OpenAIFactory
) -> None:
    client = openai_sdk(mesh, "llm")
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="o3", input=PROMPT, max_output_tokens=1000)
    assert last_estimate(app) == Estimate(16, 1000, "o3")


async def test_anthropic_messages(
    mesh: Mesh, app: web.Application, anthropic_sdk: AnthropicFactory
) -> None:
    client = anthropic_sdk(mesh, "llm")
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(
            model="claude-sonnet-4-5",
            system="You are terse.",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=512,
        )
    estimate = last_estimate(app)
    assert (estimate.output, estimate.model) == (512, "claude-sonnet-4-5")
    assert (14 + 46) / 3 <= estimate.input <= (14 + 46) / 3 + 5
