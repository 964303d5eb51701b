"""Tracing: a CLIENT span per request through the mesh, its context across the hop.

Every test makes its own SDK TracerProvider with an in-memory exporter and
hands it to the Mesh: nothing global is set in this process.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.openmetrics.exposition import generate_latest

from meshbridge import Mesh, Policy

from ..helpers import MeshFactory, app_with, settle


class Traced:
    """A tracer provider whose finished spans the test reads."""

    def __init__(self, **kwargs: object) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(**kwargs)  # type: ignore[arg-type]
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def mesh_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans if s.instrumentation_scope.name == "meshbridge"]  # type: ignore[union-attr]

    async def ended(self, count: int) -> Sequence[ReadableSpan]:
        """The mesh's spans once ``count`` have ended."""
        assert await settle(lambda: len(self.mesh_spans()) >= count), self.spans
        return self.mesh_spans()


@pytest.fixture
def traced() -> Traced:
    return Traced()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.context
    assert context is not None
    return int(context.span_id)


def trace_id(span: ReadableSpan) -> int:
    context = span.context
    assert context is not None
    return int(context.trace_id)


def openmetrics(mesh: Mesh) -> str:
    """The mesh's registry as an OpenMetrics scrape reads it."""
    text: bytes = generate_latest(mesh.registry)  # type: ignore[no-untyped-call]
    return text.decode()


def instrumented_app(traced: Traced) -> web.Application:
    """An app with opentelemetry-instrumentation-aiohttp-server's middleware.

    The instrumentor is global (it swaps ``web.Application`` for a subclass
    adding its middleware): it is on only while this app is made."""
    instrumentor = AioHttpServerInstrumentor()
    with warnings.catch_warnings():
        # its subclass of web.Application: aiohttp discourages that, and says so
        warnings.simplefilter("ignore", DeprecationWarning)
        instrumentor.instrument(tracer_provider=traced.provider)
    try:
        return web.Application()
    finally:
        instrumentor.uninstrument()


def handler_tracer(traced: Traced) -> web.RouteDef:
    """GET /work: a handler that starts a span of its own and says which is current."""

    async def work(request: web.Request) -> web.Response:
        current = trace.get_current_span().get_span_context()
        with traced.tracer.start_as_current_span("handler work"):
            await asyncio.sleep(0)
        return web.json_response({"span": current.span_id, "trace": current.trace_id})

    return web.get("/work", work)


async def test_the_callers_span_is_the_parent_of_the_mesh_span_and_that_of_the_handlers_spans(
    make_mesh: MeshFactory, traced: Traced
) -> None:
    plain = app_with(handler_tracer(traced))
    instrumented = instrumented_app(traced)
    instrumented.add_routes([handler_tracer(traced)])
    mesh = await make_mesh(
        {"plain": plain, "instrumented": instrumented}, tracer_provider=traced.provider
    )
    async with mesh.session(source="agents") as session:
        with traced.tracer.start_as_current_span("caller") as caller:
            async with session.get("http://plain/work?q=secret") as response:
                assert response.status == 200
                seen_plain = await response.json()
            async with session.get("http://instrumented/work") as response:
                seen_instrumented = await response.json()
            # the caller's context is its own again
            assert trace.get_current_span() is caller

    to_plain, to_instrumented = await traced.ended(2)
    (caller_span,) = traced.named("caller")
    plain_work, instrumented_work = traced.named("handler work")
    (server,) = [s for s in traced.spans if s.kind == SpanKind.SERVER]

    assert to_plain.kind == SpanKind.CLIENT
    assert to_plain.name == "GET plain"
    assert parent_of(to_plain) == span_id(caller_span)
    assert parent_of(to_instrumented) == span_id(caller_span)
    # without instrumentation: the handler runs with the mesh span current
    assert seen_plain == {"span": span_id(to_plain), "trace": trace_id(caller_span)}
    assert parent_of(plain_work) == span_id(to_plain)
    # with it: its server span (from the traceparent header) is the mesh span's child
    assert parent_of(server) == span_id(to_instrumented)
    assert seen_instrumented["span"] == span_id(server)
    assert parent_of(instrumented_work) == span_id(server)
    assert {trace_id(s) for s in traced.spans} == {trace_id(caller_span)}

    assert dict(to_plain.attributes or {}) == {
        "http.request.method": "GET",
        "server.address": "plain",
        "url.full": "http://plain/work",
        "meshbridge.target": "plain",
        "meshbridge.source": "agents",
        "meshbridge.provider": "plain",
        "meshbridge.outcome": "completed",
        "http.response.status_code": 200,
    }
    assert to_plain.status.status_code == StatusCode.UNSET


