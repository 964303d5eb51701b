"""The mesh's Prometheus metrics: plain numbers, exposed by one collector.

Requests update plain ints and floats of their (provider, source) Series,
with no lock and no prometheus_client call on the hot path: the event loop is
the only writer. A scrape asks the collector, which builds prometheus_client's
own metric families from those numbers, so names, types and exposition are the
library's. Registering the collector on a registry also claims the names, so
two meshes on one registry fail loudly ("Duplicated timeseries").

One event is counted once. A direct call (no traffic policy: the call is
its one attempt) ends in its Series only (``direct``): the collector reports
it in ``meshbridge_requests_total`` and, summed over methods, in
``meshbridge_calls_total`` (its ``target`` is its provider), beside the calls
a relay counts in that family itself.

Label values come only from registered provider names, sources set by code in
the process, a fixed set of HTTP methods, the status codes the provider apps
send, and model names that provider apps report, which are folded to
``other`` past :data:`MAX_MODELS` per provider: nothing an outside caller
sends can create more than a bounded number of series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

__all__ = [
    "BUCKETS",
    "MAX_MODELS",
    "Counts",
    "Family",
    "MeshMetrics",
    "Series",
    "method_label",
    "source_label",
]

# 1 ms to 5 minutes: LLM streams are long.
BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_LE: Final = (*map(floatToGoString, BUCKETS), "+Inf")

# Model labels per provider before further names fold into "other".
MAX_MODELS: Final = 100
_MAX_MODEL_LEN: Final = 128
OTHER: Final = "other"
UNKNOWN: Final = "unknown"  # the request and the answer named no model
ERROR: Final = "error"  # the outcome of a request that broke (_exchange.ERROR)
TOKEN_TYPES: Final = ("input", "output", "cache_read", "cache_write")

_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)

_PAIR: Final = ["provider", "source"]
_HELP: Final = {
    "requests": "Requests carried by the mesh, by how they ended.",
    "duration": "Request start to the end of the response body or the failure.",
    "ttfb": "Request start to the response headers.",
    "in_flight": "Requests started and not yet ended.",
    "request_bytes": "Request body bytes received by providers.",
    "response_bytes": "Response body bytes written by providers.",
    "handler_errors": "Provider handlers that raised (or returned no response).",
    "tokens": "LLM tokens, by model and type (input, output, cache_read, cache_write).",
    "ttft": "Streams: request received by the provider to the first token sent.",
}


class Family(StrEnum):
    """The traffic-policy counter families (``meshbridge_<name>_total``)."""

    CALLS = "calls"
    RETRIES = "retries"
    FALLBACKS = "fallbacks"
    REJECTED = "rejected"
    TIMEOUTS = "timeouts"
    CIRCUIT_TRANSITIONS = "circuit_transitions"
    ROUTE_REQUESTS = "route_requests"


# The traffic-policy families: (name, help, labels); one Counts each.
_TRAFFIC: Final = (
    ("calls", "What callers got: one per caller request, by the name they used.",
     ("target", "source", "code", "outcome")),
    ("retries", "Attempts made again, by why the last one failed.",
     ("provider", "source", "reason")),
    ("fallbacks", "Requests moved from a provider to its fallback.",
     ("provider", "fallback", "source")),
    ("rejected", "Requests refused without reaching the provider's handler.",
     ("provider", "source", "reason")),
    ("timeouts", "Attempts cut by a policy timeout, by kind (the reason).",
     ("provider", "source", "kind")),
    ("circuit_transitions", "Circuit breaker state changes.", ("provider", "to")),
    ("route_requests", "Requests of a route, by the provider its split chose.",
     ("route", "provider")),
)  # fmt: skip


def source_label(source: str | None) -> str:
    """The ``source`` label value: the Source, or ``none`` for a request without one."""
    return source or "none"


def method_label(method: str) -> str:
    """The method as a label value: the standard methods, anything else ``other``."""
    return method if method in _METHODS else "other"


class Histogram:
    """Observations counted per bucket (not cumulative), and their sum."""

    __slots__ = ("counts", "exemplars", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        # Trace ids by bucket index, set only when tracing is on (_otel.py).
        self.exemplars: dict[int, Exemplar] | None = None

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
        total = 0
        cumulative: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        for le, count in zip(_LE, self.counts, strict=True):
            total += count
            cumulative.append((le, float(total)))
        if self.exemplars:
            for index, exemplar in list(self.exemplars.items()):
                le, value = cumulative[index][:2]
                cumulative[index] = (le, value, exemplar)
        return cumulative


class Series:
    """The numbers of one (provider, source) pair."""

    __slots__ = (
        "direct",
        "durations",
        "first_token",
        "handler_errors",
        "in_flight",
        "provider",
        "request_bytes",
        "requests",
        "response_bytes",
        "source",
        "tokens",
        "ttfb",
    )

    def __init__(self, provider: str, source: str) -> None:
        self.provider = provider
        self.source = source
        self.in_flight = 0
        self.handler_errors = 0
        self.request_bytes = 0
        self.response_bytes = 0
        self.ttfb = Histogram()
        self.durations: dict[str, Histogram] = {}
        # Requests by (method, code, outcome): the attempts of relayed calls, and
        # direct calls (each its one attempt), which are also calls (see above).
        self.requests: dict[tuple[str, int, str], int] = {}
        self.direct: dict[tuple[str, int, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}  # (model, type)
        self.first_token: dict[str, Histogram] = {}  # by model

    def finished(
        self,
        method: str,
        code: int,
        outcome: str,
        duration: float,
        request_bytes: int,
        response_bytes: int,
        direct: bool,
    ) -> None:
        """Record one request that ended (``direct``: a direct call, also a call)."""
        key = (method, code, outcome)
        requests = self.direct if direct else self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.durations.get(method)
        if histogram is None:
            histogram = self.durations[method] = Histogram()
        histogram.counts[bisect_left(BUCKETS, duration)] += 1  # observe(), inline: per request
        histogram.sum += duration
        self.request_bytes += request_bytes
        self.response_bytes += response_bytes
        self.in_flight -= 1

    def requests_now(self) -> list[tuple[tuple[str, int, str], int]]:
        """Requests ended by (method, code, outcome), direct or not: a copy (a
        scrape from another thread never sees a dict change size)."""
        merged = dict(self.requests)
        for key, count in list(self.direct.items()):
            merged[key] = merged.get(key, 0) + count
        return list(merged.items())

    def calls_now(self) -> list[tuple[tuple[int, str], int]]:
        """Its direct calls by (code, outcome), every method together (a copy)."""
        calls: dict[tuple[int, str], int] = {}
        for (_, code, outcome), count in list(self.direct.items()):
            calls[code, outcome] = calls.get((code, outcome), 0) + count
        return list(calls.items())

    def used(self, model: str, counts: tuple[int, int, int, int]) -> None:
        """Count tokens of one request, in the order of :data:`TOKEN_TYPES`."""
        for type_, count in zip(TOKEN_TYPES, counts, strict=True):
            if count > 0:
                key = (model, type_)
                self.tokens[key] = self.tokens.get(key, 0) + count

    def first_token_after(self, model: str, seconds: float) -> None:
        histogram = self.first_token.get(model)
        if histogram is None:
            histogram = self.first_token[model] = Histogram()
        histogram.observe(seconds)


class Counts:
    """One counter family's plain numbers, by label values."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], int] = {}

    def inc(self, *labels: str) -> None:
        self.values[labels] = self.values.get(labels, 0) + 1


