"""Retry arithmetic: the retry budget, backoff with jitter, ``Retry-After``.

Pure: nothing here reads a clock or draws randomness of its own. Times are
seconds; ``now`` is monotonic, except in :func:`parse_retry_after`, whose
HTTP-date form needs the wall clock (``time.time()``).

Rules of the budget (after Linkerd's retry budget and tower's ``TpsBudget``):

Rule 1, what counts. ``request(now)`` is called once per caller request that
reaches the provider (its first attempt there, a fallback's included);
``try_spend(now)`` once before each retry, which goes ahead only if granted.
Retries do not count as requests.

Rule 2, the window. Counts are kept in ``ceil(window)`` buckets of equal
width (at most one second), a ring: the window at ``now`` is the bucket
holding ``now`` and the ones before it, ``window`` seconds in all. Memory is
O(window), whatever the traffic.

Rule 3, the grant. A retry is granted at ``now`` exactly when, counting the
window's buckets, ``retries + 1 <= ratio * requests + floor * span``, where
``span = now - max(first - width, start of the window's oldest bucket)``:
the seconds the window covers, at most ``window``, and ``first`` is the time
of the first call. Granted retries are counted in ``now``'s bucket.

Rule 4, what that guarantees. From the first call up to any time t, in all:
retries <= ratio x requests + floor x (t - first + width). So attempts
(requests plus retries) stay within (1 + ratio) x requests plus ``floor`` per
second, plus one bucket's worth (``floor`` retries with one-second buckets),
which lets a fresh provider retry its very first failure. The retries of any
one window are at most ratio x the requests of it and the window before it,
plus floor x window (of it alone, just after a grant).
"""

from __future__ import annotations

import math
import random
import re
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = ["RetryBudget", "backoff", "jittered", "parse_retry_after"]

_EPSILON: Final = 1e-9  # so that ratio * requests == 3.0000000000000004 still grants 3
_DELTA_SECONDS: Final = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


class RetryBudget:
    """How many retries a provider may get: a ratio of its recent requests
    plus a floor per second (the rules are at the top of this file).

    Args:
        ratio: retries per request the budget allows (0.2: retries add at
            most 20% to the requests), >= 0.
        floor: retries per second allowed even when the ratio is spent, >= 0.
        window: seconds of history the ratio applies to, > 0.

    Raises:
        ValueError: an argument is out of range.
    """

    __slots__ = (
        "_first",
        "_floor",
        "_from",
        "_newest",
        "_ratio",
        "_requests",
        "_retries",
        "_slot",
        "_until",
        "_width",
    )

    def __init__(self, ratio: float, floor: float, window: float = 10.0) -> None:
        self._ratio = _check("ratio", ratio)
        self._floor = _check("floor", floor)
        window = _check("window", window, positive=True)
        buckets = math.ceil(window)
        self._width = window / buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._newest = 0  # the absolute number of the bucket holding the latest `now`
        self._first: float | None = None  # the time of the first call
        # The newest bucket's times [from, until) and index, for request()'s
        # common case; empty until the first call.
        self._from, self._until, self._slot = math.inf, -math.inf, 0

    def retune(self, ratio: float, floor: float) -> None:
        """Take a new ratio and floor, keeping the window's counts (a policy
        change must not hand a provider a fresh budget)."""
        self._ratio = _check("ratio", ratio)
        self._floor = _check("floor", floor)

    def request(self, now: float) -> None:
        """Count one caller request at monotonic time ``now`` (Rule 1)."""
        if self._from <= now < self._until:
            self._requests[self._slot] += 1  # the common case: the newest bucket
            return
        self._requests[self._advance(now) % len(self._requests)] += 1

    def try_spend(self, now: float) -> bool:
        """Grant one retry at monotonic time ``now`` if the budget allows it
        (Rule 3), and count it.

        Returns:
            True: retry; False: the budget is spent, do not retry.
        """
        newest = self._advance(now)
        first = now if self._first is None else self._first
        buckets = len(self._requests)
        oldest_start = (newest - buckets + 1) * self._width
        span = max(0.0, now - max(first - self._width, oldest_start))
        allowed = self._ratio * sum(self._requests) + self._floor * span
        if sum(self._retries) + 1 > allowed + _EPSILON:
            return False
        self._retries[newest % buckets] += 1
        return True

    def _advance(self, now: float) -> int:
        """Move the window to ``now``, emptying the buckets it leaves behind;
        return the number of ``now``'s bucket."""
        bucket = math.floor(now / self._width)
        if self._first is None:
            self._first, self._newest = now, bucket
        elif bucket > self._newest:
            buckets = len(self._requests)
            for stale in range(self._newest + 1, min(bucket, self._newest + buckets) + 1):
                self._requests[stale % buckets] = self._retries[stale % buckets] = 0
            self._newest = bucket
        else:
            return self._newest  # a clock that stepped back counts in the newest bucket
        newest = self._newest
        self._from, self._until = newest * self._width, (newest + 1) * self._width
        self._slot = newest % len(self._requests)
        return newest


def _check(name: str, value: float, *, positive: bool = False) -> float:
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"RetryBudget.{name}: expected a number {bound}, got {value!r}")
    return float(value)


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before a retry: exponential backoff with full jitter,
    ``uniform(0, min(cap, base * 2**attempt))``.

    Args:
        attempt: 0 for the first retry, 1 for the second, ...
        base: seconds, the ceiling of the first retry's wait.
        cap: seconds, the ceiling of every wait.
        rng: the random source (seeded in tests).

    Raises:
        ValueError: ``attempt`` is negative.
    """
    if attempt < 0:
        raise ValueError(f"backoff: attempt must be >= 0, got {attempt}")
    # 2.0**1024 overflows; any sane base reaches any sane cap long before 2**64
    ceiling = cap if attempt >= 64 else min(cap, base * 2.0**attempt)
    return rng.uniform(0.0, ceiling)


def jittered(wait: float, rng: random.Random) -> float:
    """``wait`` (an upstream's ``Retry-After``, in seconds) plus up to 10% of
    it or 100 ms, whichever is more, so that callers told the same time do
    not all come back in the same millisecond."""
    return wait + rng.uniform(0.0, max(0.1 * wait, 0.1))


def parse_retry_after(value: str, wall_now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value.

    Both forms of RFC 9110: delay-seconds (``"120"``; a decimal such as
    ``"1.5"`` is accepted too) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00
    GMT"``, and the obsolete RFC 850 and asctime forms, read as GMT).

    Args:
        value: the header's value.
        wall_now: the wall clock, seconds since the epoch (``time.time()``),
            which an HTTP-date is measured from.

    Returns:
        Seconds >= 0 (a date in the past or a negative delay gives 0.0), or
        None when the value is neither form.
    """
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return max(0.0, float(text))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000" or no zone: HTTP-dates are GMT
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - wall_now)
