"""The mesh's Prometheus metrics, on a registry the mesh owns.

Label values come only from registered provider names, sources set by code in
the process, a fixed set of HTTP methods and the status codes the provider
apps send, so nothing an outside caller sends can create a new series.
Label children are looked up once and cached: the hot path does no string
formatting and no registry look-ups.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BUCKETS", "MeshMetrics", "Series", "method_label"]

# 1 ms to 5 minutes: LLM streams are long.
BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)


def method_label(method: str) -> str:
    """The method as a label value: the standard methods, anything else ``other``."""
    return method if method in _METHODS else "other"


class MeshMetrics:
    """The metric families of one mesh, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "meshbridge_requests",
            "Requests carried by the mesh, by how they ended.",
            ["provider", "source", "method", "code", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "meshbridge_request_duration_seconds",
            "Request start to the end of the response body or the failure.",
            ["provider", "source", "method"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            "meshbridge_time_to_first_byte_seconds",
            "Request start to the response headers.",
            ["provider", "source"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "meshbridge_requests_in_flight",
            "Requests started and not yet ended.",
            ["provider", "source"],
            registry=registry,
        )
        self.request_bytes = Counter(
            "meshbridge_request_bytes",
            "Request body bytes received by providers.",
            ["provider", "source"],
            registry=registry,
        )
        self.response_bytes = Counter(
            "meshbridge_response_bytes",
            "Response body bytes written by providers.",
            ["provider", "source"],
            registry=registry,
        )
        self.handler_errors = Counter(
            "meshbridge_handler_errors",
            "Provider handlers that raised (or returned no response).",
            ["provider", "source"],
            registry=registry,
        )
        self._series: dict[tuple[str, str], Series] = {}

    def series(self, provider: str, source: str | None) -> Series:
        """The cached label children for one provider and source."""
        key = (provider, source or "none")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(self, *key)
        return series


class Series:
    """Label children of one (provider, source) pair."""

    __slots__ = (
        "_durations",
        "_metrics",
        "_requests",
        "handler_errors",
        "in_flight",
        "provider",
        "request_bytes",
        "response_bytes",
        "source",
        "ttfb",
    )

    def __init__(self, metrics: MeshMetrics, provider: str, source: str) -> None:
        self._metrics = metrics
        self.provider = provider
        self.source = source
        self.in_flight = metrics.in_flight.labels(provider, source)
        self.ttfb = metrics.ttfb.labels(provider, source)
        self.request_bytes = metrics.request_bytes.labels(provider, source)
        self.response_bytes = metrics.response_bytes.labels(provider, source)
        self.handler_errors = metrics.handler_errors.labels(provider, source)
        self._durations: dict[str, Histogram] = {}
        self._requests: dict[tuple[str, int, str], Counter] = {}

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
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self._metrics.requests.labels(
                self.provider, self.source, method, str(code), outcome
            )
        counter.inc()
        histogram = self._durations.get(method)
        if histogram is None:
            histogram = self._durations[method] = self._metrics.duration.labels(
                self.provider, self.source, method
            )
        histogram.observe(duration)
        if request_bytes:
            self.request_bytes.inc(request_bytes)
        if response_bytes:
            self.response_bytes.inc(response_bytes)
        self.in_flight.dec()
