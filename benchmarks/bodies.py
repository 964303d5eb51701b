"""Large bodies: 1 and 16 MiB, downloaded and uploaded, whole.

A download is ``GET /blob?size=B`` read with ``response.read()``; an upload
is ``POST /sink`` with the body as one ``bytes`` object, which the handler
reads with ``request.read()``: what an application does with a file it
holds or receives. Like the other timing workloads, every contender runs in
one process, in a rotated order each round, so mesh and TCP rounds alternate.
That process holds every contender's bodies, so glibc keeps its heap and a
transfer's 16 MiB buffers reuse pages (a long-running server's steady state);
a fresh process that does nothing else gives its freed heap back to the
kernel after each 16 MiB transfer and faults the pages in again on the next,
for mesh and TCP alike (``--child down_16mib meshbridge`` runs one round so).

The figures of a cell: MB/s of wall time, MB/s of CPU time
(``time.process_time``, the whole process: client, server and, over TCP,
the kernel's work for its sockets, so TCP pays its two kernel copies here),
and for 16 MiB the most memory Python held at once during one transfer
above what it held before (tracemalloc: every copy and buffer, whatever the
allocator does with freed blocks; a socket's kernel buffers are not in it).
How many times a body is copied is counted where valgrind is installed
(``valgrind.py``).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Awaitable, Callable
from time import perf_counter, process_time
from typing import TYPE_CHECKING

from .contenders import Client, Contender

if TYPE_CHECKING:  # workloads.py builds its workloads from this module
    from .workloads import Scale

__all__ = ["MIB", "bodies"]

MIB = 1024 * 1024

Figures = dict[str, float | None]


def _transfer(client: Client, down: bool, size: int) -> Callable[[], Awaitable[None]]:
    body = bytes(size) if not down else b""

    async def once() -> None:
        if down:
            got = len(await client.get(f"/blob?size={size}"))
        else:
            got = int(await client.post("/sink", body))
        if got != size:
            raise AssertionError(f"{size} bytes sent, {got} arrived")

    return once


async def _peak(once: Callable[[], Awaitable[None]]) -> int:
    """The most memory Python held at once during one transfer, above what it
    held before (tracemalloc: every bytes object, buffer and queue, whatever
    the allocator keeps; not the kernel's socket buffers)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await once()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def bodies(
    down: bool, size: int, transfers: Callable[[Scale], int]
) -> Callable[[Contender, Scale], Awaitable[Figures]]:
    """One round of one cell: ``transfers(scale)`` transfers, timed."""

    async def run(contender: Contender, scale: Scale) -> Figures:
        assert contender.client is not None, "start the contender first"
        once = _transfer(contender.client, down, size)
        for _ in range(2):  # warm-up: pooled connection, the blob made, the heap grown
            await once()
        n = transfers(scale)
        gc.collect()
        wall, cpu = perf_counter(), process_time()
        for _ in range(n):
            await once()
        wall, cpu = perf_counter() - wall, process_time() - cpu
        figures: Figures = {
            "mb_per_s": n * size / wall / 1e6,
            "cpu_mb_per_s": n * size / cpu / 1e6 if cpu > 0 else None,
            "transfers": n,
        }
        if size >= 16 * MIB:
            figures["peak_mib"] = await _peak(once) / MIB
        return figures

    return run
