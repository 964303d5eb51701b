"""What limits mean for one call: its counters, what it reserves, what it owes.

Sans-I/O, like the breaker: :class:`Rules` never reads a clock nor touches a
store. The limiter (``_limiter.py``) passes ``now`` and carries the charges
it computes to the store. Counter keys (what a store sees) are::

    LIMIT/KIND                              agents/requests_per_minute
    LIMIT/KIND/KEY=VALUE...                 per-key/concurrent/api_key_id=k1
    LIMIT/KIND[/KEY=VALUE...]/PERIOD        per-key/tokens_per_day/api_key_id=k1/2025-06-14

with each value percent-encoded, so no caller's value can reach into another
counter's key. The values the limiter hands out (:class:`Ticket`,
:class:`Refusal`, :class:`LimitUse`) are here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from types import MappingProxyType
from typing import Final, NamedTuple
from urllib.parse import quote, unquote

from ._calendar import Calendar
from ._estimate import Estimate
from ._limit_store import BUCKET, LEASE, TOTAL, WINDOW, Charge, LimitCounter
from ._limits import KINDS, CallIdentity, Kind, Limit, Price, TokenUsage
from ._record import CallRecord

__all__ = ["GRACE", "MINUTE", "Held", "LimitUse", "Plan", "Refusal", "Rule", "Rules", "Ticket"]

GRACE: Final = 3600.0  # seconds a calendar total outlives its period, for late settlements
MINUTE: Final = 60.0
MAX_IDENTITIES: Final = 4096  # callers whose matching limits are remembered
_DATED: Final = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")  # gpt-4o-2024-08-06, ...-20241022
_WITHOUT_PERIOD: Final = {"requests_per_minute": WINDOW, "tokens_per_minute": BUCKET,
                          "concurrent": LEASE}  # fmt: skip


class Rule(NamedTuple):
    """One kind of one limit, for one caller."""

    limit: Limit
    kind: str
    spec: Kind
    amount: float
    base: str  # the counter key, less the calendar period
    counter: LimitCounter | None  # the counter itself, for the kinds without a period
    shared: bool  # no "*" in the match: one counter for every caller


class Plan(NamedTuple):
    """What the limits that match one caller ask of each of its calls."""

    rules: tuple[Rule, ...]
    estimates: bool  # a rule counts tokens or spend: the call's estimate is needed
    # Every rule a minute window, counted at admission and owing nothing after:
    # their counters, for the in-process store's fast path (else None).
    windows: tuple[LimitCounter, ...] | None


class Held(NamedTuple):
    """A rule's counter as a call was admitted on it."""

    rule: Rule
    counter: LimitCounter
    reserved: float  # what admission charged (or would have, with the store down)
    end: float  # a calendar period's end, else 0


