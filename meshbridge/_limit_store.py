"""Where limits keep their counters: the store interface and the in-process store.

A store holds named counters of four kinds and changes them only through
the operations below, each atomic over all the counters it is given (all or
nothing). The engine (``_limiter.py``) decides what to count and when; the
store decides nothing but "is anything at its limit". The in-process store
is :class:`InProcessStore`; the shared one (Redis) lives in the service
layer and runs the same operations as server-side scripts.

Rules every store follows (the conformance suite in ``tests/limits`` runs
against each one):

1. Time is the ``now`` the engine passes (seconds since the epoch), never
   the store's own clock, so every worker and replica counts on one time
   line and tests run on an injected clock. A counter's ``period`` is in
   seconds.
2. ``used`` is, for a WINDOW, the entries added in ``(now - period, now]``;
   for a BUCKET, ``limit`` minus its level, which refills at
   ``limit / period`` a second up to ``limit``; for a LEASE, the leases not
   expired at ``now``; for a TOTAL, its value.
3. ``admit`` refuses when any counter has ``used >= limit``, and then
   changes nothing. Otherwise it adds the call to every counter: a WINDOW
   entry, ``amount`` taken from a BUCKET (its level may go below 0), a LEASE
   until ``now + period``, ``amount`` added to a TOTAL, which then expires
   ``period`` seconds after ``now``.
4. A refusal says, for each counter at its limit, how long until it frees
   up: a WINDOW until its oldest entry in the way leaves it, a BUCKET until
   its level is back above 0; LEASE and TOTAL say 0 (the engine knows their
   answer: a lease's end is unknown, a total's is its calendar period's).
5. ``settle`` adds ``amount`` to a BUCKET's use (a refund when negative;
   never above ``limit`` of level) or to a TOTAL (expiring ``period`` after
   ``now``), ends the call's LEASE, and leaves a WINDOW alone.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Final, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "BUCKET",
    "LEASE",
    "TOTAL",
    "WINDOW",
    "Charge",
    "InProcessStore",
    "LimitCounter",
    "LimitStore",
]

WINDOW: Final = "window"  # requests per minute: an exact sliding window of entries
BUCKET: Final = "bucket"  # tokens per minute: a token bucket
LEASE: Final = "lease"  # concurrent calls: leases that expire unless renewed
TOTAL: Final = "total"  # calendar budgets: a number that expires with its period

_SWEEP_EVERY: Final = 1024  # admissions between two sweeps of expired counters


class LimitCounter(NamedTuple):
    """One counter of one limit (for one caller, in one period).

    Attributes:
        key: its unique name, such as ``per-key/tokens_per_day/api_key_id=k1/2025-06-14``.
        kind: WINDOW, BUCKET, LEASE or TOTAL.
        limit: the use at which it refuses.
        period: seconds: the window, the time a bucket takes to refill, a
            lease's lifetime, or how long a total lives after its last change.
    """

    key: str
    kind: str
    limit: float
    period: float


Charge = tuple[LimitCounter, float]  # a counter and the amount to add (see the rules)


@runtime_checkable
class LimitStore(Protocol):
    """What a limit store offers (see the rules at the top of ``_limit_store.py``)."""

    async def admit(
        self, now: float, call: str, charges: Sequence[Charge]
    ) -> tuple[bool, list[float]]:
        """Add ``call`` to every counter, or to none.

        Returns:
            ``(True, used)``: admitted, each counter's use after it;
            ``(False, waits)``: refused, for each counter the seconds until it
            frees up (rule 4), or -1 for a counter that was not at its limit.
        """
        ...

    async def settle(self, now: float, call: str, charges: Sequence[Charge]) -> list[float]:
        """Apply what ``call`` really used (rule 5); returns each counter's use after."""
        ...

    async def renew(self, now: float, leases: Sequence[tuple[LimitCounter, str]]) -> None:
        """Extend each ``(counter, call)`` lease that still exists to ``now + period``."""
        ...

    async def read(self, now: float, counters: Sequence[LimitCounter]) -> list[float]:
        """Each counter's use at ``now``, changing nothing."""
        ...

    async def keys(self, prefix: str) -> list[str]:
        """The keys of the counters that exist and start with ``prefix``."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds (connections)."""
        ...


class _Window:
    __slots__ = ("entries", "period")

    def __init__(self, period: float) -> None:
        self.entries: deque[float] = deque()
        self.period = period


class _Bucket:
    __slots__ = ("at", "full_at", "level")

    def __init__(self, level: float, at: float) -> None:
        self.level = level
        self.at = at
        self.full_at = at


