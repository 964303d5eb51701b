"""What the usage ledger costs and sustains: ``python -m benchmarks ledger
[--quick] [--postgres URL] [--json PATH]``.

* per-request cost: unary requests through a mesh with a SQLite ledger
  against the same mesh without one, and with a sink that only keeps the
  records in a list (what the core's records cost, before any storage),
  sequential and 64 concurrent, rounds interleaved. Two CPU figures per
  request: the event loop's thread alone (``time.thread_time``: what
  requests pay, building and queueing the record) and the whole process
  (``time.process_time``: the writer thread's inserts too). CPU, not wall
  time: the machines are shared.
* per-request cost through ``serve``: a chat completion from a fake provider
  through the gateway (HTTP on loopback, client in the same process), with
  ``[ledger] enabled`` true and false: process CPU per request, the
  writer's inserts included.
* rows per second sustained: records handed to a ledger as fast as the loop
  can, until the writer has stored them all; SQLite always, PostgreSQL with
  ``--postgres postgresql://...`` (an empty database the benchmark may fill).
* a summary over 1,000,000 rows (100,000 with ``--quick``) on SQLite: one
  ``meshbridge usage --since 30d`` query per ``--group-by``, and none (the total).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from meshbridge import CallRecord, Mesh, uuid7
from meshbridge.service import (
    Ledger,
    LedgerConfig,
    LedgerReader,
    Service,
    UsageFilter,
    load_config,
)

GROUPS = (None, "key", "source", "client", "provider", "model", "day")


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


def app() -> web.Application:
    served = web.Application()
    served.router.add_route("*", "/", ok)
    return served


class KeptRecords:
    """A sink that keeps the records in a list: the core's part of the cost."""

    record_prompts = False

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def record(self, record: CallRecord) -> None:
        self.records.append(record)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        self.records.clear()


async def _cpu(
    mesh: Mesh, ledger: Ledger | None, count: int, concurrency: int
) -> tuple[float, float]:
    """(event loop CPU, process CPU) per request; the process figure runs
    until the ledger has stored every record, so the writer's work is in it."""
    async with mesh.session(source="bench") as session:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.get("http://p/") as reply:
                    await reply.read()

        await worker(50)  # warm: connections pooled, code paths hot
        if ledger is not None:
            await ledger.flush()
        thread, process = time.thread_time(), time.process_time()
        await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
        loop = time.thread_time() - thread
        if ledger is not None:
            await ledger.flush()
        return loop / count, (time.process_time() - process) / count


async def _round(sink: str, folder: Path, count: int, concurrency: int) -> tuple[float, float]:
    registry = CollectorRegistry()
    ledger = kept = None
    if sink == "ledger":
        config = LedgerConfig(url=f"sqlite:///{folder / 'cost.sqlite3'}", queue_size=1_000_000)
        ledger = Ledger(config, registry=registry, spool_base=folder)
    elif sink == "list":
        kept = KeptRecords()
    mesh = Mesh(registry=registry, ledger=ledger or kept)
    mesh.register("p", app())
    async with mesh:
        return await _cpu(mesh, ledger, count, concurrency)


