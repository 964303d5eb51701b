"""Outside callers' trace context at the gateway: ``[server] trust_trace_context``.

A caller's ``traceparent`` decides, once continued, which trace the mesh's
spans join, the trace id its requests leave as exemplars, and whether they
are sampled; its ``baggage`` becomes the context of the provider handlers and
goes upstream with every request they make. At an edge that faces callers it
does not trust, a gateway (as Envoy and Linkerd do) starts a trace of its own.

Rules of the edge (``trust_trace_context = false``, the default):

1. The trace headers (``traceparent``, ``tracestate``, ``baggage``) are never
   forwarded, traced or not.
2. With tracing on, each forwarded request gets a SERVER span of the
   gateway's, the root of a new trace (its sampler decides, with no parent),
   with the caller's span context, when it can be read, as a span link: the
   caller's trace can still be found from ours, and nothing of it is trusted.
   The mesh's span is its child. Baggage never enters that context.
3. Headers that cannot be read (not UTF-8, malformed) are no link, never an
   error.

With ``trust_trace_context = true`` (a gateway behind an edge that already
decided), the headers are forwarded and the mesh continues the caller's trace.

OpenTelemetry is imported only when tracing is on: :func:`edge_tracing`
returns None unless a tracer provider was given or set globally, so ``serve``
without the ``otel`` extra never loads it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from aiohttp import web

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["TRACE_HEADERS", "EdgeTracing", "edge_tracing"]

TRACE_HEADERS: Final = frozenset({"traceparent", "tracestate", "baggage"})


def edge_tracing(provider: object | None) -> EdgeTracing | None:
    """The gateway's tracing: ``provider``'s, or the global tracer provider's
    when one was set; None when tracing is off."""
    if provider is None:
        if "opentelemetry.trace" not in sys.modules:
            return None  # nobody can have set a global tracer provider
        from opentelemetry import trace

        found = trace.get_tracer_provider()
        if isinstance(found, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
        provider = found
    return EdgeTracing(provider)


class EdgeTracing:
    """Starts the gateway's span of an untrusted caller's request (rule 2)."""

    def __init__(self, provider: object) -> None:
        from opentelemetry import trace

        if not isinstance(provider, trace.TracerProvider):
            raise TypeError(f"expected an opentelemetry TracerProvider, got {provider!r}")
        self._tracer: Tracer = provider.get_tracer("meshbridge.gateway")

    @contextlib.contextmanager
    def span(self, request: web.BaseRequest, provider: str) -> Iterator[Callable[[int], None]]:
        """A new trace's SERVER span for ``request`` to ``provider``, current
        inside the block; the block calls what it yields with the status."""
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        links = []
        with contextlib.suppress(Exception):  # rule 3
            caller = trace.get_current_span(propagate.extract(request.headers, context.Context()))
            found = caller.get_span_context()
            if found.is_valid:
                links.append(Link(found, {"meshbridge.link": "caller"}))
        attributes = {
            "http.request.method": request.method,
            "http.route": "/{provider}/{tail}",
            "meshbridge.provider": provider,
        }
        span = self._tracer.start_span(
            f"{request.method} /{provider}",
            context.Context(),  # a root: nothing of the caller's context
            SpanKind.SERVER,
            attributes,
            links,
        )
        token = context.attach(trace.set_span_in_context(span, context.Context()))

        def answered(status: int) -> None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))

        try:
            yield answered
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            context.detach(token)
            span.end()
