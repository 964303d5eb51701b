"""Traffic policies as values: a provider's :class:`Policy` and a :class:`Route`.

Pure data: frozen, hashable, checked when made (a ValueError names the field:
``Policy.retries: expected an integer >= 0, got -1``); collections may be any
iterable, stored as a frozenset or tuple. Durations are seconds, ratios
fractions, sizes bytes; a *condition* is a status or a RETRY_CONDITIONS name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from types import MappingProxyType
from typing import Final

from ._names import PROVIDER
from ._reasons import Reason

__all__ = [
    "BREAKER_CONDITIONS",
    "BREAKER_ON_DEFAULT",
    "RETRY_CONDITIONS",
    "RETRY_ON_DEFAULT",
    "CircuitBreaker",
    "Fault",
    "Policy",
    "Route",
]

RETRY_CONDITIONS: Final[frozenset[str]] = frozenset(
    {str(Reason.CONNECT_FAILURE), str(Reason.FIRST_BYTE_TIMEOUT)}
)
# A breaker also knows the call's whole timeout firing before the response head.
BREAKER_CONDITIONS: Final[frozenset[str]] = RETRY_CONDITIONS | {str(Reason.TIMEOUT)}
RETRY_ON_DEFAULT: Final[frozenset[int | str]] = (
    frozenset({429, 502, 503, 504, 529}) | RETRY_CONDITIONS
)
# What callers suffer, as Envoy's outlier detection counts it: 5xx, 429 and
# local failures (connect failures and both timeouts).
BREAKER_ON_DEFAULT: Final[frozenset[int | str]] = RETRY_ON_DEFAULT | BREAKER_CONDITIONS | {500}


def _bad(obj: object, field: str, expected: str, value: object) -> ValueError:
    return ValueError(f"{type(obj).__name__}.{field}: expected {expected}, got {value!r}")


def _check(
    obj: object,
    field: str,
    low: float = 0,
    high: float = math.inf,
    *,
    above: bool = False,
    integer: bool = False,
    unit: str = "",
    optional: bool = False,
) -> None:
    """Check ``obj.field`` is in ``low`` (excluded if ``above``) .. ``high``; store it."""
    value = getattr(obj, field)
    if value is None and optional:
        return
    number = _number(value, integer)
    if not ((number > low if above else number >= low) and number <= high):
        bounds = f"{'>' if above else '>='} {low:g}"
        if high < math.inf:
            bounds = f"in {low}..{high}" if integer else f"in [{low:g}, {high:g}]"
        expected = f"{'an integer' if integer else 'a number'}{unit} {bounds}"
        raise _bad(obj, field, expected + (" or None" if optional else ""), value)
    object.__setattr__(obj, field, int(number) if integer else float(number))


def _number(value: object, integer: bool = False) -> float:
    """``value`` if it is a finite number (an int if ``integer``), else NaN."""
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        return math.nan
    with contextlib.suppress(OverflowError):
        if math.isfinite(value):
            return value
    return math.nan


def _items(obj: object, field: str, expected: str) -> tuple[object, ...]:
    value = getattr(obj, field)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _bad(obj, field, expected, value)
    return tuple(value)


def _conditions(obj: object, field: str, names: frozenset[str] = RETRY_CONDITIONS) -> None:
    quoted = [f"'{n}'" for n in sorted(names)]
    expected = f"HTTP statuses (100..599) and {', '.join(quoted[:-1])} or {quoted[-1]}"
    found: set[int | str] = set()
    for item in _items(obj, field, f"a collection of {expected}"):
        if isinstance(item, str) and item in names:
            found.add(str(item))
        elif isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            found.add(int(item))
        else:
            raise _bad(obj, field, expected, item)
    object.__setattr__(obj, field, frozenset(found))


def _name(where: str, value: object) -> str:
    try:
        return PROVIDER.check(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """When a provider's circuit opens, and for how long (see ``_breaker.py``).

    Attributes:
        failures: failures within ``interval`` that open the circuit (>= 1).
        interval: seconds a failure is remembered while closed (> 0).
        open_for: seconds the circuit stays open before it is half-open (> 0).
        max_open_for: each reopening from half-open doubles ``open_for``, up to
            this many seconds (> 0; never less than ``open_for``).
        half_open: probes admitted while half-open, all to succeed to close it (>= 1).
        on: the outcomes counted as failures (statuses and conditions); the
            mesh's own timeouts and broken connections count whatever it says,
            and a probe succeeds only with an answer neither in ``on`` nor a 5xx.
    """

    failures: int = 5
    interval: float = 10.0
    open_for: float = 30.0
    half_open: int = 3
    on: frozenset[int | str] = BREAKER_ON_DEFAULT
    max_open_for: float = 300.0

    def __post_init__(self) -> None:
        _check(self, "failures", 1, integer=True)
        _check(self, "interval", above=True, unit=" of seconds")
        _check(self, "open_for", above=True, unit=" of seconds")
        _check(self, "max_open_for", above=True, unit=" of seconds")
        _check(self, "half_open", 1, integer=True)
        _conditions(self, "on", BREAKER_CONDITIONS)


@dataclass(frozen=True, slots=True)
class Fault:
    """Faults injected into a provider's requests, for testing its callers.

    Attributes:
        delay: seconds a delayed request waits before reaching the provider (>= 0).
        delay_ratio: the fraction of requests delayed, in [0, 1].
        abort: the status an aborted request gets at once, in 400..599.
        abort_ratio: the fraction of requests aborted, in [0, 1].
    """

    delay: float = 0.0
    delay_ratio: float = 0.0
    abort: int = 503
    abort_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check(self, "delay", unit=" of seconds")
        _check(self, "delay_ratio", 0, 1)
        _check(self, "abort", 400, 599, integer=True)
        _check(self, "abort_ratio", 0, 1)


@dataclass(frozen=True, slots=True)
class Policy:
    """What the mesh does for one provider's requests. None is off; the retry
    tuning (``retry_on`` to ``replay_limit``) has safe defaults.

    Attributes:
        timeout: seconds (> 0) from the request's start to the end of the body.
        first_byte_timeout: seconds (> 0) from the start to the response headers.
        idle_timeout: the longest gap, seconds (> 0), between two body chunks.
        retries: extra attempts, only before any response byte reached the caller.
        retry_on: the outcomes that are retried (statuses and conditions).
        retry_backoff: ``(base, cap)``, seconds, ``0 <= base <= cap``: full-jitter
            exponential backoff; a ``Retry-After`` above ``cap``: no retry.
        retry_budget: retries add at most this fraction (>= 0) to 10 s of requests.
        retry_floor: retries per second (>= 0) allowed even when the budget is spent.
        replay_limit: request bodies larger than this many bytes are never retried.
        fallback: providers tried in order if this one fails before the first byte.
        max_in_flight: requests at once (>= 1); beyond it, an immediate 503.
        fallback_on_overload: whether a provider of the call's chain (this
            one, or a fallback) that is at its ``max_in_flight`` passes the
            call on to the next fallback instead of answering 503.
        circuit_breaker, fault: a :class:`CircuitBreaker`, :class:`Fault` or None.
    """

    timeout: float | None = None
    first_byte_timeout: float | None = None
    idle_timeout: float | None = None
    retries: int = 0
    retry_on: frozenset[int | str] = RETRY_ON_DEFAULT
    retry_backoff: tuple[float, float] = (0.1, 2.0)
    retry_budget: float = 0.2
    retry_floor: float = 3.0
    replay_limit: int = 65536
    fallback: tuple[str, ...] = ()
    max_in_flight: int | None = None
    circuit_breaker: CircuitBreaker | None = None
    fault: Fault | None = None
    fallback_on_overload: bool = False

    def __post_init__(self) -> None:
        for field in ("timeout", "first_byte_timeout", "idle_timeout"):
            _check(self, field, above=True, unit=" of seconds", optional=True)
        _check(self, "retries", integer=True)
        _conditions(self, "retry_on")
        backoff = "a pair (base, cap) of seconds with 0 <= base <= cap"
        pair = tuple(map(_number, _items(self, "retry_backoff", backoff)))
        if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
            raise _bad(self, "retry_backoff", backoff, self.retry_backoff)
        object.__setattr__(self, "retry_backoff", tuple(map(float, pair)))
        _check(self, "retry_budget")
        _check(self, "retry_floor", unit=" of retries per second")
        _check(self, "replay_limit", integer=True)
        names = _items(self, "fallback", "a sequence of provider names")
        fallback = tuple(_name(f"Policy.fallback[{i}]", name) for i, name in enumerate(names))
        if len(set(fallback)) != len(fallback):
            raise _bad(self, "fallback", "each provider once", list(fallback))
        object.__setattr__(self, "fallback", fallback)
        _check(self, "max_in_flight", 1, integer=True, optional=True)
        if not isinstance(self.fallback_on_overload, bool):
            raise _bad(self, "fallback_on_overload", "True or False", self.fallback_on_overload)
        for field, kind in (("circuit_breaker", CircuitBreaker), ("fault", Fault)):
            value = getattr(self, field)
            if value is not None and not isinstance(value, kind):
                raise _bad(self, field, f"a {kind.__name__} or None", value)


@dataclass(frozen=True, slots=True)
class Route:
    """A virtual name whose requests are split between providers by weight.

    Attributes:
        split: provider name -> weight (an int >= 0, 0 takes no traffic; total > 0).
        weights: the same as ``(provider, weight)`` pairs in name order.
        sticky: None (pick at random), ``"api_key_id"`` or ``"source"``: the
            same key always lands on the same provider while the weights hold.
    """

    split: Mapping[str, int]
    sticky: str | None = None
    weights: tuple[tuple[str, int], ...] = dataclasses.field(init=False, repr=False, compare=False)
    # for _split.pick: the names and their cumulative weights, made once
    _bounds: tuple[tuple[str, ...], tuple[int, ...]] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.split, Mapping):
            raise _bad(self, "split", "a mapping of provider name to weight", self.split)
        for name, weight in self.split.items():
            _name("Route.split", name)
            if not _number(weight, integer=True) >= 0:
                raise _bad(self, f"split[{name!r}]", "an integer weight >= 0", weight)
        if not any(self.split.values()):
            raise _bad(self, "split", "at least one weight > 0", dict(self.split))
        if self.sticky is not None and self.sticky not in ("api_key_id", "source"):
            raise _bad(self, "sticky", "None, 'api_key_id' or 'source'", self.sticky)
        weights = tuple(sorted(self.split.items()))
        bounds = tuple(name for name, _ in weights), tuple(accumulate(w for _, w in weights))
        object.__setattr__(self, "split", MappingProxyType(dict(weights)))
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "_bounds", bounds)

    def __hash__(self) -> int:
        return hash((self.weights, self.sticky))
