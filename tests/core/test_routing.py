"""The router table: names, look-ups, swaps while requests are in flight."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from meshbridge import Mesh, MeshNotRunning, ProviderNotFound
from meshbridge._routing import Router, check_name

from ..helpers import MeshFactory, app_with


@pytest.mark.parametrize("name", ["openai", "a", "gpt-4o", "x1-y2-z3"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a\n", "OpenAI", "-a", "a-", "a--b", "a_b", "a.b", "a b", "é", "x" * 64]
)
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match=r"invalid provider name .*pattern"):
        Mesh().register(name, web.Application())


def test_router_lookup_is_a_pure_function() -> None:
    router: Router[str] = Router()
    with pytest.raises(MeshNotRunning):
        router.lookup("a")
    router.accepting = True
    router.swap({"alpha": "A", "beta": "B"})
    assert router.lookup("beta") == "B"
    with pytest.raises(ProviderNotFound) as info:
        router.lookup("gamma")
    assert (
        str(info.value)
        == "no provider named 'gamma' in the mesh (known providers: 'alpha', 'beta')"
    )
    assert isinstance(info.value, aiohttp.ClientConnectionError)


def test_register_refuses_duplicates_and_started_apps() -> None:
    mesh = Mesh()
    mesh.register("a", web.Application())
    with pytest.raises(ValueError, match="already registered"):
        mesh.register("a", web.Application())
    mesh.register("a", web.Application(), replace=True)
    assert mesh.providers == ("a",)
    assert "a" in mesh
    assert "b" not in mesh
    frozen = web.Application()
    frozen.freeze()
    with pytest.raises(ValueError, match="already been started"):
        mesh.register("b", frozen)
    with pytest.raises(KeyError, match="no provider named 'zzz'"):
        mesh.unregister("zzz")


def named(label: str) -> web.Application:
    async def who(request: web.Request) -> web.Response:
        return web.Response(text=label)

    return app_with(web.get("/", who))


async def test_unknown_provider_fails_before_any_handler(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh({"openai": named("openai"), "claude": named("claude")})
    headers = {"X-Test": "1"}
    async with mesh.session(headers=headers) as s:
        with pytest.raises(ProviderNotFound, match=r"'nope'.*known providers: 'claude', 'openai'"):
            await s.get("http://nope/")
        url = "http://openai/?q=1"
        async with s.get(url, headers=headers) as r:
            assert str(r.url) == url
    assert headers == {"X-Test": "1"}  # the caller's headers are never touched


async def test_requests_before_start_or_after_close_are_refused() -> None:
    mesh = Mesh()
    mesh.register("a", named("a"))
    async with aiohttp.ClientSession(connector=mesh.connector()) as s:
        with pytest.raises(MeshNotRunning, match="not running"):
            await s.get("http://a/")
    async with mesh, mesh.session() as s, s.get("http://a/") as r:
        assert await r.text() == "a"
    async with mesh.session() as s:
        with pytest.raises(MeshNotRunning):
            await s.get("http://a/")


async def test_pinned_connector_ignores_the_host(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh({"openai": named("openai"), "claude": named("claude")})
    async with aiohttp.ClientSession(connector=mesh.connector(provider="claude")) as s:
        for host in ("openai", "anything", "api.example.com"):
            async with s.get(f"https://{host}/") as r:
                assert await r.text() == "claude"


async def test_a_session_made_before_registration_reaches_the_provider(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh({})
    async with mesh.session() as s:
        with pytest.raises(ProviderNotFound):
            await s.get("http://late/")
        mesh.register("late", named("late"))
        async with s.get("http://late/") as r:
            assert await r.text() == "late"


async def test_swaps_while_requests_are_in_flight(make_mesh: MeshFactory) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    def slow(label: str) -> web.Application:
        async def stream(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(f"{label}:start ".encode())
            entered.set()
            await release.wait()
            await response.write(f"{label}:end".encode())
            return response

        async def who(request: web.Request) -> web.Response:
            return web.Response(text=label)

        return app_with(web.get("/stream", stream), web.get("/", who))

    mesh = await make_mesh({"llm": slow("v1")}, grace_period=5)
    async with mesh.session() as s:
        async with s.get("http://llm/") as r:  # leaves a pooled link to v1
            assert await r.text() == "v1"
        async with s.get("http://llm/stream") as in_flight:
            await entered.wait()
            mesh.register("llm", slow("v2"), replace=True)
            async with s.get("http://llm/") as r:
                assert await r.text() == "v2"
            mesh.unregister("llm")
            with pytest.raises(ProviderNotFound):
                await s.get("http://llm/")
            mesh.register("llm", slow("v3"))
            async with s.get("http://llm/") as r:
                assert await r.text() == "v3"
            release.set()
            assert await in_flight.text() == "v1:start v1:end"  # finished where it started


async def test_reconfigure_is_all_or_nothing(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh({"keep": named("keep"), "old": named("old")})
    broken = web.Application()

    async def explode(app: web.Application) -> None:
        raise RuntimeError("bad startup")

    broken.on_startup.append(explode)
    with pytest.raises(RuntimeError, match="bad startup"):
        await mesh.reconfigure({"new": named("new"), "broken": broken})
    assert list(mesh.providers) == ["keep", "old"]
    async with mesh.session() as s, s.get("http://old/") as r:
        assert await r.text() == "old"

    await mesh.reconfigure({"new": named("new")}, require_api_key_id={"new"})
    assert list(mesh.providers) == ["new"]
    async with mesh.session(api_key_id="k") as s, s.get("http://new/") as r:
        assert await r.text() == "new"
    with pytest.raises(ValueError, match="unknown providers"):
        await mesh.reconfigure({"a": named("a")}, require_api_key_id={"b"})
