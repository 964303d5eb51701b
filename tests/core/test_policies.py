"""Traffic policies on a real mesh: what callers get and what providers see."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from meshbridge import CircuitBreaker, Fault, Mesh, Policy

from ..helpers import MeshFactory, settle

FAST = {"retry_backoff": (0.001, 0.005)}  # backoff fast enough for tests

CALLS: web.AppKey[list[str]] = web.AppKey("calls", list)
SCRIPT: web.AppKey[list[int]] = web.AppKey("script", list)
CANCELLED: web.AppKey[list[str]] = web.AppKey("cancelled", list)


def scripted(*statuses: int, headers: dict[str, str] | None = None) -> web.Application:
    """An app answering each request with the next status of ``statuses`` (then 200)."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        request.app[CALLS].append(request.path)
        script = request.app[SCRIPT]
        status = script.pop(0) if script else 200
        return web.json_response(
            {"status": status, "attempt": len(request.app[CALLS])},
            status=status,
            headers=headers if status != 200 else None,
        )

    app = web.Application()
    app[CALLS] = []
    app[SCRIPT] = list(statuses)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def watched(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    """An app whose one handler notes in app[CANCELLED] when it is cancelled."""

    async def run(request: web.Request) -> web.StreamResponse:
        request.app[CALLS].append(request.path)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            request.app[CANCELLED].append(request.path)
            raise

    app = web.Application()
    app[CALLS] = []
    app[CANCELLED] = []
    app.router.add_route("*", "/{tail:.*}", run)
    return app


def held_until(release: asyncio.Event) -> web.Application:
    """A :func:`watched` app whose handler answers once ``release`` is set."""

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    return watched(held)


def sample(mesh: Mesh, name: str, **labels: str) -> float:
    value = mesh.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_retries_are_invisible_to_the_caller(make_mesh: MeshFactory) -> None:
    app = scripted(503, 503)
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(retries=2, **FAST))  # type: ignore[arg-type]
    async with mesh.session(source="agents") as session, session.get("http://llm/v1") as r:
        assert r.status == 200
        assert (await r.json())["attempt"] == 3
    assert len(app[CALLS]) == 3
    pair = {"provider": "llm", "source": "agents"}
    assert sample(mesh, "meshbridge_retries_total", **pair, reason="503") == 2
    assert sample(mesh, "meshbridge_requests_total", **pair, method="GET", code="503",
                  outcome="completed") == 2  # fmt: skip
    assert sample(mesh, "meshbridge_calls_total", target="llm", source="agents", code="200",
                  outcome="completed") == 1  # fmt: skip


async def test_the_last_attempts_answer_reaches_the_caller_when_retries_run_out(
    make_mesh: MeshFactory,
) -> None:
    app = scripted(503, 503, 503)
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(retries=1, **FAST))  # type: ignore[arg-type]
    async with mesh.session() as session, session.get("http://llm/") as r:
        assert r.status == 503
        assert (await r.json())["attempt"] == 2
    assert len(app[CALLS]) == 2


async def test_a_body_over_the_replay_limit_is_never_retried(make_mesh: MeshFactory) -> None:
    app = scripted(503)
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(retries=3, replay_limit=1024, **FAST))  # type: ignore[arg-type]
    async with mesh.session() as session:
        async with session.post("http://llm/", data=b"x" * 2048) as r:
            assert r.status == 503
        assert mesh.peak_buffered_bytes < 1024  # nothing of it was kept for a replay
        async with session.post("http://llm/", data=b"x" * 512) as r:
            assert r.status == 200
    assert len(app[CALLS]) == 2
    assert mesh.buffered_bytes == 0


async def test_a_streamed_upload_is_never_retried(make_mesh: MeshFactory) -> None:
    app = scripted(503)
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(retries=3, **FAST))  # type: ignore[arg-type]

    async def body() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b"part two"

    async with mesh.session() as session, session.post("http://llm/", data=body()) as r:
        assert r.status == 503
    assert len(app[CALLS]) == 1


