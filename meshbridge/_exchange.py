"""One attempt: a request a provider's server parsed, to the end of its body.

An :class:`Exchange` is made for each request the mesh sends a provider: on
a direct link the one attempt of its :class:`Call`, through a relay one per
try. It carries who is calling (the call's Source and API key id) beside the
request, and it is the one place where the provider's metrics are observed:
the server side tells it when headers go out, how many body bytes were
written and when the handler failed; the connection tells it when the body
has reached the caller or the stream was cut. What the handler reports of its
LLM work (:func:`record_tokens`) goes to the metrics and to the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Final, Protocol

from aiohttp import web

from ._call import Call
from ._metrics import MeshMetrics, Series
from ._source import Source

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "ERROR",
    "EXCHANGE",
    "Exchange",
    "api_key_id_of",
    "record_tokens",
    "report_connect_failure",
    "source_of",
]

COMPLETED: Final = "completed"  # the body was fully delivered
ERROR: Final = "error"  # the handler raised, or the body was cut short
CANCELLED: Final = "cancelled"  # the caller went away first


class _Counted(Protocol):
    total_bytes: int


class Exchange:
    """The record of one attempt: identity beside it, metrics about it."""

    __slots__ = (
        "_metrics",
        "_series",
        "_started",
        "call",
        "connect_failed",
        "failed",
        "finished",
        "listener",
        "outcome",
        "provider",
        "request_body",
        "response_bytes",
        "status",
    )

    def __init__(
        self,
        call: Call,
        provider: str,
        series: Series | None,
        metrics: MeshMetrics | None = None,
        listener: Callable[[Exchange], None] | None = None,
    ) -> None:
        self.call = call  # its Source, key id and method are the call's
        self.provider = provider
        self.status = 0  # 0 until response headers are sent
        self.response_bytes = 0
        self.failed = False  # the handler raised
        self.connect_failed = False  # the handler could not reach its upstream
        self.finished = False
        self.outcome: str | None = None
        # What counts the request body's bytes, set when the provider parsed it.
        self.request_body: _Counted | None = None
        self._series = series
        self._metrics = metrics
        # Told when it finishes: the relay whose attempt it is. None on a direct
        # link, where the one attempt is the call, which it ends.
        self.listener = listener
        # A direct link's one attempt starts with its call; a relay's later ones later.
        self._started = perf_counter() if listener is not None else call.started
        call.attempts += 1
        if series is not None:
            series.in_flight += 1

    def headers_sent(self, status: int) -> None:
        """The provider sent the response status line and headers."""
        self.status = status
        elapsed = perf_counter() - self._started
        if self.listener is None:
            self.call.ttfb = elapsed
        if self._series is not None:
            self._series.ttfb.observe(elapsed)
            trace = self.call.trace
            if trace is not None:
                trace.observed(self._series.ttfb, elapsed)

    def body_written(self, size: int, _total: int) -> None:
        """The provider wrote ``size`` more body bytes (aiohttp's on_body_write)."""
        self.response_bytes += size

    def handler_failed(self) -> None:
        """The provider's handler raised (or returned no response)."""
        if not self.failed:
            self.failed = True
            if self._series is not None:
                self._series.handler_errors += 1

    def connection_closed(self, by_caller: bool) -> None:
        """The connection closed before the body was delivered."""
        if self.status == 101 and not self.failed:
            self.finish(COMPLETED)  # an upgraded connection ends by closing
        elif by_caller and not self.failed:
            self.finish(CANCELLED)
        else:
            self.finish(ERROR)

    def tokens(
        self, model: str | None, counts: tuple[int, int, int, int], ttft: float | None
    ) -> None:
        """The provider reports the LLM tokens of this request (metrics)."""
        if self._series is None or self._metrics is None:
            return
        label = self._metrics.model_label(self.provider, model)
        self._series.used(label, counts)
        if ttft is not None:
            self._series.first_token_after(label, ttft)

    def finish(self, outcome: str | None = None) -> None:
        """The attempt ended as ``outcome``; by default, its whole response
        reached the caller's side of the connection (``body_delivered``)."""
        if self.finished:
            return
        self.finished = True
        if outcome is None:
            outcome = ERROR if self.failed else COMPLETED
        self.outcome = outcome
        duration = perf_counter() - self._started
        trace = self.call.trace
        if self._series is not None:
            body = self.request_body
            self._series.finished(
                self.call.method,
                self.status,
                outcome,
                duration,
                body.total_bytes if body is not None else 0,
                self.response_bytes,
                self.listener is None,  # a direct call: counted once, there (_metrics.py)
            )
            if trace is not None:
                trace.observed(self._series.durations[self.call.method], duration)
        if self.listener is not None:
            if trace is not None:
                trace.attempt(self)
            self.listener(self)
        else:
            self.call.end(self.status, outcome, True)

    body_delivered = finish  # the name the server's writer calls it by: no extra frame


# Where a provider's request keeps its Exchange: a typed key of the request's
# own mapping, set by the mesh when the request is parsed, never from bytes.
EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("meshbridge_exchange", Exchange)


def source_of(request: web.BaseRequest) -> Source | None:
    """The Source of the caller that made ``request``.

    None for a request without a source, and for anything that did not come
    through a mesh (plain HTTP traffic to the same app): no header can set it.
    """
    exchange = request.get(EXCHANGE)
    return exchange.call.source if exchange is not None else None


def api_key_id_of(request: web.BaseRequest) -> str | None:
    """The delegated API key id ``request`` carries, or None (see :func:`source_of`)."""
    exchange = request.get(EXCHANGE)
    return exchange.call.api_key_id if exchange is not None else None


def report_connect_failure(request: web.BaseRequest) -> None:
    """Say that the provider handling ``request`` could not reach what it
    serves from: its upstream refused the connection, or DNS, TLS or the
    connection timed out. Call it before answering (a 502, say).

    Traffic policies then count this attempt as ``"connect-failure"`` (in
    ``retry_on`` and a breaker's ``on``), as they count an in-process
    provider that is not running, whatever status the provider answers. Only
    the handler can say it: no response header can. A request that did not
    come through a mesh is unchanged.
    """
    exchange = request.get(EXCHANGE)
    if exchange is not None:
        exchange.connect_failed = True


def record_tokens(
    request: web.BaseRequest,
    model: str | None,
    *,
    input: int = 0,
    output: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    first_token: float | None = None,
    system: str | None = None,
    operation: str | None = None,
    request_model: str | None = None,
    response_model: str | None = None,
    reasoning: int = 0,
    tool_calls: Sequence[str] = (),
    prompt: str | None = None,
) -> None:
    """Count the LLM tokens of ``request`` in its mesh's metrics.

    A provider app calls this once per request it generated (or relayed) text
    for: ``meshbridge_tokens_total{provider,source,model,type}`` grows by each
    non-zero count, and ``first_token`` (seconds from the request to the first
    token sent, for streams) is observed in
    ``meshbridge_time_to_first_token_seconds``. The provider and Source labels
    come from the mesh, never from the request; ``model`` is bounded (see
    ``MAX_MODELS``), so a caller inventing model names cannot grow the series.
    A request that did not come through a mesh records nothing.

    On a traced request (see the README's Tracing) the request's span also
    gets the OpenTelemetry GenAI attributes: ``system`` (the API family,
    ``"openai"``, ``"anthropic"``: ``gen_ai.provider.name`` and
    ``gen_ai.system``), ``operation`` (``"chat"``...: ``gen_ai.operation.name``),
    ``request_model`` and ``response_model`` (the names as sent and answered,
    unbounded: ``model`` is the metrics label, used when ``response_model`` is
    not given), and the token counts (``gen_ai.usage.input_tokens``, which
    includes cached tokens, and ``gen_ai.usage.output_tokens``).

    With a usage ledger (``Mesh(ledger=...)``) the call's record also gets
    the counts (``input`` plus the cached ones as its input tokens,
    ``cache_read`` as cached input, ``reasoning``: the output tokens spent
    reasoning, where the provider reports them), ``request_model`` and
    ``response_model`` (or ``model``), ``tool_calls`` (the names of the tools
    the response called) and ``prompt`` (the last user prompt; kept only when
    the ledger records prompts).
    """
    exchange = request.get(EXCHANGE)
    if exchange is not None:
        counts = (input, output, cache_read, cache_write)
        exchange.tokens(model, counts, first_token)
        answered = response_model or model
        call = exchange.call
        call.reported(
            (*counts, reasoning), first_token, request_model, answered, tool_calls, prompt
        )
        if call.trace is not None:
            call.trace.tokens(counts, system, operation, request_model, answered)
