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

from ..helpers import MeshFactory, app_with, both_paths

# Every test here runs on the direct link and through the relay (a policy that
# never fires): a policy must not change what the caller observes.
make_mesh = both_paths

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


# -- endings a socket shows: the same through a mesh, governed or not ---------------


async def short_body(request: web.Request) -> web.StreamResponse:
    """Promises 100 bytes, sends 10 and hangs up."""
    response = web.StreamResponse(headers={"Content-Length": "100"})
    await response.prepare(request)
    await response.write(b"0123456789")
    assert request.transport is not None
    request.transport.close()
    return response


async def until_close(request: web.Request) -> web.StreamResponse:
    """An HTTP/1.0 answer: no length, no chunks, the body ends with the connection."""
    response = web.StreamResponse()
    response.force_close()
    await response.prepare(request)
    for part in (b"first ", b"second ", b"last"):
        await response.write(part)
    await response.write_eof()
    return response


async def ws_dropped(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket whose server goes away without a closing handshake."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("bye")
    assert request.transport is not None
    request.transport.close()
    return ws


WS_SEEN: web.AppKey[list[str]] = web.AppKey("ws_seen", list)


async def ws_echo_until_closed(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str(f"echo: {message.data}")
    request.app[WS_SEEN].append(f"closed {ws.close_code}")
    return ws


async def upload_echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


def ending_app() -> web.Application:
    app = app_with(
        web.get("/short", short_body),
        web.get("/until-close", until_close),
        web.get("/ws-dropped", ws_dropped),
        web.get("/ws", ws_echo_until_closed),
        web.post("/upload", upload_echo),
    )
    app[WS_SEEN] = []
    return app


async def endings(
    session: aiohttp.ClientSession, http10: aiohttp.ClientSession, base: str
) -> dict[str, object]:
    """What a caller observes of each ending, as plain values to compare
    (``http10``: a session that speaks HTTP/1.0)."""
    seen: dict[str, object] = {}
    async with session.get(f"{base}/short") as r:
        try:
            await r.read()
            seen["short"] = "complete"
        except aiohttp.ClientPayloadError:
            seen["short"] = "payload error"
    async with http10.get(f"{base}/until-close") as r:
        seen["until-close"] = (r.version, r.headers.get("Content-Length"), await r.read())
    async with session.ws_connect(f"{base}/ws-dropped") as ws:
        first = await ws.receive()
        then = await ws.receive()
        seen["ws-dropped"] = (first.data, then.type.name)
    async with session.ws_connect(f"{base}/ws") as ws:
        await ws.send_str("hi")
        seen["ws"] = (await ws.receive_str(),)
    async with session.post(f"{base}/upload", data=b"x" * 1000, expect100=True) as r:
        seen["100-continue"] = (r.status, len(await r.read()))
    return seen


async def test_every_ending_looks_as_it_does_over_tcp(make_mesh: MeshFactory) -> None:
    tcp_app, mesh_app = ending_app(), ending_app()
    old = aiohttp.HttpVersion10
    async with (
        TestServer(tcp_app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as tcp,
        aiohttp.ClientSession(version=old) as tcp10,
    ):
        over_tcp = await endings(tcp, tcp10, str(server.make_url("")).rstrip("/"))
    mesh = await make_mesh({"ends": mesh_app})
    async with mesh.session() as session, mesh.session(version=old) as session10:
        through_mesh = await endings(session, session10, "http://ends")
    assert through_mesh == over_tcp
    assert over_tcp["until-close"] == (aiohttp.HttpVersion10, None, b"first second last")
    # the server saw the client's closing handshake both ways
    for app in (tcp_app, mesh_app):
        for _ in range(100):
            if app[WS_SEEN]:
                break
            await asyncio.sleep(0.01)
    assert mesh_app[WS_SEEN] == tcp_app[WS_SEEN] == ["closed 1000"]
