"""A running ``meshbridge serve``: mesh, gateway and listener, started and
stopped as one, and the process around it (signals, pid file).

Stopping (SIGTERM, SIGINT, or the end of ``async with``): ``/readyz`` turns
503, the listener stops accepting, in-flight requests get the grace period
to finish and are then cancelled, the providers shut down, and the usage
ledger writes (or spools) what it holds. SIGHUP
reloads the config (see :class:`Reloader`).

The grace period is counted once. aiohttp's own ``shutdown_timeout`` would
wait twice (for the handlers, then as long again after a "cancel" that only
fails the request body, which a streaming handler never reads), and the
providers' grace would come on top; so the service waits for its requests
itself, cancels what is left at the deadline, and only then closes the
runner and the mesh, which by then have nothing in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry

from meshbridge import LimitStore, Mesh

from ._config import Config
from ._gateway import Gateway
from ._http_guard import Listener
from ._ledger import Ledger
from ._ledger_query import calls_since
from ._nonces import FirstUse, SharedNonces
from ._pidfile import PidFileError, pid_file_for, remove_pid_file, write_pid_file
from ._reload import Reloader

__all__ = ["Service", "pid_file_for", "serve_until_signalled"]

log = logging.getLogger("meshbridge")


class _InFlight:
    """The server's requests being handled, each as its aiohttp request task
    (which also writes the response), so shutdown can wait for them until
    the grace period ends and then cancel the rest."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def track(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None and task not in self._tasks:
            self._tasks.add(task)
            self._idle.clear()
            task.add_done_callback(self._done)
        return await handler(request)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def finish(self, deadline: float) -> None:
        """Wait for every request until ``deadline`` (loop time), then cancel
        the ones left and wait for them to unwind."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()
        except TimeoutError:
            left = list(self._tasks)
            log.info("grace period over: cancelling %d request(s) in flight", len(left))
            for task in left:
                task.cancel()
            if left:
                await asyncio.wait(left)


def _base_url(listener: Listener | None) -> str:
    if listener is None or not listener.addresses:
        raise RuntimeError("the service is not started")
    host, port = listener.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Service:
    """The mesh of a config behind one HTTP server.

    Args:
        config: the validated config.
        host: where to listen (the host of the config's ``server.listen`` by
            default).
        port: where to listen (the port of ``server.listen`` by default; 0
            picks a free one, see :attr:`url`).
        registry: the metrics registry (a new one by default).
        reuse_port: listen with ``SO_REUSEPORT`` (a worker of ``serve --workers``).
        admin: where the admin listener listens, instead of ``server.admin_listen``
            (which must be set for there to be one).
        tracer_provider: an OpenTelemetry ``TracerProvider`` for the mesh and the
            gateway (by default the global one, if set before the start).

    With ``[ledger] enabled`` (the default), every call is recorded in the
    usage ledger (:attr:`ledger`), which the mesh starts and closes. With
    day or month budgets in the in-process store, the calls of their current
    periods are replayed from the ledger at the start: a restart keeps what
    was spent.
    """

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
        registry: CollectorRegistry | None = None,
        reuse_port: bool = False,
        admin: tuple[str, int] | None = None,
        tracer_provider: object | None = None,
    ) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.ledger = Ledger(config.ledger, registry=registry) if config.ledger.enabled else None
        self.mesh = Mesh(
            registry=registry,
            grace_period=config.server.grace_period,
            tracer_provider=tracer_provider,
            ledger=self.ledger,
        )
        self.reloader = Reloader(self.mesh, config, ledger=self.ledger)
        self.reloader.install()
        self.gateway = Gateway(self.reloader, tracer_provider=tracer_provider)
        # With a shared store ([store] url), peer nonces are shared by replicas.
        self._shared_store: LimitStore | None = None
        if config.limits.store.shared:
            from ._redis_store import RedisStore  # redis is an extra: loaded when configured

            limiter = self.mesh.limiter
            store = limiter.store if limiter is not None else config.limits.store.make()
            if limiter is None:
                self._shared_store = store  # the service's own: closed with it
            if isinstance(store, RedisStore):
                self.share_nonces(store)
        self._host = host if host is not None else config.server.host
        self._port = port if port is not None else config.server.port
        self._reuse_port = reuse_port
        self._admin = admin if config.server.admin is not None else None
        if host is not None or port is not None:
            self.reloader.listening_on = None  # the address is not the config's to change
        self._runner: web.AppRunner | None = None
        self._listeners: list[Listener] = []
        self._in_flight = _InFlight()

    @property
    def url(self) -> str:
        """The base URL the server listens on, once started."""
        return _base_url(self._listeners[0] if self._listeners else None)

    @property
    def admin_url(self) -> str | None:
        """The base URL of the admin listener (``server.admin_listen``), if any."""
        admin = [listener for listener in self._listeners if listener.admin]
        return _base_url(admin[0]) if admin else None

    async def start(self) -> None:
        """Start every provider, then listen."""
        await self.mesh.start()
        try:
            await self._replay_budgets()
        except BaseException:
            await self.mesh.aclose()
            raise
        runner = web.AppRunner(
            self.gateway.app(),
            handle_signals=False,
            access_log=None,  # the gateway writes its own structured lines
            handler_cancellation=True,  # a caller that leaves cancels its provider request
            shutdown_timeout=self.reloader.config.server.grace_period,
        )
        runner.app.middlewares.insert(0, self._in_flight.track)
        try:
            await runner.setup()
            limits, rejected = self.gateway.limits, self.gateway.rejected
            admin = self._admin or self.reloader.config.server.admin
            reuse = self._reuse_port
            self._listeners = [Listener(runner, self._host, self._port, limits=limits,
                                        rejected=rejected, reuse_port=reuse)]  # fmt: skip
            if admin is not None:
                self._listeners.append(Listener(runner, *admin, limits=limits, rejected=rejected,
                                                admin=True, reuse_port=reuse))  # fmt: skip
            for listener in self._listeners:
                await listener.start()
        except BaseException:
            await runner.cleanup()
            await self.mesh.aclose()
            raise
        self._runner = runner
        self.gateway.ready = True

    async def _replay_budgets(self) -> None:
        """Day and month budgets of an in-process store start from what the
        ledger recorded in their current periods (a shared store keeps its own)."""
        limiter, ledger = self.mesh.limiter, self.ledger
        if limiter is None or ledger is None or not limiter.synchronous:
            return
        since = limiter.budgets_since()
        if since is None:
            return
        config = self.reloader.config.ledger
        records = await asyncio.to_thread(calls_since, config, since)
        counted = await limiter.replay(records)
        log.info(
            "limits: %d calls of the budgets' current periods replayed from the ledger", counted
        )

    def share_nonces(self, store: FirstUse) -> None:
        """Check peer signatures' nonces in ``store`` (a shared one, such as
        Redis), this server's own store standing in while it does not answer."""
        gate = self.gateway.peers
        gate.nonces = SharedNonces(store, gate.nonces)

    async def aclose(self) -> None:
        """Stop accepting, let in-flight requests finish for the grace period,
        cancel the rest, and shut the providers down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reloader.config.server.grace_period
        self.gateway.ready = False
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                for site in list(runner.sites):
                    await site.stop()
                await asyncio.sleep(0)  # requests accepted just before have started
                if runner.server is not None:
                    runner.server.pre_shutdown()  # idle keep-alive connections close
                await self._in_flight.finish(deadline)
                await runner.cleanup()
        finally:
            await self.mesh.aclose()
            if self._shared_store is not None:
                await self._shared_store.aclose()

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


async def serve_until_signalled(
    service: Service,
    stopped: asyncio.Event | None = None,
    *,
    pid_file: bool = True,
    on_hup: Callable[[], None] | None = None,
) -> None:
    """Run a started service until SIGTERM/SIGINT (or ``stopped`` is set);
    SIGHUP reloads its config (or calls ``on_hup``: a worker asks its
    supervisor). Writes the pid file while it runs, unless ``pid_file`` is
    false (a worker: the supervisor of the workers writes it)."""
    loop = asyncio.get_running_loop()
    stopped = stopped or asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        if on_hup is not None:
            on_hup()
            return
        task = loop.create_task(service.reloader.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def stop(signum: signal.Signals) -> None:
        grace = service.reloader.config.server.grace_period
        log.info("%s: stopping, in-flight requests get %gs", signum.name, grace)
        stopped.set()

    path = pid_file_for(service.reloader.config) if pid_file else None
    handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, stop, signal.SIGINT)
    # A worker starts with SIGHUP blocked (_workers.py): one sent meanwhile waited
    # for this handler, and comes now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        if path is not None:
            write_pid_file(path)
    except PidFileError as exc:
        log.warning(
            "cannot write the pid file (%s): `meshbridge reload` needs --pid %d", exc, os.getpid()
        )
    providers = ", ".join(service.mesh.providers)
    pid = f"pid {os.getpid()}, pid file {path}" if path else f"pid {os.getpid()}"
    admin = f"; admin on {service.admin_url} (the admin page: /admin/)" if service.admin_url else ""
    log.info("serving %s on %s (%s)%s", providers, service.url, pid, admin)
    try:
        await stopped.wait()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        if path is not None:
            remove_pid_file(path)
        if reloads:
            await asyncio.gather(*reloads, return_exceptions=True)
