"""The mesh's Prometheus metrics: plain numbers, exposed by one collector.

Requests update plain ints and floats of their (provider, source) Series,
with no lock and no prometheus_client call on the hot path: the event loop is
the only writer. A scrape asks the collector, which builds prometheus_client's
own metric families from those numbers, so names, types and exposition are the
library's. Registering the collector on a registry also claims the names, so
two meshes on one registry fail loudly ("Duplicated timeseries").

Label values come only from registered provider names, sources set by code in
the process, a fixed set of HTTP methods and the status codes the provider
apps send, so nothing an outside caller sends can create a new series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

__all__ = ["BUCKETS", "MeshMetrics", "Series", "method_label"]

# 1 ms to 5 minutes: LLM streams are long.
BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_LE: Final = (*map(floatToGoString, BUCKETS), "+Inf")

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
}


def method_label(method: str) -> str:
    """The method as a label value: the standard methods, anything else ``other``."""
    return method if method in _METHODS else "other"


class Histogram:
    """Observations counted per bucket (not cumulative), and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        total = 0
        cumulative = []
        for le, count in zip(_LE, self.counts, strict=True):
            total += count
            cumulative.append((le, float(total)))
        return cumulative


class Series:
    """The numbers of one (provider, source) pair."""

    __slots__ = (
        "durations",
        "handler_errors",
        "in_flight",
        "provider",
        "request_bytes",
        "requests",
        "response_bytes",
        "source",
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
        self.requests: dict[tuple[str, int, str], int] = {}

    def finished(
        self,
        method: str,
        code: int,
        outcome: str,
        duration: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """Record one request that ended."""
        key = (method, code, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get(method)
        if histogram is None:
            histogram = self.durations[method] = Histogram()
        histogram.observe(duration)
        self.request_bytes += request_bytes
        self.response_bytes += response_bytes
        self.in_flight -= 1


class MeshMetrics:
    """The metric families of one mesh, collected from its Series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series: dict[tuple[str, str], Series] = {}
        registry.register(self)

    def series(self, provider: str, source: str | None) -> Series:
        """The numbers for one provider and source (``none`` when unset)."""
        key = (provider, source or "none")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(*key)
        return series

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, duration, ttfb, in_flight, request_bytes, response_bytes, errors = (
            self._families()
        )
        # list() copies: a scrape from another thread never sees a dict change size
        for series in list(self._series.values()):
            pair = [series.provider, series.source]
            for (method, code, outcome), count in list(series.requests.items()):
                requests.add_metric([*pair, method, str(code), outcome], count)
            for method, histogram in list(series.durations.items()):
                duration.add_metric([*pair, method], histogram.buckets(), histogram.sum)
            ttfb.add_metric(pair, series.ttfb.buckets(), series.ttfb.sum)
            in_flight.add_metric(pair, series.in_flight)
            request_bytes.add_metric(pair, series.request_bytes)
            response_bytes.add_metric(pair, series.response_bytes)
            errors.add_metric(pair, series.handler_errors)
        yield from (requests, duration, ttfb, in_flight, request_bytes, response_bytes, errors)

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
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
        )
