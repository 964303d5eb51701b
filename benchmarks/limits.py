"""What limits cost: ``python -m benchmarks limits [--quick]``.

Unary requests through a mesh, sequential, CPU time per request
(``time.process_time``: the machines are shared, wall time mostly measures
the neighbours), rounds interleaved, medians:

* none: the bare request (the baseline);
* unmatched: limits configured, none matches the caller (``applies``);
* one rpm: one limit that matches but is never reached, requests per
  minute only, admitted by the mesh before each request reaches its
  provider (``Mesh(limiter=...)``), with the in-process store;
* in-process: two limits that match but are never reached (requests,
  tokens and concurrency per minute; a day token budget and a month spend
  budget per key id: five counters), each call also settled when it ends
  with the tokens its handler reported;
* redis: the same with the Redis store (a ``redis-server`` started for the
  run on a free port, when the machine has one): CPU of this process, and
  wall time per request, since each admission and settlement is a round
  trip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from meshbridge import Limit, Limiter, LimitStore, Mesh, Price, record_tokens

NEVER = 10**12
LIMITS = (
    Limit("agents", {"source": "agents"}, requests_per_minute=NEVER, tokens_per_minute=NEVER,
          concurrent=10**6),
    Limit("per-key", {"api_key_id": "*"}, tokens_per_day=NEVER, spend_per_month=1e9),
)  # fmt: skip
ONE = (Limit("agents", {"source": "agents"}, requests_per_minute=NEVER),)
PRICES = {"gpt-4o": Price(2.5, 10.0, 1.25)}
ASK = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1000}


async def ok(request: web.Request) -> web.Response:
    await request.read()
    record_tokens(request, "gpt-4o", input=500, output=200)  # what a settlement debits
    return web.Response(text="ok")


async def _round(
    store: LimitStore | None,
    source: str | None,
    count: int,
    limits: Sequence[Limit] = LIMITS,
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per request; no limiter when ``source`` is None."""
    app = web.Application()
    app.router.add_post("/", ok)
    limiter = Limiter(limits, PRICES, store=store) if source is not None else None
    mesh = Mesh(limiter=limiter)
    mesh.register("p", app)
    async with mesh, mesh.session(source=source or "agents", api_key_id="k1") as session:

        async def one() -> None:
            async with session.post("http://p/", json=ASK) as response:
                await response.read()
                assert response.status == 200, response.status

        for _ in range(50):  # warm: connections pooled, code paths hot
            await one()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            await one()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / count, wall / count


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server's URL (None: none installed), stopped by pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
                "--save", "", "--appendonly", "no"]  # fmt: skip
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


async def run(quick: bool, url: str | None) -> dict[str, dict[str, float]]:
    count, rounds = (300, 2) if quick else (3000, 7)
    kinds = ["none", "unmatched", "one_rpm", "in_process"] + (["redis"] if url else [])
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    wall: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            store = None
            if kind == "redis" and url is not None:
                from meshbridge.service import RedisStore

                store = RedisStore(url, prefix=f"bench-{time.time_ns()}")
            source = {"none": None, "unmatched": "batch"}.get(kind, "agents")
            c, w = await _round(store, source, count, ONE if kind == "one_rpm" else LIMITS)
            cpu[kind].append(c)
            wall[kind].append(w)
    base_cpu, base_wall = statistics.median(cpu["none"]), statistics.median(wall["none"])
    figures = {}
    for kind in kinds:
        c, w = statistics.median(cpu[kind]), statistics.median(wall[kind])
        figures[kind] = {"cpu_us": c * 1e6, "wall_us": w * 1e6, "cpu_cost": c / base_cpu - 1,
                         "wall_cost": w / base_wall - 1}  # fmt: skip
    return figures


def report(figures: dict[str, dict[str, float]]) -> str:
    names = {
        "none": "no limits (baseline)",
        "unmatched": "limits, none matches the caller",
        "one_rpm": "1 limit matched, not reached (requests per minute): in-process store",
        "in_process": "2 limits matched, not reached: in-process store",
        "redis": "2 limits matched, not reached: Redis store (local)",
    }
    lines = ["| unary request, sequential | CPU per request | cost | wall per request | cost |",
             "|---|---|---|---|---|"]  # fmt: skip
    for kind, f in figures.items():
        lines.append(f"| {names[kind]} | {f['cpu_us']:.0f} µs | {f['cpu_cost']:+.1%} | "
                     f"{f['wall_us']:.0f} µs | {f['wall_cost']:+.1%} |")  # fmt: skip
    if "redis" not in figures:
        lines.append("| Redis store | not measured: no redis-server on this machine | | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks limits", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with redis_server() as url:
        figures = asyncio.run(run(args.quick, url))
    print(report(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
