"""A call: one caller request through the mesh, and the one place it ends.

The connector makes a :class:`Call` for every request it hands a connection,
whether the name is reached on a direct link or through a relay (a policy, a
route). The provider side sees attempts (``_exchange.py``: one per request a
provider's server parsed); the caller sees one call, whatever happened behind.

Rules of the call:

1. One end. A call ends once, in :meth:`Call.end`, with the status the caller
   got and how it went (``completed``, ``error``, ``cancelled``): there it
   counts in ``meshbridge_calls_total``, once. A direct link ends it when its
   one attempt ends, which counted it already (its Series' ``direct``
   requests, which the collector reports in both families: one event, one
   increment); a relay when the caller has its answer, or has gone.
2. What its attempts report goes to the call: token usage, models, tool calls
   and the prompt (``record_tokens``), summed over attempts.
3. It finishes after it ended and once no handler of its attempts is still
   running: a streaming handler reports its usage in a ``finally`` after the
   body reached the caller, or after the caller left. Finishing ends its span,
   hands its :class:`CallRecord` to the ledger and settles its limits with
   what was reported. Only a call somebody watches (tracing, a ledger,
   limits that admitted it) counts its handlers; the others finish as they
   end, and cost nothing more.
"""

from __future__ import annotations

import logging
from time import perf_counter, time, time_ns
from typing import TYPE_CHECKING, Final

from ._limit_rules import Refusal, Ticket
from ._limiter import Limiter
from ._limits import TokenUsage
from ._record import CallRecord, LedgerSink, uuid7
from ._source import Source

if TYPE_CHECKING:  # _otel imports opentelemetry: only ever loaded when tracing is on
    from ._otel import Trace

__all__ = ["Call", "Calls", "Usage"]

log = logging.getLogger("meshbridge")

_MAX_PATH: Final = 2048  # a record's path: callers choose it, keep it bounded
_MAX_NAME: Final = 256  # models and tool names from callers and upstreams
_MAX_TOOLS: Final = 128


class Calls:
    """Where the calls of one mesh end: their counter, and the ledger."""

    __slots__ = ("counts", "ledger", "record_prompts", "watched")

    def __init__(self, counts: dict[tuple[str, ...], int] | None) -> None:
        self.counts = counts  # meshbridge_calls_total's numbers (None: no metrics)
        self.ledger: LedgerSink | None = None
        self.record_prompts = False
        self.watched = False  # a ledger listens: count handlers (Rule 3)

    def set_ledger(self, ledger: LedgerSink | None) -> None:
        self.ledger = ledger
        self.record_prompts = bool(ledger is not None and ledger.record_prompts)
        self.watched = ledger is not None


class Usage:
    """What a call's attempts reported of their LLM work (Rule 2)."""

    __slots__ = (
        "cache_read",
        "cache_write",
        "input",
        "output",
        "prompt",
        "reasoning",
        "reported",
        "request_model",
        "response_model",
        "tool_calls",
        "ttft",
    )

    def __init__(self) -> None:
        self.input = self.output = self.cache_read = self.cache_write = self.reasoning = 0
        self.reported = 0  # record_tokens calls
        self.request_model: str | None = None
        self.response_model: str | None = None
        self.tool_calls: list[str] = []
        self.prompt: str | None = None
        self.ttft: float | None = None