@pytest.mark.parametrize(("retry_after", "attempts"), [("0", 2), ("30", 1)])
async def test_retry_after_is_honoured_up_to_the_backoff_cap(
    make_mesh: MeshFactory, retry_after: str, attempts: int
) -> None:
    app = scripted(429, headers={"Retry-After": retry_after})
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(retries=1, retry_backoff=(0.001, 2.0)))
    async with mesh.session() as session, session.get("http://llm/") as r:
        assert r.status == (200 if attempts == 2 else 429)
    assert len(app[CALLS]) == attempts


async def test_a_failing_provider_falls_back_before_the_first_byte(
    make_mesh: MeshFactory,
) -> None:
    primary, backup = scripted(529, 529, 529), scripted()
    mesh = await make_mesh({"primary": primary, "backup": backup})
    mesh.set_policy("primary", Policy(retries=1, fallback=("backup",), **FAST))  # type: ignore[arg-type]
    async with mesh.session(source="api") as session, session.get("http://primary/x") as r:
        assert r.status == 200
    assert len(primary[CALLS]) == 2
    assert len(backup[CALLS]) == 1
    assert sample(mesh, "meshbridge_fallbacks_total", provider="primary", fallback="backup",
                  source="api") == 1  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_open_circuit_answers_503_without_calling_the_provider(
    make_mesh: MeshFactory,
) -> None:
    clock = Clock()
    app = scripted(503, 503)
    mesh = await make_mesh({"llm": app}, clock=clock)
    breaker = CircuitBreaker(failures=2, interval=10.0, open_for=30.0, half_open=1)
    mesh.set_policy("llm", Policy(circuit_breaker=breaker))
    async with mesh.session() as session:
        for _ in range(2):
            async with session.get("http://llm/") as r:
                assert r.status == 503
        assert sample(mesh, "meshbridge_circuit_state", provider="llm") == 1
        async with session.get("http://llm/") as r:
            assert r.status == 503
            assert r.headers["x-meshbridge-reason"] == "circuit-open"
            assert r.headers["Retry-After"] == "30"
            assert (await r.json())["reason"] == "circuit-open"  # a problem document
        assert len(app[CALLS]) == 2
        clock.now += 30.0  # half-open: one probe goes through, and succeeds
        async with session.get("http://llm/") as r:
            assert r.status == 200
    assert len(app[CALLS]) == 3
    assert sample(mesh, "meshbridge_circuit_state", provider="llm") == 0
    for state in ("open", "half_open", "closed"):
        assert sample(mesh, "meshbridge_circuit_transitions_total", provider="llm", to=state) == 1
    assert sample(mesh, "meshbridge_rejected_total", provider="llm", source="none",
                  reason="circuit-open") == 1  # fmt: skip


async def test_beyond_max_in_flight_the_caller_gets_503_at_once(make_mesh: MeshFactory) -> None:
    release = asyncio.Event()
    app = held_until(release)
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(max_in_flight=1))
    async with mesh.session() as session:
        first = asyncio.create_task(session.get("http://llm/first"))
        assert await settle(lambda: len(app[CALLS]) == 1)
        async with session.get("http://llm/second") as r:
            assert r.status == 503
            assert r.headers["x-meshbridge-reason"] == "overloaded"
            assert "Retry-After" in r.headers
        release.set()
        async with await first as r:
            assert await r.text() == "done"
    assert app[CALLS] == ["/first"]


async def test_no_first_byte_in_time_is_a_504_and_the_handler_is_cancelled(
    make_mesh: MeshFactory,
) -> None:
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response()

    app = watched(silent)
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", Policy(first_byte_timeout=0.05))
    async with mesh.session(source="batch") as session, session.get("http://llm/") as r:
        assert r.status == 504
        assert r.headers["x-meshbridge-reason"] == "timeout"
    assert await settle(lambda: app[CANCELLED] == ["/"])
    assert sample(mesh, "meshbridge_timeouts_total", provider="llm", source="batch",
                  kind="first-byte-timeout") == 1  # fmt: skip


