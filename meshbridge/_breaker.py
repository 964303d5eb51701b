"""A provider's circuit breaker: closed, open, half-open, with generations.

Sans-I/O, after sony/gobreaker v2: the breaker never reads a clock, never
waits and never sees a request. The I/O code asks it "may I?" and gets a
ticket that already holds the generation it was admitted in, then gives the
ticket its one verdict, passing the monotonic time ``now`` (seconds)::

    ticket = breaker.allow(now)          # None: refused; answer 503 with
    if ticket is None:                   #   Retry-After: breaker.retry_after(now)
        ...
    ...                                  # the attempt runs, then exactly one of:
    ticket.done(now, failed)             # what the caller suffered (see the relay)
    ticket.cancel(now)                   # no verdict (never sent, the caller left)

Rules of the breaker (everything that changes its state lives in this file):

Rule 1, generations. Every change of state starts a new generation, an int
counting up from 0. A ticket holds the generation it was admitted in; a
verdict given with any other generation is ignored. So a request admitted
before a trip can neither re-open nor close the breaker that followed, and a
late failure from the last closed period does not count against the next one.

Rule 2, closed. Every request is admitted. A failure counts from the moment
it is recorded; when ``failures`` recorded failures are all less than
``interval`` seconds old (a sliding window), the breaker opens. Successes do
not cancel failures; failures only age out.

Rule 3, open. Nothing is admitted. From ``open_for`` seconds after it opened,
the breaker is half-open. Nothing here runs on its own: the change happens in
the first call (any method) made at or after that moment. Each time it opens
again straight from half-open (a failed probe) it stays open twice as long as
the time before, up to ``max_open_for`` (never less than ``open_for``), as
Envoy's ejection time grows with ejections; closing forgets the reopenings.

Rule 4, half-open. At most ``half_open`` probes are admitted in the
generation; a cancelled probe gives its place back. One failure opens the
breaker again; ``half_open`` successes close it, with no failures remembered.

Rule 5, transitions. ``on_transition(to_state)`` is called once per change,
after it, from inside the call that made it (so a gauge read through
``level`` may be what turns an open breaker half-open).

Rule 6, the closed fast path. While closed, every request gets the same
ticket (``closed_ticket``, None when not closed), and its success changes
nothing, whatever the time, so the I/O code needs no clock on the common
path::

    ticket = breaker.closed_ticket or breaker.allow(now)
    ...
    if failed or not ticket.closed:
        ticket.done(now, failed)

Rule 7, one verdict. A ticket takes one verdict (``done`` or ``cancel``);
later ones are ignored. The closed ticket is shared and never spent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from ._policy import CircuitBreaker

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breaker", "Ticket"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

_LEVEL: Final = {CLOSED: 0.0, HALF_OPEN: 0.5, OPEN: 1.0}


class Ticket:
    """One admitted request's right to a verdict (Rule 7), in its generation."""

    __slots__ = ("_breaker", "_spent", "closed", "generation")

    def __init__(self, breaker: Breaker, generation: int, *, closed: bool) -> None:
        self._breaker = breaker
        self.generation = generation
        self.closed = closed  # the shared ticket of a closed generation (Rule 6)
        self._spent = False

    def done(self, now: float, failed: bool) -> None:
        """The request ended: ``failed`` is what its caller suffered.

        Args:
            now: monotonic seconds.
            failed: the outcome counts as a failure.
        """
        if self._spent:
            return
        self._spent = not self.closed
        self._breaker._record(now, self.generation, failed)

    def cancel(self, now: float) -> None:
        """The request ended with no verdict (never sent, or the caller left
        first): a half-open probe's place is given back.

        Args:
            now: monotonic seconds.
        """
        if self._spent:
            return
        self._spent = not self.closed
        self._breaker._cancel(now, self.generation)


