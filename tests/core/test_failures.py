"""Handler failures look to the caller as they would over the network."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ..helpers import MeshFactory, app_with


async def fails_early(request: web.Request) -> web.Response:
    raise RuntimeError("model exploded")


async def fails_midway(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    raise RuntimeError("upstream vanished")


async def returns_nothing(request: web.Request) -> web.Response:
    return None  # type: ignore[return-value]


def failing_app() -> web.Application:
    return app_with(
        web.get("/early", fails_early),
        web.get("/midway", fails_midway),
        web.get("/nothing", returns_nothing),
    )


async def test_exception_before_the_response_is_a_logged_500(
    make_mesh: MeshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = await make_mesh({"llm": failing_app()})
    with caplog.at_level(logging.ERROR):
        async with mesh.session() as s, s.get("http://llm/early") as r:
            assert r.status == 500
            assert "500 Internal Server Error" in await r.text()
    [record] = [r for r in caplog.records if r.exc_info]
    assert "model exploded" in str(record.exc_info[1])  # type: ignore[index]


async def test_exception_after_the_response_started_is_never_a_clean_end(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh({"llm": failing_app()})
    async with mesh.session() as s, s.get("http://llm/midway") as r:
        assert r.status == 200
        assert await r.content.readline() == b"data: first\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_failures_match_aiohttps_own_server(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh({"llm": failing_app()})
    async with (
        TestServer(failing_app(), host="127.0.0.1") as server,
        aiohttp.ClientSession() as tcp,
        mesh.session() as s,
    ):
        for path in ("/early", "/nothing"):
            async with tcp.get(server.make_url(path)) as over_tcp:
                expected = (over_tcp.status, await over_tcp.text())
            async with s.get(f"http://llm{path}") as in_memory:
                assert (in_memory.status, await in_memory.text()) == expected
        async with tcp.get(server.make_url("/midway")) as over_tcp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await over_tcp.read()