async def request_cost(count: int, rounds: int, concurrency: int) -> dict[str, float]:
    runs: dict[str, list[tuple[float, float]]] = {"none": [], "list": [], "ledger": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(rounds):
            for sink, found in runs.items():
                found.append(await _round(sink, Path(folder), count, concurrency))
    loop = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    whole = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    figures = {f"{k}_loop_us": v * 1e6 for k, v in loop.items()}
    figures |= {f"{k}_process_us": v * 1e6 for k, v in whole.items()}
    figures["list_loop_cost"] = loop["list"] / loop["none"] - 1
    figures["loop_cost"] = loop["ledger"] / loop["none"] - 1
    figures["process_cost"] = whole["ledger"] / whole["none"] - 1
    return figures


GATEWAY = """
[server]
listen = "127.0.0.1:0"
[server.clients.bench]
token = "token-of-the-benchmark"
source = "bench"
api_key_id = "team-a"
[ledger]
enabled = {enabled}
url = "sqlite:///{folder}/gateway.sqlite3"
[providers.llm]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
reply_tokens = 8
"""
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


async def _gateway_round(enabled: bool, folder: Path, count: int, concurrency: int) -> float:
    path = folder / f"gateway-{enabled}.toml"
    path.write_text(GATEWAY.format(enabled=str(enabled).lower(), folder=folder))
    headers = {"Authorization": "Bearer token-of-the-benchmark"}
    async with (
        Service(load_config(path), port=0) as service,
        aiohttp.ClientSession(headers=headers) as session,
    ):
        url = f"{service.url}/llm/v1/chat/completions"

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.post(url, json=CHAT) as reply:
                    await reply.read()

        await worker(50)
        if service.ledger is not None:
            await service.ledger.flush()
        started = time.process_time()
        await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
        if service.ledger is not None:
            await service.ledger.flush()
        return (time.process_time() - started) / count


async def gateway_cost(count: int, rounds: int, concurrency: int) -> dict[str, float]:
    runs: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(rounds):
            for enabled, found in runs.items():
                found.append(await _gateway_round(enabled, Path(folder), count, concurrency))
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    return {"off_us": off * 1e6, "on_us": on * 1e6, "cost": on / off - 1}


def _records(count: int, start: float, spread: float) -> list[CallRecord]:
    """``count`` plausible records, started over ``spread`` seconds from ``start``:
    50 keys, 3 sources and clients, 2 providers, 4 models, 1 in 3 an error."""
    step = spread / count
    found = []
    for i in range(count):
        at = start + i * step
        found.append(
            CallRecord(
                id=uuid7(at),
                started=at,
                duration=0.01 + (i % 997) / 100,
                ttfb=0.005,
                ttft=None,
                source=("agents", "web", "batch")[i % 3],
                api_key_id=f"team-{i % 50}",
                client=("ci", "web", None)[i % 3],
                peer=None,
                target="llm",
                provider=("llm", "backup")[i % 2],
                attempts=1,
                fallback=False,
                reason=None,
                method="POST",
                path="/v1/chat/completions",
                status=(200, 200, 429, 200, 200, 500)[i % 6],
                outcome="completed",
                request_model="fake-small",
                response_model=("fake-small", "fake-large", "gpt-x", "claude-y")[i % 4],
                input_tokens=100 + i % 50,
                output_tokens=20 + i % 30,
                cached_input_tokens=0,
                reasoning_tokens=0,
            )
        )
    return found


async def rows_per_second(url: str, count: int, folder: Path) -> float:
    config = LedgerConfig(url=url, queue_size=count, batch_size=1000, retention_days=0)
    ledger = Ledger(config, registry=CollectorRegistry(), spool_base=folder)
    records = _records(count, time.time() - 86400, 86400)
    await ledger.start()
    started = time.perf_counter()
    for i, record in enumerate(records):
        ledger.record(record)
        if i % 1000 == 999:
            await asyncio.sleep(0)  # as calls would: the loop turns between records
    await ledger.flush()
    elapsed = time.perf_counter() - started
    await ledger.aclose()
    assert ledger.metrics.written == count, ledger.metrics.written
    return count / elapsed


def summary_seconds(url: str, count: int) -> dict[str, float]:
    """Seconds per summary of the last 30 days (every row)."""
    since = UsageFilter(since=datetime.now(UTC) - timedelta(days=30))
    found: dict[str, float] = {}
    with LedgerReader(LedgerConfig(url=url)) as reader:
        for group in GROUPS:
            started = time.perf_counter()
            rows = reader.summary(since, group)
            found[group or "total"] = time.perf_counter() - started
            assert sum(r.calls for r in rows) == count
    return found


async def run(quick: bool, postgres: str | None) -> dict[str, Any]:
    count, rounds = (300, 2) if quick else (3000, 7)
    rows = 20_000 if quick else 200_000
    summary_rows = 100_000 if quick else 1_000_000
    figures: dict[str, Any] = {
        "sequential": await request_cost(count, rounds, 1),
        "concurrent_64": await request_cost(count * 2, rounds, 64),
        "gateway_sequential": await gateway_cost(count // 2, rounds, 1),
        "gateway_64": await gateway_cost(count, rounds, 64),
    }
    with tempfile.TemporaryDirectory() as folder:
        sqlite = f"sqlite:///{folder}/rows.sqlite3"
        figures["rows_per_second"] = {"sqlite": await rows_per_second(sqlite, rows, Path(folder))}
        if postgres:
            figures["rows_per_second"]["postgresql"] = await rows_per_second(
                postgres, rows, Path(folder)
            )
        big = f"sqlite:///{folder}/summary.sqlite3"
        await rows_per_second(big, summary_rows, Path(folder))
        figures["summary_seconds"] = summary_seconds(big, summary_rows)
        figures["summary_rows"] = summary_rows
    return figures


def report(figures: dict[str, Any]) -> str:
    lines = [
        "| CPU per request | no ledger | records kept in a list | SQLite ledger | cost |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("sequential", "sequential"), ("concurrent_64", "64 concurrent")):
        f = figures[name]
        for part, what in (("loop", "event loop"), ("process", "process (writer too)")):
            none, kept, ledger = (f[f"{k}_{part}_us"] for k in ("none", "list", "ledger"))
            lines.append(f"| unary, {label}, {what} | {none:.0f} µs | {kept:.0f} µs | "
                         f"{ledger:.0f} µs | {f[f'{part}_cost']:+.1%} |")  # fmt: skip
    lines += ["", "| CPU per request through `serve` | ledger off | ledger on | cost |",
              "|---|---|---|---|"]  # fmt: skip
    for name, label in (("gateway_sequential", "sequential"), ("gateway_64", "64 concurrent")):
        f = figures[name]
        lines.append(f"| chat completion, {label} | {f['off_us']:.0f} µs | {f['on_us']:.0f} µs "
                     f"| {f['cost']:+.1%} |")  # fmt: skip
    lines += ["", "| sustained | rows per second |", "|---|---|"]
    lines += [f"| {db} | {rate:,.0f} |" for db, rate in figures["rows_per_second"].items()]
    lines += [
        "",
        f"| summary of {figures['summary_rows']:,} rows, --since 30d (SQLite) | seconds |",
        "|---|---|",
    ]
    lines += [f"| {group} | {s:.2f} |" for group, s in figures["summary_seconds"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ledger", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke test)")
    parser.add_argument("--postgres", metavar="URL", help="also measure rows/s on this database")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.quick, args.postgres))
    print(report(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
