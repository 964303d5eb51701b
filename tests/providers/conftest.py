"""Fixtures for provider tests: a mesh, real upstream servers, SDK callers.

Everything a fixture makes is closed on teardown. Upstream servers are real
aiohttp servers on 127.0.0.1 (``aiohttp_server`` cancels a handler whose
client goes away, as ``web.run_app`` does with ``handler_cancellation``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from httpx_aiohttp.httpx2 import AiohttpTransport
from prometheus_client import CollectorRegistry

from meshbridge import Mesh
from meshbridge.providers import ProviderContext

CANCELLED: web.AppKey[list[str]] = web.AppKey("cancelled", list)


@web.middleware
async def record_cancellation(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Notes in ``app[CANCELLED]`` every request whose handler was cancelled."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        request.app[CANCELLED].append(request.path)
        raise


def watched(app: web.Application) -> web.Application:
    """``app``, noting its cancelled handlers in ``app[CANCELLED]``."""
    app[CANCELLED] = []
    app.middlewares.append(record_cancellation)
    return app


async def drain(response: aiohttp.ClientResponse, into: bytearray) -> None:
    """Read ``response``'s body into ``into`` (what arrived stays if the read fails)."""
    async for chunk in response.content.iter_any():
        into += chunk


async def consume(stream: AsyncIterable[object]) -> None:
    """Iterate ``stream`` to its end."""
    async for _ in stream:
        pass


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist."""
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    """A new mesh (register providers, then ``await mesh.start()``); closed on teardown."""
    mesh = Mesh(grace_period=1.0)
    yield mesh
    await mesh.aclose()


class Upstream(Protocol):
    async def __call__(self, app: web.Application) -> TestServer: ...


@pytest.fixture
def upstream(aiohttp_server: Any) -> Upstream:
    """Serve ``app`` on 127.0.0.1 (stopped on teardown)."""

    async def serve(app: web.Application) -> TestServer:
        server: TestServer = await aiohttp_server(app)
        return server

    return serve


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _transport(mesh: Mesh, provider: str, source: str) -> AiohttpTransport:
    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=mesh.connector(provider=provider, source=source))

    return AiohttpTransport(client=session)


class OpenAIFactory(Protocol):
    def __call__(
        self, mesh: Mesh, provider: str, *, source: str = ..., max_retries: int = ...
    ) -> openai.AsyncOpenAI: ...


class AnthropicFactory(Protocol):
    def __call__(
        self, mesh: Mesh, provider: str, *, source: str = ..., max_retries: int = ...
    ) -> anthropic.AsyncAnthropic: ...


@pytest.fixture
async def openai_sdk() -> AsyncIterator[OpenAIFactory]:
    """The official OpenAI SDK, calling a provider through the mesh (no retries
    of its own unless asked: ``max_retries=openai.DEFAULT_MAX_RETRIES``)."""
    clients: list[openai.AsyncOpenAI] = []

    def make(
        mesh: Mesh, provider: str, *, source: str = "agents", max_retries: int = 0
    ) -> openai.AsyncOpenAI:
        http = openai.DefaultAioHttpClient(transport=_transport(mesh, provider, source))
        client = openai.AsyncOpenAI(
            base_url=f"http://{provider}/v1",
            api_key="sk-caller",
            http_client=http,
            max_retries=max_retries,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def anthropic_sdk() -> AsyncIterator[AnthropicFactory]:
    """The official Anthropic SDK, calling a provider through the mesh."""
    clients: list[anthropic.AsyncAnthropic] = []

    def make(
        mesh: Mesh, provider: str, *, source: str = "agents", max_retries: int = 0
    ) -> anthropic.AsyncAnthropic:
        http = anthropic.DefaultAioHttpClient(transport=_transport(mesh, provider, source))
        client = anthropic.AsyncAnthropic(
            base_url=f"http://{provider}",
            api_key="sk-ant-caller",
            http_client=http,
            max_retries=max_retries,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def context(mesh: Mesh, name: str) -> ProviderContext:
    """The ProviderContext of provider ``name`` (on any mesh: tokens are counted
    in the metrics of the mesh each request comes through)."""
    return ProviderContext(name)
