"""Read-only snapshots of a mesh's traffic, for an admin page or a script.

Rules of a snapshot:

1. Nothing is counted for it. It is made of the numbers the mesh keeps
   anyway: its metrics' plain counters (``_metrics.py``) and each policy's
   live state (``_traffic.py``); a mesh made with ``metrics=False`` shows
   zeros where the counters would be.
2. It costs what a scrape of ``/metrics`` costs (one pass over the series)
   and is never on a request's path: call it from a page's refresh or a
   periodic task, not per request.
3. The one thing it may change is what time changes anyway: reading an open
   breaker whose ``open_for`` has run out turns it half-open, as a scrape of
   ``meshbridge_circuit_state`` does (``_breaker.py``, rule 5).
4. Plain values only (ints, floats, strings, mappings of them), frozen: a
   snapshot stays as it was when the mesh moves on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._metrics import Family, MeshMetrics
from ._traffic import Traffic

__all__ = ["ProviderState", "RouteState", "TrafficState", "traffic_state"]

_OPEN = "open"


@dataclass(frozen=True, slots=True)
class ProviderState:
    """One provider at the moment of a :class:`TrafficState`.

    Attributes:
        name: the provider's name.
        requests: requests it has answered (or failed) since the mesh
            started, every source and attempt together
            (``meshbridge_requests_total``).
        errors: those of ``requests`` that got a 5xx or 429, or ended with
            outcome ``error`` (the provider broke the stream or raised).
        in_flight: requests it is handling now (``meshbridge_requests_in_flight``).
        rejected: requests the mesh refused for it before its handler ran
            (circuit open, ``max_in_flight``, injected faults:
            ``meshbridge_rejected_total``).
        admitted: attempts its policy admitted and that have not ended, what
            ``max_in_flight`` counts (None: it has no policy).
        max_in_flight: its policy's ``max_in_flight`` (None: no limit).
        circuit: ``"closed"``, ``"open"`` or ``"half_open"`` (None: no breaker).
        next_probe: seconds until an open circuit turns half-open and lets
            probes through (0.0 when it is not open).
        circuit_opened: times its circuit has opened since the mesh started.
    """

    name: str
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    rejected: int = 0
    admitted: int | None = None
    max_in_flight: int | None = None
    circuit: str | None = None
    next_probe: float = 0.0
    circuit_opened: int = 0


@dataclass(frozen=True, slots=True)
class RouteState:
    """One route at the moment of a :class:`TrafficState`.

    Attributes:
        name: the virtual name callers use.
        split: provider name to weight, as configured.
        sticky: ``"api_key_id"``, ``"source"`` or None.
        chosen: provider name to the requests the split sent there since the
            mesh started (``meshbridge_route_requests_total``).
    """

    name: str
    split: Mapping[str, int]
    sticky: str | None
    chosen: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class TrafficState:
    """What a mesh's traffic looks like at one moment (:meth:`Mesh.traffic_state`).

    Attributes:
        at: when it was taken, on the mesh's clock (monotonic seconds; only
            differences between two snapshots mean anything).
        providers: every registered provider, by name, in registration order.
        routes: every route, by name.
    """

    at: float
    providers: Mapping[str, ProviderState]
    routes: Mapping[str, RouteState]


def _by_first(values: Mapping[tuple[str, ...], int], keep: int = 0) -> dict[str, int]:
    """Counts summed by their first label (``keep``: the label to group by)."""
    summed: dict[str, int] = {}
    for labels, count in list(values.items()):
        summed[labels[keep]] = summed.get(labels[keep], 0) + count
    return summed


def traffic_state(
    names: Iterable[str], traffic: Traffic, metrics: MeshMetrics | None
) -> TrafficState:
    """The snapshot of a mesh with providers ``names`` (see the module's rules)."""
    now = traffic.clock()
    totals = metrics.provider_totals() if metrics is not None else {}
    rejected: dict[str, int] = {}
    opened: dict[str, int] = {}
    chosen: dict[str, dict[str, int]] = {}
    if metrics is not None:
        rejected = _by_first(metrics.traffic[Family.REJECTED].values)
        transitions = metrics.traffic[Family.CIRCUIT_TRANSITIONS].values
        opened = {labels[0]: n for labels, n in list(transitions.items()) if labels[1] == _OPEN}
        for (route, provider), count in list(metrics.traffic[Family.ROUTE_REQUESTS].values.items()):
            chosen.setdefault(route, {})[provider] = count
    providers: dict[str, ProviderState] = {}
    for name in names:
        requests, errors, in_flight = totals.get(name, (0, 0, 0))
        guard = traffic.guard(name)
        breaker = guard.breaker if guard is not None else None
        providers[name] = ProviderState(
            name,
            requests=requests,
            errors=errors,
            in_flight=in_flight,
            rejected=rejected.get(name, 0),
            admitted=guard.live.in_flight if guard is not None else None,
            max_in_flight=guard.max_in_flight if guard is not None else None,
            circuit=breaker.state(now) if breaker is not None else None,
            next_probe=breaker.retry_after(now) if breaker is not None else 0.0,
            circuit_opened=opened.get(name, 0),
        )
    routes = {
        name: RouteState(
            name,
            MappingProxyType(dict(route.weights)),
            route.sticky,
            MappingProxyType(chosen.get(name, {})),
        )
        for name, route in traffic.route_table.items()
    }
    return TrafficState(now, MappingProxyType(providers), MappingProxyType(routes))
