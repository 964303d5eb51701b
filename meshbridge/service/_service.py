"""A running ``meshbridge serve``: mesh, gateway and listener, started and
stopped as one, and the process around it (signals, pid file).

Stopping (SIGTERM, SIGINT, or the end of ``async with``): ``/readyz`` turns
503, the listener stops accepting, in-flight requests get the grace period
to finish and are then cancelled, and the providers shut down. SIGHUP
reloads the config (see :class:`Reloader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import tempfile
from pathlib import Path
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry

from meshbridge import Mesh

from ._config import Config
from ._gateway import Gateway
from ._reload import Reloader

__all__ = ["Service", "pid_file_for", "serve_until_signalled"]

log = logging.getLogger("meshbridge")


def pid_file_for(config: Config) -> Path:
    """Where ``serve`` writes its pid: ``server.pid_file``, or a file in the
    temp dir named after the config's absolute path (so ``meshbridge reload
    CONFIG`` finds it)."""
    if config.server.pid_file is not None:
        return config.server.pid_file
    digest = hashlib.sha256(str(config.path.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"meshbridge-{digest}.pid"


class Service:
    """The mesh of a config behind one HTTP server.

    Args:
        config: the validated config.
        host, port: where to listen (the config's ``server.listen`` by default;
            port 0 picks a free one, see :attr:`url`).
        registry: the metrics registry (a new one by default).
    """

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.mesh = Mesh(registry=registry, grace_period=config.server.grace_period)
        self.reloader = Reloader(self.mesh, config)
        self.reloader.install()
        self.gateway = Gateway(self.reloader)
        self._host = host if host is not None else config.server.host
        self._port = port if port is not None else config.server.port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL the server listens on, once started."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the service is not started")
        host, port = self._runner.addresses[0][:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        """Start every provider, then listen."""
        await self.mesh.start()
        runner = web.AppRunner(
            self.gateway.app(),
            handle_signals=False,
            access_log=None,  # the gateway writes its own structured lines
            handler_cancellation=True,  # a caller that leaves cancels its provider request
            shutdown_timeout=self.reloader.config.server.grace_period,
        )
        try:
            await runner.setup()
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            await self.mesh.aclose()
            raise
        self._runner = runner
        self.gateway.ready = True

    async def aclose(self) -> None:
        """Stop accepting, let in-flight requests finish for the grace period,
        cancel the rest, and shut the providers down."""
        self.gateway.ready = False
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            await self.mesh.aclose()

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def serve_until_signalled(service: Service, stopped: asyncio.Event | None = None) -> None:
    """Run a started service until SIGTERM/SIGINT (or ``stopped`` is set);
    SIGHUP reloads its config. Writes the pid file while it runs."""
    loop = asyncio.get_running_loop()
    stopped = stopped or asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = loop.create_task(service.reloader.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def stop(signum: signal.Signals) -> None:
        grace = service.reloader.config.server.grace_period
        log.info("%s: stopping, in-flight requests get %gs", signum.name, grace)
        stopped.set()

    pid_file = pid_file_for(service.reloader.config)
    handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, stop, signal.SIGINT)
    try:
        pid_file.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("cannot write the pid file %s: %s", pid_file, exc)
    providers = ", ".join(service.mesh.providers)
    log.info(
        "serving %s on %s (pid %d, pid file %s)", providers, service.url, os.getpid(), pid_file
    )
    try:
        await stopped.wait()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        if reloads:
            await asyncio.gather(*reloads, return_exceptions=True)
