"""The chaos upstream in another process: ``meshbridge serve`` on 127.0.0.1.

``serve`` finds provider kinds through the ``meshbridge.providers`` entry
point group, as it finds its own. The benchmark declares the kind ``chaos``
(``benchmarks.chaos_upstream:KIND``) the way another package would, with a
``dist-info`` folder holding an ``entry_points.txt``, put in a private
temporary folder that only the processes it starts have on their
``PYTHONPATH``: nothing is installed, and this process's kinds stay ours.

Its provider ``chaos`` has a policy of its own (``max_in_flight``), so that a
reload with a changed policy during traffic (``meshbridge reload``, which
signals the process) is where capacity would leak if it could. Callers
reach it through a ``remote`` provider that signs their identity
(``[server.peers]``); the benchmark switches it with ``PUT /chaos/control``
behind the bearer gate. Everything it starts is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["SECRET_ENV", "Served", "served"]

ROOT: Final = Path(__file__).resolve().parent.parent
SECRET_ENV: Final = "MESHBRIDGE_CHAOS_PEER_SECRET"
_DIST_INFO: Final = "meshbridge_chaos_benchmark-0.dist-info"
_CONFIG: Final = """
[server]
listen = "127.0.0.1:0"
pid_file = "{dir}/serve.pid"
grace_period = 1.0
max_connections = 4096
[server.clients.bench]
token = "{token}"
[server.peers.caller]
secret_env = "{secret_env}"
[providers.chaos]
kind = "chaos"
[providers.chaos.policy]
max_in_flight = {max_in_flight}
timeout = {timeout}
"""


def _declare_kind(folder: Path) -> None:
    """A distribution whose one entry point is the kind ``chaos``."""
    info = folder / _DIST_INFO
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: meshbridge-chaos-benchmark\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text(
        "[meshbridge.providers]\nchaos = benchmarks.chaos_upstream:KIND\n"
    )


class Served:
    """A running ``meshbridge serve`` of the chaos kind."""

    def __init__(self, folder: Path, max_in_flight: int) -> None:
        self.folder = folder
        self.max_in_flight = max_in_flight
        self.token = secrets.token_urlsafe(24)
        self.secret = secrets.token_urlsafe(32)
        self.config = folder / "serve.toml"
        self.log = folder / "serve.log"
        self.url = ""
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(folder), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            SECRET_ENV: self.secret,
        }
        self.process: asyncio.subprocess.Process | None = None
        self.reloads = 0
        self._session: aiohttp.ClientSession | None = None

    def write_config(self, timeout: float) -> None:
        self.config.write_text(
            _CONFIG.format(dir=self.folder, token=self.token, secret_env=SECRET_ENV,
                           max_in_flight=self.max_in_flight, timeout=timeout)
        )  # fmt: skip

    async def start(self) -> None:
        self.write_config(timeout=30.0)
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshbridge", "serve", str(self.config),
                stdout=out, stderr=out, cwd=self.folder, env=self.env,
            )  # fmt: skip
        self._session = aiohttp.ClientSession()
        for _ in range(600):
            found = re.search(r"serving chaos on (http://127\.0\.0\.1:\d+)", self.log.read_text())
            if found:
                self.url = found[1]
                return
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"meshbridge serve did not start:\n{self.log.read_text()[-3000:]}")

    async def set_mode(self, mode: str, slow: float | None = None) -> None:
        assert self._session is not None
        body: dict[str, object] = {"mode": mode} if slow is None else {"mode": mode, "slow": slow}
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self._session.put(
            f"{self.url}/chaos/control", json=body, headers=headers
        ) as response:
            if response.status != 204:
                raise RuntimeError(f"PUT /chaos/control: {response.status} {await response.text()}")

    async def metrics(self) -> dict[str, float]:
        """Every sample of serve's /metrics, keyed ``name{k=v,...}``."""
        assert self._session is not None
        async with self._session.get(f"{self.url}/metrics") as response:
            text = await response.text()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
        return samples

    async def reload(self, timeout: float) -> None:
        """Change the provider's policy (its ``timeout``), then ``meshbridge reload``;
        returns once serve counts the reload a success."""
        key = "meshbridge_config_reloads_total{result=success}"
        before = (await self.metrics()).get(key, 0.0)
        self.write_config(timeout=timeout)
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshbridge", "reload", str(self.config),
            cwd=self.folder, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await command.communicate()
        if command.returncode != 0:
            raise RuntimeError(f"meshbridge reload failed: {output.decode()[-2000:]}")
        for _ in range(200):
            if (await self.metrics()).get(key, 0.0) > before:
                self.reloads += 1
                return
            await asyncio.sleep(0.025)
        raise RuntimeError(f"serve did not reload:\n{self.log.read_text()[-3000:]}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_counts(self) -> dict[str, int]:
        """Serve's warnings and errors so far, by level and logger, and its tracebacks."""
        found: Counter[str] = Counter()
        for line in self.log.read_text(errors="replace").splitlines():
            logged = re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) ([\w.]+):", line)
            if logged:
                found[f"{logged[2]} {logged[1]}"] += 1
            elif line.startswith("Traceback (most recent call last)"):
                found["tracebacks"] += 1
        return dict(found)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def served(folder: Path, max_in_flight: int) -> AsyncIterator[Served]:
    """``meshbridge serve`` of the chaos kind, in ``folder`` (private); stopped on exit."""
    _declare_kind(folder)
    server = Served(folder, max_in_flight)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
