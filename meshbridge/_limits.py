"""Limits and prices as values: who may spend what (see ``_limiter.py``).

Pure data, like ``_policy.py``: frozen, hashable, checked when made (a
ValueError names the field: ``Limit.concurrent: expected an integer >= 1,
got 0``). A :class:`Limit` matches calls on who makes them
(:class:`CallIdentity`); a :class:`Price` turns a call's
:class:`TokenUsage` into spend.

Rules of the values:

1. A limit's ``match`` names what a call must have: ``{"source": "agents"}``
   matches calls whose source is ``agents``; ``"*"`` matches every call that
   has a value there and gives each distinct value its own counters
   (``{"api_key_id": "*"}``: one budget per key id; calls without a key id are
   not limited by it). An empty match matches every call, with one counter.
2. Every limit whose match fits a call applies to it, each with its own
   counters; a call is admitted only if all of them admit it.
3. Token counts are input + output as the provider reported them: input
   counts every prompt token (cached ones included), output every generated
   token (reasoning tokens included: every provider bills them as output).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NamedTuple

from ._names import LIMIT, PROVIDER, SOURCE
from ._policy import _bad, _check
from ._reasons import Reason
from ._source import check_api_key_id

__all__ = [
    "KINDS",
    "MATCH_KEYS",
    "CallIdentity",
    "Kind",
    "Limit",
    "Price",
    "TokenUsage",
]

STAR: Final = "*"
MATCH_KEYS: Final = ("source", "api_key_id", "client", "provider", "target")
MAX_AMOUNT: Final = 10**15  # tokens or requests a limit may allow; spend too


class Kind(NamedTuple):
    """What one kind of limit counts, over which period, and what a refusal says."""

    measure: str  # requests, tokens, spend or calls (concurrent)
    period: str  # minute, day, month, or "" (concurrent: no period)
    reason: str  # rate-limited or budget-exhausted

    @property
    def calendar(self) -> bool:
        return self.period in ("day", "month")


_RATE: Final = str(Reason.RATE_LIMITED)
_BUDGET: Final = str(Reason.BUDGET_EXHAUSTED)
# Every kind of limit, by the field (and config key) that sets it, in the order listed.
KINDS: Final[Mapping[str, Kind]] = MappingProxyType(
    {
        "requests_per_minute": Kind("requests", "minute", _RATE),
        "tokens_per_minute": Kind("tokens", "minute", _RATE),
        "concurrent": Kind("calls", "", _RATE),
        "requests_per_day": Kind("requests", "day", _BUDGET),
        "tokens_per_day": Kind("tokens", "day", _BUDGET),
        "tokens_per_month": Kind("tokens", "month", _BUDGET),
        "spend_per_day": Kind("spend", "day", _BUDGET),
        "spend_per_month": Kind("spend", "month", _BUDGET),
    }
)


class CallIdentity(NamedTuple):
    """Who makes a call, as limits match it (None: the call has no such value).

    Attributes:
        source: the caller's Source.
        api_key_id: its delegated API key id.
        client: the gateway client it came through (None: in-process code).
        provider: the provider it is sent to.
        target: the name the caller used (a provider or a route).
    """

    source: str | None = None
    api_key_id: str | None = None
    client: str | None = None
    provider: str | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """A call's tokens as its provider reported them.

    Attributes:
        input: every prompt token, those read from a prompt cache included.
        output: every generated token, reasoning tokens included.
        cached_input: the part of ``input`` read from a prompt cache.
    """

    input: int = 0
    output: int = 0
    cached_input: int = 0

    def __post_init__(self) -> None:
        for field in ("input", "output", "cached_input"):
            _check(self, field, 0, MAX_AMOUNT, integer=True)
        if self.cached_input > self.input:
            raise _bad(self, "cached_input", f"at most input ({self.input})", self.cached_input)

    @classmethod
    def from_counts(
        cls, input: int, output: int, cache_read: int = 0, cache_write: int = 0
    ) -> TokenUsage:
        """From the counts a provider gives ``record_tokens`` (and the
        ``meshbridge_tokens_total`` types), where ``input`` excludes the
        cache: tokens written to a cache are billed as input here."""
        return cls(input + cache_read + cache_write, output, cache_read)

    @property
    def tokens(self) -> int:
        return self.input + self.output


@dataclass(frozen=True, slots=True)
class Price:
    """What a model's tokens cost, per million tokens, in the currency of the
    spend limits.

    Attributes:
        input: a prompt token (>= 0).
        output: a generated token, reasoning tokens included (>= 0).
        cached_input: a prompt token read from a cache (>= 0; None: ``input``).
    """

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        _check(self, "input", 0, MAX_AMOUNT, unit=" per million tokens")
        _check(self, "output", 0, MAX_AMOUNT, unit=" per million tokens")
        _check(self, "cached_input", 0, MAX_AMOUNT, unit=" per million tokens", optional=True)
        if self.cached_input is None:
            object.__setattr__(self, "cached_input", self.input)

    def cost(self, usage: TokenUsage) -> float:
        """The spend of ``usage`` at this price."""
        cached = self.cached_input if self.cached_input is not None else self.input
        full = usage.input - usage.cached_input
        return (full * self.input + usage.cached_input * cached + usage.output * self.output) / 1e6

    def estimate(self, input: int, output: int) -> float:
        """The spend of ``input`` prompt tokens (none cached) and ``output`` generated."""
        return (input * self.input + output * self.output) / 1e6


def _match_value(key: str, value: object) -> str:
    if value == STAR:
        return STAR
    where = f"Limit.match[{key!r}]"
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string or '*', got {value!r}")
    try:
        if key == "source":
            SOURCE.check(value)
            if value == "none":
                raise ValueError("'none' is reserved for requests that carry no source")
        elif key == "api_key_id":
            check_api_key_id(value)
        elif key in ("provider", "target"):
            PROVIDER.check(value)
        elif not value or not value.isprintable() or len(value) > 256:
            raise ValueError(f"expected 1 to 256 printable characters, got {value!r}")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return value


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit on the calls its ``match`` fits: at least one kind set, None is off.

    Attributes:
        name: names it in metrics, refusals and listings (lower-case letters,
            digits, '-' or '_').
        match: ``{key: value}`` with keys among ``source``, ``api_key_id``,
            ``client``, ``provider`` and ``target``; ``"*"`` gives each value
            its own counters; empty: every call (see the rules above).
        requests_per_minute: calls admitted in any 60 s (a sliding window).
        tokens_per_minute: tokens per minute, a bucket that refills at
            ``tokens_per_minute / 60`` a second up to ``tokens_per_minute``.
        concurrent: calls running at once.
        requests_per_day, tokens_per_day, tokens_per_month: calendar budgets.
        spend_per_day, spend_per_month: calendar budgets of spend (> 0), in
            the currency of the prices.
    """

    name: str
    match: Mapping[str, str] = dataclasses.field(default_factory=dict)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None
    requests_per_day: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    spend_per_day: float | None = None
    spend_per_month: float | None = None

    def __post_init__(self) -> None:
        try:
            LIMIT.check(self.name)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Limit.name: {error}") from None
        if not isinstance(self.match, Mapping):
            raise _bad(self, "match", "a mapping of match key to value or '*'", self.match)
        match = {}
        for key, value in self.match.items():
            if key not in MATCH_KEYS:
                raise _bad(self, "match", f"keys among {', '.join(MATCH_KEYS)}", key)
            match[key] = _match_value(key, value)
        object.__setattr__(self, "match", MappingProxyType(dict(sorted(match.items()))))
        for field, kind in KINDS.items():
            if kind.measure == "spend":
                _check(self, field, 0, above=True, optional=True)
            else:
                _check(self, field, 1, MAX_AMOUNT, integer=True, optional=True)
        if not self.kinds:
            raise ValueError(f"Limit {self.name!r}: expected at least one of {', '.join(KINDS)}")

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.match.items()), *(self.amount(k) for k in KINDS)))

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this limit sets, in the order of :data:`KINDS`."""
        return tuple(field for field in KINDS if getattr(self, field) is not None)

    def amount(self, kind: str) -> float | None:
        """What the limit allows of ``kind`` (None: that kind is off)."""
        value: float | None = getattr(self, kind)
        return value

    @property
    def per_caller(self) -> tuple[str, ...]:
        """The match keys whose value is ``"*"``: each value has its own counters."""
        return tuple(key for key, value in self.match.items() if value == STAR)

    def matches(self, identity: CallIdentity) -> bool:
        """Whether the limit applies to a call made by ``identity``."""
        for key, wanted in self.match.items():
            value = getattr(identity, key)
            if value is None or (wanted != STAR and value != wanted):
                return False
        return True


def fmt_amount(value: float) -> str:
    """An amount as configured: ``600``, ``50.0`` as ``50``, ``0.25``."""
    return f"{value:.0f}" if math.isclose(value, round(value)) else f"{value:g}"
