"""Outside callers' trace context at `meshbridge serve`: not trusted by default
(``[server] trust_trace_context``), and never an error or a stuck count.

A real server on 127.0.0.1 whose mesh and gateway trace into an SDK tracer
provider with an in-memory exporter (``Traced`` of the core's tracing tests);
nothing global is set.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import baggage, trace
from opentelemetry.trace import SpanKind
from prometheus_client.openmetrics.exposition import generate_latest

from meshbridge import ConfigError
from meshbridge.service import Service, load_config

from ..core.test_tracing import Traced, parent_of, span_id, trace_id
from .conftest import ServiceFactory
from .test_gateway_hostile import TOKEN, Raw, bearer, config, head

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
BAGGAGE = "user=alice,tenant=acme"


async def context_seen(request: web.Request) -> web.Response:
    """What a provider handler gets of the trace context."""
    current = trace.get_current_span().get_span_context()
    return web.json_response(
        {
            "headers": [k.lower() for k in request.headers],
            "traceparent": request.headers.get("traceparent"),
            "baggage": {k: str(v) for k, v in baggage.get_all().items()},
            "trace": trace.format_trace_id(current.trace_id),
        }
    )


async def traced_service(serve: ServiceFactory, traced: Traced, **server: object) -> Service:
    service: Service = await serve(config(**server), tracer_provider=traced.provider)
    echo = web.Application()
    echo.router.add_get("/{tail:.*}", context_seen)
    service.mesh.register("echo", echo)
    return service


async def call_with(service: Service, flags: str) -> dict[str, object]:
    headers = {
        **bearer(TOKEN),
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}",
        "baggage": BAGGAGE,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{service.url}/echo/v1/x", headers=headers) as response,
    ):
        assert response.status == 200
        seen: dict[str, object] = await response.json()
    return seen


def exemplars(service: Service) -> str:
    text: bytes = generate_latest(service.mesh.registry)  # type: ignore[no-untyped-call]
    return text.decode()


@pytest.fixture
def traced() -> Traced:
    return Traced()


async def test_an_outside_callers_trace_is_linked_not_continued_and_its_baggage_dropped(
    serve: ServiceFactory, traced: Traced
) -> None:
    service = await traced_service(serve, traced)
    seen = await call_with(service, flags="00")  # the caller says: do not sample
    (mesh_span,) = await traced.ended(1)
    (edge,) = [s for s in traced.spans if s.instrumentation_scope.name == "meshbridge.gateway"]  # type: ignore[union-attr]

    assert edge.kind == SpanKind.SERVER
    assert edge.name == "GET /echo"
    assert edge.parent is None  # a new trace
    (link,) = edge.links
    assert trace.format_trace_id(link.context.trace_id) == CALLER_TRACE
    assert trace.format_span_id(link.context.span_id) == CALLER_SPAN
    assert parent_of(mesh_span) == span_id(edge)
    ours = trace.format_trace_id(trace_id(mesh_span))
    assert ours != CALLER_TRACE
    assert (edge.attributes or {})["http.response.status_code"] == 200

    assert seen["baggage"] == {}
    assert "baggage" not in seen["headers"]  # type: ignore[operator]
    assert seen["trace"] == ours
    assert f"-{ours}-" in str(seen["traceparent"])
    text = exemplars(service)
    assert f'trace_id="{ours}"' in text  # sampled by our sampler, not the caller's flag
    assert CALLER_TRACE not in text


async def test_trust_trace_context_continues_the_callers_trace_and_baggage(
    serve: ServiceFactory, traced: Traced
) -> None:
    service = await traced_service(serve, traced, trust_trace_context=True)
    seen = await call_with(service, flags="01")
    (mesh_span,) = await traced.ended(1)
    assert [s.instrumentation_scope.name for s in traced.spans] == ["meshbridge"]  # type: ignore[union-attr]
    assert trace.format_trace_id(trace_id(mesh_span)) == CALLER_TRACE
    assert parent_of(mesh_span) == int(CALLER_SPAN, 16)
    assert seen["baggage"] == {"user": "alice", "tenant": "acme"}
    assert seen["trace"] == CALLER_TRACE
    assert f'trace_id="{CALLER_TRACE}"' in exemplars(service)


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
@pytest.mark.parametrize(
    "header",
    [b"baggage: user=\xff", b"traceparent: 00-\xff-b7ad6b7169203331-01", b"tracestate: a=\xff"],
    ids=["baggage", "traceparent", "tracestate"],
)
async def test_trace_headers_that_are_not_utf8_are_ignored_and_leave_no_count_behind(
    serve: ServiceFactory,
    traced: Traced,
    caplog: pytest.LogCaptureFixture,
    trusted: bool,
    header: bytes,
) -> None:
    service = await traced_service(serve, traced, trust_trace_context=trusted)
    raw = await Raw.open(service.url)
    with caplog.at_level(logging.INFO):
        try:
            raw.send(head("GET", "/echo/v1/x", f"Authorization: Bearer {TOKEN}")[:-2]
                     + header + b"\r\n\r\n")  # fmt: skip
            status, _, _ = await raw.response()
        finally:
            await raw.close()
    assert status == 200
    assert not [r for r in caplog.records if r.exc_info]
    in_flight = service.mesh.registry.get_sample_value(
        "meshbridge_requests_in_flight", {"provider": "echo", "source": "api"}
    )
    assert in_flight == 0
    spans = await traced.ended(1)
    assert trace.format_trace_id(trace_id(spans[0])) != CALLER_TRACE


def test_trust_trace_context_is_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "trust.toml"
    path.write_text(config(trust_trace_context="yes"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [key for key, _ in caught.value.errors] == ["server.trust_trace_context"]
    path.write_text(config())
    assert load_config(path).server.trust_trace_context is False