async def stalls_after_one_chunk(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await asyncio.sleep(10)
    return response


@pytest.mark.parametrize(
    ("policy", "kind"),
    [(Policy(idle_timeout=0.05), "idle-timeout"), (Policy(timeout=0.1), "timeout")],
)
async def test_a_stalled_stream_is_cut_with_an_error_and_its_handler_cancelled(
    make_mesh: MeshFactory, policy: Policy, kind: str
) -> None:
    app = watched(stalls_after_one_chunk)
    mesh = await make_mesh({"llm": app})
    mesh.set_policy("llm", policy)
    async with mesh.session() as session, session.get("http://llm/") as r:
        assert r.status == 200
        assert await r.content.readline() == b"data: first\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert await settle(lambda: app[CANCELLED] == ["/"])
    assert sample(mesh, "meshbridge_timeouts_total", provider="llm", source="none",
                  kind=kind) == 1  # fmt: skip
    assert await settle(
        lambda: sample(mesh, "meshbridge_requests_in_flight", provider="llm", source="none") == 0
    )


async def test_faults_abort_and_delay_requests(make_mesh: MeshFactory) -> None:
    app = scripted()
    mesh = await make_mesh({"llm": app}, rng=random.Random(7))
    mesh.set_policy("llm", Policy(fault=Fault(abort=418, abort_ratio=1.0)))
    async with mesh.session() as session:
        async with session.get("http://llm/") as r:
            assert r.status == 418
            assert r.headers["x-meshbridge-reason"] == "fault"
        assert app[CALLS] == []
        mesh.set_policy("llm", Policy(fault=Fault(delay=0.02, delay_ratio=1.0)))
        async with session.get("http://llm/") as r:
            assert r.status == 200
    assert app[CALLS] == ["/"]


async def test_a_split_sends_each_request_to_one_provider_by_weight(
    make_mesh: MeshFactory,
) -> None:
    primary, canary = scripted(), scripted()
    mesh = await make_mesh({"primary": primary, "canary": canary}, rng=random.Random(3))
    mesh.add_route("chat", {"primary": 90, "canary": 10})
    async with mesh.session() as session:
        for _ in range(10_000):
            async with session.get("http://chat/") as r:
                assert r.status == 200
    share = len(canary[CALLS]) / 10_000
    assert 0.09 < share < 0.11  # 10% with 3.3 sigma of room
    assert sample(mesh, "meshbridge_route_requests_total", route="chat", provider="canary") == len(
        canary[CALLS]
    )


async def test_a_sticky_split_keeps_each_key_on_one_provider(make_mesh: MeshFactory) -> None:
    a, b = scripted(), scripted()
    mesh = await make_mesh({"a": a, "b": b})
    mesh.add_route("chat", {"a": 50, "b": 50}, sticky="api_key_id")
    landed: dict[str, set[int]] = {}
    for key in (f"key-{n}" for n in range(40)):
        async with mesh.session(api_key_id=key) as session:
            for _ in range(5):
                before = len(a[CALLS])
                async with session.get("http://chat/") as r:
                    assert r.status == 200
                landed.setdefault(key, set()).add(len(a[CALLS]) - before)
    assert all(len(sides) == 1 for sides in landed.values())
    assert 0 < sum(1 for sides in landed.values() if sides == {1}) < 40


async def test_routes_and_policies_are_checked_when_added(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh({"a": scripted()})
    with pytest.raises(ValueError, match="unknown providers"):
        mesh.add_route("chat", {"a": 1, "ghost": 1})
    with pytest.raises(ValueError, match="a provider's name"):
        mesh.add_route("a", {"a": 1})
    with pytest.raises(KeyError, match="ghost"):
        mesh.set_policy("ghost", Policy())
    with pytest.raises(ValueError, match="retries"):
        Policy(retries=-1)
