"""Token metrics of LLM providers, on the mesh's registry.

``meshbridge_tokens_total{provider, source, model, type}`` and
``meshbridge_time_to_first_token_seconds{provider, source, model}``.

Whoever builds a mesh's providers makes one :class:`TokenMetrics` for it and
hands it to each of them (through their ``ProviderContext``), so provider apps
built again on a config reload share the families instead of registering them
twice ("Duplicated timeseries"). Model names come from
callers and upstreams, so they are bounded: a provider with an allow-list
keeps those names and folds the rest to ``other``; without one, the first
``max_models`` names seen keep their label and later ones become ``other``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["ModelLabels", "TokenMetrics", "Usage"]

# 1 ms to 5 minutes, as the mesh's own latency histograms.
BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

OTHER: Final = "other"
UNKNOWN: Final = "unknown"  # the request and the answer named no model
_MAX_MODEL_LEN: Final = 128


@dataclass(slots=True)
class Usage:
    """Token counts of one request, as the upstream reported them.

    ``input`` counts prompt tokens billed at the full rate; tokens read from
    or written to a prompt cache are counted apart.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def items(self) -> tuple[tuple[str, int], ...]:
        return (
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        )


class ModelLabels:
    """Maps model names to a bounded set of label values for one provider."""

    def __init__(self, allow: tuple[str, ...] = (), max_models: int = 20) -> None:
        self.allow = frozenset(allow)
        self.max_models = max_models
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, model: str | None) -> str:
        if not model:
            return UNKNOWN
        if self.allow:
            return model if model in self.allow else OTHER
        if model in self._seen:
            return model
        if len(model) > _MAX_MODEL_LEN or not model.isprintable():
            return OTHER
        with self._lock:
            if len(self._seen) < self.max_models:
                self._seen.add(model)
                return model
        return OTHER


class TokenMetrics:
    """The token families on one registry: make one per mesh and share it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "meshbridge_tokens",
            "LLM tokens, by model and type (input, output, cache_read, cache_write).",
            ["provider", "source", "model", "type"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "meshbridge_time_to_first_token_seconds",
            "Streams: request received by the provider to the first token sent.",
            ["provider", "source", "model"],
            buckets=BUCKETS,
            registry=registry,
        )
        self._labels: dict[str, ModelLabels] = {}

    def models(self, provider: str, allow: tuple[str, ...], max_models: int) -> ModelLabels:
        """The model labels of ``provider``, kept across rebuilds of its app."""
        labels = self._labels.get(provider)
        if labels is None or (labels.allow, labels.max_models) != (frozenset(allow), max_models):
            labels = self._labels[provider] = ModelLabels(allow, max_models)
        return labels

    def record(self, provider: str, source: str, model: str, usage: Usage) -> None:
        """Count the tokens of one request (``model`` is already a label value)."""
        for kind, count in usage.items():
            if count > 0:
                self.tokens.labels(provider, source, model, kind).inc(count)

    def first_token(self, provider: str, source: str, model: str, seconds: float) -> None:
        self.time_to_first_token.labels(provider, source, model).observe(seconds)
