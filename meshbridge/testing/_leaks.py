"""What a test left behind in its mesh: requests in flight, tasks still running."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from meshbridge import Mesh

__all__ = ["check_leaks", "in_flight"]

_IN_FLIGHT: Final = "meshbridge_requests_in_flight"
# aiohttp's server runs each connection in RequestHandler.start. Once the mesh
# is closed none of its own are left, so those still running belong to real
# servers of other fixtures, which close them after this one.
_OTHER_SERVERS: Final = "RequestHandler.start"


def in_flight(mesh: Mesh) -> dict[str, float]:
    """Requests in flight in ``mesh``, by ``provider/source``."""
    found: dict[str, float] = {}
    for family in mesh.registry.collect():
        if family.name != _IN_FLIGHT:
            continue
        for sample in family.samples:
            if sample.value:
                key = f"{sample.labels.get('provider')}/{sample.labels.get('source')}"
                found[key] = found.get(key, 0) + sample.value
    return found


async def _settle(done: Callable[[], bool]) -> bool:
    """Let the loop run until ``done()``: a few turns, then up to ~0.5 s."""
    for turn in range(150):
        if done():
            return True
        await asyncio.sleep(0 if turn < 50 else 0.005)
    return done()


def _name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


async def check_leaks(mesh: Mesh, before: set[asyncio.Task[Any]]) -> list[str]:
    """Close ``mesh`` and say what the test left behind (nothing: an empty list).

    Tasks started since ``before`` and still running are cancelled, so the
    next test starts clean.
    """
    problems = []
    if not await _settle(lambda: not in_flight(mesh)):
        left = ", ".join(f"{n:g} to {key}" for key, n in sorted(in_flight(mesh).items()))
        problems.append(
            f"requests still in flight when the test ended ({left}): read or close every "
            "response (async with session.get(...) as response) before the test returns"
        )
    await mesh.aclose()
    current = asyncio.current_task()

    def running() -> list[asyncio.Task[Any]]:
        return [
            t
            for t in asyncio.all_tasks()
            if t not in before and t is not current and _name(t) != _OTHER_SERVERS
        ]

    await _settle(lambda: not running())
    tasks = running()
    if tasks:
        names = ", ".join(sorted(_name(t) for t in tasks))
        problems.append(
            f"{len(tasks)} task(s) still running when the test ended ({names}): await or "
            "cancel every task the test starts"
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return problems
