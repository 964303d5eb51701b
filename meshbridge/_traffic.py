"""Traffic policies at run time: the mesh's policies, routes and their state.

:class:`Traffic` holds, for one mesh, every provider's :class:`Policy` with
its live state (a :class:`Guard`: circuit breaker, retry budget, requests in
flight) and every route's split. It makes the decisions that need no I/O, on
an injected clock and random source: which provider a route's request goes
to, whether a provider may be tried now, how long to wait before a retry.
The relay (``_relay.py``) asks and tells it; the connector asks it whether a
name is governed by policies at all, so that ungoverned traffic keeps the
direct link and pays nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Final

from ._breaker import Breaker
from ._metrics import Family, MeshMetrics, source_label
from ._policy import Policy, Route
from ._retry import RetryBudget, backoff, jittered
from ._source import Source
from ._split import pick

__all__ = ["Guard", "Live", "Traffic"]

OVERLOADED_RETRY_AFTER: Final = 1  # seconds a caller refused for max_in_flight is told to wait

Clock = Callable[[], float]


class Live:
    """One provider's live state under its policies, kept across policy
    changes: a new policy (a reload, ``set_policy``) takes it over, so the
    calls already running are counted where the next ones are."""

    __slots__ = ("breaker", "budget", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0  # attempts admitted and not ended: what max_in_flight counts
        self.breaker: Breaker | None = None
        self.budget: RetryBudget | None = None


class Guard:
    """One provider's policy and its live state.

    The policy's fields the relay reads on every request are copied flat
    onto the guard (a changed policy gets a new guard, over the same
    :class:`Live`), so that an idle policy costs one attribute read per knob.
    """

    __slots__ = (
        "breaker",
        "breaker_on",
        "budget",
        "candidates",
        "fallback_on_overload",
        "fault",
        "first_byte_timeout",
        "idle_timeout",
        "live",
        "max_in_flight",
        "name",
        "policy",
        "replay_limit",
        "replays",
        "retries",
        "retry_on",
        "timeout",
    )

    def __init__(self, name: str, policy: Policy, live: Live, metrics: MeshMetrics | None) -> None:
        self.name = name
        self.policy = policy
        self.live = live
        if live.budget is None:
            live.budget = RetryBudget(policy.retry_budget, policy.retry_floor)
        else:  # a policy change keeps the window of requests and retries
            live.budget.retune(policy.retry_budget, policy.retry_floor)
        self.budget = live.budget
        config = policy.circuit_breaker
        if config is None:
            live.breaker = None
        elif live.breaker is None or live.breaker.config != config:
            counts = metrics.traffic[Family.CIRCUIT_TRANSITIONS] if metrics is not None else None

            def transition(to: str) -> None:
                if counts is not None:
                    counts.inc(name, to)

            live.breaker = Breaker(config, on_transition=transition)
        self.breaker = live.breaker  # an unchanged breaker keeps its state
        self.breaker_on = config.on if config is not None else frozenset()
        # Flat copies for the relay's every request (see the docstring).
        self.candidates = (name, *[n for n in policy.fallback if n != name])  # in the order tried
        self.timeout = policy.timeout
        self.first_byte_timeout = policy.first_byte_timeout
        self.idle_timeout = policy.idle_timeout
        self.max_in_flight = policy.max_in_flight
        self.fallback_on_overload = policy.fallback_on_overload
        self.retries = policy.retries
        self.retry_on = policy.retry_on
        self.replay_limit = policy.replay_limit
        self.fault = policy.fault
        # Whether a call may be tried again at all, so that its request is worth keeping.
        self.replays = bool(policy.retries or policy.fallback)

    def overloaded(self) -> bool:
        limit = self.max_in_flight
        return limit is not None and self.live.in_flight >= limit


class Traffic:
    """The policies and routes of one mesh, and their live state.

    Args:
        metrics: where rejections, retries, fallbacks and route choices are
            counted (None: nowhere).
        clock: monotonic seconds (``time.monotonic``); tests pass their own.
        rng: the random source of splits, jitter and faults; tests seed it.
    """

    def __init__(
        self,
        metrics: MeshMetrics | None,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        # Read on every request by the connector and the relay (plain dicts;
        # `guards` is changed in place, never rebound: relays keep a reference).
        self.guards: dict[str, Guard] = {}
        self.route_table: dict[str, Route] = {}
        # Each provider's live state, kept across its policy changes (a few
        # numbers per name ever governed).
        self._live: dict[str, Live] = {}
        if metrics is not None:
            metrics.circuit_levels = self.circuit_levels
            metrics.admitted = self.admitted

    # -- the tables ------------------------------------------------------------

    @property
    def policies(self) -> Mapping[str, Policy]:
        return {name: guard.policy for name, guard in self.guards.items()}

    @property
    def routes(self) -> Mapping[str, Route]:
        return dict(self.route_table)

    def set_policy(self, name: str, policy: Policy | None) -> None:
        """Give ``name`` a policy (None: none). An unchanged policy keeps its state."""
        if policy is None:
            self.guards.pop(name, None)
            return
        old = self.guards.get(name)
        if old is not None and old.policy == policy:
            return
        live = self._live.get(name)
        if live is None:
            live = self._live[name] = Live()
        self.guards[name] = Guard(name, policy, live, self.metrics)

    def set_route(self, name: str, route: Route | None) -> None:
        if route is None:
            self.route_table.pop(name, None)
        else:
            self.route_table[name] = route

    def replace(self, policies: Mapping[str, Policy], routes: Mapping[str, Route]) -> None:
        """Install whole new tables (a config reload); unchanged policies keep their state."""
        for name in list(self.guards):
            if name not in policies:
                del self.guards[name]
        for name, policy in policies.items():
            self.set_policy(name, policy)
        self.route_table = dict(routes)

    def governs(self, name: str) -> bool:
        """Whether requests to ``name`` go through the relay (a route, or a policy)."""
        return name in self.guards or name in self.route_table

    def is_route(self, name: str) -> bool:
        return name in self.route_table

    def guard(self, name: str) -> Guard | None:
        return self.guards.get(name)

    # -- decisions ---------------------------------------------------------------

    def choose(self, target: str, source: Source | None, api_key_id: str | None) -> str:
        """The provider a request to ``target`` goes to first (a route's split)."""
        route = self.route_table.get(target)
        if route is None:
            return target
        key = None
        if route.sticky == "api_key_id":
            key = api_key_id
        elif route.sticky == "source":
            key = source
        provider = pick(route, self.rng, key)
        if self.metrics is not None:
            self.metrics.traffic[Family.ROUTE_REQUESTS].inc(target, provider)
        return provider

    def retry_delay(self, guard: Guard, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``attempt`` (0 is the first), or
        None when the upstream's ``Retry-After`` is beyond the backoff cap (a
        ``Retry-After`` wait gets a little jitter)."""
        base, cap = guard.policy.retry_backoff
        if retry_after is not None:
            return jittered(retry_after, self.rng) if retry_after <= cap else None
        return backoff(attempt, base, cap, self.rng)

    def admitted(self) -> dict[str, int]:
        """Attempts each governed provider's policy admitted, not yet ended."""
        return {name: guard.live.in_flight for name, guard in self.guards.items()}

    def circuit_levels(self) -> dict[str, float]:
        now = self.clock()
        return {
            name: guard.breaker.level(now)
            for name, guard in self.guards.items()
            if guard.breaker is not None
        }

    # -- what happened -----------------------------------------------------------

    def count(self, family: Family, *labels: str | None) -> None:
        """Count one event; a ``None`` label (an unset Source) is ``none``."""
        if self.metrics is not None:
            counts = self.metrics.traffic[family].values
            key = labels if None not in labels else tuple(map(source_label, labels))
            counts[key] = counts.get(key, 0) + 1  # type: ignore[index, arg-type]