class Breaker:
    """One provider's circuit breaker (the rules are at the top of this file).

    Args:
        config: the thresholds and durations.
        on_transition: called with the new state (``"closed"``, ``"open"`` or
            ``"half_open"``) after every change of state.
    """

    __slots__ = (
        "_failures",
        "_generation",
        "_on_transition",
        "_open_until",
        "_probes",
        "_reopens",
        "_state",
        "_successes",
        "closed_ticket",
        "config",
    )

    def __init__(
        self, config: CircuitBreaker, on_transition: Callable[[str], None] | None = None
    ) -> None:
        self.config = config
        self._on_transition = on_transition
        self._state: str = CLOSED
        self._generation = 0
        self.closed_ticket: Ticket | None = Ticket(self, 0, closed=True)  # Rule 6
        # the times of the latest `failures` failures: enough to know whether
        # that many fall within the interval (Rule 2)
        self._failures: deque[float] = deque(maxlen=config.failures)
        self._open_until = 0.0
        self._reopens = 0  # opened again from half-open since it last closed (Rule 3)
        self._probes = 0  # admitted in this half-open generation, not cancelled
        self._successes = 0  # in this half-open generation

    def allow(self, now: float) -> Ticket | None:
        """May a request go to the provider now?

        Args:
            now: monotonic seconds.

        Returns:
            The ticket to give the request's verdict to, or None when the
            breaker refuses it (open, or half-open with all its probes out).
        """
        if self.closed_ticket is not None:
            return self.closed_ticket  # the common case, asked on every request
        self._tick(now)
        if self._state == OPEN:
            return None
        if self._state == HALF_OPEN:
            if self._probes >= self.config.half_open:
                return None
            self._probes += 1
            return Ticket(self, self._generation, closed=False)
        return self.closed_ticket

    def _record(self, now: float, generation: int, failed: bool) -> None:
        if self._state == CLOSED and not failed:
            return  # the common case: nothing changes
        self._tick(now)
        if generation != self._generation:
            return
        if self._state == CLOSED:
            failures = self._failures
            failures.append(now)
            if len(failures) == failures.maxlen and now - failures[0] < self.config.interval:
                self._become(OPEN, now)
        elif self._state == HALF_OPEN:
            if failed:
                self._reopens += 1
                self._become(OPEN, now)
            else:
                self._successes += 1
                if self._successes >= self.config.half_open:
                    self._become(CLOSED, now)

    def _cancel(self, now: float, generation: int) -> None:
        self._tick(now)
        if generation == self._generation and self._state == HALF_OPEN and self._probes:
            self._probes -= 1

    def state(self, now: float) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` at monotonic time ``now``."""
        self._tick(now)
        return self._state

    def retry_after(self, now: float) -> float:
        """Seconds until the open breaker becomes half-open (> 0); 0.0 when it
        is not open. For a ``Retry-After`` header, round it up."""
        self._tick(now)
        if self._state != OPEN:
            return 0.0
        return self._open_until - now

    def level(self, now: float) -> float:
        """The state as a gauge value: 0 closed, 0.5 half-open, 1 open."""
        self._tick(now)
        return _LEVEL[self._state]

    def open_for(self) -> float:
        """Seconds it stays open when it opens next (Rule 3)."""
        config = self.config
        base = config.open_for
        ceiling = max(config.max_open_for, base)
        return ceiling if self._reopens >= 64 else min(base * 2.0**self._reopens, ceiling)

    def _tick(self, now: float) -> None:
        if self._state == OPEN and now >= self._open_until:
            self._become(HALF_OPEN, now)

    def _become(self, state: str, now: float) -> None:
        self._state = state
        self._generation += 1
        self.closed_ticket = (
            Ticket(self, self._generation, closed=True) if state == CLOSED else None
        )
        self._failures.clear()
        self._probes = self._successes = 0
        if state == OPEN:
            self._open_until = now + self.open_for()
        elif state == CLOSED:
            self._reopens = 0
        if self._on_transition is not None:
            self._on_transition(state)
