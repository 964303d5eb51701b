"""Gateway throughput with 1 and 2 workers: ``python -m benchmarks workers [--quick]``.

For each worker count, ``meshbridge serve --workers N`` runs a fake provider
that answers at once (no streaming, 3 tokens), and this process sends unary
requests through the gateway's gate and forwarding on ``CONNECTIONS``
kept-alive connections for a fixed time (after a warm-up), with a minimal
HTTP/1.1 client on raw streams so the load generator costs less CPU than
the server it measures (its CPU share is reported beside). The figure is
completed requests per second; the counts are checked against the server's
own ``meshbridge_requests_total`` (summed over workers). The client shares
the machine's cores with the workers (and, on a shared machine, with the
neighbours), so the gain from a second worker is bounded by the cores left
free: the workers' CPU column (in cores, from /proc) shows how much they got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

TOKEN = "a-token-for-the-workers-benchmark"
CONFIG = f"""
[server]
listen = "127.0.0.1:0"
grace_period = 1
max_connections = 4096
[server.clients.bench]
token = "{TOKEN}"
[providers.fast]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
reply_tokens = 3
"""
BODY = b'{"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}'
CONNECTIONS = 32


def _request(host: str, port: int) -> bytes:
    return (
        f"POST /fast/v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _connection(host: str, port: int, until: float, counts: list[int]) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(host, port)
    request = _request(host, port)
    try:
        while loop.time() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the gateway answered {head[:40]!r}")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length is None:
                raise RuntimeError("a response without Content-Length")
            await reader.readexactly(int(length[1]))
            counts[0] += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _load(host: str, port: int, seconds: float) -> int:
    loop = asyncio.get_running_loop()
    counts = [0]
    until = loop.time() + seconds
    await asyncio.gather(*(_connection(host, port, until, counts) for _ in range(CONNECTIONS)))
    return counts[0]


async def _served_requests(host: str, port: int) -> float:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    text = (await reader.read()).decode()
    writer.close()
    return sum(
        float(m[1]) for m in re.finditer(r"(?m)^meshbridge_requests_total\{.*\} (\S+)$", text)
    )


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU the processes used so far (Linux /proc)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def measure(workers: int, seconds: float, warmup: float, directory: Path) -> dict[str, float]:
    """Requests per second through ``serve --workers workers``."""
    config = directory / "bench.toml"
    config.write_text(CONFIG)
    log = directory / f"serve-{workers}.log"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(directory)}
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshbridge", "serve", str(config), "--workers", str(workers),
            stdout=out, stderr=out, env=env,
        )  # fmt: skip
    try:
        for _ in range(300):
            found = re.search(
                r"serving \d+ workers on http://([\d.]+):(\d+) .*workers ([\d, ]+),",
                log.read_text(),
            )
            if found or process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        if not found:
            raise RuntimeError(f"serve --workers {workers} did not start:\n{log.read_text()}")
        host, port = found[1], int(found[2])
        warm = await _load(host, port, warmup)
        pids = [int(pid) for pid in found[3].split(", ")]
        cpu, server = time.process_time(), _cpu_seconds(pids)
        done = await _load(host, port, seconds)
        client = (time.process_time() - cpu) / seconds
        server = (_cpu_seconds(pids) - server) / seconds
        counted = await _served_requests(host, port)
        if counted != warm + done:
            raise RuntimeError(f"sent {warm + done} requests, the server counted {counted:.0f}")
        rps = done / seconds
        return {"workers": workers, "requests": done, "seconds": seconds, "rps": rps,
                "client_cpu": client, "server_cpu": server}  # fmt: skip
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()


async def run(quick: bool) -> list[dict[str, float]]:
    seconds, warmup = (1.0, 0.3) if quick else (6.0, 1.0)
    private = tempfile.TemporaryDirectory(prefix="meshbridge-bench-")
    with private as name:
        directory = Path(name)  # mkdtemp: mode 0700, for the pid file
        return [await measure(n, seconds, warmup, directory) for n in (1, 2)]


def report(rows: list[dict[str, float]]) -> str:
    base = rows[0]["rps"]
    lines = [
        f"gateway throughput, unary, {CONNECTIONS} kept-alive connections, "
        f"{os.cpu_count()} cores shared with the client",
        "",
        "| workers | requests | seconds | requests/s | vs 1 worker | workers' CPU | client CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']:.0f} | {row['requests']:,.0f} | {row['seconds']:g} | "
            f"{row['rps']:,.0f} | {row['rps'] / base:.2f}x | "
            f"{row['server_cpu']:.2f} cores | {row['client_cpu']:.2f} cores |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks workers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a second per count (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.quick))
    print(report(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0
