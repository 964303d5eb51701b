"""Limits and budgets on real calls through a mesh (the in-process store).

What the limiter decides is tested on an injected clock in test_limiter.py;
here: that a mesh asks it before the provider is reached, answers a refusal
itself, and settles what the provider reported when the call finishes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from meshbridge import (
    ERROR_BODY,
    Limit,
    Limiter,
    Mesh,
    Policy,
    Price,
    record_tokens,
    use_api_key_id,
    use_client,
)

from ..helpers import KeptLedger, MeshFactory, app_with, settle

RAN: web.AppKey[list[str]] = web.AppKey("ran", list)
GATE: web.AppKey[asyncio.Event] = web.AppKey("gate", asyncio.Event)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def answer(request: web.Request) -> web.Response:
    request.app[RAN].append(request.path)
    await request.app[GATE].wait()
    return web.Response(text="ok")


async def stream_usage(request: web.Request) -> web.StreamResponse:
    """A stream that reports its usage after the body, as the LLM kinds do."""
    request.app[RAN].append(request.path)
    body = await request.json()
    response = web.StreamResponse()
    await response.prepare(request)
    try:
        for _ in range(body["words"]):
            await response.write(b"data: word\n\n")
        await response.write_eof()
        return response
    finally:
        record_tokens(request, body["model"], input=body["prompt_tokens"], output=body["words"])


def app() -> web.Application:
    made = app_with(web.get("/{tail:.*}", answer), web.post("/chat", stream_usage))
    made[RAN] = []
    made[GATE] = asyncio.Event()
    made[GATE].set()
    return made


async def get(
    mesh: Mesh, url: str = "http://llm/x", **session: Any
) -> tuple[int, dict[str, str], bytes]:
    async with mesh.session(**session) as s, s.get(url) as r:
        return r.status, dict(r.headers), await r.read()


async def test_a_call_over_its_limit_is_answered_429_and_never_reaches_the_provider(
    make_mesh: MeshFactory,
) -> None:
    clock = Clock()
    limiter = Limiter([Limit("agents", {"source": "agents"}, requests_per_minute=2)], clock=clock)
    provider = app()
    ledger = KeptLedger()
    mesh = await make_mesh({"llm": provider}, limiter=limiter, ledger=ledger)
    assert [(await get(mesh, source="agents"))[0] for _ in range(2)] == [200, 200]
    clock.now += 20.0
    status, headers, body = await get(mesh, source="agents")
    assert status == 429
    assert headers["x-meshbridge-reason"] == "rate-limited"
    assert headers["Retry-After"] == "40"  # when the oldest of the two leaves the minute
    assert headers["Content-Type"] == "application/problem+json"
    assert "limit 'agents' allows requests_per_minute = 2" in json.loads(body)["detail"]
    assert len(provider[RAN]) == 2  # the handler never ran for the third
    assert (await get(mesh, source="batch"))[0] == 200  # another Source: not this limit
    labels = {"limit": "agents", "source": "agents", "reason": "rate-limited"}
    assert mesh.registry.get_sample_value("meshbridge_limited_total", labels) == 1
    calls = {"target": "llm", "source": "agents", "code": "429", "outcome": "completed"}
    assert mesh.registry.get_sample_value("meshbridge_calls_total", calls) == 1
    assert await settle(lambda: len(ledger.records) == 4)
    refused = ledger.records[2]
    assert (refused.status, refused.reason, refused.attempts) == (429, "rate-limited", 0)


def openai_shaped(status: int, reason: str, message: str) -> tuple[str, bytes]:
    body = {"error": {"message": message, "type": "rate_limit_error", "code": reason}}
    return "application/json", json.dumps(body).encode()


@pytest.mark.parametrize("governed", [False, True], ids=["direct", "governed"])
async def test_the_refusal_is_in_the_providers_error_shape_on_either_path(
    make_mesh: MeshFactory, governed: bool
) -> None:
    limiter = Limiter([Limit("all", {}, requests_per_minute=1)], clock=Clock())
    provider = app()
    provider[ERROR_BODY] = openai_shaped
    mesh = await make_mesh({"llm": provider}, limiter=limiter)
    if governed:
        mesh.set_policy("llm", Policy(retries=2, timeout=60.0))
    assert (await get(mesh))[0] == 200
    status, headers, body = await get(mesh)
    assert (status, headers["Content-Type"]) == (429, "application/json")
    assert json.loads(body)["error"]["code"] == "rate-limited"
    assert "x-should-retry" not in headers  # the mesh did not retry: waiting helps
    assert len(provider[RAN]) == 1


async def test_each_key_id_gets_its_own_counters_with_a_star_match(
    make_mesh: MeshFactory,
) -> None:
    limiter = Limiter([Limit("per-key", {"api_key_id": "*"}, requests_per_minute=1)], clock=Clock())
    mesh = await make_mesh({"llm": app()}, limiter=limiter)
    async with mesh.session() as s:
        statuses = []
        for key in ("a", "b", "a", "b"):
            with use_api_key_id(key):
                async with s.get("http://llm/x") as r:
                    statuses.append(r.status)
        async with s.get("http://llm/x") as r:  # no key id: a "*" match does not apply
            statuses.append(r.status)
    assert statuses == [200, 200, 429, 429, 200]


async def test_a_gateway_client_is_matched_and_in_process_code_is_not(
    make_mesh: MeshFactory,
) -> None:
    limiter = Limiter(
        [Limit("nightly", {"client": "nightly"}, requests_per_minute=1)], clock=Clock()
    )
    mesh = await make_mesh({"llm": app()}, limiter=limiter)
    async with mesh.session() as s:
        statuses = []
        for client in ("nightly", "nightly", None):
            if client is None:
                async with s.get("http://llm/x") as r:
                    statuses.append(r.status)
            else:
                with use_client(client):
                    async with s.get("http://llm/x") as r:
                        statuses.append(r.status)
    assert statuses == [200, 429, 200]


async def test_a_concurrency_slot_comes_back_when_the_call_ends(make_mesh: MeshFactory) -> None:
    limiter = Limiter([Limit("two", {}, concurrent=2)], clock=Clock())
    provider = app()
    provider[GATE].clear()
    mesh = await make_mesh({"llm": provider}, limiter=limiter)
    running = [asyncio.ensure_future(get(mesh)) for _ in range(2)]
    assert await settle(lambda: len(provider[RAN]) == 2)
    status, headers, _ = await get(mesh)
    assert (status, headers["x-meshbridge-reason"], headers["Retry-After"]) == (
        429,
        "rate-limited",
        "1",
    )
    provider[GATE].set()
    assert [(await call)[0] for call in running] == [200, 200]
    assert await settle_async(lambda: used(limiter, "two", "concurrent"), 0)
    assert (await get(mesh))[0] == 200


async def used(limiter: Limiter, limit: str, kind: str) -> float:
    for use in await limiter.usage():
        if (use.limit, use.kind) == (limit, kind):
            return use.used
    raise AssertionError(f"no counter {limit}/{kind}")


async def test_tokens_are_debited_as_the_stream_reported_them_after_its_body(
    make_mesh: MeshFactory,
) -> None:
    clock = Clock()
    limiter = Limiter([Limit("tpd", {}, tokens_per_day=10_000)], clock=clock)
    mesh = await make_mesh({"llm": app()}, limiter=limiter)
    async with mesh.session() as s:
        body = {"model": "m", "prompt_tokens": 40, "words": 7, "max_tokens": 500}
        async with s.post("http://llm/chat", json=body) as r:
            assert (await r.read()).count(b"data:") == 7
        # the reservation (500 + the prompt's estimate) is replaced by 40 + 7
        assert await settle_async(lambda: used(limiter, "tpd", "tokens_per_day"), 47)


async def test_a_limiter_set_after_the_provider_started_gets_usage_reported_after_the_body(
    make_mesh: MeshFactory,
) -> None:
    # The provider's connections were made before there was anything to
    # watch: the next call still waits for its handler's report to settle.
    mesh = await make_mesh({"llm": app()})
    body = {"model": "m", "prompt_tokens": 40, "words": 7, "max_tokens": 500}
    async with mesh.session() as s:
        async with s.post("http://llm/chat", json=body) as r:  # a pooled connection now
            assert (await r.read()).count(b"data:") == 7
        limiter = Limiter([Limit("tpd", {}, tokens_per_day=10_000)], clock=Clock())
        mesh.set_limiter(limiter)
        async with s.post("http://llm/chat", json=body) as r:  # on that connection
            assert (await r.read()).count(b"data:") == 7
        assert await settle_async(lambda: used(limiter, "tpd", "tokens_per_day"), 47)
    mesh.set_limiter(None)
    await limiter.aclose()


async def settle_async(read: Any, expected: float, rounds: int = 200) -> bool:
    for _ in range(rounds):
        if await read() == expected:
            return True
        await asyncio.sleep(0.005)
    return bool(await read() == expected)


async def test_a_spend_budget_reached_mid_stream_lets_it_finish_and_refuses_the_next(
    make_mesh: MeshFactory,
) -> None:
    prices = {"m": Price(input=1_000_000.0, output=1_000_000.0)}  # a dollar a token
    limiter = Limiter([Limit("month", {}, spend_per_month=50.0)], prices, clock=Clock())
    provider = app()
    mesh = await make_mesh({"llm": provider}, limiter=limiter)
    async with mesh.session() as s:
        body = {"model": "m", "prompt_tokens": 30, "words": 40, "max_tokens": 1}
        async with s.post("http://llm/chat", json=body) as r:
            assert r.status == 200
            assert (await r.read()).count(b"data:") == 40  # it finishes: 70 spent of 50
        assert await settle_async(lambda: used(limiter, "month", "spend_per_month"), 70.0)
        async with s.post("http://llm/chat", json=body) as r:
            assert r.status == 429
            assert r.headers["x-meshbridge-reason"] == "budget-exhausted"
    assert len(provider[RAN]) == 1


async def test_a_new_limiter_replaces_the_old_ones_metrics_and_a_reconfigured_one_keeps_counts(
    make_mesh: MeshFactory,
) -> None:
    clock = Clock()
    first = Limiter([Limit("a", {}, requests_per_minute=1)], clock=clock)
    mesh = await make_mesh({"llm": app()}, limiter=first)
    assert (await get(mesh))[0] == 200
    first.reconfigure([Limit("a", {}, requests_per_minute=1), Limit("b", {}, concurrent=5)])
    assert (await get(mesh))[0] == 429  # "a" kept its count
    second = Limiter([Limit("c", {}, requests_per_minute=5)], clock=clock)
    mesh.set_limiter(second)
    await first.aclose()
    assert (await get(mesh))[0] == 200
    allowed = mesh.registry.get_sample_value(
        "meshbridge_limit_allowed", {"limit": "c", "kind": "requests_per_minute"}
    )
    assert allowed == 5
    mesh.set_limiter(None)
    await second.aclose()
    assert (await get(mesh))[0] == 200
