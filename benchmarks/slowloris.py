"""The slowloris row: ``python -m benchmarks slowloris [--connections N] [--header-timeout S]``.

A real ``meshbridge serve`` (the CLI, in a child process, on 127.0.0.1) with a
short ``header_timeout``. First a normal caller's latency alone (each request
on a new connection, so accepting is measured too); then ``--connections``
slowloris connections, each sending a request head one header line at a time
and never finishing it, while the normal caller runs again. It prints how
soon the server dropped each slowloris connection (against
``header_timeout``), the normal caller's latency next to its baseline, and
the server's RSS before, during and after. It exits 1 if a slowloris
connection outlived ``header_timeout`` by more than a second or a normal
request failed. Bounded: about ``header_timeout`` plus a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from .measure import fmt, percentile, rss_bytes

__all__ = ["main"]

TOKEN = "slowloris-benchmark-token"
SLACK = 1.0  # seconds past header_timeout a slowloris connection may last
CONFIG = """
[server]
listen = "127.0.0.1:{port}"
header_timeout = {header_timeout}
grace_period = 1.0
[server.clients.bench]
token = "{token}"
[providers.local]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _latencies(base: str, count: int) -> tuple[list[float], int]:
    """``count`` sequential requests, each on a new connection: seconds, failures."""
    seconds: list[float] = []
    failures = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(count):
            started = time.perf_counter()
            try:
                async with session.get(f"{base}/local/v1/models", headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                seconds.append(time.perf_counter() - started)
            else:
                failures += 1
    return sorted(seconds), failures


class _Attack:
    """Slowloris connections: how many are open, and when all have connected."""

    def __init__(self, port: int, connections: int, give_up: float) -> None:
        self.port, self.connections, self.give_up = port, connections, give_up
        self.open = self.tried = 0
        self.all_in = asyncio.Event()
        self._gate = asyncio.Semaphore(50)  # connect in waves: the listen backlog is finite

    async def one(self) -> float | None:
        """Seconds from connect until the server dropped it (None if it was
        still open at ``give_up``; an ``OSError`` if it could not connect)."""
        try:
            async with self._gate:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.open += 1
        finally:
            self.tried += 1
            if self.tried == self.connections:
                self.all_in.set()
        try:
            return await _hold(reader, writer, self.give_up)
        finally:
            self.open -= 1


async def _hold(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, give_up: float
) -> float | None:
    connected = time.perf_counter()
    writer.write(b"GET /local/v1/models HTTP/1.1\r\nHost: meshbridge\r\n")
    try:
        async with asyncio.timeout(give_up):
            while True:
                try:
                    async with asyncio.timeout(0.5):
                        if not await reader.read(1024):
                            return time.perf_counter() - connected  # the server closed it
                except TimeoutError:
                    writer.write(b"X-Still-Here: 1\r\n")  # one more header line, never the end
    except ConnectionError:
        return time.perf_counter() - connected
    except TimeoutError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _wait_up(base: str, server: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if server.returncode is not None:
                raise SystemExit(f"meshbridge serve exited with {server.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise SystemExit("meshbridge serve did not answer /healthz within 10 s")


def _ms(values: Sequence[float], q: float) -> str:
    return fmt(percentile(values, q) * 1000) if values else "-"


async def run(connections: int, header_timeout: float, requests: int) -> int:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "slowloris.toml"
        config.write_text(CONFIG.format(port=port, header_timeout=header_timeout, token=TOKEN))
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshbridge", "serve", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await _wait_up(base, server)
            rss_before = rss_bytes(server.pid)
            baseline, base_failures = await _latencies(base, requests)
            attack = _Attack(port, connections, give_up=header_timeout + SLACK + 2)
            tasks = [asyncio.create_task(attack.one()) for _ in range(connections)]
            await attack.all_in.wait()
            held = attack.open
            rss_during = rss_bytes(server.pid)
            under_attack, failures = await _latencies(base, requests)
            held_after = attack.open
            results = await asyncio.gather(*tasks, return_exceptions=True)
            dropped = sorted(d for d in results if isinstance(d, float))
            rss_after = rss_bytes(server.pid)
        finally:
            if server.returncode is None:
                server.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(server.wait(), 10)
                except TimeoutError:
                    server.kill()
                    await server.wait()
    late = [d for d in dropped if d > header_timeout + SLACK]
    kept = connections - len(dropped)
    mib = 1024 * 1024
    print(f"slowloris: {connections} connections against `meshbridge serve`, "
          f"header_timeout = {header_timeout:g} s")  # fmt: skip
    print(f"  open when the normal caller started / finished: {held} / {held_after}")
    print(f"  dropped by the server: {len(dropped)} of {connections}; after p50 "
          f"{fmt(percentile(dropped, 50))} s, max {fmt(dropped[-1] if dropped else None)} s; "
          f"{len(late)} later than header_timeout + {SLACK:g} s; {kept} not dropped")  # fmt: skip
    print(f"  normal caller, {requests} requests on new connections: p50 / p99 "
          f"{_ms(baseline, 50)} / {_ms(baseline, 99)} ms alone, "
          f"{_ms(under_attack, 50)} / {_ms(under_attack, 99)} ms under attack; "
          f"failures {base_failures} / {failures}")  # fmt: skip
    print(f"  server RSS: {rss_before / mib:.1f} MiB before, {rss_during / mib:.1f} MiB "
          f"during, {rss_after / mib:.1f} MiB after")  # fmt: skip
    return 1 if late or kept or failures or base_failures else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks slowloris",
        description="slowloris connections against `meshbridge serve`: dropped within "
        "header_timeout while a normal caller keeps its latency",
    )
    parser.add_argument("--connections", type=int, default=500, help="default 500")
    parser.add_argument(
        "--header-timeout", type=float, default=2.0, help="seconds (default 2; serve's is 10)"
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="normal requests per phase (default 200)"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if args.connections < 1 or args.requests < 1 or not 0 < args.header_timeout <= 20:
        raise SystemExit("--connections and --requests >= 1, 0 < --header-timeout <= 20")
    return asyncio.run(run(args.connections, args.header_timeout, args.requests))
