"""The contenders: one app, reached eight ways, behind one small client API.

Every contender starts its own fresh copy of the app (see ``apps.py``) and
hands the workloads a :class:`Client`. All but httpx use the same
``aiohttp.ClientSession`` calls, so what differs between them is only the
connector and what sits behind it. Two more run only in the workloads that
name them: ``tcp-apart`` (the app in a second process, see ``apart.py``) and
``floor`` (no app: canned responses over the pipe, see ``floor.py``), the
limit of the unary and echo workloads.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import aiohttp
import httpx
from aiohttp import web
from aiohttp_asgi_connector import ASGIApplicationConnector

from meshbridge import Mesh
from meshbridge._pipe import PipeStats

from .apart import AppProcess
from .apps import PRODUCED, Produced, aiohttp_app, starlette_app
from .bare_pipe import BarePipeConnector
from .floor import FloorConnector

__all__ = ["CONTENDERS", "Client", "Contender"]


class Client(Protocol):
    """What the workloads call; the paths are those of ``apps.py``."""

    async def get(self, path: str) -> bytes: ...

    async def post(self, path: str, body: bytes) -> bytes: ...

    def stream(
        self, path: str, chunk: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """The response body of a GET as it arrives, in pieces of at most
        ``chunk`` bytes (any size if None)."""
        ...

    async def aclose(self) -> None: ...


class AiohttpClient:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self._base = base

    async def get(self, path: str) -> bytes:
        async with self._session.get(self._base + path) as response:
            response.raise_for_status()
            return await response.read()

    async def post(self, path: str, body: bytes) -> bytes:
        async with self._session.post(self._base + path, data=body) as response:
            response.raise_for_status()
            return await response.read()

    @asynccontextmanager
    async def stream(
        self, path: str, chunk: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self._session.get(self._base + path) as response:
            response.raise_for_status()
            content = response.content
            yield content.iter_any() if chunk is None else content.iter_chunked(chunk)

    async def aclose(self) -> None:
        await self._session.close()


class HttpxClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def get(self, path: str) -> bytes:
        response = await self._client.get(path)
        response.raise_for_status()
        return response.content

    async def post(self, path: str, body: bytes) -> bytes:
        response = await self._client.post(path, content=body)
        response.raise_for_status()
        return response.content

    @asynccontextmanager
    async def stream(
        self, path: str, chunk: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self._client.stream("GET", path) as response:
            response.raise_for_status()
            yield response.aiter_bytes(chunk)

    async def aclose(self) -> None:
        await self._client.aclose()


class Contender:
    """One way of reaching the app. Subclasses fill in :meth:`_start`."""

    name = ""
    title = ""
    everywhere = True  # False: only in the workloads that name it

    def __init__(self) -> None:
        self.client: Client | None = None
        self.produced = Produced()  # replaced by the running app's own counter
        self._runner: web.AppRunner | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def start(self) -> Client:
        self.client = await self._start()
        return self.client

    async def _start(self) -> Client:
        raise NotImplementedError

    def pipe_peak(self) -> int | None:
        """The most bytes its in-memory pipes held at once; None without a pipe."""
        return None

    def pids(self) -> tuple[int, ...]:
        """Other processes whose memory counts as this contender's."""
        return ()

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def _runner_for(self, app: web.Application) -> web.AppRunner:
        self.produced = app[PRODUCED]
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        return self._runner


class MeshFull(Contender):
    name, title = "meshbridge", "meshbridge: Mesh() + mesh.session(source=...)"
    metrics = True

    async def _start(self) -> Client:
        app = aiohttp_app()
        self.produced = app[PRODUCED]
        self.mesh = Mesh(metrics=self.metrics)
        self.mesh.register("bench", app)
        await self.mesh.start()
        return AiohttpClient(self.mesh.session(source="bench"), "http://bench")

    def pipe_peak(self) -> int | None:
        return self.mesh.peak_buffered_bytes

    async def aclose(self) -> None:
        await super().aclose()
        await self.mesh.aclose()


