"""The relay: a caller's connection to a name that traffic policies govern.

A direct link (``_link.py``) joins the caller's protocol to one provider's
server with one pipe. For a route, or a provider with a policy, a relay
stands in the middle, so that what the caller gets can differ from what one
attempt answered. It is the server-side protocol of the caller's pipe, and
the client-side protocol of a pipe to each provider it reaches::

    caller protocol ── pipe ── Relay ── pipe ── provider server  (an Upstream per provider)

Both are the same :class:`Pipe`: delivery to the caller, flow control and
closing are written once, for every path (the pipe's rules). This module is
the state machine of a call's attempts; the decisions (breakers, budgets,
backoff, splits) are :class:`Traffic`'s and the heads' bytes ``_heads.py``'s.

Rules of the relay:

1. One response per call. The caller gets exactly one response to each
   request: that of the first attempt that did not fail, that of the last
   attempt, or a synthetic one (503 or 504, with ``x-meshbridge-reason``).
2. Nothing reaches the caller before the head is decided. An attempt's bytes
   are held until its final status line and headers are complete (an interim
   1xx head passes through, once per call); then they are committed (and
   everything after passes straight through, both ways) or dropped for a
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
   never a clean end. All limits share the relay's one timer, moved only when
   a limit comes sooner than the one it is set for.
6. One verdict per admitted attempt, from what its caller suffered: a status
   in the breaker's ``on`` (or a connect failure in it), the mesh's own
   timeouts and a connection that broke are failures whatever ``on`` says; an
   answer that ended well is a success (a half-open probe's only if it is
   neither in ``on`` nor a 5xx); a call the caller left, or one never sent,
   gets none. Every verdict goes through :meth:`Dispatch.verdict`.
7. After the commit the caller's connection follows the provider's: when the
   committed attempt's connection closes (a body read to its end, an
   upgraded connection, a provider that hangs up), the caller's closes too,
   cleanly if the response had ended and with an error otherwise.
8. Retries do not multiply. When the mesh has retried or failed over for a
   call, or its budget refused a retry, an answer the official SDKs would
   retry (408, 409, 429, 5xx) says ``x-should-retry: false``.
9. A policy that never triggers costs little: per call a :class:`Dispatch`
   and its attempt's Exchange; a closed breaker is not asked
   (``closed_ticket``), a guard carries its policy's numbers flat, a head
   that arrives whole is committed without a copy, and the attempt's metrics
   series is reused from the upstream's last attempt of that Source.
"""

from __future__ import annotations

from functools import partial
from time import perf_counter

from aiohttp import ClientRequest

from ._call import Call
from ._dispatch import NEXT, TIMED, Dispatch, Phase
from ._exchange import COMPLETED, ERROR, Exchange
from ._heads import MAX_HEAD, SDK_RETRIES, retry_after, without_sdk_retries
from ._metrics import Family
from ._provider import RUNNING
from ._reasons import Reason
from ._relay_ends import RelayEnds
from ._synthetic import synthetic_response
from ._traffic import OVERLOADED_RETRY_AFTER, Guard
from ._upstream import Upstream

__all__ = ["Relay"]


