"""Tracing with OpenTelemetry: a CLIENT span for every request through the mesh.

The only core module that imports ``opentelemetry``, and it is imported only
when tracing is on (``Mesh(tracer_provider=...)``, or a global tracer
provider set before the mesh starts): ``import meshbridge`` never loads it,
and with tracing off a request costs one ``is None`` check per hook.

Rules of the spans:

1. One span per caller request: on a direct link it is the request's
   Exchange; through a relay (a policy or a route) it is the Call, and each
   attempt is an event on it (``meshbridge.attempt``), because retries and
   fallbacks are invisible to the caller, who got one response (Rule 1 of
   ``_relay.py``). The attempts' handlers are children of the call's span.
2. The span starts in the caller's task, where the connector hands out the
   connection, so the caller's current span is its parent (or, with none, the
   ``traceparent`` the request already carries, as a gateway forwards it;
   trace headers that cannot be read are ignored), before the request is
   counted, and it ends when the Exchange (or the Call) finishes: the body
   reached the caller, or the request failed or was cancelled.
3. The context crosses the hop twice: ``traceparent`` (and ``baggage``) go
   into the request's headers, for server instrumentation that extracts them
   (``opentelemetry-instrumentation-aiohttp-server``), and the provider's
   handler runs with the span's context attached, in its own request task,
   for spans it starts itself. Nothing of the caller's context travels
   otherwise (the provider's server runs in a fresh Context, ``_link.py``).
4. A handler may still be running when the body has reached the caller (a
   stream handler's ``finally`` reporting its tokens after ``write_eof``), so
   a span whose handler has not returned waits for it before it ends, with
   the time the request ended as its end time (the call waits: ``_call.py``,
   Rule 3).
"""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client.samples import Exemplar

from ._metrics import BUCKETS

if TYPE_CHECKING:
    from aiohttp import ClientRequest

    from ._exchange import Exchange
    from ._metrics import Histogram

__all__ = ["Trace", "Tracing", "tracing_for"]

_COMPLETED: Final = "completed"  # _exchange.COMPLETED, without importing it
_MAX_MODEL: Final = 256  # model names on spans are the caller's; keep them short


