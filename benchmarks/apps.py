"""The app under test, twice: an aiohttp app and its Starlette twin.

Both serve the same routes with the same bytes, so every contender measures
the same work:

* ``GET /small``: a 2-byte body (``ok``), the unary workload.
* ``POST /echo``: the request body back.
* ``GET /sse?n=N``: ``N`` small server-sent events, written as fast as the
  server lets the handler write.
* ``GET /sse-paced?n=N&pause=S``: ``N`` events, each carrying
  ``time.perf_counter_ns()`` taken just before it is written; between events
  the handler sleeps ``S`` seconds (``0``: it only yields to the loop, as a
  proxy relaying tokens does).
* ``GET /stream?total=B&chunk=C``: ``B`` bytes in chunks of ``C``, for the
  slow reader. The handler counts what it has written in :class:`Produced`,
  so the reader can tell how much is held between the two.
* ``GET /blob?size=B``: a ``B``-byte body with its ``Content-Length`` (made
  once per size, as an app serving a file it holds in memory would), and
  ``POST /sink``: reads the whole body, answers its length (the large-body
  workloads).

Each factory makes a new app: an aiohttp ``Application`` runs once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["PRODUCED", "Produced", "aiohttp_app", "starlette_app"]

MAX_BODY = 32 * 1024 * 1024  # above the largest body a workload sends
SSE_HEADERS = {"Cache-Control": "no-cache"}


class Produced:
    """Bytes a streaming handler has handed to its server so far."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


PRODUCED: web.AppKey[Produced] = web.AppKey("benchmarks_produced", Produced)


def _event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def _pause(query: Mapping[str, str]) -> float:
    return float(query.get("pause", "0"))


# -- aiohttp ------------------------------------------------------------------


async def _small(request: web.Request) -> web.Response:
    return web.Response(body=b"ok", content_type="text/plain")


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


async def _open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.content_type = "text/event-stream"
    await response.prepare(request)
    return response


async def _sse(request: web.Request) -> web.StreamResponse:
    response = await _open_sse(request)
    for i in range(int(request.query["n"])):
        await response.write(_event(b"%d" % i))
    await response.write_eof()
    return response


async def _sse_paced(request: web.Request) -> web.StreamResponse:
    response = await _open_sse(request)
    pause = _pause(request.query)
    for _ in range(int(request.query["n"])):
        await asyncio.sleep(pause)
        await response.write(_event(b"%d" % time.perf_counter_ns()))
    await response.write_eof()
    return response


async def _stream(request: web.Request) -> web.StreamResponse:
    total, size = int(request.query["total"]), int(request.query["chunk"])
    produced = request.app[PRODUCED]
    chunk = b"x" * size
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    response.content_length = total
    await response.prepare(request)
    sent = 0
    while sent < total:
        piece = chunk if total - sent >= size else chunk[: total - sent]
        await response.write(piece)
        sent += len(piece)
        produced.bytes = sent
    await response.write_eof()
    return response


def _blob(size: int, made: dict[int, bytes]) -> bytes:
    if not 0 <= size <= MAX_BODY:
        raise ValueError(f"size must be 0 to {MAX_BODY}")
    if size not in made:
        made[size] = bytes(range(256)) * (size // 256) + bytes(size % 256)
    return made[size]


async def _sink(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


def aiohttp_app() -> web.Application:
    """A fresh aiohttp app with the benchmark routes."""
    app = web.Application(client_max_size=MAX_BODY)
    app[PRODUCED] = Produced()
    blobs: dict[int, bytes] = {}

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=_blob(int(request.query["size"]), blobs))

    app.router.add_get("/blob", blob)
    app.router.add_post("/sink", _sink)
    app.router.add_get("/small", _small)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/sse", _sse)
    app.router.add_get("/sse-paced", _sse_paced)
    app.router.add_get("/stream", _stream)
    return app


# -- Starlette ------------------------------------------------------------------


async def _s_small(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _s_echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def _s_sse(request: Request) -> Response:
    n = int(request.query_params["n"])

    async def events() -> AsyncIterator[bytes]:
        for i in range(n):
            yield _event(b"%d" % i)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _s_sse_paced(request: Request) -> Response:
    n, pause = int(request.query_params["n"]), _pause(request.query_params)

    async def events() -> AsyncIterator[bytes]:
        for _ in range(n):
            await asyncio.sleep(pause)
            yield _event(b"%d" % time.perf_counter_ns())

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _s_stream(request: Request) -> Response:
    total, size = int(request.query_params["total"]), int(request.query_params["chunk"])
    produced: Produced = request.app.state.produced
    chunk = b"x" * size

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            piece = chunk if total - sent >= size else chunk[: total - sent]
            yield piece
            sent += len(piece)
            produced.bytes = sent

    return StreamingResponse(
        body(), media_type="application/octet-stream", headers={"Content-Length": str(total)}
    )


def starlette_app() -> Starlette:
    """A fresh Starlette app with the same routes and bodies."""
    blobs: dict[int, bytes] = {}

    async def blob(request: Request) -> Response:
        body = _blob(int(request.query_params["size"]), blobs)
        return Response(body, media_type="application/octet-stream")

    async def sink(request: Request) -> Response:
        return PlainTextResponse(str(len(await request.body())))

    app = Starlette(
        routes=[
            Route("/blob", blob),
            Route("/sink", sink, methods=["POST"]),
            Route("/small", _s_small),
            Route("/echo", _s_echo, methods=["POST"]),
            Route("/sse", _s_sse),
            Route("/sse-paced", _s_sse_paced),
            Route("/stream", _s_stream),
        ]
    )
    app.state.produced = Produced()
    return app
