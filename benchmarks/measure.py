"""Small measuring tools: percentiles, medians, and the process's memory.

Memory is read from ``/proc/self/status`` (no psutil): ``VmRSS`` is what the
process holds now, ``VmHWM`` the most it has held. Writing ``5`` to
``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS (Linux 4.0+), so
a workload's peak can be told apart from whatever came before it. Where that
is not allowed, a sampler that reads ``VmRSS`` every few milliseconds gives a
lower bound of the peak instead. :class:`PeakRSS` can also follow other
processes (a server run apart): then the peak is that of the sampled sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter
from types import TracebackType
from typing import Any

__all__ = ["GcPauses", "PeakRSS", "fmt", "median", "percentile", "rss_bytes", "settle_allocator"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ascending values, by nearest rank."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that were measured (None if none were)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def fmt(value: float | None) -> str:
    """A figure for people: a few significant digits, thousands separated."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def settle_allocator() -> None:
    """Put glibc's malloc where a long-running process gets after its first
    large free, before measuring anything.

    Until then glibc serves every block above 128 KiB with a fresh mmap and
    unmaps it on free, so each multi-MiB body faults in new pages (costly in
    a VM); freeing one big mmap'ed block raises that threshold (and the trim
    threshold) for good. Left to chance, whichever contender happens to free
    such a block first speeds up all that run after it: 4 MiB echoes went
    from ~600 to ~4,000 MB/s between round one and two. Freeing a 31 MiB
    block at the start gives every contender the steady state, 16 MiB bodies
    included (a 16 MiB block freed first left a 16 MiB body with its head,
    just above, mapped and unmapped each time: some 8,000 page faults per
    transfer in some rounds, none in others). The dynamic threshold stops at
    32 MiB, so a bigger block would not do.
    """
    block = bytes(31 * 1024 * 1024)  # calloc'ed: mmap'ed, its pages never touched
    del block


def _status_kib(field: str, pid: int | None = None) -> int:
    status = _STATUS if pid is None else Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {status}")


def rss_bytes(pid: int | None = None) -> int:
    """The resident set size of this process (or of process ``pid``) now."""
    return _status_kib("VmRSS:", pid) * 1024


def _hwm_bytes() -> int:
    return _status_kib("VmHWM:") * 1024


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakRSS:
    """The peak resident memory above a baseline, over an ``async with`` block.

    The baseline is taken on entry; on exit :attr:`growth` is the peak RSS
    inside the block minus that baseline, in bytes. With ``pids``, the RSS is
    that of this process plus those, and the peak is the largest sampled sum
    (the kernel keeps a peak per process only, and a sum of peaks reached at
    different moments would overstate it).
    """

    def __init__(self, every: float = 0.005, pids: Sequence[int] = ()) -> None:
        self._every = every
        self._pids = tuple(pids)
        self.baseline = 0
        self.peak = 0
        self._kernel_peak = False
        self._task: asyncio.Task[None] | None = None

    def _rss(self) -> int:
        return rss_bytes() + sum(rss_bytes(pid) for pid in self._pids)

    async def __aenter__(self) -> PeakRSS:
        self.baseline = self.peak = self._rss()
        self._kernel_peak = not self._pids and _reset_hwm()
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, self._rss())
        if self._kernel_peak:
            self.peak = max(self.peak, _hwm_bytes())

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.baseline)


class GcPauses:
    """The cyclic garbage collector's pauses in this process over a ``with`` block.

    With tens of thousands of live objects per stream, a full (generation 2)
    collection stops the loop for hundreds of milliseconds: at 10,000 streams
    that, not the transport, is what the tail latency measures.
    """

    def __init__(self) -> None:
        self.longest = 0.0  # seconds
        self.total = 0.0
        self.count = 0
        self._began = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = perf_counter()
            return
        pause = perf_counter() - self._began
        self.longest = max(self.longest, pause)
        self.total += pause
        self.count += 1
