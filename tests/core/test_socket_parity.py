"""Where a socket and the mesh could differ, the mesh behaves as the socket does.

Each case was found by running aiohttp's own functional tests through a mesh.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.test_utils import TestServer

from meshbridge import MeshError, ProviderNotFound

from ..helpers import MeshFactory, app_with

BIG = 50 * 1024 * 1024
MiB = 1024 * 1024

RECEIVED: web.AppKey[list[web.Request]] = web.AppKey("received", list)
ARRIVED: web.AppKey[asyncio.Event] = web.AppKey("arrived", asyncio.Event)
RELEASE: web.AppKey[asyncio.Event] = web.AppKey("release", asyncio.Event)


async def big_body(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * BIG)


async def slow_upload_reader(request: web.Request) -> web.Response:
    request.app[RECEIVED].append(request)
    request.app[ARRIVED].set()
    await request.app[RELEASE].wait()
    return web.json_response({"received": len(await request.read())})


def upload_app() -> web.Application:
    app = app_with(web.post("/upload", slow_upload_reader))
    app[RECEIVED] = []
    app[ARRIVED] = asyncio.Event()
    app[RELEASE] = asyncio.Event()
    app._client_max_size = 2 * BIG  # a 50 MB upload is this test's point
    return app


async def loop_turns(count: int = 200) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.slow
async def test_a_large_response_reaches_a_reader_that_waits_only_as_it_reads(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh({"big": app_with(web.get("/", big_body))})
    async with mesh.session() as session, session.get("http://big/") as response:
        await loop_turns()
        assert response.content.total_bytes < MiB  # over TCP: about 0.7 MB
        assert len(await response.read()) == BIG


@pytest.mark.slow
# one 50 MB write is this test's point; aiohttp warns that it blocks the loop
@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_a_large_upload_reaches_a_handler_that_waits_only_as_it_reads(
    make_mesh: MeshFactory,
) -> None:
    app = upload_app()
    mesh = await make_mesh({"up": app})
    async with mesh.session() as session:
        upload = asyncio.create_task(session.post("http://up/upload", data=b"y" * BIG))
        await app[ARRIVED].wait()
        await loop_turns()
        assert app[RECEIVED][0].content.total_bytes < MiB
        app[RELEASE].set()
        async with await upload as response:
            assert await response.json() == {"received": BIG}


async def hangs_up(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.close()
    return web.Response(text="never sent")


async def test_a_provider_that_closes_before_responding_is_a_server_disconnected_error(
    make_mesh: MeshFactory,
) -> None:
    app = app_with(web.get("/", hangs_up))
    mesh = await make_mesh({"rude": app_with(web.get("/", hangs_up))})
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as tcp:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await tcp.get(server.make_url("/"))
    async with mesh.session() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.get("http://rude/")


async def test_an_unknown_provider_is_caught_where_an_unresolvable_host_is(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh({"known": app_with()})
    async with mesh.session() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get("http://unknown/v1/models")
    assert isinstance(caught.value, ProviderNotFound)
    assert isinstance(caught.value, MeshError)
    assert caught.value.host == "unknown"
    assert "no provider named 'unknown'" in str(caught.value)


LINES: web.AppKey[list[str]] = web.AppKey("lines", list)


class ListAccessLogger(AbstractAccessLogger):
    """Keeps one line per request in the list its logger argument names."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        assert isinstance(request, web.Request)
        request.app[LINES].append(f"{request.method} {request.path} {response.status}")


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hi")


async def test_an_apps_own_access_log_is_honoured(
    make_mesh: MeshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    logged = web.Application(handler_args={"access_log_class": ListAccessLogger})
    logged.router.add_get("/", hello)
    logged[LINES] = []
    mesh = await make_mesh({"logged": logged, "quiet": app_with(web.get("/", hello))})
    with caplog.at_level("INFO", logger="aiohttp.access"):
        async with mesh.session() as session:
            for name in ("logged", "quiet"):
                async with session.get(f"http://{name}/") as response:
                    assert await response.text() == "hi"
    assert logged[LINES] == ["GET / 200"]
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]
