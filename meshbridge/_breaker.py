"""A provider's circuit breaker: closed, open, half-open, with generations.

Sans-I/O, after sony/gobreaker: the breaker never reads a clock, never waits
and never sees a request. The I/O code asks it "may I?" and tells it "this
happened", passing the monotonic time ``now`` (seconds) to every call::

    generation = breaker.admit(now)      # None: refused; answer 503 with
    if generation is None:               #   Retry-After: breaker.retry_after(now)
        ...
    ...                                  # the attempt runs, then exactly one of:
    breaker.record(now, generation, failed=outcome in breaker.config.on)
    breaker.cancel(now, generation)      # it ended with no verdict (never sent,
                                         #   the caller left)

Rules of the breaker (everything that changes its state lives in this file):

Rule 1, generations. Every change of state starts a new generation, an int
counting up from 0. ``admit`` hands out the current one; a result recorded or
cancelled with any other generation is ignored. So a request admitted before
a trip can neither re-open nor close the breaker that followed, and a late
failure from the last closed period does not count against the next one.

Rule 2, closed. Every request is admitted. A failure counts from the moment
it is recorded; when ``failures`` recorded failures are all less than
``interval`` seconds old (a sliding window), the breaker opens. Successes do
not cancel failures; failures only age out.

Rule 3, open. Nothing is admitted. From ``open_for`` seconds after it opened,
the breaker is half-open. Nothing here runs on its own: the change happens in
the first call (any method) made at or after that moment.

Rule 4, half-open. At most ``half_open`` probes are admitted in the
generation; a cancelled probe gives its place back. One failure opens the
breaker again (``open_for`` counted from then); ``half_open`` successes close
it, with no failures remembered.

Rule 5, transitions. ``on_transition(to_state)`` is called once per change,
after it, from inside the call that made it (so a gauge read through
``level`` may be what turns an open breaker half-open).

Rule 6, the closed fast path. While closed, ``admit`` gives every request the
same generation and a success changes nothing, whatever the time, so
``closed_generation`` (that generation, None when not closed) lets the I/O
code skip both calls, and reading its clock, on the common path::

    generation = breaker.closed_generation
    if generation is None:
        generation = breaker.admit(now)
    ...
    if failed or breaker.closed_generation is None:
        breaker.record(now, generation, failed)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from ._policy import CircuitBreaker

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breaker"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

_LEVEL: Final = {CLOSED: 0.0, HALF_OPEN: 0.5, OPEN: 1.0}


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
        "_opened_at",
        "_probes",
        "_state",
        "_successes",
        "closed_generation",
        "config",
    )

    def __init__(
        self, config: CircuitBreaker, on_transition: Callable[[str], None] | None = None
    ) -> None:
        self.config = config
        self._on_transition = on_transition
        self._state: str = CLOSED
        self._generation = 0
        self.closed_generation: int | None = 0  # Rule 6
        # the times of the latest `failures` failures: enough to know whether
        # that many fall within the interval (Rule 2)
        self._failures: deque[float] = deque(maxlen=config.failures)
        self._opened_at = 0.0
        self._probes = 0  # admitted in this half-open generation, not cancelled
        self._successes = 0  # in this half-open generation

    def admit(self, now: float) -> int | None:
        """May a request go to the provider now?

        Args:
            now: monotonic seconds.

        Returns:
            The generation to pass to :meth:`record` or :meth:`cancel` when
            the request ends, or None when the breaker refuses it (open, or
            half-open with all its probes out).
        """
        if self._state == CLOSED:
            return self._generation  # the common case, asked on every request
        self._tick(now)
        if self._state == OPEN:
            return None
        if self._state == HALF_OPEN:
            if self._probes >= self.config.half_open:
                return None
            self._probes += 1
        return self._generation

    def record(self, now: float, generation: int, failed: bool) -> None:
        """An admitted request ended: ``failed`` says whether its outcome is
        one of ``config.on``.

        Args:
            now: monotonic seconds.
            generation: what :meth:`admit` returned for the request.
            failed: the outcome counts as a failure.
        """
        if self._state == CLOSED and not failed:
            return  # the common case: nothing changes
        self._tick(now)
        if generation != self._generation:
            return
        if self._state == CLOSED:
            if failed:
                failures = self._failures
                failures.append(now)
                if len(failures) == failures.maxlen and now - failures[0] < self.config.interval:
                    self._become(OPEN, now)
        elif self._state == HALF_OPEN:
            if failed:
                self._become(OPEN, now)
            else:
                self._successes += 1
                if self._successes >= self.config.half_open:
                    self._become(CLOSED, now)

    def cancel(self, now: float, generation: int) -> None:
        """An admitted request ended with no verdict (it was never sent, or
        the caller left first): a half-open probe's place is given back.

        Args:
            now: monotonic seconds.
            generation: what :meth:`admit` returned for the request.
        """
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
        return self._opened_at + self.config.open_for - now

    def level(self, now: float) -> float:
        """The state as a gauge value: 0 closed, 0.5 half-open, 1 open."""
        self._tick(now)
        return _LEVEL[self._state]

    def _tick(self, now: float) -> None:
        if self._state == OPEN and now >= self._opened_at + self.config.open_for:
            self._become(HALF_OPEN, now)

    def _become(self, state: str, now: float) -> None:
        self._state = state
        self._generation += 1
        self.closed_generation = self._generation if state == CLOSED else None
        self._failures.clear()
        self._probes = self._successes = 0
        if state == OPEN:
            self._opened_at = now
        if self._on_transition is not None:
            self._on_transition(state)
