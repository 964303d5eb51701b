"""The ledger's Prometheus metrics: plain numbers the writer thread and the
event loop update, one collector that builds the families at scrape time.

Each number has one writer (the loop counts what the full queue refused;
the writer thread counts everything else), so no lock is needed. Labels are
fixed sets: nothing a caller sends becomes a series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["DROP_REASONS", "LedgerMetrics"]

# Why a record was not stored: the queue was full (the writer fell behind),
# the spool was full or unusable (the database was down too long), the
# database refused the record itself, or it came after the ledger closed.
DROP_REASONS: Final = ("queue_full", "spool_full", "rejected", "closed")


class LedgerMetrics:
    """``meshbridge_ledger_*``: see ``docs/guides/ledger.md`` for each."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        *,
        queue_depth: Callable[[], int],
        spool: Callable[[], tuple[int, int]],  # (records, bytes)
        database_up: Callable[[], bool],
    ) -> None:
        self.written = 0  # rows stored, replayed ones included
        self.spooled = 0
        self.replayed = 0
        self.write_errors = 0
        self.pruned = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._queue_depth, self._spool, self._database_up = queue_depth, spool, database_up
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        return self._families(values=True)

    def _families(self, *, values: bool = False) -> Iterator[Metric]:
        counters = (
            ("meshbridge_ledger_written", "Call records stored in the ledger's database.",
             self.written),
            ("meshbridge_ledger_spooled", "Call records kept in the local spool while the "
             "database could not take them.", self.spooled),
            ("meshbridge_ledger_replayed", "Spooled call records stored once the database "
             "answered again.", self.replayed),
            ("meshbridge_ledger_write_errors", "Writes to the ledger's database that failed.",
             self.write_errors),
            ("meshbridge_ledger_pruned", "Rows deleted for being older than retention_days.",
             self.pruned),
        )  # fmt: skip
        for name, help_text, value in counters:
            family = CounterMetricFamily(name, help_text)
            if values:
                family.add_metric([], value)
            yield family
        dropped = CounterMetricFamily(
            "meshbridge_ledger_dropped",
            "Call records lost, by reason (queue_full, spool_full, rejected, closed).",
            labels=["reason"],
        )
        if values:
            for reason, count in self.dropped.items():
                dropped.add_metric([reason], count)
        yield dropped
        records, size = self._spool() if values else (0, 0)
        gauges = (
            ("meshbridge_ledger_queue_depth", "Call records waiting for the writer.",
             self._queue_depth() if values else 0),
            ("meshbridge_ledger_spool_records", "Call records in the local spool.", records),
            ("meshbridge_ledger_spool_bytes", "Bytes of the local spool file.", size),
            ("meshbridge_ledger_database_up", "1 if the last write to the ledger's database "
             "succeeded, else 0.", int(self._database_up()) if values else 0),
        )  # fmt: skip
        for name, help_text, value in gauges:
            gauge = GaugeMetricFamily(name, help_text)
            if values:
                gauge.add_metric([], value)
            yield gauge
