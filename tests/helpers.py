"""Helpers every test folder shares (fixtures live in the conftest files)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol

import pytest
from aiohttp import web

from meshbridge import CallRecord, Mesh, Policy


def missing(reason: str, what: str = "server") -> NoReturn:
    """Skip a test whose system tool is missing, but fail under ``CI=true``
    (``make test``'s system-deps installs every one)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI a missing {what} is a failure", pytrace=False)
    pytest.skip(reason)


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


class KeptLedger:
    """A usage ledger that keeps the records it is given in a list (and notes
    its lifecycle): for tests of what the core records, not of storage."""

    def __init__(self, *, record_prompts: bool = False) -> None:
        self.record_prompts = record_prompts
        self.records: list[CallRecord] = []
        self.events: list[str] = []

    def record(self, record: CallRecord) -> None:
        self.records.append(record)

    async def start(self) -> None:
        self.events.append("start")

    async def aclose(self) -> None:
        self.events.append(f"aclose after {len(self.records)} records")

    async def one(self) -> CallRecord:
        """The one record kept, once it is there."""
        assert await settle(lambda: len(self.records) >= 1)
        assert len(self.records) == 1, self.records
        return self.records[0]


# A policy that never fires: what a caller observes must not change when a
# provider is governed (the relay) rather than reached on a direct link.
NEVER_FIRES = Policy(timeout=3600.0)


@pytest.fixture(params=["direct", "governed"], name="make_mesh")
def make_mesh_on_both_paths(request: pytest.FixtureRequest, make_mesh: MeshFactory) -> MeshFactory:
    """``make_mesh``, once as it is and once with every provider governed by a
    policy that never fires. A module opts in with ``make_mesh = both_paths``."""
    if request.param == "direct":
        return make_mesh

    async def governed(apps: Mapping[str, web.Application], **kwargs: Any) -> Mesh:
        mesh = await make_mesh(apps, **kwargs)
        for name in apps:
            mesh.set_policy(name, NEVER_FIRES)
        return mesh

    return governed


both_paths = make_mesh_on_both_paths
