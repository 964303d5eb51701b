"""The relay's ends: the caller's pipe, whose server protocol it is, and a
pipe to each provider it reaches (``_upstream.py``); the bytes the caller
sends, what holds them back, the relay's one timer and how it closes.

Everything a call's decisions need to move bytes, and nothing of the
decisions themselves: those are the state machine's, :class:`Relay` in
``_relay.py``, which builds on this class.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ._dispatch import Dispatch, Phase
from ._exchange import CANCELLED, COMPLETED, ERROR, Exchange
from ._link import Channel
from ._metrics import MeshMetrics
from ._pipe import Pipe, PipeEnd, PipeStats
from ._provider import Provider
from ._routing import Router
from ._synthetic import ErrorBody
from ._traffic import Traffic
from ._upstream import Upstream

__all__ = ["RelayEnds"]


class RelayEnds(Channel, asyncio.Protocol):
    """A governed name's connection, as bytes (see the module docstring)."""

    governed = True

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
        self._dispatch: Dispatch | None = None
        self._committed: Upstream | None = None  # the last committed attempt's (Rule 7)
        # The loop's clock: asyncio's own loops read time.monotonic(), so read it
        # directly, and when the policies' clock is the same one, read it once
        # for both.
        self._time = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        self._one_clock = traffic.clock is self._time
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when it fires
        self._cut_error: Exception | None = None  # what the caller's protocol is told
        self._caller_full = False  # the caller reads slowly: hold the providers back
        self._holding = False  # the caller's upload is held back
        self.closed = False
        port = 443 if secure else 80
        self.pipe = Pipe(
            loop,
            owner=self,
            client_extra={"peername": (target, port), "sockname": ("127.0.0.1", 0)},
            on_close=self._caller_closing,
            stats=stats,
        )
        self._caller: PipeEnd = self.pipe.server
        self.pipe.connect(client, self)

    def serves(self, target: str, provider: object | None) -> bool:
        return provider is None and self.target == target and not self.closed

    def upstream(self, provider: Provider) -> Upstream:
        """The pooled connection to ``provider``, or a new one."""
        name = provider.name
        upstream = self._upstreams.get(name)
        if upstream is None or upstream.closed or upstream.provider is not provider:
            upstream = self._upstreams[name] = Upstream(self, provider, secure=self._secure)
        return upstream

    def release(self, upstream: Upstream, exchange: Exchange) -> None:
        """An attempt on ``upstream`` was dropped: its connection goes back to
        the pool once its response has ended (normally within this turn of
        the loop: a short error answer), else it is aborted, which cancels
        its handler."""
        if not exchange.finished:
            # Busy until its response ends: no other attempt may use it meanwhile.
            if self._upstreams.get(upstream.provider.name) is upstream:
                del self._upstreams[upstream.provider.name]
            self._loop.call_soon(self._reap, upstream, exchange)

    def _reap(self, upstream: Upstream, exchange: Exchange) -> None:
        if not exchange.finished:
            upstream.pipe.client.abort()
        elif not upstream.closed and upstream.provider.name not in self._upstreams:
            self._upstreams[upstream.provider.name] = upstream

    # -- the caller's side: this relay is its pipe's server protocol ------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The caller's pipe is connected (its server end is ``self._caller``)."""

    def data_received(self, data: bytes) -> None:
        """The caller's request bytes."""
        d = self._dispatch
        if d is None or self.closed:
            return
        upstream = d.upstream
        if upstream is None:
            self._hold(d, data)
            return
        d.received = True
        if d.replayable:
            size = len(data)
            kept = d.kept + size
            if kept <= d.replay_limit:  # kept for a replay (d.keep, inlined)
                d.sent.append(data)
                d.kept = kept
                stats = self._stats
                stats.buffered += size
                if stats.buffered > stats.peak:
                    stats.peak = stats.buffered
            else:
                d.replayable = False  # too large to replay: keep nothing more
                d.forget(self._stats)
        upstream.pipe.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """The caller's connection ended: it left (or the relay closed it)."""
        if not self.closed:
            d = self._dispatch  # an upgraded connection ends by closing
            upgraded = d is not None and d.phase == Phase.COMMITTED and d.call.status == 101
            self._gone(COMPLETED if upgraded else CANCELLED)

    def pause_writing(self) -> None:  # the caller reads slowly
        self._caller_full = True
        d = self._dispatch
        if d is not None and d.upstream is not None:
            d.upstream.pipe.client.pause_reading()

    def resume_writing(self) -> None:
        self._caller_full = False
        d = self._dispatch
        if d is not None and d.upstream is not None:
            d.upstream.pipe.client.resume_reading()

    def upstream_full(self, upstream: Upstream, full: bool) -> None:
        """The provider reads slowly (or caught up): hold back the caller's upload."""
        d = self._dispatch
        if d is not None and upstream is d.upstream:
            self._hold_caller(full)

    def _hold_caller(self, held: bool) -> None:
        """Stop (or go on) reading the caller's upload: its writes wait in its pipe."""
        self._holding = held
        if held:
            self._caller.pause_reading()
        else:
            self._caller.resume_reading()

    def _caller_closing(self, by_caller: bool) -> Exception | None:
        return None if by_caller else self._cut_error

    def _hold(self, d: Dispatch, data: bytes) -> None:
        """Request bytes while no attempt runs: kept until one starts (whether
        or not they may be replayed), or dropped after a synthetic answer."""
        if d.phase == Phase.DONE:
            return
        if d.phase == Phase.ANSWERED:
            answer, d.pending_answer = d.pending_answer, None
            if answer is not None:
                self._caller.write(answer)
                self._done(d, COMPLETED)
            return
        d.received = True
        d.keep(data, self._stats)
        if d.kept > d.replay_limit:
            d.replayable = False  # too large to replay (Rule 3)
            self._hold_caller(True)  # and to hold: the upload waits for an attempt

    # -- the one timer -------------------------------------------------------------------

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

    # -- closing -------------------------------------------------------------------------

    def _gone(self, outcome: str) -> None:
        """The caller's connection ends: stop everything on it."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        d = self._dispatch
        if d is not None and d.phase != Phase.DONE:
            self._end_attempt(d)
            self._done(d, outcome)
        for upstream in list(self._upstreams.values()):
            upstream.pipe.client.close()
        self._upstreams.clear()
        committed, self._committed = self._committed, None
        if committed is not None and not committed.closed:
            committed.pipe.client.close()  # an upgraded connection's other half

    def _lose(self, exc: Exception | None) -> None:
        """End the caller's connection from our side: a clean close (None) or
        a cut, which fails the caller's read once it has what came before."""
        if self.closed:
            return
        self._cut_error = exc
        self._gone(ERROR)
        self._caller.close()

    # -- what the state machine decides (_relay.py) -------------------------------------

    def from_upstream(self, upstream: Upstream, data: bytes) -> None:
        raise NotImplementedError

    def upstream_lost(self, upstream: Upstream) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        raise NotImplementedError

    def _attempt_finished(self, exchange: Exchange) -> None:
        raise NotImplementedError

    def _end_attempt(self, d: Dispatch, *, outcome: str | None = None) -> None:
        raise NotImplementedError

    def _done(self, d: Dispatch, outcome: str) -> None:
        raise NotImplementedError
