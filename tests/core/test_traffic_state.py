"""Mesh.traffic_state(): a snapshot of what the mesh counts anyway, on an
injected clock, that agrees with the metrics a scrape reads."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from meshbridge import CircuitBreaker, Mesh, Policy, ProviderState, Source

from ..helpers import MeshFactory, settle
from .test_policies import CALLS, Clock, held_until, sample, scripted


async def test_a_breaker_shows_open_with_its_next_probe_then_closes_again(
    make_mesh: MeshFactory,
) -> None:
    clock = Clock()
    mesh = await make_mesh({"llm": scripted(503, 503), "plain": scripted()}, clock=clock)
    breaker = CircuitBreaker(failures=2, interval=10.0, open_for=30.0, half_open=1)
    mesh.set_policy("llm", Policy(circuit_breaker=breaker, max_in_flight=4))
    before = mesh.traffic_state()
    assert before.providers["llm"].circuit == "closed"
    assert before.providers["plain"] == ProviderState("plain")  # no policy: no circuit
    async with mesh.session() as session:
        for _ in range(3):  # two failures open it; the third is refused by the mesh
            async with session.get("http://llm/") as r:
                assert r.status == 503
        clock.now += 10.0
        opened = mesh.traffic_state()
        llm = opened.providers["llm"]
        assert (llm.circuit, llm.next_probe, llm.circuit_opened) == ("open", 20.0, 1)
        assert (llm.requests, llm.errors, llm.rejected) == (2, 2, 1)
        assert (llm.admitted, llm.max_in_flight, llm.in_flight) == (0, 4, 0)
        assert opened.at == clock.now
        clock.now += 20.0  # open_for has run out: the next read finds it half-open
        assert mesh.traffic_state().providers["llm"].circuit == "half_open"
        async with session.get("http://llm/") as r:
            assert r.status == 200  # the probe succeeds
    closed = mesh.traffic_state().providers["llm"]
    assert (closed.circuit, closed.next_probe, closed.requests, closed.errors) == (
        "closed",
        0.0,
        3,
        2,
    )
    assert llm.circuit == "open"  # a snapshot stays as it was taken
    with pytest.raises(dataclasses.FrozenInstanceError):
        llm.circuit = "closed"  # type: ignore[misc]


async def test_in_flight_and_admitted_count_the_requests_running_now(
    make_mesh: MeshFactory,
) -> None:
    release = asyncio.Event()
    app = held_until(release)
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(max_in_flight=5))
    async with mesh.session(source=Source.AGENTS) as agents, mesh.session() as anyone:
        running = [
            asyncio.create_task(agents.get("http://llm/a")),
            asyncio.create_task(anyone.get("http://llm/b")),
        ]
        assert await settle(lambda: len(app[CALLS]) == 2)
        llm = mesh.traffic_state().providers["llm"]
        assert (llm.in_flight, llm.admitted, llm.requests) == (2, 2, 0)
        assert llm.in_flight == sum(
            sample(mesh, "meshbridge_requests_in_flight", provider="llm", source=s)
            for s in ("agents", "none")
        )
        release.set()
        for response in await asyncio.gather(*running):
            await response.read()
            response.release()
    assert await settle(lambda: mesh.traffic_state().providers["llm"].in_flight == 0)
    after = mesh.traffic_state().providers["llm"]
    assert (after.requests, after.errors, after.admitted) == (2, 0, 0)


async def test_a_route_shows_its_split_and_where_its_requests_went(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh({"a": scripted(), "b": scripted(), "c": scripted(429)})
    mesh.add_route("chat", {"a": 1, "b": 0}, sticky="source")
    mesh.add_route("shed", {"c": 1})
    async with mesh.session() as session:
        for url in ("http://chat/", "http://chat/", "http://shed/", "http://shed/"):
            async with session.get(url) as r:
                await r.read()
    state = mesh.traffic_state()
    chat = state.routes["chat"]
    assert (dict(chat.split), chat.sticky, dict(chat.chosen)) == (
        {"a": 1, "b": 0},
        "source",
        {"a": 2},
    )
    assert dict(state.routes["shed"].chosen) == {"c": 2}
    assert dict(state.routes["shed"].chosen) == {
        "c": int(sample(mesh, "meshbridge_route_requests_total", route="shed", provider="c"))
    }
    assert (state.providers["c"].requests, state.providers["c"].errors) == (2, 1)  # a 429
    assert list(state.providers) == ["a", "b", "c"]


async def test_without_metrics_the_counters_are_zero_and_the_circuit_still_shows() -> None:
    clock = Clock()
    mesh = Mesh(metrics=False, clock=clock)
    mesh.register("llm", scripted(503), policy=Policy(circuit_breaker=CircuitBreaker(failures=1)))
    async with mesh, mesh.session() as session:
        async with session.get("http://llm/") as r:
            assert r.status == 503
        llm = mesh.traffic_state().providers["llm"]
    assert (llm.circuit, llm.next_probe, llm.requests, llm.circuit_opened) == ("open", 30.0, 0, 0)