class Rules:
    """The limits and prices of one limiter, turned into counters and charges."""

    def __init__(
        self,
        limits: Sequence[Limit],
        prices: Mapping[str, Price],
        zone: str | tzinfo,
        lease_seconds: float,
    ) -> None:
        names = [limit.name for limit in limits]
        for limit in limits:
            if not isinstance(limit, Limit):
                raise TypeError(f"limits: expected Limit values, got {limit!r}")
            if (limit.spend_per_day or limit.spend_per_month) and not prices:
                raise ValueError(f"limit {limit.name!r} limits spend: it needs prices")
        if len(set(names)) != len(names):
            raise ValueError(f"limits: each name once, got {names}")
        for model, price in prices.items():
            if not isinstance(price, Price):
                raise TypeError(f"prices[{model!r}]: expected a Price, got {price!r}")
        self.limits = tuple(limits)
        self.prices = MappingProxyType(dict(prices))
        self.calendar = Calendar(zone)
        self.lease_seconds = lease_seconds
        self._matched: dict[CallIdentity, tuple[Rule, ...]] = {}
        self._plans: dict[CallIdentity, Plan | None] = {}
        # calendar counters by rule key: (period start, counter, period end)
        self._periods: dict[str, tuple[float, LimitCounter, float]] = {}
        listed = self.prices.values()
        self._highest = Price(
            max((p.input for p in listed), default=0.0),
            max((p.output for p in listed), default=0.0),
            max((p.cached_input or 0.0 for p in listed), default=0.0),
        )

    # -- counters --------------------------------------------------------------------

    def plan(self, identity: CallIdentity) -> Plan | None:
        """What the limits matching ``identity`` ask (None: none matches); remembered."""
        try:
            return self._plans[identity]
        except KeyError:
            pass
        rules = self.matching(identity)
        plan = None
        if rules:
            estimates = any(rule.spec.measure != "requests" for rule in rules)
            counters = tuple(rule.counter for rule in rules if rule.counter is not None)
            windows_only = len(counters) == len(rules) and all(c.kind == WINDOW for c in counters)
            plan = Plan(rules, estimates, counters if windows_only else None)
        if len(self._plans) >= MAX_IDENTITIES:
            self._plans.clear()
        self._plans[identity] = plan
        return plan

    def matching(self, identity: CallIdentity) -> tuple[Rule, ...]:
        """Every rule of every limit that matches ``identity`` (remembered)."""
        rules = self._matched.get(identity)
        if rules is None:
            values = identity._asdict()
            rules = tuple(
                rule
                for limit in self.limits
                if limit.matches(identity)
                for rule in self.of(limit, values)
            )
            if len(self._matched) >= MAX_IDENTITIES:
                self._matched.clear()
            self._matched[identity] = rules
        return rules

    def of(self, limit: Limit, values: Mapping[str, str | None]) -> list[Rule]:
        """The rules of ``limit`` for the caller whose match values are ``values``."""
        caller = "".join(
            f"/{key}={quote(str(values.get(key) or ''), safe='')}" for key in limit.per_caller
        )
        rules = []
        for kind in limit.kinds:
            amount = float(getattr(limit, kind))
            base = f"{limit.name}/{kind}{caller}"
            store_kind = _WITHOUT_PERIOD.get(kind)
            period = self.lease_seconds if store_kind == LEASE else MINUTE
            counter = LimitCounter(base, store_kind, amount, period) if store_kind else None
            rules.append(Rule(limit, kind, KINDS[kind], amount, base, counter,
                              not limit.per_caller))  # fmt: skip
        return rules

    def counter(self, rule: Rule, now: float) -> tuple[LimitCounter, float]:
        """The rule's counter at ``now``, and its calendar period's end (else 0).

        A calendar total lives its period's length and :data:`GRACE` after
        its last change (which is before the period ends, but for a late
        settlement): long enough, and the same counter all period long."""
        if rule.counter is not None:
            return rule.counter, 0.0
        known = self._periods.get(rule.base)
        if known is not None and known[0] <= now < known[2]:
            return known[1], known[2]
        period = self.calendar.period(rule.spec.period, now)
        ttl = period.end - period.start + GRACE
        counter = LimitCounter(f"{rule.base}/{period.name}", TOTAL, rule.amount, ttl)
        if len(self._periods) >= MAX_IDENTITIES:
            self._periods.clear()
        self._periods[rule.base] = (period.start, counter, period.end)
        return counter, period.end

    def shared(self, now: float) -> list[Held]:
        """The counters of the limits without ``"*"``, at ``now``."""
        held = []
        for limit in self.limits:
            if not limit.per_caller:
                for rule in self.of(limit, {}):
                    counter, end = self.counter(rule, now)
                    held.append(Held(rule, counter, 0.0, end))
        return held

    @staticmethod
    def caller(rule: Rule, key: str) -> tuple[dict[str, str], str | None] | None:
        """The caller values and the period of a counter key of ``rule``'s limit
        and kind (None: the key is not one of its)."""
        prefix = f"{rule.limit.name}/{rule.kind}/"
        if not key.startswith(prefix):
            return None
        parts = key[len(prefix) :].split("/")
        period = parts.pop() if rule.spec.calendar and parts else None
        values = dict(part.split("=", 1) for part in parts if "=" in part)
        if len(values) != len(parts) or set(values) != set(rule.limit.per_caller):
            return None
        return {k: unquote(v) for k, v in values.items()}, period

    # -- prices and charges ------------------------------------------------------------

    def price(self, model: str | None) -> Price:
        """The price of ``model``: its own, that of its undated name
        (``gpt-4o`` for ``gpt-4o-2024-08-06``), ``"*"``'s, else the highest."""
        if model:
            price = self.prices.get(model) or self.prices.get(_DATED.sub("", model))
            if price is not None:
                return price
        return self.prices.get("*") or self._highest

    def admission(self, rules: Sequence[Rule], estimate: Estimate, now: float) -> list[Held]:
        """What a call reserves on each counter: a request, a lease, its
        estimated tokens and spend (each at most the limit)."""
        spend = None
        held = []
        for rule in rules:
            counter, end = (rule.counter, 0.0) if rule.counter else self.counter(rule, now)
            measure = rule.spec.measure
            if measure == "tokens":
                cost = min(float(estimate.tokens), rule.amount)
            elif measure == "spend":
                if spend is None:
                    spend = self.price(estimate.model).estimate(estimate.input, estimate.output)
                cost = min(spend, rule.amount)
            else:
                cost = 1.0
            held.append(Held(rule, counter, cost, end))
        return held

    def settlement(
        self,
        held: Sequence[Held],
        recorded: bool,
        usage: TokenUsage | None,
        model: str | None,
        now: float,
    ) -> list[tuple[Held, Charge]]:
        """What a call owes on each counter once it ended, less what it
        reserved (``recorded``: admission reached the store); leases end."""
        charges = []
        spend: float | None = None
        for item in held:
            counter, measure = item.counter, item.rule.spec.measure
            if counter.kind == WINDOW or (counter.kind == LEASE and not recorded):
                continue
            if counter.kind == LEASE:
                charges.append((item, (counter, 0.0)))
                continue
            if measure == "requests":
                used = 1.0
            elif usage is None:
                used = item.reserved
            elif measure == "tokens":
                used = float(usage.tokens)
            else:
                if spend is None:
                    spend = self.price(model).cost(usage)
                used = spend
            delta = used - item.reserved if recorded else used
            if counter.kind == TOTAL and now >= item.end:  # a call that ended after its period
                counter = counter._replace(period=item.end + GRACE - now)
            if delta:
                charges.append((item, (counter, delta)))
        return charges

    def replayed(self, records: Iterable[CallRecord], now: float) -> tuple[list[Charge], int]:
        """The day and month totals of past calls that fall in the current
        periods, and how many calls did."""
        totals: dict[str, tuple[LimitCounter, float]] = {}
        counted = 0
        for record in records:
            identity = CallIdentity(record.source, record.api_key_id, record.client,
                                    record.provider, record.target)  # fmt: skip
            prompt = record.input_tokens or 0
            usage = TokenUsage(prompt, record.output_tokens or 0,
                               min(record.cached_input_tokens or 0, prompt))  # fmt: skip
            matched = False
            for rule in self.matching(identity):
                if not rule.spec.calendar:
                    continue
                counter, end = self.counter(rule, now)
                if not self.calendar.period(rule.spec.period, now).start <= record.started < end:
                    continue
                measure = rule.spec.measure
                if measure == "requests":
                    amount = 1.0
                elif measure == "tokens":
                    amount = float(usage.tokens)
                else:
                    amount = self.price(record.response_model or record.request_model).cost(usage)
                totals[counter.key] = (counter, totals.get(counter.key, (counter, 0.0))[1] + amount)
                matched = True
            counted += matched
        return list(totals.values()), counted


