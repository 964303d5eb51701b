"""``/metrics`` of ``meshbridge serve --workers N``: the whole server, from
whichever worker answers.

Each worker has its own mesh and registry (the core's collector builds its
families from plain numbers at scrape time, which prometheus_client's
multiprocess mode cannot see). So every worker also serves its own registry,
in OpenMetrics text, on a Unix socket ``worker-<i>.sock`` in a directory only
the server's user can enter; the worker asked for ``/metrics`` reads its
siblings' registries there, reads its own directly, and merges them:

1. Counters and histograms are summed over the workers, sample by sample
   (same name, same labels), exactly: counts are integers well below 2**53.
   Their ``_created`` samples are dropped (each worker's start differs). A
   summed sample keeps the latest exemplar any worker has for it (the trace
   of the latest request in that bucket, as one process would show).
2. Every other family (gauges such as ``meshbridge_requests_in_flight``,
   info, summaries) is reported per worker, with a ``worker`` label (and its
   exemplars).
3. ``meshbridge_workers_up{worker}`` is 1 for each worker whose registry was
   read, 0 for one that did not answer (restarting): while it is 0, the sums
   lack that worker's counts. A restarted worker counts from zero again,
   which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

__all__ = ["merge", "merged_families", "metrics_handler", "socket_path", "worker_registry_app"]

_SUMMED = frozenset({"counter", "histogram"})
_SCRAPE_TIMEOUT = 2.0  # seconds for a sibling to answer; past it, it counts as down


def socket_path(directory: Path, worker: int) -> Path:
    """Where worker ``worker`` serves its own registry."""
    return directory / f"worker-{worker}.sock"


def merge(texts: Iterable[tuple[int, str | None]]) -> list[Metric]:
    """The families of the whole server from each worker's OpenMetrics text
    (None for a worker that did not answer); see the module's rules."""
    families: dict[str, Metric] = {}
    # family -> series (labels without "le") -> (sample name, le) -> sum
    sums: dict[str, dict[tuple[tuple[str, str], ...], dict[tuple[str, str], float]]] = {}
    latest: dict[tuple[str, tuple[tuple[str, str], ...], str, str], Exemplar] = {}
    up = Metric("meshbridge_workers_up", "1 if the worker's metrics were read", "gauge")
    for worker, text in texts:
        up.samples.append(Sample(up.name, {"worker": str(worker)}, 1.0 if text else 0.0))
        if not text:
            continue
        for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
            out = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            if family.type not in _SUMMED:
                out.samples.extend(
                    Sample(s.name, {**s.labels, "worker": str(worker)}, s.value, None, s.exemplar)
                    for s in family.samples
                )
                continue
            series_of = sums.setdefault(family.name, {})
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                series = tuple((k, v) for k, v in s.labels.items() if k != "le")
                key = (s.name, s.labels.get("le", ""))
                values = series_of.setdefault(series, {})
                values[key] = values.get(key, 0.0) + s.value
                if s.exemplar is not None:
                    where = (family.name, series, *key)
                    kept = latest.get(where)
                    if kept is None or _when(s.exemplar) >= _when(kept):
                        latest[where] = s.exemplar
    for name, series_of in sums.items():
        for series, values in series_of.items():
            for (sample, le), value in values.items():
                labels = dict(series) | ({"le": le} if le else {})
                exemplar = latest.get((name, series, sample, le))
                families[name].samples.append(Sample(sample, labels, value, None, exemplar))
    return [*families.values(), up]


def _when(exemplar: Exemplar) -> float:
    return float(exemplar.timestamp) if exemplar.timestamp is not None else 0.0


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def _read(directory: Path, worker: int) -> str | None:
    connector = aiohttp.UnixConnector(path=str(socket_path(directory, worker)))
    timeout = aiohttp.ClientTimeout(total=_SCRAPE_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get("http://worker/metrics") as response,
        ):
            response.raise_for_status()
            return await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def merged_families(
    registry: CollectorRegistry, worker: int, workers: int, directory: Path
) -> list[Metric]:
    """The families of the whole server, as worker ``worker`` of ``workers``
    sees them: its own ``registry`` merged with its siblings' (read in
    ``directory``); see the module's rules."""

    async def text_of(i: int) -> tuple[int, str | None]:
        if i == worker:
            return i, openmetrics(registry).decode()  # type: ignore[no-untyped-call]
        return i, await _read(directory, i)

    return merge(await asyncio.gather(*(text_of(i) for i in range(workers))))


def metrics_handler(
    registry: CollectorRegistry, worker: int, workers: int, directory: Path
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The ``/metrics`` handler of worker ``worker`` of ``workers``: the
    :func:`merged_families`, in the format the scraper asks for (Prometheus
    text or OpenMetrics)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        families = await merged_families(registry, worker, workers, directory)
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Families(families))
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(merged), headers={"Content-Type": content_type})

    return handle


def worker_registry_app(registry: CollectorRegistry) -> web.Application:
    """The private app a worker serves on its socket: its own registry, as is."""

    async def handle(request: web.Request) -> web.Response:
        body = openmetrics(registry)  # type: ignore[no-untyped-call]
        return web.Response(body=body, headers={"Content-Type": OPENMETRICS})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
