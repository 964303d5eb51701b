"""Helpers every test folder shares (fixtures live in the conftest files)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from meshbridge import Mesh


class MeshFactory(Protocol):
    async def __call__(self, apps: Mapping[str, web.Application], **kwargs: Any) -> Mesh: ...


def app_with(*routes: web.RouteDef) -> web.Application:
    app = web.Application()
    app.add_routes(routes)
    return app


def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks alive besides the current one."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def settle(condition: Callable[[], bool], *, rounds: int = 500) -> bool:
    """Let the loop run until ``condition()`` holds: at most ``rounds`` turns
    of 2 ms, so a test that waits for something that never comes still ends."""
    for _ in range(rounds):
        if condition():
            return True
        await asyncio.sleep(0.002)
    return condition()