class Relay(RelayEnds):
    """A caller's pooled connection to a governed name (a route or a provider)."""

    # -- calls -----------------------------------------------------------------------

    def begin(self, call: Call, req: ClientRequest) -> None:
        body = req.body  # a Payload, or b"" for none
        d = self._dispatch = Dispatch(call, None if req.chunked else (body.size if body else 0))
        self._committed = None
        refusal = call.refusal
        if refusal is not None:  # a per-caller limit: the provider is never reached
            d.replayable = False
            reason = Reason(refusal.reason)
            self._answer(d, refusal.status, reason, refusal.retry_after, refusal.message)
            return
        guard = self._guards.get(call.provider)
        if guard is None:  # a route's provider without a policy
            d.replayable = False  # nothing to try again: keep nothing
            self._try(d, None, None)
            return
        d.candidates = guard.candidates
        d.replay_limit = guard.replay_limit
        if not guard.replays:
            d.replayable = False
        now = None
        if guard.timeout is not None:
            now = self._time()
            d.deadline = when = now + guard.timeout
            if self._timer is None or when < self._timer_at:
                self._arm(when)
        fault = guard.fault
        if fault is not None:
            rng = self._traffic.rng
            if fault.abort_ratio and rng.random() < fault.abort_ratio:
                self._count(Family.REJECTED, call.provider, call.source, Reason.FAULT)
                self._answer(d, fault.abort, Reason.FAULT, None, "fault injected by policy")
                return
            if fault.delay_ratio and rng.random() < fault.delay_ratio:
                d.timer = self._loop.call_later(fault.delay, self._try_later, d)
                return
        self._try(d, guard, now)

    def _try_later(self, d: Dispatch) -> None:
        """A timer's ``_try``: after a backoff or a fault's delay."""
        d.timer = None
        if d is self._dispatch and d.phase == Phase.WAITING:
            self._try(d, self._guards.get(d.call.provider), None)

    def _try(self, d: Dispatch, guard: Guard | None, now: float | None) -> None:
        """Start an attempt on the current candidate (whose guard is ``guard``),
        or move past it. ``now``: the loop's time, if the caller just read it."""
        call = d.call
        name = call.provider
        if guard is not None:
            breaker = guard.breaker
            if breaker is not None:
                ticket = breaker.closed_ticket  # closed: no clock needed (Rule 9)
                if ticket is None:
                    ticket = breaker.allow(self._traffic.clock())
                    if ticket is None:
                        self._circuit_open(d, guard)
                        return
                d.ticket = ticket
            limit = guard.max_in_flight
            if limit is not None and guard.live.in_flight >= limit:
                self._overloaded(d, guard)
                return
        provider = self._router._table.get(name)
        if provider is None or provider.state != RUNNING:
            d.verdict(d.judge(Reason.CONNECT_FAILURE, 0), self._traffic.clock)
            if not self._again(d, Reason.CONNECT_FAILURE, None):
                message = f"provider {name!r} is not running"
                self._answer(d, 503, Reason.UNAVAILABLE, None, message)
            return
        upstream = self._upstreams.get(name)
        if upstream is None or upstream.closed or upstream.provider is not provider:
            upstream = self.upstream(provider)
        metrics = self._metrics
        source = call.source
        series = upstream.series
        if (series is None or source != upstream.source) and metrics is not None:
            series = upstream.series = metrics.series(name, source)
            upstream.source = source
        exchange = Exchange(call, name, series, metrics, self._attempt_finished_)
        upstream.exchange = upstream.server.next_exchange = exchange  # its server's next request
        if d.sized_body:
            upstream.server.expect_body()
        d.upstream = upstream
        d.attempt = exchange
        d.guard = guard
        assert Phase.HEAD in NEXT[d.phase], d.phase
        d.phase = Phase.HEAD
        if guard is not None:
            d.live = guard.live
            guard.live.in_flight += 1
            if guard.retries and d.tries == 0:
                # a first attempt; a fallback's counts for its budget
                clock = now if now is not None and self._one_clock else self._traffic.clock()
                guard.budget.request(clock)
            first_byte = guard.first_byte_timeout
            if first_byte is not None:
                d.first_byte = when = (self._time() if now is None else now) + first_byte
                if self._timer is None or when < self._timer_at:
                    self._arm(when)
        if d.sent:
            for chunk in d.sent:
                upstream.pipe.client.write(chunk)
            if not d.replayable:
                d.forget(self._stats)
        if self._holding:
            self._hold_caller(False)  # held while no attempt ran (_hold)
        if self._caller_full:
            upstream.pipe.client.pause_reading()

    def _circuit_open(self, d: Dispatch, guard: Guard) -> None:
        """The breaker refused: the next fallback, or a 503 (Rule 1)."""
        self._count(Family.REJECTED, guard.name, d.call.source, Reason.CIRCUIT_OPEN)
        if not self._fall_back(d):
            breaker = guard.breaker
            wait = breaker.retry_after(self._traffic.clock()) if breaker is not None else None
            message = f"circuit of {guard.name!r} is open"
            self._answer(d, 503, Reason.CIRCUIT_OPEN, wait, message)

    def _overloaded(self, d: Dispatch, guard: Guard) -> None:
        d.verdict(None, self._traffic.clock)  # never sent: no verdict
        self._count(Family.REJECTED, guard.name, d.call.source, Reason.OVERLOADED)
        first = self._guards.get(d.candidates[0])
        if first is not None and first.fallback_on_overload and self._fall_back(d):
            return
        message = (
            f"provider {guard.name!r} has {guard.live.in_flight} requests in flight, its limit"
        )
        self._answer(d, 503, Reason.OVERLOADED, OVERLOADED_RETRY_AFTER, message)

    def _again(self, d: Dispatch, reason: str | int, wait: float | None) -> bool:
        """The current attempt failed with ``reason`` (a status or a condition)
        before its head was committed: end it and retry or fall back, or
        return False (nothing changed: the caller is to get its outcome)."""
        traffic = self._traffic
        guard = d.guard if d.guard is not None else traffic.guard(d.call.provider)
        if not d.replayable or guard is None:
            return reason == Reason.CONNECT_FAILURE and self._fall_back(d)
        wanted = reason in guard.retry_on
        if wanted and d.tries < guard.retries:
            delay = traffic.retry_delay(guard, d.tries, wait)
            if delay is not None and not self._past_deadline(d, delay):
                if guard.budget.try_spend(traffic.clock()):
                    self._end_attempt(d)
                    self._count(Family.RETRIES, d.call.provider, d.call.source, str(reason))
                    d.tries += 1
                    d.timer = self._loop.call_later(delay, self._try_later, d)
                    return True
                d.refused = True
        return wanted and self._fall_back(d)

    def _fall_back(self, d: Dispatch) -> bool:
        if d.index + 1 >= len(d.candidates) or not d.replayable:
            return False
        self._end_attempt(d)
        call = d.call
        fallback = d.candidates[d.index + 1]
        self._count(Family.FALLBACKS, call.provider, fallback, call.source)
        d.index += 1
        d.tries = 0
        call.provider = fallback
        call.fallback = True
        self._try(d, self._guards.get(fallback), None)
        return True

    def _past_deadline(self, d: Dispatch, delay: float) -> bool:
        return d.deadline is not None and self._time() + delay >= d.deadline

    def _end_attempt(self, d: Dispatch, *, outcome: str | None = None) -> None:
        """Stop the current attempt (Rule 4); ``outcome``: what it ended as, if
        it is cut rather than let finish."""
        upstream, exchange = d.upstream, d.attempt
        d.upstream = d.attempt = None
        if d.phase == Phase.HEAD:
            assert Phase.WAITING in NEXT[d.phase], d.phase
            d.phase = Phase.WAITING
        d.head = None
        d.first_byte = None
        d.verdict(None, self._traffic.clock)  # an attempt judged already has no ticket left
        if d.live is not None:
            d.live.in_flight -= 1
            d.live = None
        if exchange is None or upstream is None:
            return
        if outcome is not None and not exchange.finished:
            exchange.finish(outcome)
            upstream.pipe.client.abort()
        self.release(upstream, exchange)

    # -- bytes from a provider ---------------------------------------------------------

    def from_upstream(self, upstream: Upstream, data: bytes) -> None:
        d = self._dispatch
        if d is None or upstream is not d.upstream:
            return  # a dropped attempt's leftovers
        if d.phase == Phase.COMMITTED:
            if d.last_chunk is not None:
                d.last_chunk = self._time()
            self._caller.write(data)
            return
        head: bytes | bytearray = data  # the usual case: the whole head in one piece, no copy
        if d.head is not None:
            head = d.head
            head += data
        while True:
            end = head.find(b"\r\n\r\n")  # not `in`: for bytes it tries int() first
            if end < 0 and len(head) < MAX_HEAD:
                if head is data:
                    d.head = bytearray(data)
                return
            try:
                status = int(head[9:12])
            except ValueError:
                status = 0
            if status >= 200 or status < 100 or status == 101 or end < 0:
                break
            if not d.interim:  # an interim head (100 Continue) goes through once (Rule 2)
                d.interim = True
                self._caller.write(bytes(head[: end + 4]))
            head = head[end + 4 :]
            d.head = None
            if not head:
                return
        attempt = d.attempt
        reason: int | str = status
        if attempt is not None and attempt.connect_failed:
            reason = Reason.CONNECT_FAILURE  # the provider could not reach its upstream
        guard = d.guard
        retry = guard is not None and reason in guard.retry_on and d.replayable
        ticket = d.ticket
        if ticket is not None and guard is not None:
            if reason in guard.breaker_on or (not ticket.closed and status >= 500):
                d.verdict(True, self._traffic.clock)  # a failure is judged at once
            elif retry:
                d.verdict(False, self._traffic.clock)  # an answer, though one worth another try
            # else a success is judged when the response has ended (Rule 6)
        if retry and self._again(d, reason, retry_after(head, end)):
            return
        self._commit(d, upstream, head, data, end, status)

    def _commit(
        self,
        d: Dispatch,
        upstream: Upstream,
        head: bytes | bytearray,
        data: bytes,
        end: int,
        status: int,
    ) -> None:
        """The caller gets this attempt's response (Rule 2)."""
        assert Phase.COMMITTED in NEXT[d.phase], d.phase
        d.phase = Phase.COMMITTED
        call = d.call
        call.status = status
        if call.ttfb is None:
            call.ttfb = perf_counter() - call.started
        d.replayable = False
        d.first_byte = None
        self._committed = upstream
        if d.kept:  # d.forget, inlined
            self._stats.buffered -= d.kept
            d.kept = 0
            d.sent.clear()
        guard = d.guard
        if guard is not None and guard.idle_timeout is not None:
            d.last_chunk = last = self._time()
            when = last + guard.idle_timeout
            if self._timer is None or when < self._timer_at:
                self._arm(when)
        if (status >= 500 or status in SDK_RETRIES) and d.retried and end >= 0:
            self._caller.write(without_sdk_retries(head, end))  # Rule 8
        elif head is data:
            self._caller.write(data)  # the one hop of a unary response
        else:
            d.head = None
            self._caller.write(bytes(head))

    def _attempt_finished(self, exchange: Exchange) -> None:
        d = self._dispatch
        if d is None or exchange is not d.attempt or d.phase != Phase.COMMITTED:
            return
        if exchange.outcome == COMPLETED:
            ticket = d.ticket
            if ticket is not None:  # it ended well: a success (Rule 6)
                if ticket.closed:
                    d.ticket = None  # changes nothing: no clock, no call
                else:
                    d.verdict(d.judge(exchange.status, exchange.status), self._traffic.clock)
            if self._caller.get_write_buffer_size():
                self._caller.when_flushed(partial(self._done, d, COMPLETED))
            else:
                self._done(d, COMPLETED)

    def upstream_lost(self, upstream: Upstream) -> None:
        name = upstream.provider.name
        if self._upstreams.get(name) is upstream:
            del self._upstreams[name]
        d = self._dispatch
        if d is None or upstream is not d.upstream or d.phase == Phase.DONE:
            if d is None and upstream is self._committed:
                self._lose(None)  # Rule 7: its call had ended; the connection ends too
            return
        if d.phase == Phase.COMMITTED:
            exchange = d.attempt
            if exchange is None or exchange.outcome != COMPLETED:
                message = f"provider {d.call.provider!r} closed the connection mid-response"
                self._cut(d, message)
            return
        d.verdict(True, self._traffic.clock)  # closed before answering: a reset
        if not self._again(d, Reason.CONNECT_FAILURE, None):
            self._end_attempt(d)
            self._done(d, ERROR)
            self._lose(None)  # as over TCP: the caller sees the server disconnect

    # -- time ----------------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        d = self._dispatch
        if d is None or d.phase not in TIMED:
            return
        now = self._time()
        idle_at = d.idle_at()
        call = d.call
        if d.deadline is not None and now >= d.deadline:
            self._deadline(d)
        elif d.phase == Phase.HEAD and d.first_byte is not None and now >= d.first_byte:
            self._first_byte_late(d)
        elif idle_at is not None and now >= idle_at and d.guard is not None:
            self._count(Family.TIMEOUTS, call.provider, call.source, Reason.IDLE_TIMEOUT)
            self._cut(d, f"provider {call.provider!r} sent nothing for {d.guard.idle_timeout:g}s")
        d = self._dispatch  # what is left to watch, for this call or the next
        if d is None or d.phase not in TIMED:
            return
        later = d.first_byte if d.phase == Phase.HEAD else d.idle_at()
        times = [t for t in (d.deadline, later) if t is not None]
        if times:
            self._arm(min(times))

    def _first_byte_late(self, d: Dispatch) -> None:
        d.first_byte = None
        call = d.call
        self._count(Family.TIMEOUTS, call.provider, call.source, Reason.FIRST_BYTE_TIMEOUT)
        d.verdict(True, self._traffic.clock)  # the mesh's own timeout: a failure (Rule 6)
        exchange, upstream = d.attempt, d.upstream
        if exchange is not None and upstream is not None:
            exchange.finish(ERROR)  # a timed-out attempt is an error, not a cancellation
            upstream.pipe.client.abort()
        if not self._again(d, Reason.FIRST_BYTE_TIMEOUT, None):
            message = f"provider {call.provider!r} sent no response head in time"
            self._answer(d, 504, Reason.TIMEOUT, None, message)

    def _deadline(self, d: Dispatch) -> None:
        d.deadline = None
        call = d.call
        self._count(Family.TIMEOUTS, call.provider, call.source, Reason.TIMEOUT)
        if d.phase == Phase.COMMITTED:
            self._cut(d, "the request's timeout passed mid-response")
            return
        d.verdict(True, self._traffic.clock)  # a hanging provider is a failure (Rule 6)
        self._end_attempt(d, outcome=ERROR)
        self._answer(d, 504, Reason.TIMEOUT, None, "the request's timeout passed")

    # -- endings -------------------------------------------------------------------------

    def _answer(
        self, d: Dispatch, status: int, reason: Reason, wait: float | None, message: str
    ) -> None:
        """Give the caller a synthetic response (once its request has arrived)."""
        self._end_attempt(d)
        call = d.call
        call.status = status
        call.reason = reason
        call.answered()
        assert Phase.ANSWERED in NEXT[d.phase], d.phase
        d.phase = Phase.ANSWERED
        shape = self._error_body(d.candidates[0])
        answer = synthetic_response(status, reason, message, wait, shape, retried=d.retried)
        if self._holding:
            self._hold_caller(False)
        if d.received:
            self._caller.write(answer)
            self._done(d, COMPLETED)
        else:
            d.pending_answer = answer

    def _cut(self, d: Dispatch, reason: str) -> None:
        """End a committed response with an error on the caller's side (Rule 5)."""
        d.verdict(True, self._traffic.clock)
        self._end_attempt(d, outcome=ERROR)
        self._done(d, ERROR)
        self._lose(ConnectionResetError(reason))

    def _done(self, d: Dispatch, outcome: str) -> None:
        if d.phase == Phase.DONE:
            return
        if d.upstream is not None:  # an attempt runs: it ends with the call
            d.upstream = d.attempt = None
            if d.live is not None:
                d.live.in_flight -= 1
                d.live = None
        assert Phase.DONE in NEXT[d.phase], d.phase
        d.phase = Phase.DONE
        if d.timer is not None:
            d.timer.cancel()
        d.deadline = d.first_byte = d.last_chunk = d.timer = None
        if d.sent:
            d.forget(self._stats)
        d.call.end(d.call.status, outcome)
        if self._dispatch is d:
            self._dispatch = None

    def _count(self, family: Family, *labels: str | None) -> None:
        self._traffic.count(family, *labels)
