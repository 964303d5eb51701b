"""The soak: ``python -m benchmarks soak [--quick]`` (``make soak``).

Tens of thousands of requests through one in-process :class:`meshbridge.Mesh`,
ending every way a caller can end them, then a check that nothing was lost or
left behind. The work is cut into slices; each slice runs every kind of caller
at once, and after each the RSS is printed, so growth shows as it happens:

* unary: ``GET /small`` (completed), a few ``GET /fail`` (the handler raises:
  a 500, outcome ``error``);
* streams: most read an SSE stream to its end (completed); about 30% go away
  after the first event, in four equal parts: their task is cancelled, they call
  ``response.close()``, they leave the ``async with`` block early, or an
  ``aiohttp.ClientTimeout`` fires while the handler is silent (``cancelled``);
  a few streams break because the handler raises after three events (``error``);
* uploads: half post 256 KiB and read the echo (completed), half are cancelled
  after sending 128 KiB of a longer body (``cancelled``).

At the end it prints the RSS at the start, the middle and the end, the tasks
left, ``meshbridge_requests_in_flight`` and the bytes left in the pipes, and
compares ``meshbridge_requests_total`` with the requests made, by source and
outcome (see ``soak_check.py``); it exits 1 if anything differs. Everything is
bounded by counts and by ``--time-limit``; nothing listens on a socket.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from aiohttp import web

from meshbridge import Mesh

from .apps import aiohttp_app
from .measure import rss_bytes
from .soak_check import (
    CANCELLED,
    COMPLETED,
    ERROR,
    Tally,
    count_noise,
    finish,
    other_tasks,
)

__all__ = ["FULL", "QUICK", "Plan", "main"]

PROVIDER = "soak"
BASE = f"http://{PROVIDER}"
KIB = 1024
UPLOAD_CHUNK = b"u" * (64 * KIB)
STALL_MAX = 60.0  # seconds a /stall handler waits for its caller to go (it always goes first)
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "soak.json"
LEAVINGS = ("cancel", "close", "leave-block", "timeout")


@dataclass(frozen=True)
class Plan:
    """How many of each caller; every count is split evenly over the slices."""

    unary: int
    unary_errors: int
    streams: int
    stream_errors: int
    uploads: int
    slices: int
    stream_events: int = 20
    read_timeout: float = 0.5  # ClientTimeout(sock_read=...) of the callers that time out
    time_limit: float = 240.0

    @property
    def leaving(self) -> int:
        """Streams whose caller goes away mid-stream: about 30%."""
        return round(self.streams * 0.3)


FULL = Plan(
    unary=100_000, unary_errors=500, streams=4_000, stream_errors=200, uploads=2_000, slices=20
)
QUICK = Plan(
    unary=600,
    unary_errors=4,
    streams=80,
    stream_errors=4,
    uploads=20,
    slices=2,
    stream_events=5,
    read_timeout=0.2,
    time_limit=60.0,
)


class Deliberate(Exception):
    """What /fail and /break raise on purpose (kept out of the log)."""


async def _fail(request: web.Request) -> web.Response:
    raise Deliberate("the soak's /fail handler fails on purpose")


async def _break(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for i in range(3):
        await response.write(b"data: %d\n\n" % i)
    raise Deliberate("the soak's /break handler breaks its stream on purpose")


async def _stall(request: web.Request) -> web.StreamResponse:
    """One event, then silence until the caller goes (it is cancelled then)."""
    response = web.StreamResponse()
    response.content_type = "text/event-stream"
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await asyncio.sleep(STALL_MAX)
    await response.write_eof()
    return response


def soak_app() -> web.Application:
    """The benchmark app (``apps.py``) plus the routes that end badly."""
    app = aiohttp_app()
    app.router.add_get("/fail", _fail)
    app.router.add_get("/break", _break)
    app.router.add_get("/stall", _stall)
    return app


Job = Callable[[], Awaitable[None]]


class Callers:
    """Each kind of caller: it records what the mesh should count, then calls."""

    def __init__(self, sessions: dict[str, aiohttp.ClientSession], tally: Tally, plan: Plan):
        self.s = sessions
        self.tally = tally
        self.plan = plan

    def guarded(self, name: str, job: Job) -> Job:
        async def run() -> None:
            try:
                await job()
            except Exception as exc:
                self.tally.surprise(f"{name}: {type(exc).__name__}: {exc}")

        return run

    async def unary(self) -> None:
        self.tally.made("unary", COMPLETED)
        async with self.s["unary"].get(f"{BASE}/small") as r:
            body = await r.read()
        self.tally.expect(r.status == 200 and body == b"ok", f"/small gave {r.status} {body!r}")

    async def unary_error(self) -> None:
        self.tally.made("unary", ERROR)
        async with self.s["unary"].get(f"{BASE}/fail") as r:
            await r.read()
        self.tally.expect(r.status == 500, f"/fail gave {r.status}")

    async def stream(self) -> None:
        self.tally.made("streams", COMPLETED)
        n = self.plan.stream_events
        async with self.s["streams"].get(f"{BASE}/sse-paced?n={n}&pause=0.001") as r:
            body = await r.read()
        self.tally.expect(body.count(b"\n\n") == n, f"a stream of {n} events gave {body[:80]!r}")

    async def stream_error(self) -> None:
        self.tally.made("streams", ERROR)
        try:
            async with self.s["streams"].get(f"{BASE}/break") as r:
                await r.read()
        except aiohttp.ClientPayloadError:
            return
        self.tally.surprise("a broken stream ended cleanly")

    async def stream_leaving(self, how: str) -> None:
        self.tally.made("streams", CANCELLED)
        self.tally.left_by[how] += 1
        session, url = self.s["streams"], f"{BASE}/stall"
        if how == "close":
            async with session.get(url) as r:
                await r.content.readany()
                r.close()
        elif how == "leave-block":
            async with session.get(url) as r:
                await r.content.readany()
        elif how == "timeout":
            timeout = aiohttp.ClientTimeout(sock_read=self.plan.read_timeout)
            try:
                async with session.get(url, timeout=timeout) as r:
                    await r.content.readany()
                    await r.read()
            except TimeoutError:
                return
            self.tally.surprise("a stalled stream ended before its ClientTimeout")
        else:
            first = asyncio.Event()

            async def read_all() -> None:
                async with session.get(url) as r:
                    await r.content.readany()
                    first.set()
                    await r.read()

            await self._cancel_when(read_all(), first, "a stream's first event")

    async def upload(self) -> None:
        self.tally.made("uploads", COMPLETED)
        body = UPLOAD_CHUNK * 4
        async with self.s["uploads"].post(f"{BASE}/echo", data=body) as r:
            echoed = await r.read()
        self.tally.expect(echoed == body, f"an upload's echo came back as {len(echoed)} bytes")

    async def upload_cancelled(self) -> None:
        self.tally.made("uploads", CANCELLED)
        half_sent = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield UPLOAD_CHUNK
            yield UPLOAD_CHUNK
            half_sent.set()  # the second chunk is written: the request is mid-body
            await asyncio.Event().wait()  # the rest never comes

        async def post() -> None:
            async with self.s["uploads"].post(f"{BASE}/echo", data=body()) as r:
                await r.read()

        await self._cancel_when(post(), half_sent, "an upload's first 128 KiB")

    async def _cancel_when(self, call: Awaitable[None], ready: asyncio.Event, what: str) -> None:
        task = asyncio.ensure_future(call)
        try:
            async with asyncio.timeout(30):
                await ready.wait()
        except TimeoutError:
            self.tally.surprise(f"{what} never came")
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            self.tally.surprise(f"cancelled after {what}, the call ended with {task.exception()!r}")

    def slice_jobs(self, index: int, rng: random.Random) -> dict[str, list[Job]]:
        """The jobs of slice ``index``: each count's share, kinds shuffled together."""
        plan = self.plan

        def share(total: int) -> int:
            return total // plan.slices + (index < total % plan.slices)

        leaving = share(plan.leaving)
        streams: list[Job] = [self.stream] * (
            share(plan.streams) - leaving - share(plan.stream_errors)
        )
        streams += [self.stream_error] * share(plan.stream_errors)
        # slice i starts its rotation at i, so over the run each way of leaving gets its share
        streams += [
            _bind(self.stream_leaving, LEAVINGS[(index + k) % len(LEAVINGS)])
            for k in range(leaving)
        ]
        unary: list[Job] = [self.unary] * share(plan.unary)
        unary += [self.unary_error] * share(plan.unary_errors)
        uploads = share(plan.uploads)
        upload: list[Job] = [self.upload] * (uploads - uploads // 2)
        upload += [self.upload_cancelled] * (uploads // 2)
        jobs = {"unary": unary, "streams": streams, "uploads": upload}
        for kind, listed in jobs.items():
            rng.shuffle(listed)
            jobs[kind] = [self.guarded(kind, job) for job in listed]
        return jobs


def _bind(call: Callable[[str], Awaitable[None]], how: str) -> Job:
    def job() -> Awaitable[None]:
        return call(how)

    return job


async def _pool(jobs: Sequence[Job], concurrency: int) -> None:
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(jobs)))))


