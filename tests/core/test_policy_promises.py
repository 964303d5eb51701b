"""Traffic policies keep their promises when things go wrong as an operator
sees them: a hanging provider, a flapping one, a policy changed while calls
run, a provider that cannot reach its upstream, SDKs that retry on their own.

Breakers run on the mesh's injected clock; the relay's time limits on the
loop's, kept short (tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from aiohttp import web

from meshbridge import CircuitBreaker, Mesh, Policy, report_connect_failure
from meshbridge._traffic import Traffic

from ..helpers import MeshFactory, app_with, settle

FAST = {"retry_backoff": (0.001, 0.005)}
ENTERED: web.AppKey[list[str]] = web.AppKey("entered", list)
GATE: web.AppKey[asyncio.Event] = web.AppKey("gate", asyncio.Event)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def held(request: web.Request) -> web.Response:
    """Answers once the test opens the gate (a hanging provider until then)."""
    request.app[ENTERED].append(request.path)
    await request.app[GATE].wait()
    return web.Response(text="late")


def gated() -> web.Application:
    app = app_with(web.get("/{tail:.*}", held))
    app[ENTERED] = []
    app[GATE] = asyncio.Event()
    return app


def sample(mesh: Mesh, name: str, **labels: str) -> float:
    return mesh.registry.get_sample_value(name, labels) or 0.0


async def status_of(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    async with session.get(url) as r:
        await r.read()
        return r.status, r.headers.get("x-meshbridge-reason")


# -- defect 1: a policy change while calls run -------------------------------------


async def test_a_policy_change_while_calls_run_keeps_max_in_flight_capacity(
    make_mesh: MeshFactory,
) -> None:
    app = gated()
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(max_in_flight=2))
    async with mesh.session() as session:
        running = [asyncio.ensure_future(status_of(session, "http://llm/a")) for _ in range(2)]
        assert await settle(lambda: len(app[ENTERED]) == 2)
        assert sample(mesh, "meshbridge_policy_in_flight", provider="llm") == 2
        mesh.set_policy("llm", Policy(max_in_flight=2, timeout=60.0))  # a reload, say
        app[GATE].set()
        assert [await r for r in running] == [(200, None), (200, None)]
        assert sample(mesh, "meshbridge_policy_in_flight", provider="llm") == 0
        app[GATE].clear()
        again = [asyncio.ensure_future(status_of(session, "http://llm/b")) for _ in range(2)]
        assert await settle(lambda: len(app[ENTERED]) == 4)  # both admitted, none 503
        app[GATE].set()
        assert [await r for r in again] == [(200, None), (200, None)]


# -- defects 2 and 3: hanging providers and the breaker ----------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        Policy(timeout=0.05, circuit_breaker=CircuitBreaker(failures=2)),
        Policy(first_byte_timeout=0.05, circuit_breaker=CircuitBreaker(failures=2)),
    ],
    ids=["timeout", "first_byte_timeout"],
)
async def test_a_hanging_provider_opens_its_breaker_on_the_default_on(
    make_mesh: MeshFactory, policy: Policy
) -> None:
    app = gated()
    mesh = await make_mesh({"llm": app}, clock=Clock())
    mesh.set_policy("llm", policy)
    async with mesh.session() as session:
        for _ in range(2):
            assert await status_of(session, "http://llm/") == (504, "timeout")
        assert await status_of(session, "http://llm/") == (503, "circuit-open")
    assert len(app[ENTERED]) == 2  # the third caller did not wait for the hang
    assert sample(mesh, "meshbridge_circuit_state", provider="llm") == 1


async def test_a_half_open_probe_that_times_out_opens_the_circuit_again(
    make_mesh: MeshFactory,
) -> None:
    app, clock = gated(), Clock()
    mesh = await make_mesh({"llm": app}, clock=clock)
    breaker = CircuitBreaker(failures=1, open_for=10.0, half_open=1)
    mesh.set_policy("llm", Policy(timeout=0.05, circuit_breaker=breaker))
    async with mesh.session() as session:
        assert await status_of(session, "http://llm/") == (504, "timeout")
        assert await status_of(session, "http://llm/") == (503, "circuit-open")
        clock.now += 10.0  # half-open: the probe goes through, and hangs too
        assert await status_of(session, "http://llm/") == (504, "timeout")
        assert await status_of(session, "http://llm/") == (503, "circuit-open")
    transitions = [
        sample(mesh, "meshbridge_circuit_transitions_total", provider="llm", to=to)
        for to in ("open", "half_open", "closed")
    ]
    assert transitions == [2, 1, 0]


def answering(*statuses: int) -> web.Application:
    left = list(statuses)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=left.pop(0) if left else 200)

    return app_with(web.get("/{tail:.*}", answer))


async def test_a_probe_answered_with_a_5xx_fails_even_when_on_does_not_name_it(
    make_mesh: MeshFactory,
) -> None:
    clock = Clock()
    mesh = await make_mesh({"llm": answering(503, 500)}, clock=clock)
    breaker = CircuitBreaker(failures=1, open_for=10.0, half_open=1, on=frozenset({503}))
    mesh.set_policy("llm", Policy(circuit_breaker=breaker))
    async with mesh.session() as session:
        assert await status_of(session, "http://llm/") == (503, None)  # opens it
        clock.now += 10.0
        assert await status_of(session, "http://llm/") == (500, None)  # the probe
        assert await status_of(session, "http://llm/") == (503, "circuit-open")
        clock.now += 20.0  # reopened for twice as long
        assert await status_of(session, "http://llm/") == (200, None)
        assert await status_of(session, "http://llm/") == (200, None)  # closed again


async def test_a_stream_cut_after_its_head_counts_against_the_breaker(
    make_mesh: MeshFactory,
) -> None:
    async def breaks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        assert request.transport is not None
        request.transport.close()  # the provider hangs up mid-body
        return response

    mesh = await make_mesh({"llm": app_with(web.get("/", breaks))}, clock=Clock())
    mesh.set_policy("llm", Policy(circuit_breaker=CircuitBreaker(failures=2)))
    async with mesh.session() as session:
        for _ in range(2):
            async with session.get("http://llm/") as r:
                assert r.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()  # the caller sees it as a failure: so does the breaker
        assert await status_of(session, "http://llm/") == (503, "circuit-open")


# -- defect 4: "connect-failure" for every kind -------------------------------------------


async def unreachable(request: web.Request) -> web.Response:
    """A provider whose own upstream refused the connection."""
    request.app[ENTERED].append(request.path)
    report_connect_failure(request)
    return web.Response(status=502, text="upstream refused the connection")


async def test_a_provider_that_reports_a_connect_failure_counts_as_one(
    make_mesh: MeshFactory,
) -> None:
    app = app_with(web.get("/", unreachable))
    app[ENTERED] = []
    mesh = await make_mesh({"llm": app}, clock=Clock())
    breaker = CircuitBreaker(failures=2, on=frozenset({"connect-failure"}))  # not 502
    policy = Policy(retries=1, retry_on=["connect-failure"], circuit_breaker=breaker, **FAST)  # type: ignore[arg-type]
    mesh.set_policy("llm", policy)
    async with mesh.session() as session:
        assert await status_of(session, "http://llm/") == (502, None)  # tried twice
        assert await status_of(session, "http://llm/") == (503, "circuit-open")
    assert len(app[ENTERED]) == 2
    assert sample(mesh, "meshbridge_retries_total", provider="llm", source="none",
                  reason="connect-failure") == 1  # fmt: skip


async def test_a_502_without_a_reported_connect_failure_is_only_a_status(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh({"llm": answering(502, 502, 502)}, clock=Clock())
    mesh.set_policy(
        "llm", Policy(circuit_breaker=CircuitBreaker(failures=2, on=frozenset({"connect-failure"})))
    )
    async with mesh.session() as session:
        for _ in range(3):  # a header cannot claim a connect failure: only the handler can
            assert await status_of(session, "http://llm/") == (502, None)


# -- retries do not multiply ----------------------------------------------------------


async def test_an_answer_after_mesh_retries_tells_sdks_not_to_retry_again(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh({"llm": answering(529, 529, 529, 529)})
    mesh.set_policy("llm", Policy(retries=2, **FAST))  # type: ignore[arg-type]
    async with mesh.session() as session:
        async with session.get("http://llm/") as r:
            assert r.status == 529
            assert r.headers["x-should-retry"] == "false"
        async with session.get("http://llm/") as r:  # the fourth 529, then 200: no retry left
            assert r.status == 200
            assert "x-should-retry" not in r.headers


async def test_a_first_answer_keeps_the_providers_headers_as_they_are(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh({"llm": answering(529)})
    mesh.set_policy("llm", Policy(retries=0))
    async with mesh.session() as session, session.get("http://llm/") as r:
        assert r.status == 529
        assert "x-should-retry" not in r.headers  # the mesh did not retry: the SDK may


# -- overload and fallbacks ---------------------------------------------------------------


@pytest.mark.parametrize("on_overload", [False, True])
async def test_an_overloaded_provider_falls_back_only_when_told_to(
    make_mesh: MeshFactory, on_overload: bool
) -> None:
    primary, backup = gated(), answering()
    mesh = await make_mesh({"primary": primary, "backup": backup})
    policy = Policy(max_in_flight=1, fallback=("backup",), fallback_on_overload=on_overload)
    mesh.set_policy("primary", policy)
    async with mesh.session() as session:
        first = asyncio.ensure_future(status_of(session, "http://primary/"))
        assert await settle(lambda: len(primary[ENTERED]) == 1)
        expected = (200, None) if on_overload else (503, "overloaded")
        assert await status_of(session, "http://primary/") == expected
        primary[GATE].set()
        assert await first == (200, None)


@pytest.mark.parametrize("on_overload", [False, True])
async def test_an_overloaded_fallback_is_treated_as_an_overloaded_primary(
    make_mesh: MeshFactory, on_overload: bool
) -> None:
    backup = gated()
    mesh = await make_mesh(
        {"primary": answering(*[503] * 10), "backup": backup, "last": answering()}
    )
    mesh.set_policy(
        "primary",
        Policy(fallback=("backup", "last"), fallback_on_overload=on_overload),
    )
    mesh.set_policy("backup", Policy(max_in_flight=1))
    async with mesh.session() as session:
        first = asyncio.ensure_future(status_of(session, "http://primary/"))
        assert await settle(lambda: len(backup[ENTERED]) == 1)
        expected = (200, None) if on_overload else (503, "overloaded")
        assert await status_of(session, "http://primary/") == expected
        backup[GATE].set()
        assert await first == (200, None)


# -- the pure parts: jitter and the budget across changes --------------------------------


def test_a_retry_after_wait_gets_a_little_jitter() -> None:
    traffic = Traffic(None, rng=random.Random(7))
    traffic.set_policy("llm", Policy(retries=1, retry_backoff=(0.1, 60.0)))
    guard = traffic.guard("llm")
    assert guard is not None
    one = [traffic.retry_delay(guard, 0, 1.0) for _ in range(200)]
    assert all(d is not None and 1.0 <= d <= 1.1 for d in one)
    assert len(set(one)) > 100  # not all in the same millisecond
    thirty = [traffic.retry_delay(guard, 0, 30.0) for _ in range(200)]
    assert all(d is not None and 30.0 <= d <= 33.0 for d in thirty)
    assert traffic.retry_delay(guard, 0, 61.0) is None  # past the cap: no retry


def test_a_policy_change_keeps_the_retry_budgets_window() -> None:
    clock = Clock()
    traffic = Traffic(None, clock=clock)
    traffic.set_policy("llm", Policy(retries=1, retry_budget=0.0, retry_floor=1.0))
    guard = traffic.guard("llm")
    assert guard is not None
    assert guard.budget.try_spend(clock.now)  # the floor's one retry this second
    assert not guard.budget.try_spend(clock.now)
    traffic.set_policy("llm", Policy(retries=2, retry_budget=0.0, retry_floor=1.0))
    changed = traffic.guard("llm")
    assert changed is not None
    assert changed is not guard
    assert not changed.budget.try_spend(clock.now)  # still spent: no fresh budget