class Call:
    """One caller request: who made it, to which name, what it got."""

    __slots__ = (
        "_calls",
        "_ended_ns",
        "_finished",
        "_inside",
        "api_key_id",
        "attempts",
        "client",
        "duration",
        "ended",
        "fallback",
        "limits",
        "method",
        "outcome",
        "path",
        "peer",
        "provider",
        "reason",
        "refusal",
        "source",
        "started",
        "status",
        "target",
        "trace",
        "ttfb",
        "usage",
        "watched",
    )

    def __init__(
        self,
        calls: Calls,
        target: str,
        provider: str,
        source: Source | None,
        api_key_id: str | None,
        method: str,
        path: str,
        origin: tuple[str | None, str | None] | None = None,
    ) -> None:
        self._calls = calls
        self.target = target
        self.provider = provider  # the one answering, or last tried
        self.source = source
        self.api_key_id = api_key_id
        self.client, self.peer = origin if origin is not None else (None, None)
        self.method = method  # the metrics label: standard methods, else "other"
        self.path = path
        self.status = 0
        self.outcome: str | None = None
        self.reason: str | None = None  # x-meshbridge-reason, when the mesh answered
        self.attempts = 0
        self.fallback = False
        self.ttfb: float | None = None
        self.duration = 0.0
        self.ended = False
        self.trace: Trace | None = None  # its span, when tracing is on (_otel.py)
        # Whether its attempts' handlers are counted (Rule 3): a ledger listens,
        # or (set with its span) it is traced.
        self.watched = calls.watched
        self.usage: Usage | None = None
        # Per-caller limits: the limiter and ticket to settle when it finishes,
        # or the refusal the mesh answers instead of reaching a provider.
        self.limits: tuple[Limiter, Ticket] | None = None
        self.refusal: Refusal | None = None
        self._inside = 0  # handlers of its attempts running (Rule 3)
        self._finished = False
        self._ended_ns: int | None = None  # when it ended, if it finishes later
        self.started = perf_counter()

    def answered(self) -> None:
        """The caller's response head is decided (the first byte it gets)."""
        if self.ttfb is None:
            self.ttfb = perf_counter() - self.started

    def end(self, status: int, outcome: str, counted: bool = False) -> None:
        """The caller has its answer, or the call failed or was cancelled (Rule
        1); ``counted``: its one attempt counted it (a direct link)."""
        if self.ended:
            return
        self.ended = True
        self.status = status
        self.outcome = outcome
        self.duration = perf_counter() - self.started
        counts = self._calls.counts
        if counts is not None and not counted:
            key = (self.target, self.source or "none", str(status), outcome)
            counts[key] = counts.get(key, 0) + 1
        if not self._inside:
            if self.watched:
                self._finish()
        elif self.trace is not None:
            self._ended_ns = time_ns()  # the span ends at the call's end (Rule 3)

    # -- the provider's side (Rules 2 and 3) ---------------------------------------

    def handler_started(self) -> None:
        self._inside += 1

    def handler_returned(self) -> None:
        self._inside -= 1
        if not self._inside and self.ended:
            self._finish()

    def reported(
        self,
        counts: tuple[int, int, int, int, int],
        ttft: float | None,
        request_model: str | None,
        response_model: str | None,
        tool_calls: tuple[str, ...] | list[str],
        prompt: str | None,
    ) -> None:
        """An attempt's handler reported its LLM work (``record_tokens``)."""
        usage = self.usage
        if usage is None:
            usage = self.usage = Usage()
        usage.reported += 1
        usage.input += counts[0]
        usage.output += counts[1]
        usage.cache_read += counts[2]
        usage.cache_write += counts[3]
        usage.reasoning += counts[4]
        if ttft is not None and usage.ttft is None:
            usage.ttft = ttft
        if request_model:
            usage.request_model = request_model[:_MAX_NAME]
        if response_model:
            usage.response_model = response_model[:_MAX_NAME]
        for name in tool_calls:
            if len(usage.tool_calls) < _MAX_TOOLS:
                usage.tool_calls.append(name[:_MAX_NAME])
        if prompt is not None and self._calls.record_prompts:
            usage.prompt = prompt

    # -- finishing (Rule 3) ------------------------------------------------------------

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        trace = self.trace
        if trace is not None:
            trace.end(self.provider, self.status, self.outcome or "error", self._ended_ns)
        ledger = self._calls.ledger
        if ledger is not None:
            try:
                ledger.record(self.record())
            except Exception:  # a ledger must never break the caller's call
                log.exception("meshbridge: the ledger failed to take a call's record")
        if self.limits is not None:
            self._settle(*self.limits)

    def _settle(self, limiter: Limiter, ticket: Ticket) -> None:
        """Debit what the call used from its limits (its reservation when it
        reached a provider that reported nothing; nothing when it reached none)."""
        usage = self.usage
        if usage is not None:
            tokens: TokenUsage | None = TokenUsage.from_counts(
                usage.input, usage.output, usage.cache_read, usage.cache_write
            )
            limiter.settle_nowait(ticket, tokens, usage.response_model)
        else:
            limiter.settle_nowait(ticket, None if self.attempts else TokenUsage())

    def record(self) -> CallRecord:
        """The call as the ledger keeps it."""
        started = time() - (perf_counter() - self.started)
        usage = self.usage
        record = CallRecord(
            id=uuid7(started),
            started=started,
            duration=self.duration,
            ttfb=self.ttfb,
            ttft=None,
            source=self.source,
            api_key_id=self.api_key_id,
            client=self.client,
            peer=self.peer,
            target=self.target,
            provider=self.provider,
            attempts=self.attempts,
            fallback=self.fallback,
            reason=self.reason,
            method=self.method,
            path=self.path[:_MAX_PATH],
            status=self.status,
            outcome=self.outcome or "error",
            trace_id=self.trace.trace_id if self.trace is not None else None,
        )
        if usage is not None:
            record.ttft = usage.ttft
            record.request_model = usage.request_model
            record.response_model = usage.response_model
            record.input_tokens = usage.input + usage.cache_read + usage.cache_write
            record.output_tokens = usage.output
            record.cached_input_tokens = usage.cache_read
            record.reasoning_tokens = usage.reasoning
            record.tool_calls = tuple(usage.tool_calls)
            record.prompt = usage.prompt
        return record