class MeshNoMetrics(MeshFull):
    name, title = "meshbridge-nometrics", "meshbridge: Mesh(metrics=False)"
    metrics = False


class BarePipe(Contender):
    name, title = "pipe", "bare in-memory pipe (no routing, Source, metrics)"

    async def _start(self) -> Client:
        runner = await self._runner_for(aiohttp_app())
        assert runner.server is not None
        self.stats = PipeStats()
        session = aiohttp.ClientSession(connector=BarePipeConnector(runner.server, self.stats))
        return AiohttpClient(session, "http://bench")

    def pipe_peak(self) -> int | None:
        return self.stats.peak


class Floor(Contender):
    name = "floor"
    title = "aiohttp ClientSession against canned bytes over the pipe (the limit)"
    everywhere = False

    async def _start(self) -> Client:
        return AiohttpClient(aiohttp.ClientSession(connector=FloorConnector()), "http://bench")


class Tcp(Contender):
    name, title = "tcp", "aiohttp over loopback TCP, keep-alive"
    force_close = False

    async def _start(self) -> Client:
        runner = await self._runner_for(aiohttp_app())
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
        await site.start()
        port = runner.addresses[0][1]
        connector = aiohttp.TCPConnector(limit=0, force_close=self.force_close)
        return AiohttpClient(aiohttp.ClientSession(connector=connector), f"http://127.0.0.1:{port}")


class TcpClose(Tcp):
    name, title = "tcp-close", "aiohttp over loopback TCP, force_close=True"
    force_close = True


class TcpApart(Contender):
    name, title = "tcp-apart", "aiohttp over loopback TCP, keep-alive, the app in a second process"
    everywhere = False
    app: AppProcess | None = None

    async def _start(self) -> Client:
        self.app = await AppProcess.start()
        connector = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(connector=connector)
        return AiohttpClient(session, f"http://127.0.0.1:{self.app.port}")

    def pids(self) -> tuple[int, ...]:
        return (self.app.process.pid,) if self.app is not None else ()

    async def aclose(self) -> None:
        await super().aclose()
        if self.app is not None:
            await self.app.stop()


class Unix(Contender):
    name, title = "unix", "aiohttp over a Unix socket (UnixConnector)"

    async def _start(self) -> Client:
        runner = await self._runner_for(aiohttp_app())
        self._tmp = tempfile.TemporaryDirectory(prefix="meshbridge-bench-")
        path = str(Path(self._tmp.name) / "app.sock")
        await web.UnixSite(runner, path, backlog=2048).start()
        connector = aiohttp.UnixConnector(path=path, limit=0)
        return AiohttpClient(aiohttp.ClientSession(connector=connector), "http://localhost")


class HttpxAsgi(Contender):
    name, title = "httpx-asgi", "httpx AsyncClient + ASGITransport, Starlette twin"

    async def _start(self) -> Client:
        app = starlette_app()
        self.produced = app.state.produced
        transport = httpx.ASGITransport(app=app)
        return HttpxClient(httpx.AsyncClient(transport=transport, base_url="http://bench"))


class AiohttpAsgi(Contender):
    name, title = "aiohttp-asgi", "aiohttp + aiohttp-asgi-connector, Starlette twin"

    async def _start(self) -> Client:
        app = starlette_app()
        self.produced = app.state.produced
        session = aiohttp.ClientSession(connector=ASGIApplicationConnector(app))
        return AiohttpClient(session, "http://bench")


# In table order. Ratios are taken against "tcp" (and "tcp-close" for unary,
# "floor" where it runs), or against the reference a workload names.
CONTENDERS: dict[str, type[Contender]] = {
    c.name: c
    for c in (
        MeshFull,
        MeshNoMetrics,
        BarePipe,
        Floor,
        Tcp,
        TcpClose,
        TcpApart,
        Unix,
        HttpxAsgi,
        AiohttpAsgi,
    )
}