class MeshMetrics:
    """The metric families of one mesh, collected from its Series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series: dict[tuple[str, str], Series] = {}
        self._models: dict[str, set[str]] = {}  # model labels given out, by provider
        self.traffic = {Family(name): Counts() for name, _, _ in _TRAFFIC}
        # Circuit states by provider (0 closed, 0.5 half-open, 1 open), read at
        # scrape time from whoever keeps the breakers.
        self.circuit_levels: Callable[[], Mapping[str, float]] = dict
        # Attempts each governed provider's policy has admitted and not ended.
        self.admitted: Callable[[], Mapping[str, int]] = dict
        registry.register(self)

    def series(self, provider: str, source: str | None) -> Series:
        """The numbers for one provider and source (``none`` when unset)."""
        key = (provider, source_label(source))
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(*key)
        return series

    def provider_totals(self) -> dict[str, tuple[int, int, int]]:
        """Per provider, every source together: requests ended, those of them
        that failed (a 5xx or 429, or outcome ``error``), and requests in flight."""
        totals: dict[str, tuple[int, int, int]] = {}
        for series in list(self._series.values()):
            ended = failed = 0
            for (_, code, outcome), count in series.requests_now():
                ended += count
                if code >= 500 or code == 429 or outcome == ERROR:
                    failed += count
            before = totals.get(series.provider, (0, 0, 0))
            totals[series.provider] = (
                before[0] + ended,
                before[1] + failed,
                before[2] + series.in_flight,
            )
        return totals

    def model_label(self, provider: str, model: str | None) -> str:
        """``model`` as a label value of ``provider``'s series: ``unknown`` for
        none, ``other`` for an unprintable or over-long name and for names past
        the first :data:`MAX_MODELS` of that provider."""
        if not model:
            return UNKNOWN
        seen = self._models.setdefault(provider, set())
        if model in seen:
            return model
        if len(model) > _MAX_MODEL_LEN or not model.isprintable() or len(seen) >= MAX_MODELS:
            return OTHER
        seen.add(model)
        return model

    def describe(self) -> list[Metric]:
        return [*self._families(), *self._traffic_families()]

    def collect(self) -> Iterator[Metric]:
        (requests, duration, ttfb, in_flight, request_bytes, response_bytes, errors, tokens,
         ttft) = self._families()  # fmt: skip
        # list() copies: a scrape from another thread never sees a dict change size
        for series in list(self._series.values()):
            pair = [series.provider, series.source]
            for (method, code, outcome), count in series.requests_now():
                requests.add_metric([*pair, method, str(code), outcome], count)
            for method, histogram in list(series.durations.items()):
                duration.add_metric([*pair, method], histogram.buckets(), histogram.sum)
            ttfb.add_metric(pair, series.ttfb.buckets(), series.ttfb.sum)
            in_flight.add_metric(pair, series.in_flight)
            request_bytes.add_metric(pair, series.request_bytes)
            response_bytes.add_metric(pair, series.response_bytes)
            errors.add_metric(pair, series.handler_errors)
            for (model, type_), count in list(series.tokens.items()):
                tokens.add_metric([*pair, model, type_], count)
            for model, histogram in list(series.first_token.items()):
                ttft.add_metric([*pair, model], histogram.buckets(), histogram.sum)
        yield from (
            requests,
            duration,
            ttfb,
            in_flight,
            request_bytes,
            response_bytes,
            errors,
            tokens,
            ttft,
        )
        yield from self._traffic_families()

    def _calls(self) -> dict[tuple[str, ...], int]:
        """meshbridge_calls_total's numbers: a relay's calls, and the direct
        calls of every Series (their target is their provider)."""
        calls = dict(self.traffic[Family.CALLS].values)
        for series in list(self._series.values()):
            for (code, outcome), count in series.calls_now():
                key = (series.provider, series.source, str(code), outcome)
                calls[key] = calls.get(key, 0) + count
        return calls

    def _traffic_families(self) -> Iterator[Metric]:
        for name, help_text, labels in _TRAFFIC:
            family = CounterMetricFamily(f"meshbridge_{name}", help_text, labels=list(labels))
            counts = self._calls() if name == Family.CALLS else self.traffic[Family(name)].values
            for values, count in list(counts.items()):
                family.add_metric(list(values), count)
            yield family
        state = GaugeMetricFamily(
            "meshbridge_circuit_state",
            "Circuit breaker state: 0 closed, 0.5 half-open, 1 open.",
            labels=["provider"],
        )
        for provider, level in sorted(self.circuit_levels().items()):
            state.add_metric([provider], level)
        yield state
        admitted = GaugeMetricFamily(
            "meshbridge_policy_in_flight",
            "Attempts a provider's policy admitted and that have not ended (what "
            "max_in_flight counts).",
            labels=["provider"],
        )
        for provider, count in sorted(self.admitted().items()):
            admitted.add_metric([provider], count)
        yield admitted

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
    ]:
        return (
            CounterMetricFamily(
                "meshbridge_requests",
                _HELP["requests"],
                labels=[*_PAIR, "method", "code", "outcome"],
            ),
            HistogramMetricFamily(
                "meshbridge_request_duration_seconds",
                _HELP["duration"],
                labels=[*_PAIR, "method"],
            ),
            HistogramMetricFamily(
                "meshbridge_time_to_first_byte_seconds", _HELP["ttfb"], labels=_PAIR
            ),
            GaugeMetricFamily("meshbridge_requests_in_flight", _HELP["in_flight"], labels=_PAIR),
            CounterMetricFamily("meshbridge_request_bytes", _HELP["request_bytes"], labels=_PAIR),
            CounterMetricFamily("meshbridge_response_bytes", _HELP["response_bytes"], labels=_PAIR),
            CounterMetricFamily("meshbridge_handler_errors", _HELP["handler_errors"], labels=_PAIR),
            CounterMetricFamily(
                "meshbridge_tokens", _HELP["tokens"], labels=[*_PAIR, "model", "type"]
            ),
            HistogramMetricFamily(
                "meshbridge_time_to_first_token_seconds", _HELP["ttft"], labels=[*_PAIR, "model"]
            ),
        )
