"""A provider: one aiohttp application registered in a mesh, and its lifecycle.

The app is run the way ``web.AppRunner`` runs it behind a socket (startup,
cleanup contexts, shutdown and cleanup signals, each exactly once), minus the
socket: its server protocols are fed by links instead of a listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from ._aiohttp import ServerProtocol, configures_access_log, server_protocols
from ._exceptions import MeshError
from ._link import Link, open_pipe
from ._metrics import MeshMetrics
from ._pipe import OnClose, Pipe, PipeStats

__all__ = ["Provider"]

log = logging.getLogger("meshbridge")

NEW: Final = "new"
STARTING: Final = "starting"
RUNNING: Final = "running"
FAILED: Final = "failed"
STOPPED: Final = "stopped"


class Provider:
    """One registered app: its server, its lifecycle, its connections."""

    def __init__(
        self,
        name: str,
        app: web.Application,
        *,
        require_api_key_id: bool,
        grace_period: float,
        stats: PipeStats,
    ) -> None:
        if not isinstance(app, web.Application):
            raise TypeError(f"provider {name!r}: expected an aiohttp.web.Application, got {app!r}")
        if app.frozen:
            raise ValueError(
                f"provider {name!r}: this Application has already been started; "
                "an aiohttp Application runs once, so register a new one"
            )
        self.name = name
        self.app = app
        self.require_api_key_id = require_api_key_id
        self._grace_period = grace_period
        self._stats = stats
        self.state = NEW
        self._runner: web.AppRunner | None = None
        self._protocols: Callable[[], ServerProtocol] | None = None  # the server's
        self._started: asyncio.Future[None] | None = None
        self._tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"<Provider {self.name!r} {self.state}>"

    def starting(self) -> None:
        """Mark the provider as starting, so requests wait for :meth:`start`."""
        if self.state != NEW:
            raise RuntimeError(f"provider {self.name!r} is {self.state}, not new")
        self.state = STARTING
        self._started = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        """Run the app's startup (``on_startup``, ``cleanup_ctx``)."""
        if self.state == NEW:
            self.starting()
        started = self._started
        assert started is not None
        assert self.state == STARTING
        # The mesh observes every request itself (metrics, serve's access log),
        # so aiohttp's per-request access line is off by default; an app that
        # configures one (handler_args access_log/access_log_class/
        # access_log_format) gets it, as web.AppRunner would give it.
        quiet: dict[str, Any] = {} if configures_access_log(self.app) else {"access_log": None}
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=self._grace_period,
            **quiet,
        )
        try:
            await runner.setup()
        except BaseException as exc:
            self.state = FAILED
            if isinstance(exc, asyncio.CancelledError):
                started.cancel()
            else:
                started.set_exception(exc)
                started.exception()  # retrieved here; waiters get MeshError
            with contextlib.suppress(Exception):
                await runner.cleanup()
            raise
        server = runner.server
        assert server is not None
        self._runner = runner
        self._protocols = server_protocols(server)
        self.state = RUNNING
        started.set_result(None)

    async def wait_started(self) -> None:
        """Return once the provider runs.

        Raises:
            MeshError: it failed to start, or it was stopped.
        """
        started = self._started
        if self.state == STARTING and started is not None:
            # wait() never raises the startup's error nor swallows our own cancellation
            await asyncio.wait([started])
        if self.state == RUNNING:
            return
        if self.state == FAILED and started is not None:
            exc = None if started.cancelled() else started.exception()
            raise MeshError(f"provider {self.name!r} failed to start: {exc!r}") from exc
        raise MeshError(f"provider {self.name!r} is {self.state}")

    def open_link(
        self, client: asyncio.Protocol, *, secure: bool, metrics: MeshMetrics | None
    ) -> Link:
        """Connect a client protocol to a new server protocol of this app."""
        server, tls = self.server_protocol(secure=secure)
        loop = asyncio.get_running_loop()
        return Link(
            self, self.name, client, server, loop=loop, stats=self._stats, tls=tls, metrics=metrics
        )

    def open_pipe(
        self, owner: object, client: asyncio.Protocol, on_close: OnClose, *, secure: bool
    ) -> tuple[Pipe, ServerProtocol]:
        """A pipe from ``client`` to a new server protocol of this app, owned by
        ``owner``, and that protocol."""
        server, tls = self.server_protocol(secure=secure)
        loop = asyncio.get_running_loop()
        pipe = open_pipe(
            owner,
            self.name,
            client,
            server,
            loop=loop,
            stats=self._stats,
            tls=tls,
            on_close=on_close,
        )
        return pipe, server

    def server_protocol(self, *, secure: bool) -> tuple[ServerProtocol, ssl.SSLContext | None]:
        """A new server protocol of this app, and the TLS context it reports."""
        protocols = self._protocols
        if protocols is None or self.state != RUNNING:
            raise MeshError(f"provider {self.name!r} is {self.state}")
        tls = None
        if secure:  # request.secure is True for https:// URLs, with no TLS involved
            if self._tls is None:
                self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls = self._tls
        return protocols(), tls

    async def stop(self) -> None:
        """Stop taking requests, let in-flight ones finish for the grace period,
        cancel what is left, then run the app's shutdown and cleanup."""
        if self._started is not None and not self._started.done():
            await asyncio.wait([self._started])
        runner, self._runner = self._runner, None
        self.state = STOPPED
        if runner is not None:
            try:
                await runner.cleanup()
            except Exception:
                log.exception("provider %r: error while shutting down", self.name)
        self._protocols = None
