"""A call's state in the relay: where it stands (a table of phases), the
request bytes it holds, its limits in time.

Pure bookkeeping for ``_relay.py``: nothing here moves bytes, and the clock
is read only where a breaker is given its verdict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from ._breaker import Ticket
from ._call import Call
from ._exchange import Exchange
from ._pipe import PipeStats
from ._traffic import Guard, Live

if TYPE_CHECKING:  # the relay's connection to a provider, which calls back the relay
    from ._upstream import Upstream

__all__ = ["NEXT", "TIMED", "Dispatch", "Phase"]

_DEFAULT_REPLAY_LIMIT: Final = 65536


class Phase(IntEnum):
    """Where a call stands in the relay (Rule 2)."""

    WAITING = 0  # no attempt runs: before the first, a backoff, a fault's delay
    HEAD = 1  # an attempt runs; its bytes are held
    COMMITTED = 2  # the caller is getting this attempt's response
    ANSWERED = 3  # a synthetic response is decided (sent once the request arrived)
    DONE = 4


# The phases that may follow each phase; any other move is a bug of the relay.
NEXT: Final = {
    Phase.WAITING: frozenset({Phase.HEAD, Phase.ANSWERED, Phase.DONE}),
    Phase.HEAD: frozenset({Phase.WAITING, Phase.COMMITTED, Phase.ANSWERED, Phase.DONE}),
    Phase.COMMITTED: frozenset({Phase.DONE}),
    Phase.ANSWERED: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}
TIMED: Final = frozenset({Phase.WAITING, Phase.HEAD, Phase.COMMITTED})  # the timer watches


class Dispatch:
    """One call's way through the relay: its candidates, held bytes, attempt."""

    __slots__ = (
        "attempt",
        "call",
        "candidates",
        "deadline",
        "first_byte",
        "guard",
        "head",
        "index",
        "interim",
        "kept",
        "last_chunk",
        "live",
        "pending_answer",
        "phase",
        "received",
        "refused",
        "replay_limit",
        "replayable",
        "sent",
        "sized_body",
        "ticket",
        "timer",
        "tries",
        "upstream",
    )

    def __init__(self, call: Call, body_size: int | None) -> None:
        self.call = call
        self.candidates: tuple[str, ...] = (call.provider,)  # the provider, then its fallbacks
        self.index = 0  # which candidate is being tried (call.provider)
        self.tries = 0  # retries used on it
        self.refused = False  # the budget refused a retry (Rule 8)
        self.replay_limit = _DEFAULT_REPLAY_LIMIT
        self.replayable = body_size is not None  # a streamed body is never replayed (Rule 3)
        self.sized_body = bool(body_size)  # a body of known length: it may skip the parser
        self.sent: list[bytes] = []  # request bytes kept for a replay, or not yet forwarded
        self.kept = 0  # bytes in sent (while replayable: every byte the caller sent)
        self.received = False  # whether request bytes came from the caller
        self.phase = Phase.WAITING
        self.head: bytearray | None = None  # a head that came in pieces, so far
        self.interim = False  # a 1xx head went to the caller
        self.upstream: Upstream | None = None
        self.attempt: Exchange | None = None
        self.guard: Guard | None = None
        self.live: Live | None = None  # whose in_flight counts the running attempt
        self.ticket: Ticket | None = None  # the breaker's, for the running attempt
        self.pending_answer: bytes | None = None  # synthetic, waiting for the request
        # Limits in loop time, watched by the relay's one timer (None: none).
        self.deadline: float | None = None  # timeout: the whole call
        self.first_byte: float | None = None  # first_byte_timeout: this attempt's head
        self.last_chunk: float | None = None  # once committed, with an idle_timeout
        self.timer: asyncio.TimerHandle | None = None  # backoff or fault delay

    def judge(self, reason: int | str, status: int) -> bool:
        """Whether the running attempt, ended with ``reason`` (a status or a
        condition) and ``status``, failed for its breaker (Rule 6 of the
        relay): in its ``on``, or a half-open probe's 5xx."""
        ticket, guard = self.ticket, self.guard
        if ticket is None or guard is None:
            return False
        return reason in guard.breaker_on or (not ticket.closed and status >= 500)

    def verdict(self, failed: bool | None, clock: Callable[[], float]) -> None:
        """Give the running attempt's breaker its one verdict (Rule 6 of the
        relay); None: no verdict (never sent, or the caller left). The clock
        is read only when the breaker's state may change."""
        ticket, self.ticket = self.ticket, None
        if ticket is None:
            return
        if failed is None:
            ticket.cancel(clock())
        elif failed or not ticket.closed:  # a closed breaker's success changes nothing
            ticket.done(clock(), failed)

    @property
    def retried(self) -> bool:
        """The mesh retried or failed over for this call, or chose not to (Rule 8)."""
        return self.tries > 0 or self.index > 0 or self.refused

    def idle_at(self) -> float | None:
        """When a committed call's ``idle_timeout`` passes, unless a chunk comes first."""
        guard = self.guard
        if self.phase != Phase.COMMITTED or self.last_chunk is None or guard is None:
            return None
        idle = guard.idle_timeout
        return None if idle is None else self.last_chunk + idle

    # -- the request bytes held (Rule 3 of the relay) ----------------------------------

    def keep(self, data: bytes, stats: PipeStats) -> None:
        """Hold ``data`` for a replay, or until an attempt starts."""
        self.sent.append(data)
        self.kept += len(data)
        stats.buffered += len(data)
        if stats.buffered > stats.peak:
            stats.peak = stats.buffered

    def forget(self, stats: PipeStats) -> None:
        """Drop the bytes held (counted in the mesh's buffered bytes while held)."""
        stats.buffered -= self.kept
        self.kept = 0
        self.sent.clear()
