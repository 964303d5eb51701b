"""Streaming chunk by chunk, and flow control in both directions."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from aiohttp import web

from ..helpers import MeshFactory, app_with, both_paths

# Every test here runs on the direct link and through the relay (a policy that
# never fires): a policy must not change what the caller observes.
make_mesh = both_paths

MiB = 1024 * 1024
CHUNK = 64 * 1024
TOTAL = 200 * MiB


async def test_each_chunk_is_readable_before_the_handler_goes_on(make_mesh: MeshFactory) -> None:
    # The handler writes event i, then waits until the client has read it.
    read: list[asyncio.Event] = [asyncio.Event() for _ in range(20)]
    written: list[int] = []

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(read):
            await response.write(f"data: {i}\n\n".encode())
            written.append(i)
            await asyncio.wait_for(event.wait(), timeout=10)
        return response

    mesh = await make_mesh({"llm": app_with(web.get("/events", events))})
    async with mesh.session() as s, s.get("http://llm/events") as r:
        for i, event in enumerate(read):
            assert await r.content.readline() == f"data: {i}\n".encode()
            assert await r.content.readline() == b"\n"
            assert written == list(range(i + 1))  # the handler is parked on this event
            event.set()
        assert await r.content.read() == b""


async def test_slow_reader_holds_back_a_200_mib_stream(make_mesh: MeshFactory) -> None:
    block = bytes(range(256)) * (CHUNK // 256)

    async def firehose(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = TOTAL
        await response.prepare(request)
        for _ in range(TOTAL // CHUNK):
            await response.write(block)
        return response

    mesh = await make_mesh({"big": app_with(web.get("/", firehose))})
    digest = hashlib.sha256()
    received = 0
    worst_now = 0
    async with mesh.session() as s, s.get("http://big/") as r:
        while chunk := await r.content.read(CHUNK):
            received += len(chunk)
            digest.update(chunk)
            worst_now = max(worst_now, mesh.buffered_bytes)
            await asyncio.sleep(0.001)
    assert received == TOTAL
    assert digest.hexdigest() == hashlib.sha256(block * (TOTAL // CHUNK)).hexdigest()
    assert 0 < mesh.peak_buffered_bytes < 1 * MiB, mesh.peak_buffered_bytes
    assert worst_now <= mesh.peak_buffered_bytes


async def test_slow_handler_holds_back_a_200_mib_upload(make_mesh: MeshFactory) -> None:
    block = b"u" * CHUNK
    seen: list[int] = []

    async def sink(request: web.Request) -> web.Response:
        size = 0
        while chunk := await request.content.read(CHUNK):
            size += len(chunk)
            await asyncio.sleep(0.001)
        seen.append(size)
        return web.Response(text=str(size))

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(TOTAL // CHUNK):
            yield block

    mesh = await make_mesh({"sink": app_with(web.post("/", sink))})
    async with mesh.session() as s, s.post("http://sink/", data=upload()) as r:
        assert await r.text() == str(TOTAL)
    assert seen == [TOTAL]
    assert 0 < mesh.peak_buffered_bytes < 1 * MiB, mesh.peak_buffered_bytes