def tracing_for(provider: object | None) -> Tracing | None:
    """A mesh's tracing: ``provider``'s, or the global tracer provider's when
    one was set; None when tracing is off."""
    if provider is None:
        found = trace.get_tracer_provider()
        if isinstance(found, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None  # nothing configured: no span machinery per request
        provider = found
    if not isinstance(provider, trace.TracerProvider):
        raise TypeError(
            f"tracer_provider must be an opentelemetry TracerProvider, got {provider!r}"
        )
    return Tracing(provider)


class Tracing:
    """The tracer of one mesh."""

    __slots__ = ("_tracer",)

    def __init__(self, provider: trace.TracerProvider) -> None:
        from . import __version__

        self._tracer = provider.get_tracer("meshbridge", __version__)

    def start(
        self, req: ClientRequest, target: str, source: str | None, method: str, *, relayed: bool
    ) -> Trace:
        """Start the span of the request ``req`` to ``target`` (Rule 2) and put
        its context into ``req``'s headers (Rule 3)."""
        parent = otel_context.get_current()
        if not trace.get_current_span(parent).get_span_context().is_valid:
            with contextlib.suppress(Exception):  # a header that cannot be read: ignored
                parent = propagate.extract(req.headers, parent)
        url = req.url
        if url.raw_query_string or url.raw_fragment or url.raw_user:
            url = url.with_query(None).with_fragment(None).with_user(None)  # may hold secrets
        attributes: dict[str, str] = {
            "http.request.method": method if method != "other" else "_OTHER",
            "server.address": target,
            "url.full": str(url),
            "meshbridge.target": target,
        }
        if source is not None:
            attributes["meshbridge.source"] = source
        span = self._tracer.start_span(
            f"{method.upper()} {target}", parent, SpanKind.CLIENT, attributes
        )
        context = trace.set_span_in_context(span, parent)
        propagate.inject(req.headers, context)
        return Trace(span, context, relayed=relayed)


class Trace:
    """The span of one caller request, and its context for the provider's handler."""

    __slots__ = ("_attempts", "_exemplar", "context", "relayed", "span", "trace_id")

    def __init__(self, span: trace.Span, context: otel_context.Context, *, relayed: bool) -> None:
        self.span = span
        self.context = context
        self.relayed = relayed
        self._attempts = 0
        found = span.get_span_context()
        self.trace_id: str | None = (
            trace.format_trace_id(found.trace_id) if found.is_valid else None
        )
        # Exemplars name sampled traces only: an unsampled id leads nowhere.
        self._exemplar = (
            {"trace_id": self.trace_id}
            if found.trace_flags.sampled and self.trace_id is not None
            else None
        )

    # -- the provider's side ---------------------------------------------------------

    def attach(self) -> object:
        """Make the span current for the provider's handler (Rule 3)."""
        return otel_context.attach(self.context)

    def detach(self, token: object) -> None:
        """The handler returned."""
        otel_context.detach(token)  # type: ignore[arg-type]  # attach's own token

    # -- the Exchange's and the Call's side ---------------------------------------------

    def observed(self, histogram: Histogram, value: float) -> None:
        """``value`` was just observed in ``histogram``: give its bucket this
        trace's id as its exemplar (the latest wins)."""
        if self._exemplar is not None:
            exemplars = histogram.exemplars
            if exemplars is None:
                exemplars = histogram.exemplars = {}
            exemplars[bisect_left(BUCKETS, value)] = Exemplar(self._exemplar, value, time.time())

    def attempt(self, exchange: Exchange) -> None:
        """An attempt of a relayed call ended: an event on the call's span."""
        self._attempts += 1
        if self.span.is_recording():  # an attempt may end after the call did
            self.span.add_event(
                "meshbridge.attempt",
                {
                    "meshbridge.provider": exchange.provider,
                    "http.response.status_code": exchange.status,
                    "meshbridge.outcome": exchange.outcome or "error",
                },
            )

    def end(self, provider: str, status: int, outcome: str, when: int | None = None) -> None:
        """The caller's request ended with ``outcome`` (Rules 2 and 4): at
        ``when`` (ns since the epoch), if it ended before its handler returned."""
        span = self.span
        attributes: dict[str, str | int] = {
            "meshbridge.provider": provider,
            "meshbridge.outcome": outcome,
        }
        if status:
            attributes["http.response.status_code"] = status
        if self.relayed:
            attributes["meshbridge.attempts"] = self._attempts
        if outcome != _COMPLETED:
            attributes["error.type"] = outcome
            span.set_status(Status(StatusCode.ERROR, f"the request ended: {outcome}"))
        elif status >= 400:
            attributes["error.type"] = str(status)
            span.set_status(Status(StatusCode.ERROR))
        span.set_attributes(attributes)
        span.end(when)

    def tokens(
        self,
        counts: tuple[int, int, int, int],
        system: str | None,
        operation: str | None,
        request_model: str | None,
        response_model: str | None,
    ) -> None:
        """The GenAI semantic convention attributes of an LLM request."""
        input_, output, cache_read, cache_write = counts
        attributes: dict[str, str | int] = {
            # the convention counts cached prompt tokens in the input too
            "gen_ai.usage.input_tokens": input_ + cache_read + cache_write,
            "gen_ai.usage.output_tokens": output,
        }
        if cache_read:
            attributes["gen_ai.usage.cache_read.input_tokens"] = cache_read
        if cache_write:
            attributes["gen_ai.usage.cache_creation.input_tokens"] = cache_write
        if system:
            attributes["gen_ai.provider.name"] = attributes["gen_ai.system"] = system
        if operation:
            attributes["gen_ai.operation.name"] = operation
        if request_model:
            attributes["gen_ai.request.model"] = request_model[:_MAX_MODEL]
        if response_model:
            attributes["gen_ai.response.model"] = response_model[:_MAX_MODEL]
        self.span.set_attributes(attributes)
