"""The app in a process of its own, over loopback TCP (contender ``tcp-apart``).

Ten thousand TCP streams with both ends in one process need twenty thousand
file descriptors, and this machine's hard limit is 20,000 (and only root can
raise it). With the app in a second process each side needs half; it is also
how the app would run as a separate service. ``python -m benchmarks
--serve-app`` serves ``apps.aiohttp_app()`` on ``127.0.0.1`` at a free port,
prints the port, and stops when its standard input closes (so it never
outlives the benchmark that started it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from aiohttp import web

from .apps import aiohttp_app

__all__ = ["AppProcess", "serve_main"]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


async def _serve() -> None:
    runner = web.AppRunner(aiohttp_app(), handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        print(runner.addresses[0][1], flush=True)
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        await stdin.read()  # until the parent closes it, or dies
    finally:
        await runner.cleanup()


def serve_main() -> int:
    asyncio.run(_serve())
    return 0


class AppProcess:
    """A running ``--serve-app`` process: its pid and port."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    @classmethod
    async def start(cls) -> AppProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks",
            "--serve-app",
            cwd=PACKAGE_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(30):
                line = await process.stdout.readline()
            return cls(process, int(line))
        except BaseException:
            process.kill()
            await process.wait()
            raise

    async def stop(self) -> None:
        """Close its standard input and wait for it (killed after 10 s)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