class InProcessStore:
    """Counters in this process's memory: the default store.

    Nothing to run and nothing shared: every process (each worker of
    ``serve --workers N``) counts on its own, and counters start from zero
    when the process starts (``Limiter.replay`` seeds calendar budgets from
    a usage ledger). Safe to share between event loops in threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._totals: dict[str, list[float]] = {}  # key -> [value, expires at]
        self._admitted = 0

    # -- the operations ---------------------------------------------------------

    async def admit(
        self, now: float, call: str, charges: Sequence[Charge]
    ) -> tuple[bool, list[float]]:
        return self.admit_now(now, call, charges)

    def admit_now(
        self, now: float, call: str, charges: Sequence[Charge]
    ) -> tuple[bool, list[float]]:
        """:meth:`admit` without a coroutine (this store never waits)."""
        with self._lock:
            used = [self._used(now, counter) for counter, _ in charges]
            for u, (counter, _) in zip(used, charges, strict=True):
                if u >= counter.limit:
                    return False, [
                        self._wait(now, c, u) if u >= c.limit else -1.0
                        for u, (c, _) in zip(used, charges, strict=True)
                    ]
            after = [
                self._add(now, call, counter, amount, u)
                for u, (counter, amount) in zip(used, charges, strict=True)
            ]
            self._admitted += 1
            if self._admitted % _SWEEP_EVERY == 0:
                self._sweep(now)
            return True, after

    def windows_now(self, now: float, counters: Sequence[LimitCounter]) -> int:
        """Admit a call on minute windows only (the fast path of the common
        limit): the index of the first window that is full (nothing counted),
        or -1 (counted in every one)."""
        with self._lock:
            windows = self._windows
            for index, (key, _, limit, period) in enumerate(counters):
                window = windows.get(key)
                if window is not None:
                    entries = window.entries
                    while entries and entries[0] <= now - period:
                        entries.popleft()
                    if len(entries) >= limit:
                        return index
            for key, _, _, period in counters:
                window = windows.get(key)
                if window is None:
                    window = windows[key] = _Window(period)
                window.entries.append(now)
            self._admitted += 1
            if self._admitted % _SWEEP_EVERY == 0:
                self._sweep(now)
            return -1

    def windows_waits(self, now: float, counters: Sequence[LimitCounter], full: int) -> list[float]:
        """After :meth:`windows_now` refused at ``full``: each window's wait
        until it frees up (-1 for those not full), as :meth:`admit` gives them."""
        with self._lock:
            waits = []
            for index, counter in enumerate(counters):
                used = self._used(now, counter)
                full_now = index == full or used >= counter.limit
                waits.append(self._wait(now, counter, used) if full_now else -1.0)
            return waits

    async def settle(self, now: float, call: str, charges: Sequence[Charge]) -> list[float]:
        return self.settle_now(now, call, charges)

    def settle_now(self, now: float, call: str, charges: Sequence[Charge]) -> list[float]:
        """:meth:`settle` without a coroutine."""
        with self._lock:
            after = []
            for counter, amount in charges:
                if counter.kind == LEASE:
                    leases = self._leases.get(counter.key)
                    if leases is not None:
                        leases.pop(call, None)
                    after.append(self._used(now, counter))
                elif counter.kind == WINDOW:
                    after.append(self._used(now, counter))
                else:
                    after.append(self._add(now, call, counter, amount, self._used(now, counter)))
            return after

    async def renew(self, now: float, leases: Sequence[tuple[LimitCounter, str]]) -> None:
        with self._lock:
            for counter, call in leases:
                held = self._leases.get(counter.key)
                if held is not None and call in held:
                    held[call] = now + counter.period

    async def read(self, now: float, counters: Sequence[LimitCounter]) -> list[float]:
        return self.read_now(now, counters)

    def read_now(self, now: float, counters: Sequence[LimitCounter]) -> list[float]:
        """:meth:`read` without a coroutine."""
        with self._lock:
            return [self._used(now, counter) for counter in counters]

    async def keys(self, prefix: str) -> list[str]:
        with self._lock:
            names = [*self._windows, *self._buckets, *self._leases, *self._totals]
            return sorted(key for key in names if key.startswith(prefix))

    async def aclose(self) -> None:
        return None

    # -- the counters (under the lock) --------------------------------------------

    def _used(self, now: float, counter: LimitCounter) -> float:
        key, kind, limit, period = counter
        if kind == WINDOW:
            window = self._windows.get(key)
            if window is None:
                return 0.0
            entries = window.entries
            while entries and entries[0] <= now - period:
                entries.popleft()
            return float(len(entries))
        if kind == BUCKET:
            bucket = self._buckets.get(key)
            if bucket is None:
                return 0.0
            level = min(limit, bucket.level + (now - bucket.at) * limit / period)
            return limit - level
        if kind == LEASE:
            leases = self._leases.get(key)
            if not leases:
                return 0.0
            for call in [c for c, until in leases.items() if until <= now]:
                del leases[call]
            return float(len(leases))
        total = self._totals.get(key)
        return total[0] if total is not None and total[1] > now else 0.0

    def _wait(self, now: float, counter: LimitCounter, used: float) -> float:
        if counter.kind == WINDOW:
            oldest = self._windows[counter.key].entries[int(used - counter.limit)]
            return oldest + counter.period - now
        if counter.kind == BUCKET:
            return (used - counter.limit) * counter.period / counter.limit
        return 0.0

    def _add(
        self, now: float, call: str, counter: LimitCounter, amount: float, used: float
    ) -> float:
        """Add ``amount`` to a counter whose use is ``used``; its use after."""
        key, kind, limit, period = counter
        if kind == WINDOW:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(period)
            window.entries.append(now)
            return used + 1
        if kind == BUCKET:
            level = min(limit, limit - used - amount)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(level, now)
            bucket.level, bucket.at = level, now
            bucket.full_at = now + (limit - level) * period / limit
            return limit - level
        if kind == LEASE:
            self._leases.setdefault(key, {})[call] = now + period
            return used + 1
        if period <= 0:  # a total whose period is over is not made again
            return used
        value = max(0.0, used + amount)
        self._totals[key] = [value, now + period]
        return value

    def _sweep(self, now: float) -> None:
        """Forget counters that hold nothing any more."""
        windows = self._windows
        for key in [
            k for k, w in windows.items() if not w.entries or w.entries[-1] <= now - w.period
        ]:
            del windows[key]
        for key in [k for k, b in self._buckets.items() if b.full_at <= now]:
            del self._buckets[key]
        for key in [k for k, leases in self._leases.items() if not leases]:
            del self._leases[key]
        for key in [k for k, (_, until) in self._totals.items() if until <= now]:
            del self._totals[key]
