"""Large bodies: a body of known length skips llhttp (the pipe's Rule 6), and
what handlers and callers observe is what aiohttp gives them over TCP."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from meshbridge._aiohttp import server_protocols
from meshbridge._pipe import Pipe

from ..helpers import MeshFactory, app_with, both_paths

# Every test here runs on the direct link and through the relay (a policy that
# never fires): a policy must not change what the caller observes.
make_mesh = both_paths

KiB = 1024
MiB = 1024 * KiB
SIZES = (64 * KiB + 1, MiB, MiB + 7, 3 * MiB)


def pattern(size: int) -> bytes:
    """``size`` bytes that differ from one position to the next (no two
    pieces of a body alike, so a piece delivered twice or out of order shows)."""
    block = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(2048))  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


BODIES = {size: pattern(size) for size in SIZES}


async def download(request: web.Request) -> web.Response:
    return web.Response(body=BODIES[int(request.match_info["size"])])


async def upload_digest(request: web.Request) -> web.Response:
    if request.query.get("read") == "chunks":
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(10_000):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})
    body = await request.read()
    return web.json_response({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()})


def body_app() -> web.Application:
    app = app_with(web.get("/down/{size}", download), web.post("/up", upload_digest))
    app._client_max_size = 4 * MiB
    return app


# bodies over 1 MiB sent as one bytes object are this test's point; aiohttp warns
@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_large_bodies_arrive_whole_and_unchanged_both_ways(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh({"bodies": body_app()})
    async with mesh.session() as session:
        for size, body in BODIES.items():
            async with session.get(f"http://bodies/down/{size}") as response:
                assert response.content_length == size
                assert await response.read() == body
            async with session.get(f"http://bodies/down/{size}") as response:
                assert b"".join([c async for c in response.content.iter_chunked(10_000)]) == body
            async with session.get(f"http://bodies/down/{size}") as response:
                pieces = [c async for c in response.content.iter_any()]
                assert all(type(piece) is bytes for piece in pieces)
                assert b"".join(pieces) == body
            # a reader whose buffer the first piece overflows: the body stays with llhttp
            async with (
                mesh.session(read_bufsize=1024) as small_buffer,
                small_buffer.get(f"http://bodies/down/{size}") as response,
            ):
                assert await response.read() == body
            expected = {"size": size, "sha256": hashlib.sha256(body).hexdigest()}
            for read in ("all", "chunks"):
                for data in (body, io.BytesIO(body)):  # one write; many (a file's reads)
                    async with session.post(f"http://bodies/up?read={read}", data=data) as r:
                        assert r.request_info.headers["Content-Length"] == str(size)
                        assert await r.json() == expected


async def sink_size(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


# bodies over 1 MiB sent as one bytes object are this test's point; aiohttp warns
@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_a_16_mib_upload_read_whole_arrives_unchanged_and_is_counted(
    make_mesh: MeshFactory,
) -> None:
    # request.read() raises its reader's limit to client_max_size: the body
    # may then go over whole, by reference (Rule 6); the handler, the caller
    # and the metrics see what they would see of it in pieces.
    app = app_with(web.post("/sink", sink_size), web.get("/down/{size}", download))
    app._client_max_size = 32 * MiB
    mesh = await make_mesh({"sink": app})
    body = bytes(range(256)) * (16 * MiB // 256)
    async with mesh.session(source="bulk") as session:
        for _ in range(2):  # and again on the same connection
            async with session.post("http://sink/sink", data=body) as response:
                assert await response.text() == str(16 * MiB)
        async with session.get(f"http://sink/down/{MiB + 7}") as response:
            assert await response.read() == BODIES[MiB + 7]
    labels = {"provider": "sink", "source": "bulk"}
    sample = mesh.registry.get_sample_value
    assert sample("meshbridge_request_bytes_total", labels) == 2 * 16 * MiB
    answers = 2 * len(str(16 * MiB))
    assert sample("meshbridge_response_bytes_total", labels) == answers + MiB + 7
    completed = {**labels, "method": "POST", "code": "200", "outcome": "completed"}
    assert sample("meshbridge_requests_total", completed) == 2
    assert sample("meshbridge_requests_in_flight", labels) == 0


# -- every ending, as over TCP ---------------------------------------------------------

PROMISED = 2 * MiB
SERVED: web.AppKey[list[int]] = web.AppKey("served", list)


async def cut_short(request: web.Request) -> web.StreamResponse:
    """Promises 2 MiB, sends 1 MiB and hangs up."""
    response = web.StreamResponse(headers={"Content-Length": str(PROMISED)})
    await response.prepare(request)
    await response.write(BODIES[MiB])
    assert request.transport is not None
    request.transport.close()
    return response


async def stalls(request: web.Request) -> web.StreamResponse:
    """Sends half of its body, then nothing."""
    response = web.StreamResponse(headers={"Content-Length": str(PROMISED)})
    await response.prepare(request)
    await response.write(BODIES[MiB])
    await asyncio.sleep(3600)
    return response


async def small(request: web.Request) -> web.Response:
    request.app[SERVED].append(id(request.transport))
    return web.Response(text="small")


async def in_chunks(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(3):
        await response.write(pattern(300 * KiB + i))
    await response.write_eof()
    return response


async def compressed(request: web.Request) -> web.Response:
    response = web.Response(body=BODIES[MiB])
    response.enable_compression()
    return response


async def kept(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[SERVED].append(id(request.transport))
    return web.Response(text=str(len(body)))


def ending_app() -> web.Application:
    app = app_with(
        web.get("/cut", cut_short),
        web.get("/stalls", stalls),
        web.get("/small", small),
        web.get("/chunks", in_chunks),
        web.get("/compressed", compressed),
        web.get("/down/{size}", download),
        web.post("/kept", kept),
    )
    app[SERVED] = []
    app._client_max_size = 4 * MiB
    return app


async def endings(session: aiohttp.ClientSession, base: str) -> dict[str, object]:
    """What a caller observes of each large body, as plain values to compare."""
    seen: dict[str, object] = {}
    async with session.get(f"{base}/cut") as r:
        try:
            await r.read()
            seen["cut"] = "complete"
        except aiohttp.ClientPayloadError as exc:
            # the mesh adds why the connection closed after llhttp's words (see _link.py)
            seen["cut"] = (type(exc).__name__, str(exc).partition(">")[0] + ">")
    timeout = aiohttp.ClientTimeout(sock_read=1.0)  # a gap past the 1 MiB it sent, not within it
    async with session.get(f"{base}/stalls", timeout=timeout) as r:
        try:
            await r.read()
            seen["stalls"] = "complete"
        except aiohttp.ServerTimeoutError as exc:
            seen["stalls"] = (type(exc).__name__, str(exc))
    async with session.head(f"{base}/down/{MiB}") as r:
        seen["head"] = (r.status, r.headers["Content-Length"], await r.read())
    async with session.get(f"{base}/compressed") as r:
        seen["compressed"] = (r.headers["Content-Encoding"], await r.read() == BODIES[MiB])
    async with session.get(f"{base}/chunks") as r:
        http_chunks, current = [], b""
        async for data, end_of_chunk in r.content.iter_chunks():
            current += data
            if end_of_chunk:
                http_chunks.append(len(current))
                current = b""
        # aiohttp's reader reports one more, empty, end of chunk when the last
        # chunk was read before the terminating one came (over TCP too)
        seen["chunks"] = http_chunks[:-1] if http_chunks[-1:] == [0] else http_chunks
    async with session.post(f"{base}/kept", data=BODIES[MiB], expect100=True) as r:
        seen["100-continue"] = (r.status, await r.text())
    for _ in range(2):  # one connection, kept alive past each large body
        async with session.post(f"{base}/kept", data=BODIES[MiB]) as r:
            assert await r.text() == str(MiB)
        async with session.get(f"{base}/down/{MiB}") as r:
            assert await r.read() == BODIES[MiB]
    return seen


@pytest.fixture
async def tcp_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        yield session


async def test_every_large_body_ending_looks_as_it_does_over_tcp(
    make_mesh: MeshFactory, tcp_session: aiohttp.ClientSession
) -> None:
    tcp_app, mesh_app = ending_app(), ending_app()
    async with TestServer(tcp_app, host="127.0.0.1") as server:
        over_tcp = await endings(tcp_session, str(server.make_url("")).rstrip("/"))
    mesh = await make_mesh({"ends": mesh_app})
    async with mesh.session(connector_owner=True) as session:
        through_mesh = await endings(session, "http://ends")
    assert through_mesh == over_tcp
    assert over_tcp["cut"] == (
        "ClientPayloadError",
        "Response payload is not completed: <ContentLengthError: 400, message='Not enough "
        f"data to satisfy content length header (received {MiB} of {PROMISED} bytes).'>",
    )
    assert over_tcp["chunks"] == [300 * KiB, 300 * KiB + 1, 300 * KiB + 2]
    # the kept-alive uploads and downloads all ran on one connection, both ways
    assert len(set(mesh_app[SERVED][-2:])) == len(set(tcp_app[SERVED][-2:])) == 1


async def overlong(request: web.Request) -> web.Response:
    """A 1 MiB response and, in the same write, bytes no response announced."""
    assert request.transport is not None
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MiB
    request.transport.write(head + BODIES[MiB] + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad")
    await asyncio.sleep(0.2)  # the caller has read both answers by then
    return web.Response()


async def past_the_end(session: aiohttp.ClientSession, base: str) -> tuple[bool, str]:
    async with session.get(f"{base}/overlong") as r:
        whole = await r.read() == BODIES[MiB]
    async with session.get(f"{base}/small") as r:
        return whole, await r.text()


async def test_bytes_past_a_large_response_are_read_as_over_tcp(
    make_mesh: MeshFactory, tcp_session: aiohttp.ClientSession
) -> None:
    # aiohttp's client takes them for the next response on that connection:
    # a provider that writes past its Content-Length is a broken provider, and
    # the mesh shows it as a socket would.
    tcp_app, mesh_app = ending_app(), ending_app()
    for app in (tcp_app, mesh_app):
        app.router.add_get("/overlong", overlong)
    async with TestServer(tcp_app, host="127.0.0.1") as server:
        over_tcp = await past_the_end(tcp_session, str(server.make_url("")).rstrip("/"))
    mesh = await make_mesh({"ends": mesh_app})
    async with mesh.session() as session:
        assert await past_the_end(session, "http://ends") == over_tcp == (True, "bad")


# -- a request after a body on the same connection (the server's new parser) ----------


class RawClient(asyncio.Protocol):
    """Writes bytes as a socket client would and keeps what comes back."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    async def answers(self, count: int) -> bytes:
        """What came back once ``count`` answers have (or after 2 s)."""
        for _ in range(400):
            if self.received.count(b"HTTP/1.1 200") >= count:
                break
            await asyncio.sleep(0.005)
        return bytes(self.received)


