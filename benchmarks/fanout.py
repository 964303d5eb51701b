"""Reading time-stamped events, and the fan-out of many concurrent streams.

The app's ``/sse-paced`` events carry ``time.perf_counter_ns()`` taken just
before the write (``CLOCK_MONOTONIC``: one clock for every process on the
machine, so a handler in another process is timed the same way).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from time import perf_counter, perf_counter_ns

from .contenders import Client
from .measure import GcPauses, PeakRSS, percentile

__all__ = ["fanout_round", "read_stamped"]

KIB = 1024
MIB = 1024 * 1024


async def read_stamped(client: Client, path: str, latencies: list[int], deadline: float) -> int:
    """Read events that carry their write time; add each one's latency (ns)."""
    rest, events = b"", 0
    async with client.stream(path) as body:
        async for chunk in body:
            now = perf_counter_ns()
            *complete, rest = (rest + chunk).split(b"\n\n")
            for event in complete:
                latencies.append(now - int(event[6:]))  # b"data: <ns>"
            events += len(complete)
            if perf_counter() > deadline:
                break
    return events


async def fanout_round(
    client: Client,
    pids: Sequence[int],
    time_cap: float,
    streams: int,
    events: int,
    interval: float,
    ramp: float,
) -> dict[str, float | None]:
    """``streams`` concurrent paced SSE streams of ``events`` events, one every
    ``interval`` seconds, opened evenly over ``ramp`` seconds: event latency,
    peak RSS growth per stream (this process and ``pids``), GC pauses."""
    path = f"/sse-paced?n={events}&pause={interval}"
    latencies: list[int] = []  # ~40 bytes an event, 0.4 KiB a stream: noise, alike for all
    await read_stamped(client, "/sse-paced?n=2&pause=0", latencies, perf_counter() + 5)
    latencies.clear()
    deadline = perf_counter() + ramp + interval * (events + 1) + time_cap

    async def one(i: int) -> int:
        await asyncio.sleep(ramp * i / streams)  # spread the streams' phases evenly
        return await read_stamped(client, path, latencies, deadline)

    gc.collect()
    with GcPauses() as pauses:
        async with PeakRSS(pids=pids) as memory:
            counts = await asyncio.gather(*(one(i) for i in range(streams)))
    latencies.sort()
    expected = streams * events
    return {
        "gc_max_ms": pauses.longest * 1e3,
        "gc_total_ms": pauses.total * 1e3,
        "p99_ms": percentile(latencies, 99) / 1e6,
        "p50_ms": percentile(latencies, 50) / 1e6,
        "rss_per_stream_kib": memory.growth / streams / KIB,
        "peak_rss_mib": memory.peak / MIB,
        "truncated": float(sum(counts) < expected),
    }
