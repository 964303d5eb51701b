"""The workloads: what one round of each measures, on one contender.

Every loop is bounded twice, by a count and by ``Scale.time_cap`` seconds;
a measurement cut by the time cap is reported over what it completed and
counted in its ``truncated`` figure. Each round begins with a short warm-up
that is not measured (it also fills the connection pool).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter

from .bodies import MIB, bodies
from .contenders import CONTENDERS, Client, Contender
from .fanout import fanout_round, read_stamped
from .measure import PeakRSS, percentile

__all__ = ["FULL", "QUICK", "SMOKE", "WORKLOADS", "Figure", "Figures", "Scale", "Workload"]

Figures = dict[str, float | None]
KIB = 1024
LIMIT = ("floor",)  # canned answers: only where a response can be canned honestly
BODIES = ("meshbridge", "tcp", "unix")  # the large-body workloads: aiohttp's own server


@dataclass(frozen=True)
class Scale:
    """How much each round does (and the most time it may take)."""

    unary_requests: int
    echo_64k_requests: int
    echo_4m_requests: int
    sse_events: int
    paced_events: int
    paced_pause: float  # what the handler awaits between events: 0 = a bare yield
    fanout_streams: int
    fanout_events: int  # per stream
    fanout_interval: float  # seconds between a stream's events
    wide_streams: int  # the wide fan-out: as fanout_*, and its streams open over wide_ramp
    wide_events: int
    wide_interval: float
    wide_ramp: float
    slow_total: int  # bytes
    slow_pause: float  # seconds the slow reader sleeps after each 64 KiB read
    time_cap: float  # seconds, per measurement
    warmup: int  # unary requests before each round
    body_1mib: int  # transfers of 1 MiB per round of a large-body workload
    body_16mib: int  # and of 16 MiB


FULL = Scale(
    unary_requests=20_000,
    echo_64k_requests=4_000,
    echo_4m_requests=400,
    sse_events=50_000,
    paced_events=5_000,
    paced_pause=0.0,
    fanout_streams=1_000,
    fanout_events=10,
    fanout_interval=0.2,
    wide_streams=10_000,
    wide_events=6,
    wide_interval=2.0,
    wide_ramp=6.0,
    slow_total=200 * MIB,
    slow_pause=0.001,
    time_cap=6.0,
    warmup=300,
    body_1mib=200,
    body_16mib=20,
)

# A quarter of the counts and half the time cap: each Python's run of
# `python -m benchmarks versions` (a few minutes for the workloads it runs).
QUICK = Scale(
    unary_requests=5_000,
    echo_64k_requests=1_000,
    echo_4m_requests=100,
    sse_events=20_000,
    paced_events=2_000,
    paced_pause=0.0,
    fanout_streams=250,
    fanout_events=5,
    fanout_interval=0.1,
    wide_streams=2_500,
    wide_events=3,
    wide_interval=1.0,
    wide_ramp=3.0,
    slow_total=32 * MIB,
    slow_pause=0.001,
    time_cap=3.0,
    warmup=200,
    body_1mib=50,
    body_16mib=6,
)

SMOKE = Scale(
    unary_requests=100,
    echo_64k_requests=10,
    echo_4m_requests=2,
    sse_events=200,
    paced_events=50,
    paced_pause=0.0,
    fanout_streams=20,
    fanout_events=3,
    fanout_interval=0.01,
    wide_streams=40,
    wide_events=3,
    wide_interval=0.01,
    wide_ramp=0.02,
    slow_total=2 * MIB,
    slow_pause=0.0,
    time_cap=5.0,
    warmup=10,
    body_1mib=2,
    body_16mib=1,
)


@dataclass(frozen=True)
class Figure:
    key: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    figures: tuple[Figure, ...]  # the first is the headline, compared across contenders
    run: Callable[[Contender, Scale], Awaitable[Figures]]
    about: str  # what the figures mean, for the table and the JSON file
    isolated: bool = False  # run each contender in a fresh process (memory figures)
    contenders: tuple[str, ...] = ()  # only these; () = every contender that runs everywhere
    also: tuple[str, ...] = ()  # and these, which run only where named (everywhere = False)
    reference: str = "tcp"  # what the ratios are taken against
    spread: bool = False  # report the range of the per-round ratios too

    def rounds(self, asked: int) -> int:
        """Memory figures vary little and each round costs a process: at most 3."""
        return min(asked, 3) if self.isolated else asked

    def runs_on(self, names: list[str]) -> list[str]:
        """Of the contenders asked for, those this workload runs on."""
        if self.contenders:
            return [n for n in names if n in self.contenders]
        return [n for n in names if CONTENDERS[n].everywhere or n in self.also]


def _client(contender: Contender) -> Client:
    assert contender.client is not None, "start the contender first"
    return contender.client


async def _repeat(
    call: Callable[[], Awaitable[object]], n: int, concurrency: int, cap: float
) -> tuple[int, float]:
    """Run ``call`` ``n`` times on ``concurrency`` tasks; (calls made, seconds)."""
    done = 0
    start = perf_counter()
    deadline = start + cap

    async def worker() -> None:
        nonlocal done
        while done < n and perf_counter() < deadline:
            done += 1
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, perf_counter() - start


def _unary(concurrency: int) -> Callable[[Contender, Scale], Awaitable[Figures]]:
    async def run(contender: Contender, scale: Scale) -> Figures:
        client = _client(contender)
        assert await client.get("/small") == b"ok"

        def call() -> Awaitable[bytes]:
            return client.get("/small")

        await _repeat(call, scale.warmup, concurrency, scale.time_cap)
        gc.collect()
        done, seconds = await _repeat(call, scale.unary_requests, concurrency, scale.time_cap)
        return {
            "rps": done / seconds,
            "requests": done,
            "truncated": float(done < scale.unary_requests),
        }

    return run


def _echo(
    size: int, requests: Callable[[Scale], int]
) -> Callable[[Contender, Scale], Awaitable[Figures]]:
    body = b"e" * size

    async def run(contender: Contender, scale: Scale) -> Figures:
        client = _client(contender)

        async def call() -> None:
            if len(await client.post("/echo", body)) != size:
                raise AssertionError("echo body came back changed")

        await _repeat(call, 10, 1, scale.time_cap)
        gc.collect()
        n = requests(scale)
        done, seconds = await _repeat(call, n, 1, scale.time_cap)
        return {
            "mb_per_s": done * size / seconds / 1e6,
            "requests": done,
            "truncated": float(done < n),
        }

    return run


def _count_events(chunk: bytes, previous_ended_in_newline: bool) -> int:
    """Events (``\\n\\n``-terminated) completed by ``chunk``."""
    return chunk.count(b"\n\n") + (previous_ended_in_newline and chunk[:1] == b"\n")


async def _sse_burst(contender: Contender, scale: Scale) -> Figures:
    client = _client(contender)
    async with client.stream("/sse?n=100") as body:
        async for _ in body:
            pass
    gc.collect()
    n, events, newline, first = scale.sse_events, 0, False, 0.0
    start = perf_counter()
    deadline = start + scale.time_cap
    async with client.stream(f"/sse?n={n}") as body:
        async for chunk in body:
            if not events and not first:
                first = perf_counter()
            events += _count_events(chunk, newline)
            newline = chunk.endswith(b"\n")
            if perf_counter() > deadline:
                break
    seconds = perf_counter() - start
    if events != n and seconds < scale.time_cap:
        raise AssertionError(f"expected {n} events, read {events}")
    return {
        "events_per_s": events / seconds,
        "ttfb_ms": (first - start) * 1e3,
        "events": events,
        "truncated": float(events < n),
    }


async def _sse_paced(contender: Contender, scale: Scale) -> Figures:
    client = _client(contender)
    latencies: list[int] = []
    pause = scale.paced_pause
    await read_stamped(client, f"/sse-paced?n=50&pause={pause}", latencies, perf_counter() + 5)
    latencies.clear()
    gc.collect()
    n = scale.paced_events
    start = perf_counter()
    events = await read_stamped(
        client, f"/sse-paced?n={n}&pause={pause}", latencies, start + scale.time_cap
    )
    seconds = perf_counter() - start
    latencies.sort()
    return {
        "p50_us": percentile(latencies, 50) / 1e3,
        "p99_us": percentile(latencies, 99) / 1e3,
        "events_per_s": events / seconds,
        "truncated": float(events < n),
    }


def _fanout(
    shape: Callable[[Scale], tuple[int, int, float, float]],
) -> Callable[[Contender, Scale], Awaitable[Figures]]:
    """Concurrent paced streams; ``shape`` gives (streams, events per stream,
    seconds between events, seconds over which the streams open)."""

    async def run(contender: Contender, scale: Scale) -> Figures:
        return await fanout_round(
            _client(contender), contender.pids(), scale.time_cap, *shape(scale)
        )

    return run


async def _slow_reader(contender: Contender, scale: Scale) -> Figures:
    client = _client(contender)
    produced, total = contender.produced, scale.slow_total
    consumed, held_peak = 0, 0
    gc.collect()
    start = perf_counter()
    deadline = start + 4 * scale.time_cap  # it is slow on purpose
    path = f"/stream?total={total}&chunk={64 * KIB}"
    async with PeakRSS() as memory, client.stream(path, 64 * KIB) as body:
        async for piece in body:
            consumed += len(piece)
            held_peak = max(held_peak, produced.bytes - consumed)
            await asyncio.sleep(scale.slow_pause)
            if perf_counter() > deadline:
                break
    seconds = perf_counter() - start
    pipe_peak = contender.pipe_peak()
    return {
        "held_peak_kib": held_peak / KIB,
        "pipe_peak_kib": pipe_peak / KIB if pipe_peak is not None else None,
        "rss_growth_mib": memory.growth / MIB,
        "mb_per_s": consumed / seconds / 1e6,
        "truncated": float(consumed < total),
    }


def _bodies(down: bool, size: int, transfers: Callable[[Scale], int]) -> Workload:
    label = f"{size // MIB}mib"
    figures = [Figure("mb_per_s", "MB/s", True), Figure("cpu_mb_per_s", "MB/cpu-s", True)]
    if size >= 16 * MIB:
        figures.append(Figure("peak_mib", "MiB", False))
    way = "download" if down else "upload"
    return Workload(
        f"{'down' if down else 'up'}_{label}",
        f"{size // MIB} MiB {way}, whole",
        tuple(figures),
        bodies(down, size, transfers),
        (
            "GET /blob read with response.read()"
            if down
            else "POST /sink of one bytes object, read with request.read()"
        )
        + "; MB/s of wall time and of CPU time (the process's, the kernel's socket work "
        "included); peak: the most memory Python held during one transfer (tracemalloc)",
        contenders=BODIES,
        spread=True,
    )


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "unary_seq",
            "small GET, one at a time",
            (Figure("rps", "req/s", True),),
            _unary(1),
            "GET /small (2-byte body), each request read to the end before the next",
            also=LIMIT,
        ),
        Workload(
            "unary_c64",
            "small GET, 64 concurrent",
            (Figure("rps", "req/s", True),),
            _unary(64),
            "the same from 64 tasks sharing one session",
            also=LIMIT,
        ),
        Workload(
            "echo_64k",
            "POST 64 KiB echo",
            (Figure("mb_per_s", "MB/s", True),),
            _echo(64 * KIB, lambda s: s.echo_64k_requests),
            "MB/s: request-body bytes per second (as many come back); sequential",
            also=LIMIT,
        ),
        Workload(
            "echo_4m",
            "POST 4 MiB echo",
            (Figure("mb_per_s", "MB/s", True),),
            _echo(4 * MIB, lambda s: s.echo_4m_requests),
            "as echo_64k; mostly memory copies, so the figures move with the allocator",
            also=LIMIT,
        ),
        Workload(
            "sse_burst",
            "SSE, events written as fast as the server lets the handler write",
            (Figure("events_per_s", "events/s", True), Figure("ttfb_ms", "ms", False)),
            _sse_burst,
            "ttfb: request start to the first body bytes in the caller's hands",
        ),
        Workload(
            "sse_paced",
            "SSE, the handler yields between events",
            (Figure("p50_us", "us", False), Figure("p99_us", "us", False)),
            _sse_paced,
            "latency of each event from the handler's write to the caller's read",
        ),
        Workload(
            "fanout",
            "concurrent long-lived SSE streams, each in a fresh process",
            (
                Figure("rss_per_stream_kib", "KiB", False),
                Figure("p99_ms", "ms", False),
                Figure("p50_ms", "ms", False),
            ),
            _fanout(
                lambda s: (s.fanout_streams, s.fanout_events, s.fanout_interval, s.fanout_interval)
            ),
            "peak RSS growth (client and server sides, kernel buffers not included) "
            "per stream; event write-to-read latency",
            isolated=True,
        ),
        Workload(
            "fanout_10k",
            "10,000 concurrent SSE streams, each run in fresh processes",
            (
                Figure("rss_per_stream_kib", "KiB", False),
                Figure("p99_ms", "ms", False),
                Figure("p50_ms", "ms", False),
                Figure("gc_max_ms", "ms", False),
            ),
            _fanout(lambda s: (s.wide_streams, s.wide_events, s.wide_interval, s.wide_ramp)),
            "as fanout, at 10,000 streams opened over 6 s, then all open for 6 s more, an "
            "event every 2 s on each; TCP runs the app in a second process (20,000 sockets "
            "in one would pass the machine's descriptor limit) and its RSS is the sum of "
            "both; gc_max: the caller's process's longest garbage collection",
            isolated=True,
            contenders=("meshbridge", "tcp-apart"),
            reference="tcp-apart",
        ),
        Workload(
            "slow_reader",
            "a large stream read 64 KiB at a time, slowly, in a fresh process",
            (
                Figure("held_peak_kib", "KiB", False),
                Figure("pipe_peak_kib", "KiB", False),
                Figure("rss_growth_mib", "MiB", False),
            ),
            _slow_reader,
            "held: most bytes written by the handler and not yet read by the caller "
            "(anywhere: buffers, queues, kernel); pipe: most bytes queued in the "
            "in-memory pipes (mesh.peak_buffered_bytes)",
            isolated=True,
        ),
        _bodies(True, MIB, lambda s: s.body_1mib),
        _bodies(False, MIB, lambda s: s.body_1mib),
        _bodies(True, 16 * MIB, lambda s: s.body_16mib),
        _bodies(False, 16 * MIB, lambda s: s.body_16mib),
    )
}