class Ticket:
    """An admitted call's claim on its limits: hand it to :meth:`Limiter.settle`."""

    __slots__ = (
        "__weakref__",
        "call",
        "held",
        "identity",
        "model",
        "owes",
        "recorded",
        "settled",
    )

    def __init__(
        self,
        call: str,
        identity: CallIdentity,
        held: Sequence[Held],
        model: str | None,
        recorded: bool,
    ) -> None:
        self.call = call
        self.identity = identity
        self.held = held
        self.model = model
        self.recorded = recorded  # False: admitted while the store was unreachable
        self.settled = False
        # Whether settling it changes anything: tokens, spend, budgets or a
        # lease (a minute window counts the call at admission, once and for all).
        self.owes = not recorded

    def __repr__(self) -> str:
        limits = sorted({h.rule.limit.name for h in self.held})
        return f"<Ticket {self.call} limits={limits} recorded={self.recorded}>"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call may not run now.

    Attributes:
        limit: the limit that refused it (the one that frees up last).
        kind: which of its kinds (``requests_per_minute``...).
        reason: ``rate-limited`` (per minute, concurrency), ``budget-exhausted``
            (day and month budgets) or ``store-unavailable``.
        retry_after: seconds until the call may pass (for ``Retry-After``).
        status: 429, or 503 for ``store-unavailable``.
        message: one sentence for the caller.
    """

    limit: str
    kind: str
    reason: str
    retry_after: float
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class LimitUse:
    """One counter of a limit, as :meth:`Limiter.usage` lists it.

    Attributes:
        limit, kind: which limit and kind.
        caller: the values of the match's ``"*"`` keys ({} without any).
        used: what is used (tokens and spend reserved by running calls included).
        allowed: the limit.
        remaining: ``allowed - used``, at least 0.
        period: the calendar period (``2025-06-14``, ``2025-06``) or None.
        resets: when that period ends, seconds since the epoch (None: no period).
    """

    limit: str
    kind: str
    caller: Mapping[str, str]
    used: float
    allowed: float
    remaining: float
    period: str | None = None
    resets: float | None = None
