"""HTTP through the mesh is the HTTP aiohttp speaks over the network."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from meshbridge import Mesh

from ..helpers import MeshFactory, app_with, both_paths

# Every test here runs on the direct link and through the relay (a policy that
# never fires): a policy must not change what the caller observes.
make_mesh = both_paths


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": [[k, v] for k, v in request.query.items()],
            "tags": request.headers.getall("X-Tag", []),
            "body": body.decode("latin-1"),
            "content_type": request.content_type,
            "chunked": request.headers.get("Transfer-Encoding") == "chunked",
            "host": request.host,
            "remote": request.remote,
            "secure": request.secure,
            "scheme": request.scheme,
        }
    )


async def teapot(request: web.Request) -> web.Response:
    return web.Response(status=418, text="short and stout")


async def no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def set_cookie(request: web.Request) -> web.Response:
    response = web.Response(text="set")
    response.set_cookie("session", "abc123")
    return response


async def get_cookie(request: web.Request) -> web.Response:
    return web.Response(text=request.cookies.get("session", "missing"))


async def headers_out(request: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.headers.add("X-Many", "1")
    response.headers.add("X-Many", "2")
    return response


async def form(request: web.Request) -> web.Response:
    data = await request.post()
    upload = data["file"]
    assert isinstance(upload, web.FileField)
    return web.json_response(
        {"name": data["name"], "filename": upload.filename, "size": len(upload.file.read())}
    )


async def compressed(request: web.Request) -> web.Response:
    response = web.Response(text="z" * 10_000)
    response.enable_compression()
    return response


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for part in (b"alpha ", b"beta ", b"gamma"):
        await response.write(part)
    await response.write_eof()
    return response


async def redirect_local(request: web.Request) -> web.Response:
    raise web.HTTPFound("/echo?from=redirect")


async def redirect_away(request: web.Request) -> web.Response:
    raise web.HTTPTemporaryRedirect("http://billing/echo?from=openai")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(f"echo: {message.data}")
    return ws


def routes(file: Path) -> list[web.RouteDef]:
    async def serve_file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(file)

    return [
        web.route("*", "/echo", echo),
        web.get("/teapot", teapot),
        web.get("/empty", no_content),
        web.get("/set-cookie", set_cookie),
        web.get("/get-cookie", get_cookie),
        web.get("/headers", headers_out),
        web.post("/form", form),
        web.get("/compressed", compressed),
        web.get("/chunked", chunked),
        web.get("/redirect", redirect_local),
        web.get("/elsewhere", redirect_away),
        web.get("/ws", websocket),
        web.get("/file", serve_file),
    ]


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    return path


@pytest.fixture
async def session(make_mesh: MeshFactory, big_file: Path) -> AsyncIterator[aiohttp.ClientSession]:
    mesh = await make_mesh(
        {"openai": app_with(*routes(big_file)), "billing": app_with(web.route("*", "/echo", echo))}
    )
    async with mesh.session(source="agents") as s:
        yield s


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_and_query(session: aiohttp.ClientSession, method: str) -> None:
    async with session.request(method, "http://openai/echo?a=1&a=2&b=x%20y") as r:
        assert r.status == 200
        data = await r.json()
    assert data["method"] == method
    assert data["query"] == [["a", "1"], ["a", "2"], ["b", "x y"]]


async def test_head_has_headers_and_no_body(session: aiohttp.ClientSession) -> None:
    async with session.head("http://openai/echo") as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) > 0
        assert await r.read() == b""


async def test_repeated_headers_both_ways(session: aiohttp.ClientSession) -> None:
    headers = [("X-Tag", "one"), ("X-Tag", "two")]
    async with session.get("http://openai/echo", headers=headers) as r:
        assert (await r.json())["tags"] == ["one", "two"]
    async with session.get("http://openai/headers") as r:
        assert r.headers.getall("X-Many") == ["1", "2"]


async def test_status_with_reason_and_204(session: aiohttp.ClientSession) -> None:
    async with session.get("http://openai/teapot") as r:
        assert (r.status, r.reason) == (418, "I'm a Teapot")
        assert await r.text() == "short and stout"
    async with session.get("http://openai/empty") as r:
        assert r.status == 204
        assert await r.read() == b""


async def test_cookies_round_trip(session: aiohttp.ClientSession) -> None:
    async with session.get("http://openai/set-cookie") as r:
        assert r.cookies["session"].value == "abc123"
    async with session.get("http://openai/get-cookie") as r:
        assert await r.text() == "abc123"


async def test_json_and_multipart(session: aiohttp.ClientSession) -> None:
    async with session.post("http://openai/echo", json={"k": [1, 2]}) as r:
        data = await r.json()
    assert data["body"] == '{"k": [1, 2]}'
    assert data["content_type"] == "application/json"
    form = aiohttp.FormData()
    form.add_field("name", "report")
    form.add_field("file", b"\x00" * 5000, filename="r.bin")
    async with session.post("http://openai/form", data=form) as r:
        assert await r.json() == {"name": "report", "filename": "r.bin", "size": 5000}


async def test_streamed_chunked_upload(session: aiohttp.ClientSession) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(50):
            yield f"{i},".encode()
            await asyncio.sleep(0)

    async with session.post("http://openai/echo", data=parts()) as r:
        data = await r.json()
    assert data["chunked"] is True
    assert data["body"] == "".join(f"{i}," for i in range(50))


async def test_chunked_and_compressed_responses(session: aiohttp.ClientSession) -> None:
    async with session.get("http://openai/chunked") as r:
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert await r.read() == b"alpha beta gamma"
    async with session.get("http://openai/compressed", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert await r.text() == "z" * 10_000
    async with session.get(
        "http://openai/compressed", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    ) as r:
        assert gzip.decompress(await r.read()) == b"z" * 10_000


async def test_file_response(session: aiohttp.ClientSession, big_file: Path) -> None:
    async with session.get("http://openai/file") as r:
        assert int(r.headers["Content-Length"]) == big_file.stat().st_size
        assert await r.read() == big_file.read_bytes()
    async with session.get("http://openai/file", headers={"Range": "bytes=10-19"}) as r:
        assert r.status == 206
        assert await r.read() == big_file.read_bytes()[10:20]


async def test_redirects_within_and_across_providers(session: aiohttp.ClientSession) -> None:
    async with session.get("http://openai/redirect") as r:
        assert r.status == 200
        assert (await r.json())["query"] == [["from", "redirect"]]
        assert [h.status for h in r.history] == [302]
    async with session.get("http://openai/elsewhere") as r:
        data = await r.json()
    assert data["host"] == "billing"
    assert data["query"] == [["from", "openai"]]


async def test_host_remote_and_secure(session: aiohttp.ClientSession) -> None:
    async with session.get("http://openai/echo") as r:
        plain = await r.json()
    async with session.get("https://openai/echo") as r:
        tls = await r.json()
    assert (plain["host"], plain["remote"], plain["secure"], plain["scheme"]) == (
        "openai",
        "127.0.0.1",
        False,
        "http",
    )
    assert (tls["secure"], tls["scheme"]) == (True, "https")


async def test_websocket(session: aiohttp.ClientSession) -> None:
    async with session.ws_connect("http://openai/ws") as ws:
        for word in ("hello", "mesh"):
            await ws.send_str(word)
            assert await ws.receive_str() == f"echo: {word}"
        await ws.close()


@contextlib.contextmanager
def sockets_forbidden() -> Iterator[list[str]]:
    """Make every socket creation fail, and record the attempt, inside the block."""
    attempts: list[str] = []
    real_socket = socket.socket

    class Forbidden(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            attempts.append(repr(args))
            raise OSError("sockets are forbidden in this test")

    socket.socket = Forbidden  # type: ignore[misc]
    try:
        yield attempts
    finally:
        socket.socket = real_socket  # type: ignore[misc]


async def test_no_socket_is_opened(big_file: Path) -> None:
    with sockets_forbidden() as attempts:
        async with Mesh() as mesh:
            mesh.register("openai", app_with(*routes(big_file)))
            async with mesh.session() as s:
                async with s.post("http://openai/echo", json={"x": 1}) as r:
                    assert r.status == 200
                async with s.get("http://openai/file") as r:
                    assert len(await r.read()) == big_file.stat().st_size
                async with s.ws_connect("http://openai/ws") as ws:
                    await ws.send_str("hi")
                    assert await ws.receive_str() == "echo: hi"
    assert attempts == []
    # and the guard works: outside the mesh, a socket is what aiohttp would need
    with sockets_forbidden() as attempts, pytest.raises(OSError, match="forbidden"):
        socket.socket()
    assert len(attempts) == 1