def raw_connection(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
) -> tuple[web.Server, Pipe, RawClient]:
    """A raw client piped to aiohttp's server protocol as the mesh makes it,
    told that the next request has a body (as a link does: past the parser)."""
    server = web.Server(handler)
    client = RawClient()
    pipe = Pipe(asyncio.get_running_loop())
    protocol = server_protocols(server)()
    pipe.connect(client, protocol)
    protocol.expect_body()
    return server, pipe, client


async def test_pipelined_requests_after_a_large_body_are_each_answered() -> None:
    async def sizes(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text=f"{request.path} {len(await request.read())}")

    server, pipe, client = raw_connection(sizes)
    body = BODIES[MiB]
    first = b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    then = b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\n"
    pipe.client.write(first + body[:1000])
    await asyncio.sleep(0)
    pipe.client.write(body[1000:] + then)  # the body's end and two more requests, in one write
    pipe.client.write(b"Host: x\r\n\r\n")
    answers = await client.answers(3)
    assert answers.count(b"HTTP/1.1 200 OK") == 3, answers
    assert answers.endswith(b"/three 0"), answers
    assert b"/one %d" % MiB in answers
    assert b"/two 3" in answers
    pipe.client.close()
    await server.shutdown(1)


# -- a head and its body however they are written (the server watching for a body) ----