CONCURRENCY = {"unary": 64, "streams": 200, "uploads": 16}


async def soak(plan: Plan, json_path: Path | None) -> bool:
    """Run ``plan`` through a fresh mesh; print the figures; True if every check passed."""
    tally = Tally()
    rng = random.Random(9)
    rss: list[tuple[int, int]] = []  # (requests made so far, RSS bytes)
    started = time.perf_counter()
    mesh = Mesh()
    mesh.register(PROVIDER, soak_app())
    with count_noise(Deliberate) as noise:
        async with mesh:
            before = other_tasks()
            sessions = {k: mesh.session(source=k, limit=0) for k in CONCURRENCY}
            callers = Callers(sessions, tally, plan)
            gc.collect()
            rss.append((0, rss_bytes()))
            print(f"  start         RSS {rss[0][1] / 2**20:6.1f} MiB", flush=True)
            timed_out = False
            try:
                async with asyncio.timeout(plan.time_limit):
                    for index in range(plan.slices):
                        jobs = callers.slice_jobs(index, rng)
                        await asyncio.gather(*(_pool(jobs[k], c) for k, c in CONCURRENCY.items()))
                        gc.collect()
                        rss.append((tally.total, rss_bytes()))
                        print(
                            f"  slice {index + 1:>2}/{plan.slices}"
                            f"   RSS {rss[-1][1] / 2**20:6.1f} MiB after {tally.total:>7,} requests"
                            f"  ({time.perf_counter() - started:5.1f} s)",
                            flush=True,
                        )
            except TimeoutError:
                timed_out = True
            for session in sessions.values():
                await session.close()
            doc = await finish(
                mesh,
                PROVIDER,
                plan=plan,
                tally=tally,
                rss=rss,
                before=before,
                noise=noise,
                timed_out=timed_out,
                seconds=time.perf_counter() - started,
                json_path=json_path,
            )
    return bool(doc["ok"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks soak",
        description="Tens of thousands of requests ending every way through one in-process "
        "Mesh; checks the metrics count each one and nothing is left behind.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds")
    for name, about in (
        ("unary", "GET /small requests"),
        ("streams", "SSE streams (about 30%% of their callers leave mid-stream)"),
        ("uploads", "256 KiB uploads (half of them cancelled mid-body)"),
        ("slices", "slices the work is cut into (RSS is printed after each)"),
    ):
        parser.add_argument(f"--{name}", type=int, metavar="N", help=f"{about}")
    parser.add_argument("--time-limit", type=float, metavar="S", help="give up after S seconds")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the figures go")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    for name in ("unary", "streams", "uploads", "slices", "time_limit"):
        value = getattr(args, name)
        if value is not None:
            if value < (1 if name in ("slices", "time_limit") else 0):
                raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {value}")
            plan = replace(plan, **{name: value})
    plan = replace(
        plan,
        unary_errors=min(plan.unary_errors, plan.unary),
        stream_errors=min(plan.stream_errors, plan.streams - plan.leaving),
    )
    print(
        f"soak: {plan.unary:,} unary (+{plan.unary_errors} failing), {plan.streams:,} streams "
        f"({plan.leaving:,} callers leave mid-stream: {', '.join(LEAVINGS)}; "
        f"{plan.stream_errors} break), {plan.uploads:,} uploads (half cancelled mid-body), "
        f"through one Mesh in {plan.slices} slices; at most {plan.time_limit:.0f} s",
        flush=True,
    )
    return 0 if asyncio.run(soak(plan, args.json)) else 1
