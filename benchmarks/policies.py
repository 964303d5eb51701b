"""What traffic policies cost: ``python -m benchmarks policies [--quick]``.

Three figures, each a ratio within one run, rounds interleaved:

* idle policies: unary throughput to a provider whose policy configures
  every knob (timeouts, retries, breaker, limit) but never triggers, against
  the same provider with no policy; sequential and at 64 concurrent. CPU time
  per request (``time.process_time``) is the figure, because the machines
  are shared and wall time mostly measures the neighbours.
* a retried request: a provider that answers 503 to every other attempt,
  with ``retries = 1``, against one that answers at once: about one extra
  attempt.
* what a retry keeps: the most bytes the mesh held (``peak_buffered_bytes``:
  request bytes kept for a replay, and the pipes' queues) while retried
  32 KiB uploads and 1 MiB uploads (over ``replay_limit``, so never kept for
  a replay) went through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from meshbridge import CircuitBreaker, Mesh, Policy

IDLE = Policy(
    timeout=60.0,
    first_byte_timeout=30.0,
    idle_timeout=30.0,
    retries=2,
    max_in_flight=10_000,
    circuit_breaker=CircuitBreaker(),
)
RETRY = Policy(retries=1, retry_backoff=(0.0001, 0.0001), retry_floor=1e6)
KIB = 1024


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


def every_other_fails() -> web.Application:
    attempts = [0]

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        attempts[0] += 1
        return web.Response(status=503 if attempts[0] % 2 else 200, text="x")

    app = web.Application(client_max_size=4 * 1024 * KIB)
    app.router.add_route("*", "/", answer)
    return app


def plain() -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * KIB)
    app.router.add_route("*", "/", ok)
    return app


async def _cpu_per_request(
    mesh: Mesh, count: int, concurrency: int, body: bytes | None = None
) -> float:
    async with mesh.session() as session:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.request("POST" if body else "GET", "http://p/", data=body) as r:
                    await r.read()
                    assert r.status == 200, r.status

        await worker(50)  # warm: connections pooled, code paths hot
        started = time.process_time()
        await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
        return (time.process_time() - started) / count


async def _round(
    app: web.Application, policy: Policy | None, count: int, concurrency: int
) -> float:
    mesh = Mesh()
    mesh.register("p", app, policy=policy)
    async with mesh:
        return await _cpu_per_request(mesh, count, concurrency)


async def idle_cost(count: int, rounds: int, concurrency: int) -> dict[str, float]:
    none: list[float] = []
    idle: list[float] = []
    for _ in range(rounds):
        none.append(await _round(plain(), None, count, concurrency))
        idle.append(await _round(plain(), IDLE, count, concurrency))
    base, policed = statistics.median(none), statistics.median(idle)
    return {"none_us": base * 1e6, "policy_us": policed * 1e6, "cost": policed / base - 1}


async def retry_cost(count: int, rounds: int) -> dict[str, float]:
    single: list[float] = []
    retried: list[float] = []
    for _ in range(rounds):
        single.append(await _round(plain(), RETRY, count, 1))
        retried.append(await _round(every_other_fails(), RETRY, count, 1))
    base, again = statistics.median(single), statistics.median(retried)
    return {"single_us": base * 1e6, "retried_us": again * 1e6, "ratio": again / base}


async def kept_bytes(count: int) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for name, size in (("body_32k", 32 * KIB), ("body_1m", 1024 * KIB)):
        mesh = Mesh()
        mesh.register("p", every_other_fails(), policy=RETRY)
        async with mesh, mesh.session() as session:
            for _ in range(count):
                async with session.post("http://p/", data=b"b" * size) as r:
                    await r.read()
            peaks[name] = mesh.peak_buffered_bytes
            assert mesh.buffered_bytes == 0
    peaks["replay_limit"] = RETRY.replay_limit
    return peaks


async def run(quick: bool) -> dict[str, dict[str, float]]:
    count, rounds = (200, 2) if quick else (3000, 7)
    return {
        "idle_sequential": await idle_cost(count, rounds, 1),
        "idle_64": await idle_cost(count * 2 if not quick else count, rounds, 64),
        "retried": await retry_cost(count // 2, rounds),
        "kept": await kept_bytes(20 if not quick else 4),
    }


def report(figures: dict[str, dict[str, float]]) -> str:
    seq, conc = figures["idle_sequential"], figures["idle_64"]
    retried, kept = figures["retried"], figures["kept"]
    return "\n".join(
        [
            "| figure | no policy | policy | cost |",
            "|---|---|---|---|",
            f"| unary, sequential, CPU per request | {seq['none_us']:.0f} µs | "
            f"{seq['policy_us']:.0f} µs | {seq['cost']:+.1%} |",
            f"| unary, 64 concurrent, CPU per request | {conc['none_us']:.0f} µs | "
            f"{conc['policy_us']:.0f} µs | {conc['cost']:+.1%} |",
            f"| a request retried once (503, then 200) | {retried['single_us']:.0f} µs | "
            f"{retried['retried_us']:.0f} µs | {retried['ratio']:.2f}x |",
            f"| most bytes held, retried 32 KiB uploads | | {kept['body_32k']:,.0f} B | "
            f"replay_limit {kept['replay_limit']:,.0f} B |",
            f"| most bytes held, 1 MiB uploads (over the limit) | | {kept['body_1m']:,.0f} B | "
            "none kept for a replay; the pipe's queue of the writer's own bytes |",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks policies", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.quick))
    print(report(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
