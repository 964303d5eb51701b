"""Fixtures that clean up after themselves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import pytest
from aiohttp import web

from meshbridge import Mesh


class MeshFactory(Protocol):
    async def __call__(self, apps: Mapping[str, web.Application], **kwargs: Any) -> Mesh: ...


@pytest.fixture
async def make_mesh() -> AsyncIterator[MeshFactory]:
    """Start a Mesh with the given apps; every mesh made is closed on teardown."""
    meshes: list[Mesh] = []

    async def make(apps: Mapping[str, web.Application], **kwargs: Any) -> Mesh:
        require = kwargs.pop("require_api_key_id", ())
        mesh = Mesh(**kwargs)
        for name, app in apps.items():
            mesh.register(name, app, require_api_key_id=name in require)
        await mesh.start()
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        await mesh.aclose()


def app_with(*routes: web.RouteDef) -> web.Application:
    app = web.Application()
    app.add_routes(routes)
    return app


def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks alive besides the current one."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def settle(condition: Callable[[], bool], *, rounds: int = 200) -> bool:
    """Let the loop run until ``condition()`` holds (bounded by loop turns, not time)."""
    for _ in range(rounds):
        if condition():
            return True
        await asyncio.sleep(0.001)
    return condition()