async def test_a_request_without_a_callers_span_continues_the_traceparent_it_carries(
    make_mesh: MeshFactory, traced: Traced
) -> None:
    mesh = await make_mesh(
        {"app": app_with(handler_tracer(traced))}, tracer_provider=traced.provider
    )
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with (
        mesh.session() as session,
        session.get("http://app/work", headers={"traceparent": incoming}) as response,
    ):
        seen = await response.json()
    (span,) = await traced.ended(1)
    assert trace.format_trace_id(trace_id(span)) == "0af7651916cd43dd8448eb211c80319c"
    assert parent_of(span) == int("b7ad6b7169203331", 16)
    assert seen["span"] == span_id(span)
    assert "meshbridge.source" not in (span.attributes or {})


@pytest.mark.parametrize(
    "headers",
    [{"baggage": "user=\udcff"}, {"traceparent": "00-\udcff"}, {"tracestate": "\udcff"}],
    ids=["baggage", "traceparent", "tracestate"],
)
async def test_a_trace_header_that_cannot_be_read_is_ignored_and_leaves_no_count_behind(
    make_mesh: MeshFactory, traced: Traced, headers: dict[str, str]
) -> None:
    # "\udcff": a byte that is not UTF-8, as aiohttp's server decodes one from the wire
    for policy in (None, Policy(retries=1)):  # a direct link, then a relay
        mesh = await make_mesh(
            {"app": app_with(handler_tracer(traced))}, tracer_provider=traced.provider
        )
        if policy is not None:
            mesh.set_policy("app", policy)
        async with (
            mesh.session() as session,
            session.get("http://app/work", headers=headers) as response,
        ):
            assert response.status == 200
            await response.read()
        in_flight = mesh.registry.get_sample_value(
            "meshbridge_requests_in_flight", {"provider": "app", "source": "none"}
        )
        assert in_flight == 0
    spans = await traced.ended(2)
    assert all(s.parent is None for s in spans)  # a new trace: nothing was read


async def test_a_stream_the_caller_cancels_ends_its_span_with_an_error_status(
    make_mesh: MeshFactory, traced: Traced
) -> None:
    cancelled = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"tick\n")
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    mesh = await make_mesh(
        {"app": app_with(web.get("/stream", endless))}, tracer_provider=traced.provider
    )
    async with mesh.session() as session:
        response = await session.get("http://app/stream")
        await response.content.readline()
        response.close()
    await cancelled.wait()
    (span,) = await traced.ended(1)
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["meshbridge.outcome"] == "cancelled"
    assert (span.attributes or {})["error.type"] == "cancelled"
    assert (span.attributes or {})["http.response.status_code"] == 200


async def test_a_handler_that_raised_ends_its_span_with_an_error_status(
    make_mesh: MeshFactory, traced: Traced
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("the handler broke")

    async def broken_midway(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial\n")
        raise RuntimeError("the stream broke")

    app = app_with(web.get("/broken", broken), web.get("/midway", broken_midway))
    mesh = await make_mesh({"app": app}, tracer_provider=traced.provider)
    async with mesh.session() as session:
        async with session.get("http://app/broken") as response:
            assert response.status == 500
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get("http://app/midway") as response:
                await response.read()

    before, midway = await traced.ended(2)
    for span, status in ((before, 500), (midway, 200)):
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})["meshbridge.outcome"] == "error"
        assert (span.attributes or {})["http.response.status_code"] == status


async def test_a_retried_call_is_one_span_with_each_attempt_as_an_event(
    make_mesh: MeshFactory, traced: Traced
) -> None:
    answers = iter([503, 200])

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=next(answers), text="answer")

    async def backup(request: web.Request) -> web.Response:
        return web.Response(text="from backup")

    mesh = await make_mesh(
        {"flaky": app_with(handler_tracer(traced), web.get("/", flaky)),
         "down": app_with(web.get("/", unavailable)),
         "backup": app_with(web.get("/", backup))},
        tracer_provider=traced.provider,
    )  # fmt: skip
    mesh.set_policy("flaky", Policy(retries=1, retry_backoff=(0.0, 0.0)))
    mesh.set_policy("down", Policy(fallback=("backup",)))
    async with mesh.session() as session:
        async with session.get("http://flaky/") as response:
            assert await response.text() == "answer"
        async with session.get("http://down/") as response:
            assert await response.text() == "from backup"

    retried, fell_back = await traced.ended(2)
    assert retried.name == "GET flaky"
    assert [(e.name, dict(e.attributes or {})) for e in retried.events] == [
        ("meshbridge.attempt", {"meshbridge.provider": "flaky", "http.response.status_code": 503,
                                "meshbridge.outcome": "completed"}),
        ("meshbridge.attempt", {"meshbridge.provider": "flaky", "http.response.status_code": 200,
                                "meshbridge.outcome": "completed"}),
    ]  # fmt: skip
    attributes = dict(retried.attributes or {})
    assert attributes["meshbridge.attempts"] == 2
    assert attributes["http.response.status_code"] == 200
    assert retried.status.status_code == StatusCode.UNSET

    fallback = dict(fell_back.attributes or {})
    assert (fallback["meshbridge.target"], fallback["meshbridge.provider"]) == ("down", "backup")
    assert [dict(e.attributes or {})["meshbridge.provider"] for e in fell_back.events] == [
        "down",
        "backup",
    ]


