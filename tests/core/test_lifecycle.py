"""Starting and closing a mesh runs each app's lifecycle exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from meshbridge import Mesh, MeshError, MeshNotRunning


def lifecycle_app(calls: Counter[str]) -> web.Application:
    app = web.Application()

    async def on_startup(app: web.Application) -> None:
        calls["startup"] += 1

    async def context(app: web.Application) -> AsyncIterator[None]:
        calls["ctx-enter"] += 1
        yield
        calls["ctx-exit"] += 1

    async def on_shutdown(app: web.Application) -> None:
        calls["shutdown"] += 1

    async def on_cleanup(app: web.Application) -> None:
        calls["cleanup"] += 1

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app.on_startup.append(on_startup)
    app.cleanup_ctx.append(context)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/", hello)
    return app


ONCE = Counter({"startup": 1, "ctx-enter": 1, "ctx-exit": 1, "shutdown": 1, "cleanup": 1})


async def test_each_hook_runs_exactly_once() -> None:
    first: Counter[str] = Counter()
    late: Counter[str] = Counter()
    async with Mesh() as mesh:
        mesh.register("first", lifecycle_app(first))
        assert first == Counter()  # registered on a running mesh: starting
        async with mesh.session() as s, s.get("http://first/") as r:
            assert await r.text() == "hi"
        assert first == Counter({"startup": 1, "ctx-enter": 1})
        mesh.register("late", lifecycle_app(late))
        async with mesh.session() as s, s.get("http://late/") as r:
            assert r.status == 200
    assert first == ONCE
    assert late == ONCE
    await mesh.aclose()  # idempotent
    assert first == ONCE


async def test_unregister_shuts_the_app_down() -> None:
    calls: Counter[str] = Counter()
    mesh = Mesh()
    mesh.register("a", lifecycle_app(calls))
    async with mesh:
        assert calls == Counter({"startup": 1, "ctx-enter": 1})
        mesh.unregister("a")
    assert calls == ONCE


async def test_failed_start_stops_what_started_and_raises() -> None:
    good: Counter[str] = Counter()
    bad = web.Application()

    async def explode(app: web.Application) -> None:
        raise RuntimeError("no model weights")

    bad.on_startup.append(explode)
    mesh = Mesh()
    mesh.register("good", lifecycle_app(good))
    mesh.register("bad", bad)
    with pytest.raises(RuntimeError, match="no model weights"):
        await mesh.start()
    assert good == ONCE
    with pytest.raises(RuntimeError, match="the mesh is closed; a mesh starts once"):
        await mesh.start()


async def test_a_provider_that_fails_to_start_on_a_running_mesh() -> None:
    bad = web.Application()

    async def explode(app: web.Application) -> None:
        raise RuntimeError("no model weights")

    bad.on_startup.append(explode)
    async with Mesh() as mesh:
        mesh.register("bad", bad)
        async with mesh.session() as s:
            with pytest.raises(MeshError, match=r"'bad' failed to start.*no model weights"):
                await s.get("http://bad/")


def stream_app(ends: list[str], started: asyncio.Event) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        started.set()
        try:
            for i in range(int(request.query["n"])):
                await response.write(f"{i} ".encode())
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise
        ends.append("finished")
        return response

    app = web.Application()
    app.router.add_get("/", stream)
    return app


async def test_close_lets_in_flight_requests_finish_within_the_grace_period() -> None:
    ends: list[str] = []
    started = asyncio.Event()
    mesh = Mesh(grace_period=5)
    mesh.register("llm", stream_app(ends, started))
    await mesh.start()
    async with mesh.session() as s, s.get("http://llm/?n=10") as r:
        await started.wait()
        closing = asyncio.create_task(mesh.aclose())
        await asyncio.sleep(0)
        with pytest.raises(MeshNotRunning):
            await s.get("http://llm/?n=1")  # no longer accepting
        assert await r.text() == " ".join(str(i) for i in range(10)) + " "
        await closing
    assert ends == ["finished"]


async def test_close_cancels_what_outlives_the_grace_period() -> None:
    ends: list[str] = []
    started = asyncio.Event()
    mesh = Mesh(grace_period=0.05)
    mesh.register("llm", stream_app(ends, started))
    await mesh.start()
    async with mesh.session() as s, s.get("http://llm/?n=100000") as r:
        await started.wait()
        await mesh.aclose()
        with pytest.raises(Exception, match=r"payload|closed|Connection"):
            await r.read()
    assert ends == ["cancelled"]


@pytest.mark.wallclock
async def test_close_gives_a_stream_that_never_ends_the_grace_period_once() -> None:
    # aiohttp's own shutdown waits the timeout twice for a handler that never
    # reads its request (once before failing the request's reads, once after).
    ends: list[str] = []
    started = asyncio.Event()
    mesh = Mesh(grace_period=0.5)
    mesh.register("llm", stream_app(ends, started))
    await mesh.start()
    loop = asyncio.get_running_loop()
    async with mesh.session() as s, s.get("http://llm/?n=100000") as r:
        await started.wait()
        began = loop.time()
        await mesh.aclose()
        took = loop.time() - began
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert ends == ["cancelled"]
    assert 0.5 <= took < 0.9  # one grace period, not two


async def test_a_caller_waiting_for_a_starting_provider_can_be_cancelled() -> None:
    gate = asyncio.Event()
    slow = web.Application()

    async def slow_startup(app: web.Application) -> None:
        await gate.wait()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="up")

    slow.on_startup.append(slow_startup)
    slow.router.add_get("/", hello)
    async with Mesh() as mesh:
        mesh.register("slow", slow)
        async with mesh.session() as s:
            waiting = asyncio.create_task(s.get("http://slow/"))
            await asyncio.sleep(0.01)
            assert not waiting.done()  # parked until the startup ends
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(waiting, timeout=5)  # bounded: a lost cancel fails
            gate.set()
            async with s.get("http://slow/") as r:  # the startup went on regardless
                assert await r.text() == "up"
