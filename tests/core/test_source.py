"""Source and delegated API key id: set by code, carried beside the request."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from meshbridge import (
    MissingAPIKeyID,
    Source,
    api_key_id_of,
    source_of,
    use_api_key_id,
    use_source,
)

from ..helpers import MeshFactory, app_with


async def whoami(request: web.Request) -> web.Response:
    body = await request.text()
    return web.json_response(
        {"source": source_of(request), "key": api_key_id_of(request), "body": body}
    )


def test_source_is_a_validated_str() -> None:
    assert Source.AGENTS == "agents"
    assert isinstance(Source.AGENTS, str)
    assert (Source.API, Source.BATCH) == ("api", "batch")
    assert Source("nightly-eval") == "nightly-eval"
    assert repr(Source("batch")) == "Source('batch')"
    for bad in ("Admin", "", "a b", "none", "x" * 64):
        with pytest.raises(ValueError, match="source"):
            Source(bad)
    with pytest.raises(ValueError, match="api_key_id"), use_api_key_id(""):
        pass


async def test_session_values_and_context_overrides(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh({"gw": app_with(web.post("/", whoami))})
    async with mesh.session(source=Source.AGENTS, api_key_id="key-1") as s:
        async with s.post("http://gw/") as r:
            assert await r.json() == {"source": "agents", "key": "key-1", "body": ""}
        with use_source("batch"), use_api_key_id("key-2"):
            async with s.post("http://gw/") as r:
                assert await r.json() == {"source": "batch", "key": "key-2", "body": ""}
        async with s.post("http://gw/") as r:  # the override ended with the block
            assert (await r.json())["source"] == "agents"
    async with mesh.session() as s, s.post("http://gw/") as r:
        assert await r.json() == {"source": None, "key": None, "body": ""}


async def test_no_header_can_set_or_change_them(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh({"gw": app_with(web.post("/", whoami))})
    forged = {
        "X-Meshbridge-Source": "admin",
        "X-Meshbridge-Api-Key-Id": "root",
        "Source": "admin",
        "Forwarded": "for=admin",
    }
    async with mesh.session(source="api") as s, s.post("http://gw/", headers=forged) as r:
        assert await r.json() == {"source": "api", "key": None, "body": ""}
    async with mesh.session() as s, s.post("http://gw/", headers=forged) as r:
        assert await r.json() == {"source": None, "key": None, "body": ""}


async def test_plain_http_traffic_to_the_same_handlers_has_none() -> None:
    async with (
        TestServer(app_with(web.post("/", whoami)), host="127.0.0.1") as server,
        aiohttp.ClientSession() as s,
        s.post(server.make_url("/"), headers={"X-Meshbridge-Source": "admin"}) as r,
    ):
        assert await r.json() == {"source": None, "key": None, "body": ""}


async def test_required_key_id_is_enforced_before_the_handler(make_mesh: MeshFactory) -> None:
    calls: list[str] = []

    async def billing(request: web.Request) -> web.Response:
        calls.append(api_key_id_of(request) or "")
        return web.Response(text="billed")

    mesh = await make_mesh(
        {"billing": app_with(web.get("/", billing))}, require_api_key_id={"billing"}
    )
    async with mesh.session(source="api") as s:
        with pytest.raises(MissingAPIKeyID, match="'billing' requires an API key id"):
            await s.get("http://billing/", headers={"X-Api-Key-Id": "forged"})
        assert calls == []
        with use_api_key_id("key-9"):
            async with s.get("http://billing/") as r:
                assert await r.text() == "billed"
    assert calls == ["key-9"]


@pytest.mark.parametrize("force_close", [False, True])
async def test_a_thousand_concurrent_callers_each_see_their_own(
    make_mesh: MeshFactory, force_close: bool
) -> None:
    async def slow_whoami(request: web.Request) -> web.Response:
        await asyncio.sleep(random.random() / 100)
        return await whoami(request)

    mesh = await make_mesh({"gw": app_with(web.post("/", slow_whoami))})
    sources = ["agents", "api", "batch", None]

    async def call(s: aiohttp.ClientSession, i: int) -> None:
        source, key, body = sources[i % 4], f"key-{i}" if i % 3 else None, f"body-{i}"

        async def go() -> dict[str, object]:
            async with s.post("http://gw/", data=body) as r:
                result: dict[str, object] = await r.json()
                return result

        if source is not None and key is not None:
            with use_source(source), use_api_key_id(key):
                got = await go()
        elif source is not None:
            with use_source(source):
                got = await go()
        elif key is not None:
            with use_api_key_id(key):
                got = await go()
        else:
            got = await go()
        assert got == {"source": source, "key": key, "body": body}

    connector = mesh.connector(force_close=force_close)
    async with aiohttp.ClientSession(connector=connector) as s:
        await asyncio.gather(*(call(s, i) for i in range(1000)))
