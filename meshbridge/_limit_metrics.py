"""The limiter's metrics: plain numbers behind one collector, as the mesh's are.

* ``meshbridge_limited_total{limit,source,reason}``: calls refused.
* ``meshbridge_limit_remaining{limit,kind}``: what a limit has left, for
  limits whose match has no ``"*"`` (one counter each: a caller can never
  add a series); ``meshbridge_limit_allowed{limit,kind}``: what they allow,
  so that a rule can tell how much of a budget is spent.
* ``meshbridge_store_errors_total{operation}``: store operations that failed.
* ``meshbridge_store_up``: 1 while the store answers, 0 after a failure
  until it answers again.

Label values come from the configured limit names, the fixed kinds,
reasons and operations, and the calls' Sources (names chosen by code, the
same bound as every other ``source`` label).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["OPERATIONS", "LimitMetrics"]

OPERATIONS: Final = ("admit", "settle", "renew", "read")


class LimitMetrics:
    """The numbers, and the collector that exposes them on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.limited: dict[tuple[str, str, str], int] = {}
        self.remaining: dict[tuple[str, str], float] = {}
        self.allowed: dict[tuple[str, str], float] = {}
        self.store_errors = dict.fromkeys(OPERATIONS, 0)
        self.store_up = 1
        # Brings ``remaining`` up to date at scrape time (an in-process store's
        # limiter reads its counters then, rather than on every call).
        self.refresh: Callable[[], None] | None = None
        self._registry: CollectorRegistry | None = None
        if registry is not None:
            self.register(registry)

    def register(self, registry: CollectorRegistry) -> None:
        """Register on ``registry``, unless registered on one already."""
        if self._registry is None:
            registry.register(self)
            self._registry = registry

    def unregister(self) -> None:
        """Leave the registry (a limiter replaced by another)."""
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None

    def refused(self, limit: str, source: str, reason: str) -> None:
        key = (limit, source, reason)
        self.limited[key] = self.limited.get(key, 0) + 1

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        if self.refresh is not None:
            self.refresh()
        limited, remaining, allowed, errors, up = self._families()
        for labels, count in list(self.limited.items()):
            limited.add_metric(list(labels), count)
        for (limit, kind), value in sorted(self.remaining.items()):
            remaining.add_metric([limit, kind], value)
        for (limit, kind), value in self.allowed.items():
            allowed.add_metric([limit, kind], value)
        for operation, count in self.store_errors.items():
            errors.add_metric([operation], count)
        up.add_metric([], self.store_up)
        yield from (limited, remaining, allowed, errors, up)

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
    ]:
        return (
            CounterMetricFamily(
                "meshbridge_limited",
                "Calls refused by a limit (rate-limited, budget-exhausted) or because "
                "the limit store was unreachable (store-unavailable).",
                labels=["limit", "source", "reason"],
            ),
            GaugeMetricFamily(
                "meshbridge_limit_remaining",
                "What a limit has left (requests, tokens, calls or spend), for limits "
                "whose match has no '*'.",
                labels=["limit", "kind"],
            ),
            GaugeMetricFamily(
                "meshbridge_limit_allowed",
                "What a limit allows, for limits whose match has no '*'.",
                labels=["limit", "kind"],
            ),
            CounterMetricFamily(
                "meshbridge_store_errors",
                "Operations of the shared limit store that failed.",
                labels=["operation"],
            ),
            GaugeMetricFamily(
                "meshbridge_store_up",
                "1 while the limit store answers, 0 from a failure until it answers again.",
            ),
        )