async def unavailable(request: web.Request) -> web.Response:
    return web.Response(status=503)


async def test_a_relayed_calls_handlers_are_children_of_the_calls_span(
    make_mesh: MeshFactory, traced: Traced
) -> None:
    mesh = await make_mesh(
        {"app": app_with(handler_tracer(traced))}, tracer_provider=traced.provider
    )
    mesh.set_policy("app", Policy(timeout=5.0))
    async with mesh.session() as session, session.get("http://app/work") as response:
        seen = await response.json()
    (call,) = await traced.ended(1)
    assert seen["span"] == span_id(call)
    (work,) = traced.named("handler work")
    assert parent_of(work) == span_id(call)


async def test_concurrent_requests_on_pooled_connections_never_share_a_span_or_context(
    make_mesh: MeshFactory, traced: Traced
) -> None:
    mesh = await make_mesh(
        {"app": app_with(handler_tracer(traced))}, tracer_provider=traced.provider
    )
    seen: dict[int, dict[str, int]] = {}

    async def call(session: aiohttp.ClientSession, n: int) -> None:
        with traced.tracer.start_as_current_span(f"caller {n}"):
            for _ in range(3):  # each caller's requests reuse pooled connections
                async with session.get("http://app/work") as response:
                    seen[n * 10 + _] = await response.json()
                await asyncio.sleep(0)

    async with mesh.session(limit=4) as session:
        await asyncio.gather(*(call(session, n) for n in range(12)))
        # and one after them with no caller span: a trace of its own
        async with session.get("http://app/work") as response:
            alone = await response.json()

    spans = await traced.ended(37)
    by_id = {span_id(s): s for s in spans}
    callers = {span_id(s): s for s in traced.spans if s.name.startswith("caller")}
    assert len(by_id) == 37
    for key, handler_saw in seen.items():
        mesh_span = by_id[handler_saw["span"]]  # the handler ran in its own request's span
        caller = callers[parent_of(mesh_span)]  # type: ignore[index]
        assert caller.name == f"caller {key // 10}"
        assert handler_saw["trace"] == trace_id(caller)
    assert len({s["span"] for s in seen.values()}) == 36
    lone = by_id[alone["span"]]
    assert lone.parent is None
    assert trace_id(lone) not in {trace_id(c) for c in callers.values()}


async def test_latency_histograms_carry_the_trace_id_of_a_sampled_request_as_an_exemplar(
    make_mesh: MeshFactory, traced: Traced
) -> None:
    mesh = await make_mesh(
        {"app": app_with(handler_tracer(traced))}, tracer_provider=traced.provider
    )
    async with mesh.session() as session, session.get("http://app/work") as response:
        await response.read()
    (span,) = await traced.ended(1)
    wanted = f'# {{trace_id="{trace.format_trace_id(trace_id(span))}"}}'
    exposition = openmetrics(mesh)
    marked = [line.split("{")[0] for line in exposition.splitlines() if wanted in line]
    assert marked == [
        "meshbridge_request_duration_seconds_bucket",
        "meshbridge_time_to_first_byte_seconds_bucket",
    ]


async def test_an_unsampled_request_leaves_no_exemplar(make_mesh: MeshFactory) -> None:
    unsampled = Traced(sampler=ALWAYS_OFF)
    mesh = await make_mesh(
        {"app": app_with(handler_tracer(unsampled))}, tracer_provider=unsampled.provider
    )
    async with mesh.session() as session, session.get("http://app/work") as response:
        seen = await response.json()
    assert seen["trace"] != 0  # the context still crossed the hop, unsampled
    assert not unsampled.spans
    assert "trace_id" not in openmetrics(mesh)


async def test_a_tracer_provider_must_be_one() -> None:
    with pytest.raises(TypeError, match="tracer_provider must be an opentelemetry TracerProvider"):
        Mesh(tracer_provider="jaeger")
