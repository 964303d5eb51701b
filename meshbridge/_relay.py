"""The relay: a caller's connection to a name that traffic policies govern.

A direct link (``_link.py``) joins the caller's protocol to one provider's
server with one pipe. For a route, or a provider with a policy, a relay
stands in the middle instead, so that what the caller gets can differ from
what one attempt answered. The relay is itself the caller protocol's
transport, so it adds one hop, not a second pipe::

    caller protocol ── Relay ── pipe ── provider server  (an Upstream per provider)

Rules of the relay:

1. One response per call. The caller gets exactly one response to each
   request: that of the first attempt that did not fail, that of the last
   attempt, or a synthetic one (503 or 504, with ``x-meshbridge-reason``).
2. Nothing reaches the caller before the head is decided. An attempt's bytes
   are held until its status line and headers are complete; then they are
   committed (and everything after passes straight through) or dropped for a
   retry or a fallback. Once committed: no retry, no fallback, ever.
3. Replays are exact and bounded. The request bytes are kept while the call
   may be tried again (its policy has retries or a fallback), only if the
   body's size was known up front and the bytes stay within ``replay_limit``;
   past that the call is not retried.
4. A failed attempt is cancelled: its connection is aborted (the handler sees
   ``CancelledError``) unless its response had already ended.
5. Limits in time: ``first_byte_timeout`` per attempt until its head,
   ``timeout`` for the whole call, ``idle_timeout`` between chunks after the
   commit. Before the commit, a limit that fires is a retry or a 504; after
   it, the caller's stream is cut with an error (``ClientPayloadError``),
   never a clean end. All limits share the relay's one timer, moved only
   when a limit comes sooner than the one it is set for, so a fast call costs
   no timer operation; the loop's clock is read when an attempt starts and at
   its commit (and per chunk after it, with an ``idle_timeout``), and that
   first reading also serves the retry budget when both use one clock.
6. Flow control passes through: a slow caller pauses the provider's output,
   a slow provider pauses the caller's upload.
7. As a transport the relay keeps the pipe's rules (``_pipe.py``): bytes reach
   the caller's protocol in order, never re-entering its ``data_received``,
   none while it paused reading; ``connection_lost`` comes from the loop.
8. A policy that never triggers costs little: per call, the Call and its
   attempt's Exchange and nothing else the relay could avoid (no lists,
   closures or bound methods); a closed breaker is not asked
   (``closed_generation``), a guard carries its policy's numbers flat, a
   head that arrives whole is committed without a copy, and the attempt's
   metrics series is reused from the upstream's last attempt of that Source.

The decisions (breakers, budgets, backoff, splits) are :class:`Traffic`'s;
this module only moves bytes and keeps time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from ._breaker import Breaker
from ._call import Call, Calls
from ._exchange import CANCELLED, COMPLETED, ERROR, Exchange
from ._link import Carrier
from ._metrics import MeshMetrics, Series
from ._pipe import HIGH_WATER, LOW_WATER, PipeStats
from ._provider import RUNNING, Provider
from ._retry import parse_retry_after
from ._routing import Router
from ._source import Source
from ._synthetic import ErrorBody, synthetic_response
from ._traffic import OVERLOADED_RETRY_AFTER, Guard, Traffic

__all__ = ["Relay", "RelayedCall"]

_MAX_HEAD: Final = 64 * 1024  # a head that grows past this is committed as it is
_DEFAULT_REPLAY_LIMIT: Final = 65536

# Where a call is (Rule 2).
_HEAD: Final = "head"  # an attempt runs; its bytes are held
_COMMITTED: Final = "committed"  # the caller is getting this attempt's response
_WAITING: Final = "waiting"  # between attempts (backoff, fault delay)
_ANSWERED: Final = "answered"  # a synthetic response was decided
_DONE: Final = "done"


class RelayedCall(Call):
    """One caller request through a relay, and where it stands."""

    __slots__ = (
        "attempt",
        "candidates",
        "deadline",
        "first_byte",
        "generation",
        "guard",
        "head",
        "index",
        "kept",
        "last_chunk",
        "pending_answer",
        "phase",
        "received",
        "replay_limit",
        "replayable",
        "sent",
        "timer",
        "tries",
        "upstream",
    )

    def __init__(
        self,
        calls: Calls,
        target: str,
        first: str,
        source: Source | None,
        api_key_id: str | None,
        method: str,
        path: str,
        origin: tuple[str | None, str | None] | None,
        body_size: int | None,
    ) -> None:
        super().__init__(calls, target, first, source, api_key_id, method, path, origin)
        self.candidates: tuple[str, ...] = (first,)  # the provider, then its fallbacks
        self.index = 0  # which candidate is being tried (self.provider)
        self.tries = 0  # retries used on it
        self.replay_limit = _DEFAULT_REPLAY_LIMIT
        self.replayable = body_size is not None  # a streamed body is never replayed (Rule 3)
        self.sent: list[bytes] = []  # request bytes kept for a replay, or not yet forwarded
        self.kept = 0  # bytes in sent (while replayable: every byte the caller sent)
        self.received = False  # whether request bytes came from the caller
        self.phase = _WAITING
        self.head: bytearray | None = None  # a head that came in pieces, so far
        self.upstream: Upstream | None = None
        self.attempt: Exchange | None = None
        self.guard: Guard | None = None
        self.generation: int | None = None
        self.pending_answer: bytes | None = None  # synthetic, waiting for the request
        # Limits in loop time, watched by the relay's one timer (None: none).
        self.deadline: float | None = None  # timeout: the whole call
        self.first_byte: float | None = None  # first_byte_timeout: this attempt's head
        self.last_chunk: float | None = None  # once committed, with an idle_timeout
        self.timer: asyncio.TimerHandle | None = None  # backoff or fault delay

    def cancel_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.deadline = self.first_byte = self.last_chunk = self.timer = None


class Upstream(Carrier, asyncio.Protocol):
    """The relay's connection to one provider (reused while it stays open)."""

    __slots__ = ("_next", "closed", "exchange", "pipe", "provider", "relay", "series", "source")

    def __init__(self, relay: Relay, provider: Provider, *, secure: bool) -> None:
        self.relay = relay
        self.provider = provider
        self.closed = False
        self._next: Exchange | None = None
        self.exchange: Exchange | None = None  # the attempt on it now
        # The metrics series of its last attempt, and that attempt's Source:
        # the next attempt from the same Source has the same series.
        self.series: Series | None = None
        self.source: Source | None = None
        self.pipe = provider.open_pipe(self, self, self._pipe_closed, secure=secure)

    def take(self) -> Exchange | None:
        exchange, self._next = self._next, None
        return exchange

    def write(self, data: bytes) -> None:
        self.pipe.client.write(data)

    def abort(self) -> None:
        self.pipe.client.abort()

    def _pipe_closed(self, by_client: bool) -> Exception | None:
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.connection_closed(by_caller=by_client)
        return None

    # -- asyncio.Protocol, on the provider's side -------------------------------------

    def data_received(self, data: bytes) -> None:
        self.relay._from_upstream(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.relay._upstream_lost(self)

    def pause_writing(self) -> None:
        self.relay._pause_caller(self)

    def resume_writing(self) -> None:
        self.relay._resume_caller(self)


class Relay(asyncio.Transport):
    """A caller's pooled connection to a governed name (a route or a provider),
    and the transport of the caller's protocol."""

    def __init__(
        self,
        target: str,
        client: asyncio.Protocol,
        *,
        router: Router[Provider],
        traffic: Traffic,
        metrics: MeshMetrics | None,
        error_body: Callable[[str], ErrorBody | None],
        loop: asyncio.AbstractEventLoop,
        stats: PipeStats,
        secure: bool,
    ) -> None:
        port = 443 if secure else 80
        super().__init__({"peername": (target, port), "sockname": ("127.0.0.1", 0)})
        self.target = target
        self._router = router
        self._traffic = traffic
        self._metrics = metrics
        self._error_body = error_body
        self._loop = loop
        self._stats = stats
        self._secure = secure
        self._guards = traffic.guards  # never rebound (see Traffic)
        self._attempt_finished_ = self._attempt_finished  # one bound method, not one per attempt
        self._upstreams: dict[str, Upstream] = {}
        self._call: RelayedCall | None = None
        # The loop's clock: asyncio's own loops read time.monotonic(), so read it
        # directly, and when the policies' clock is the same one, read it once
        # for both (Rule 5).
        self._time = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        self._one_clock = traffic.clock is self._time
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when it fires
        self.closed = False
        # The transport's side (Rule 7).
        self._client = client
        self._reading = True  # the caller's protocol takes data
        self._delivering = False  # it is inside data_received
        self._pending: deque[bytes] = deque()  # for it, while it cannot take them
        self._flushed: list[Callable[[], None]] = []
        self._writing_paused = False  # we told it to pause writing
        self._limits = (LOW_WATER, HIGH_WATER)
        client.connection_made(self)

    def serves(self, target: str, provider: object) -> bool:
        """Whether this pooled relay may carry a request for ``target``."""
        return self.target == target and not self.closed

    # -- calls -----------------------------------------------------------------------

    def begin(self, call: RelayedCall) -> None:
        """The caller is about to send the request ``call`` describes."""
        self._call = call
        guard = self._guards.get(call.candidates[0])
        if guard is None:  # a route's provider without a policy
            call.replayable = False  # nothing to try again: keep nothing
            self._try(call, None, None)
            return
        call.candidates = guard.candidates
        call.provider = guard.candidates[0]
        call.replay_limit = guard.replay_limit
        if not guard.replays:
            call.replayable = False
        now = None
        if guard.timeout is not None:
            now = self._time()
            call.deadline = when = now + guard.timeout
            if self._timer is None or when < self._timer_at:
                self._arm(when)
        fault = guard.fault
        if fault is not None:
            rng = self._traffic.rng
            if fault.abort_ratio and rng.random() < fault.abort_ratio:
                self._traffic.count("rejected", call.provider, call.source, "fault")
                self._answer(call, fault.abort, "fault", None, "fault injected by policy")
                return
            if fault.delay_ratio and rng.random() < fault.delay_ratio:
                call.timer = self._loop.call_later(fault.delay, self._try_later, call)
                return
        self._try(call, guard, now)

    def _try_later(self, call: RelayedCall) -> None:
        """A timer's ``_try``: after a backoff or a fault's delay."""
        call.timer = None
        if call is self._call and call.phase == _WAITING:
            self._try(call, self._guards.get(call.provider), None)

    def _try(self, call: RelayedCall, guard: Guard | None, now: float | None) -> None:
        """Start an attempt on the current candidate (whose guard is ``guard``),
        or move past it. ``now``: the loop's time, if the caller just read it."""
        name = call.candidates[call.index]
        provider = self._router._table.get(name)
        if provider is None or provider.state != RUNNING:
            if not self._again(call, "connect-failure", None):
                self._answer(call, 503, "unavailable", None, f"provider {name!r} is not running")
            return
        generation = None
        if guard is not None:
            breaker = guard.breaker
            if breaker is not None:
                generation = breaker.closed_generation  # closed: no clock needed
                if generation is None:
                    generation = self._admit(call, guard, breaker)
                    if generation is None:
                        return
            limit = guard.max_in_flight
            if limit is not None and guard.in_flight >= limit:
                self._overloaded(call, guard, generation)
                return
        upstream = self._upstreams.get(name)
        if upstream is None or upstream.closed or upstream.provider is not provider:
            upstream = self._upstreams[name] = Upstream(self, provider, secure=self._secure)
        metrics = self._metrics
        source = call.source
        series = upstream.series
        if (series is None or source != upstream.source) and metrics is not None:
            series = upstream.series = metrics.series(name, source)
            upstream.source = source
        exchange = Exchange(call, name, series, metrics, self._attempt_finished_)
        upstream._next = upstream.exchange = exchange  # what its server takes next
        call.upstream = upstream
        call.attempt = exchange
        call.guard = guard
        call.generation = generation
        call.phase = _HEAD
        if guard is not None:
            guard.in_flight += 1
            if guard.retries and call.tries == 0:
                # a first attempt; a fallback's counts for its budget
                guard.budget.request(
                    now if now is not None and self._one_clock else self._traffic.clock()
                )
            first_byte = guard.first_byte_timeout
            if first_byte is not None:
                call.first_byte = when = (self._time() if now is None else now) + first_byte
                if self._timer is None or when < self._timer_at:
                    self._arm(when)
        if call.sent:
            for chunk in call.sent:
                upstream.write(chunk)
            if not call.replayable:
                self._forget(call)
        if self._writing_paused:
            self._resume_writer()
        if not self._reading:
            upstream.pipe.client.pause_reading()

    def _admit(self, call: RelayedCall, guard: Guard, breaker: Breaker) -> int | None:
        """Ask a breaker that is not closed for the attempt's generation; None:
        refused, and the call has moved on (a fallback or an answer)."""
        now = self._traffic.clock()
        generation = breaker.admit(now)
        if generation is None:
            self._traffic.count("rejected", guard.name, call.source, "circuit_open")
            if not self._fall_back(call):
                wait = breaker.retry_after(now)
                self._answer(call, 503, "circuit-open", wait, f"circuit of {guard.name!r} is open")
        return generation

    def _overloaded(self, call: RelayedCall, guard: Guard, generation: int | None) -> None:
        name = guard.name
        if generation is not None and guard.breaker is not None:
            guard.breaker.cancel(self._traffic.clock(), generation)  # never sent: no verdict
        call.generation = None
        self._traffic.count("rejected", name, call.source, "overloaded")
        if call.index > 0 and self._fall_back(call):
            return
        message = f"provider {name!r} has {guard.in_flight} requests in flight, its limit"
        self._answer(call, 503, "overloaded", OVERLOADED_RETRY_AFTER, message)

    def _again(self, call: RelayedCall, reason: str, retry_after: float | None) -> bool:
        """The current attempt failed with ``reason`` before its head was
        committed: end it and retry or fall back, or return False (nothing
        changed: the caller is to get this attempt's outcome)."""
        traffic = self._traffic
        guard = call.guard if call.guard is not None else traffic.guard(call.provider)
        if not call.replayable or guard is None:
            return reason == "connect-failure" and self._fall_back(call)
        policy = guard.policy
        wanted = reason in policy.retry_on or (reason.isdigit() and int(reason) in policy.retry_on)
        if wanted and call.tries < policy.retries:
            delay = traffic.retry_delay(guard, call.tries, retry_after)
            if (
                delay is not None
                and not self._past_deadline(call, delay)
                and guard.budget.try_spend(traffic.clock())
            ):
                self._end_attempt(call)
                traffic.count("retries", call.provider, call.source, reason)
                call.tries += 1
                call.timer = self._loop.call_later(delay, self._try_later, call)
                return True
        return wanted and self._fall_back(call)

    def _fall_back(self, call: RelayedCall) -> bool:
        if call.index + 1 >= len(call.candidates) or not call.replayable:
            return False
        self._end_attempt(call)
        fallback = call.candidates[call.index + 1]
        self._traffic.count("fallbacks", call.provider, fallback, call.source)
        call.index += 1
        call.provider = fallback
        call.fallback = True
        call.tries = 0
        self._try(call, self._guards.get(fallback), None)
        return True

    def _past_deadline(self, call: RelayedCall, delay: float | None) -> bool:
        return (
            call.deadline is not None
            and delay is not None
            and self._time() + delay >= call.deadline
        )

    def _end_attempt(self, call: RelayedCall, *, outcome: str | None = None) -> None:
        """Stop the current attempt (Rule 4). Its connection is reused once its
        response has ended (normally within this turn of the loop: a short
        error answer), else aborted, which cancels its handler."""
        upstream, exchange, guard = call.upstream, call.attempt, call.guard
        call.upstream = call.attempt = None
        call.phase = _WAITING
        call.head = None
        call.first_byte = None
        if guard is not None and exchange is not None:
            guard.in_flight -= 1
            if guard.breaker is not None and call.generation is not None:
                guard.breaker.cancel(self._traffic.clock(), call.generation)  # no verdict
        call.generation = None
        if exchange is None or upstream is None:
            return
        if outcome is not None and not exchange.finished:
            exchange.finish(outcome)
            upstream.abort()
        if not exchange.finished:
            # Busy until its response ends: no other attempt may use it meanwhile.
            if self._upstreams.get(upstream.provider.name) is upstream:
                del self._upstreams[upstream.provider.name]
            self._loop.call_soon(self._reap, upstream, exchange)

    def _reap(self, upstream: Upstream, exchange: Exchange) -> None:
        if not exchange.finished:
            upstream.abort()
        elif not upstream.closed and upstream.provider.name not in self._upstreams:
            self._upstreams[upstream.provider.name] = upstream

    # -- bytes from the caller ---------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """The caller's request bytes (the caller's protocol writes them)."""
        call = self._call
        if call is None or self.closed or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        upstream = call.upstream
        if upstream is None:
            self._hold(call, data)
            return
        call.received = True
        if call.replayable:
            size = len(data)
            kept = call.kept + size
            if kept <= call.replay_limit:  # kept for a replay (Rule 3)
                call.sent.append(data)
                call.kept = kept
                stats = self._stats
                stats.buffered += size
                if stats.buffered > stats.peak:
                    stats.peak = stats.buffered
            else:
                call.replayable = False  # too large to replay: keep nothing more
                self._forget(call)
        upstream.pipe.client.write(data)

    def _hold(self, call: RelayedCall, data: bytes) -> None:
        """Request bytes while no attempt runs: kept until one starts (whether
        or not they may be replayed), or dropped after a synthetic answer."""
        if call.phase == _DONE:
            return
        if call.phase == _ANSWERED:
            answer, call.pending_answer = call.pending_answer, None
            if answer is not None:
                self._to_caller(answer)
                self._done(call, COMPLETED)
            return
        call.received = True
        size = len(data)
        call.sent.append(data)
        call.kept += size
        stats = self._stats
        stats.buffered += size
        if stats.buffered > stats.peak:
            stats.peak = stats.buffered
        if call.kept > call.replay_limit:
            call.replayable = False  # too large to replay (Rule 3)
            self._pause_writer()  # and to hold: the upload waits until an attempt starts

    def _forget(self, call: RelayedCall) -> None:
        """Drop the request bytes kept (counted in the mesh's buffered bytes while kept)."""
        self._stats.buffered -= call.kept
        call.kept = 0
        call.sent.clear()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    # -- bytes from a provider ---------------------------------------------------------

    def _from_upstream(self, upstream: Upstream, data: bytes) -> None:
        call = self._call
        if call is None or upstream is not call.upstream:
            return  # a dropped attempt's leftovers
        if call.phase == _COMMITTED:
            if call.last_chunk is not None:
                call.last_chunk = self._time()
            if self._reading and not self._delivering and not self._pending:
                self._deliver(data)
            else:
                self._to_caller(data)
            return
        head: bytes | bytearray
        if call.head is None:
            head = data  # the usual case: the whole head in one piece, no copy
        else:
            head = call.head
            head += data
        end = head.find(b"\r\n\r\n")  # not `in`: for bytes it tries int() first, and raises
        if end < 0 and len(head) < _MAX_HEAD:
            if head is data:
                call.head = bytearray(data)
            return
        try:
            status = int(head[9:12])
        except ValueError:
            status = 0
        guard = call.guard
        if guard is not None:
            generation = call.generation
            if generation is not None and guard.breaker is not None:
                breaker = guard.breaker
                failed = status in breaker.config.on
                if failed or breaker.closed_generation is None:  # else nothing changes
                    breaker.record(self._traffic.clock(), generation, failed)
                call.generation = None
            if (
                status in guard.retry_on
                and call.replayable
                and self._again(call, str(status), _retry_after(bytes(head[:end])))
            ):
                return
        # Commit (Rule 2): the caller gets this attempt's response.
        call.phase = _COMMITTED
        call.status = status
        call.answered()
        call.replayable = False
        call.first_byte = None
        if call.kept:
            self._stats.buffered -= call.kept  # _forget, inlined
            call.kept = 0
            call.sent.clear()
        if guard is not None and guard.idle_timeout is not None:
            call.last_chunk = last = self._time()
            when = last + guard.idle_timeout
            if self._timer is None or when < self._timer_at:
                self._arm(when)
        if head is not data:
            call.head = None
            self._to_caller(head)
        elif self._reading and not self._delivering and not self._pending:
            self._delivering = True  # _deliver, inlined: the one hop of a unary response
            try:
                self._client.data_received(data)
            except Exception as exc:
                self._protocol_failed(exc)
            finally:
                self._delivering = False
            if self._pending and self._reading:
                self._loop.call_soon(self._flush)
        else:
            self._to_caller(data)

    def _attempt_finished(self, exchange: Exchange) -> None:
        call = self._call
        if (
            call is not None
            and exchange is call.attempt
            and call.phase == _COMMITTED
            and exchange.outcome == COMPLETED
        ):
            if self._pending:
                self._when_flushed(lambda: self._done(call, COMPLETED))
            else:
                self._done(call, COMPLETED)

    def _upstream_lost(self, upstream: Upstream) -> None:
        if self._upstreams.get(upstream.provider.name) is upstream:
            del self._upstreams[upstream.provider.name]
        call = self._call
        if call is None or upstream is not call.upstream or call.phase == _DONE:
            return
        if call.phase == _COMMITTED:
            exchange = call.attempt
            if exchange is None or exchange.outcome != COMPLETED:
                self._cut(call, f"provider {call.provider!r} closed the connection mid-response")
            return
        guard = call.guard
        if guard is not None and guard.breaker is not None and call.generation is not None:
            failed = "connect-failure" in guard.breaker.config.on
            guard.breaker.record(self._traffic.clock(), call.generation, failed)
            call.generation = None
        if not self._again(call, "connect-failure", None):
            self._end_attempt(call)
            self._done(call, ERROR)
            self._lose(None)  # as over TCP: the caller sees the server disconnect

    # -- time ----------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        """Make the relay's one timer fire by ``when`` (loop time). A timer
        set for later is moved; one set for sooner stays and, when it fires,
        sets itself again for what is left, so a fast call costs no timer
        operation at all."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self._tick)
        self._timer_at = when

    def _tick(self) -> None:
        self._timer = None
        call = self._call
        if call is None or call.phase in (_DONE, _ANSWERED):
            return
        now = self._time()
        idle_at = _idle_at(call)
        if call.deadline is not None and now >= call.deadline:
            self._deadline(call)
        elif call.phase == _HEAD and call.first_byte is not None and now >= call.first_byte:
            self._first_byte_late(call)
        elif idle_at is not None and now >= idle_at and call.guard is not None:
            idle = call.guard.idle_timeout
            self._traffic.count("timeouts", call.provider, call.source, "idle")
            self._cut(call, f"provider {call.provider!r} sent nothing for {idle:g}s")
        call = self._call  # what is left to watch, for this call or the next
        if call is None or call.phase in (_DONE, _ANSWERED):
            return
        pending = [call.deadline]
        if call.phase == _HEAD:
            pending.append(call.first_byte)
        else:
            pending.append(_idle_at(call))
        times = [t for t in pending if t is not None]
        if times:
            self._arm(min(times))

    def _first_byte_late(self, call: RelayedCall) -> None:
        call.first_byte = None
        self._traffic.count("timeouts", call.provider, call.source, "first_byte")
        guard = call.guard
        if guard is not None and guard.breaker is not None and call.generation is not None:
            failed = "first-byte-timeout" in guard.breaker.config.on
            guard.breaker.record(self._traffic.clock(), call.generation, failed)
            call.generation = None
        exchange, upstream = call.attempt, call.upstream
        if exchange is not None and upstream is not None:
            exchange.finish(ERROR)  # a timed-out attempt is an error, not a cancellation
            upstream.abort()
        if not self._again(call, "first-byte-timeout", None):
            message = f"provider {call.provider!r} sent no response head in time"
            self._answer(call, 504, "timeout", None, message)

    def _deadline(self, call: RelayedCall) -> None:
        call.deadline = None
        self._traffic.count("timeouts", call.provider, call.source, "total")
        if call.phase == _COMMITTED:
            self._cut(call, "the request's timeout passed mid-response")
            return
        self._end_attempt(call, outcome=ERROR)
        self._answer(call, 504, "timeout", None, "the request's timeout passed")

    # -- endings -------------------------------------------------------------------------

    def _answer(
        self, call: RelayedCall, status: int, reason: str, retry_after: float | None, message: str
    ) -> None:
        """Give the caller a synthetic response (once its request has arrived)."""
        self._end_attempt(call)
        call.status = status
        call.reason = reason
        call.answered()
        call.phase = _ANSWERED
        shape = self._error_body(call.candidates[0])
        answer = synthetic_response(status, reason, message, retry_after, shape)
        if call.received:
            self._to_caller(answer)
            self._done(call, COMPLETED)
        else:
            call.pending_answer = answer
        self._resume_writer()

    def _cut(self, call: RelayedCall, reason: str) -> None:
        """End a committed response with an error on the caller's side (Rule 5)."""
        self._end_attempt(call, outcome=ERROR)
        self._done(call, ERROR)
        self._lose(ConnectionResetError(reason))

    def _done(self, call: RelayedCall, outcome: str) -> None:
        if call.phase == _DONE:
            return
        if call.upstream is not None:  # an attempt runs (and so has its attempt)
            call.upstream = call.attempt = None
            if call.guard is not None:
                call.guard.in_flight -= 1
        call.phase = _DONE
        if call.timer is not None:
            call.cancel_timers()
        if call.sent:
            self._forget(call)
        call.end(call.status, outcome)
        if self._call is call:
            self._call = None

    def _gone(self, outcome: str) -> None:
        """The caller's connection ends: stop everything on it."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        call = self._call
        if call is not None and call.phase != _DONE:
            self._end_attempt(call)
            self._done(call, outcome)
        for upstream in list(self._upstreams.values()):
            upstream.pipe.client.close()
        self._upstreams.clear()
        self._pending.clear()
        self._flushed.clear()

    def _lose(self, exc: Exception | None) -> None:
        """End the caller's connection from our side: a clean close (None) or
        a cut, which fails the caller's read."""
        if self.closed:
            return
        self._gone(ERROR)
        self._loop.call_soon(self._client.connection_lost, exc)

    # -- asyncio.Transport, for the caller's protocol (Rule 7) ------------------------

    def close(self) -> None:
        if not self.closed:
            self._gone(CANCELLED)
            self._loop.call_soon(self._client.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("in-memory transports do not half-close")

    def pause_reading(self) -> None:  # the caller reads slowly
        if self._reading:
            self._reading = False
            call = self._call
            if call is not None and call.upstream is not None:
                call.upstream.pipe.client.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            if self._pending:
                self._loop.call_soon(self._flush)  # never from inside the reader's call
            call = self._call
            if call is not None and call.upstream is not None:
                call.upstream.pipe.client.resume_reading()

    def is_reading(self) -> bool:
        return self._reading and not self.closed

    def get_write_buffer_size(self) -> int:
        call = self._call
        upstream = call.upstream if call is not None else None
        return upstream.pipe.client.get_write_buffer_size() if upstream is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._limits

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = HIGH_WATER if high is None else high
        self._limits = (high // 4 if low is None else low, high)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._client = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._client

    # -- to the caller's protocol, and flow control (Rules 6 and 7) ---------------------

    def _to_caller(self, data: bytes | bytearray) -> None:
        if self.closed:
            return
        chunk = data if type(data) is bytes else bytes(data)
        if self._reading and not self._delivering and not self._pending:
            self._deliver(chunk)
        else:
            self._pending.append(chunk)

    def _deliver(self, chunk: bytes) -> None:
        self._delivering = True
        try:
            self._client.data_received(chunk)
        except Exception as exc:
            self._protocol_failed(exc)
        finally:
            self._delivering = False
        if self._pending and self._reading:
            self._loop.call_soon(self._flush)

    def _protocol_failed(self, exc: Exception) -> None:
        # a protocol bug must not unwind into the provider
        self._loop.call_exception_handler(
            {"message": "meshbridge relay: data_received failed", "exception": exc}
        )
        self._lose(ConnectionResetError("the caller's protocol failed"))

    def _flush(self) -> None:
        while self._pending and self._reading and not self._delivering and not self.closed:
            self._deliver(self._pending.popleft())
        if not self._pending and self._flushed:
            callbacks, self._flushed = self._flushed, []
            for callback in callbacks:
                callback()

    def _when_flushed(self, callback: Callable[[], None]) -> None:
        if not self._pending:
            callback()
        elif not self.closed:
            self._flushed.append(callback)

    def _pause_writer(self) -> None:
        if not self._writing_paused:
            self._writing_paused = True
            self._client.pause_writing()

    def _resume_writer(self) -> None:
        if self._writing_paused:
            self._writing_paused = False
            self._client.resume_writing()

    def _pause_caller(self, upstream: Upstream) -> None:  # the provider reads slowly
        call = self._call
        if call is not None and upstream is call.upstream:
            self._pause_writer()

    def _resume_caller(self, upstream: Upstream) -> None:
        call = self._call
        if call is not None and upstream is call.upstream:
            self._resume_writer()


def _idle_at(call: RelayedCall) -> float | None:
    """When a committed call's ``idle_timeout`` passes, unless a chunk comes first."""
    guard = call.guard
    if call.phase != _COMMITTED or call.last_chunk is None or guard is None:
        return None
    idle = guard.idle_timeout
    return None if idle is None else call.last_chunk + idle


def _retry_after(head: bytes) -> float | None:
    """A response head's ``Retry-After``, in seconds."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"retry-after":
            return parse_retry_after(value.strip().decode("latin-1"), time.time())
    return None
