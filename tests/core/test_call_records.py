"""Every call ends in one place and hands its CallRecord to the mesh's ledger.

The ledger here is a real LedgerSink that keeps the records in a list (the
storage behind it is the service layer's, tested in tests/service/); what is
under test is what the core puts in each record, for calls that end every way.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from aiohttp import web

from meshbridge import (
    CallRecord,
    CircuitBreaker,
    Mesh,
    Policy,
    record_tokens,
    use_api_key_id,
    use_client,
)

from ..helpers import KeptLedger as Kept
from ..helpers import MeshFactory, app_with, settle

FAST = {"retry_backoff": (0.001, 0.005)}


async def hello(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="hello")


async def stream_then_report(request: web.Request) -> web.StreamResponse:
    """Streams three words, and reports its usage after the body has gone out
    (as the LLM kinds do, in a finally), also when the caller left early."""
    body = await request.json()
    response = web.StreamResponse()
    await response.prepare(request)
    sent = 0
    try:
        for word in ("one", "two", "three"):
            await response.write(f"data: {word}\n\n".encode())
            sent += 1
            await asyncio.sleep(body.get("pause", 0))
        await response.write_eof()
        return response
    finally:
        await asyncio.sleep(0.01)  # the body has reached the caller by now
        record_tokens(
            request,
            "gpt-x",
            input=10,
            output=sent,
            cache_read=4,
            reasoning=1,
            first_token=0.001,
            request_model="gpt-x",
            response_model="gpt-x-2026",
            tool_calls=["get_weather"],
            prompt=body.get("prompt"),
        )


async def test_a_direct_call_is_recorded_with_who_made_it_and_how_it_went(
    make_mesh: MeshFactory,
) -> None:
    ledger = Kept()
    mesh = await make_mesh({"llm": app_with(web.post("/v1/x", hello))}, ledger=ledger)
    async with (
        mesh.session(source="agents", api_key_id="key-1") as session,
        session.post("http://llm/v1/x?secret=1", data=b"hi") as r,
    ):
        assert await r.text() == "hello"
    record = await ledger.one()
    assert uuid.UUID(record.id).version == 7
    assert (record.target, record.provider, record.source, record.api_key_id) == (
        "llm",
        "llm",
        "agents",
        "key-1",
    )
    assert (record.client, record.peer) == (None, None)  # in-process code
    assert (record.method, record.path) == ("POST", "/v1/x")  # never the query
    assert (record.status, record.outcome, record.reason) == (200, "completed", None)
    assert (record.attempts, record.fallback) == (1, False)
    assert record.ttfb is not None
    assert 0 <= record.ttfb <= record.duration
    assert record.input_tokens is None
    assert record.tool_calls == ()


async def test_a_stream_is_recorded_with_the_usage_its_handler_reported_after_the_body(
    make_mesh: MeshFactory,
) -> None:
    ledger = Kept()
    mesh = await make_mesh({"llm": app_with(web.post("/", stream_then_report))}, ledger=ledger)
    async with mesh.session(source="agents") as session:
        async with session.post("http://llm/", json={"prompt": "hi there"}) as r:
            assert (await r.read()).count(b"data:") == 3
        record = await ledger.one()
    assert (record.outcome, record.status) == ("completed", 200)
    assert (record.input_tokens, record.cached_input_tokens) == (14, 4)  # cached are input too
    assert (record.output_tokens, record.reasoning_tokens) == (3, 1)
    assert (record.request_model, record.response_model) == ("gpt-x", "gpt-x-2026")
    assert record.tool_calls == ("get_weather",)
    assert record.ttft == 0.001
    assert record.prompt is None  # this ledger does not record prompts


async def test_a_ledger_that_records_prompts_gets_the_last_user_prompt(
    make_mesh: MeshFactory,
) -> None:
    ledger = Kept(record_prompts=True)
    mesh = await make_mesh({"llm": app_with(web.post("/", stream_then_report))}, ledger=ledger)
    async with mesh.session() as session:
        async with session.post("http://llm/", json={"prompt": "hi"}) as r:
            await r.read()
        assert (await ledger.one()).prompt == "hi"


async def test_a_cancelled_stream_is_recorded_once_its_handler_reported_what_it_sent(
    make_mesh: MeshFactory,
) -> None:
    ledger = Kept()
    mesh = await make_mesh({"llm": app_with(web.post("/", stream_then_report))}, ledger=ledger)
    async with mesh.session() as session:
        async with session.post("http://llm/", json={"pause": 30}) as r:
            await r.content.readline()  # the first word, then the caller leaves
        record = await ledger.one()
    assert record.outcome == "cancelled"
    assert record.output_tokens == 1


async def test_a_gateway_client_and_its_peer_are_recorded_beside_the_source(
    make_mesh: MeshFactory,
) -> None:
    ledger = Kept()
    mesh = await make_mesh({"llm": app_with(web.post("/v1/x", hello))}, ledger=ledger)
    async with mesh.session(source="api") as session:
        with use_client("nightly", peer="edge"), use_api_key_id("key-9"):
            async with session.post("http://llm/v1/x") as r:
                await r.read()
    record = await ledger.one()
    assert (record.client, record.peer, record.api_key_id) == ("nightly", "edge", "key-9")


def scripted(*statuses: int) -> web.Application:
    left = list(statuses)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=left.pop(0) if left else 200)

    return app_with(web.get("/{tail:.*}", answer))


async def test_a_retried_call_is_one_record_with_its_attempts(make_mesh: MeshFactory) -> None:
    ledger = Kept()
    mesh = await make_mesh({"llm": scripted(503, 503)}, ledger=ledger)
    mesh.set_policy("llm", Policy(retries=2, **FAST))  # type: ignore[arg-type]
    async with mesh.session() as session, session.get("http://llm/") as r:
        assert r.status == 200
    record = await ledger.one()
    assert (record.attempts, record.fallback, record.status, record.reason) == (3, False, 200, None)


async def test_a_call_that_fell_back_names_the_provider_that_answered(
    make_mesh: MeshFactory,
) -> None:
    ledger = Kept()
    mesh = await make_mesh({"main": scripted(503), "backup": scripted()}, ledger=ledger)
    mesh.set_policy("main", Policy(fallback=("backup",), **FAST))  # type: ignore[arg-type]
    async with mesh.session() as session, session.get("http://main/") as r:
        assert r.status == 200
    record = await ledger.one()
    assert (record.target, record.provider, record.fallback, record.attempts) == (
        "main",
        "backup",
        True,
        2,
    )


async def test_a_call_the_mesh_answered_itself_is_recorded_with_its_reason(
    make_mesh: MeshFactory,
) -> None:
    ledger = Kept()
    mesh = await make_mesh({"llm": scripted(503)}, ledger=ledger)
    breaker = CircuitBreaker(failures=1, open_for=60)
    mesh.set_policy("llm", Policy(circuit_breaker=breaker))
    async with mesh.session() as session:
        async with session.get("http://llm/") as r:
            assert r.status == 503  # the provider's: it opens the circuit
        async with session.get("http://llm/") as r:
            assert r.headers["x-meshbridge-reason"] == "circuit-open"
    assert await settle(lambda: len(ledger.records) == 2)
    refused = ledger.records[1]
    assert (refused.status, refused.reason, refused.attempts) == (503, "circuit-open", 0)


async def test_a_ledger_starts_with_the_mesh_and_closes_after_its_last_call() -> None:
    ledger = Kept()
    mesh = Mesh(ledger=ledger)
    mesh.register("llm", app_with(web.post("/", stream_then_report)))
    async with mesh:
        assert ledger.events == ["start"]
        async with mesh.session() as session:
            async with session.post("http://llm/", json={"pause": 30}) as r:
                await r.content.readline()
                # the mesh closes while the handler still streams to the caller
                closing = asyncio.ensure_future(mesh.aclose())
                await asyncio.sleep(0)
            await closing
    assert ledger.events == ["start", "aclose after 1 records"]


class Broken(Kept):
    def record(self, record: CallRecord) -> None:
        raise RuntimeError("disk full")


async def test_a_ledger_that_fails_never_fails_the_call(
    make_mesh: MeshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = await make_mesh({"llm": app_with(web.post("/v1/x", hello))}, ledger=Broken())
    async with mesh.session() as session, session.post("http://llm/v1/x") as r:
        assert await r.text() == "hello"
    assert "the ledger failed" in caplog.text


def test_a_ledger_without_the_sink_methods_is_refused() -> None:
    with pytest.raises(TypeError, match="record"):
        Mesh(ledger=object())  # type: ignore[arg-type]


async def test_a_call_that_could_not_connect_records_nothing(make_mesh: MeshFactory) -> None:
    ledger = Kept()
    mesh = await make_mesh({}, ledger=ledger)
    async with mesh.session() as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get("http://nobody/")
    assert ledger.records == []