HEAD = b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
CHUNKED = b"POST /one HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"


def writes(way: str, body: bytes) -> list[bytes]:
    """A request with ``body`` and a pipelined one after it, written ``way``."""
    head = HEAD % len(body)
    whole = head + body + NEXT
    if way == "together":  # one write, as aiohttp's client on older Pythons
        return [whole]
    if way == "apart":  # head, body and the next request each its own write
        return [head, body, NEXT]
    if way == "head ends a write":
        return [head + body[:10], body[10:] + NEXT]
    if way == "its blank line split":  # the head's \r\n\r\n across two writes
        cut = len(head) - 2
        return [whole[:cut], whole[cut:]]
    if way == "byte by byte head":
        return [bytes([b]) for b in head] + [body + NEXT]
    assert way == "chunked, together"
    chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return [CHUNKED + chunks + NEXT]


WAYS = (
    "together", "apart", "head ends a write", "its blank line split",
    "byte by byte head", "chunked, together",
)  # fmt: skip


@pytest.mark.parametrize("size", [10, 64 * KiB + 1, MiB - 100, MiB + 7, 3 * MiB])
@pytest.mark.parametrize("way", WAYS)
async def test_a_body_reaches_its_handler_whole_however_its_head_and_it_are_written(
    way: str, size: int
) -> None:
    async def digests(request: web.BaseRequest) -> web.StreamResponse:
        digest = hashlib.sha256(await request.content.read()).hexdigest()  # any size
        return web.Response(text=f"{request.path} {digest}")

    server, pipe, client = raw_connection(digests)
    body = pattern(size)
    for data in writes(way, body):
        pipe.client.write(data)
    answers = await client.answers(2)
    assert answers.count(b"HTTP/1.1 200 OK") == 2, answers[:300]
    assert b"/one " + hashlib.sha256(body).hexdigest().encode() in answers
    assert answers.endswith(b"/two " + hashlib.sha256(b"abc").hexdigest().encode())
    pipe.client.close()
    await server.shutdown(1)
