"""The Mesh: the router table, the providers' lifecycles, sessions and metrics."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import sys
from collections.abc import Callable, Collection, Mapping
from importlib.metadata import entry_points
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from ._call import Calls
from ._connector import MeshConnector
from ._limiter import Limiter
from ._metrics import Family, MeshMetrics
from ._pipe import PipeStats
from ._policy import Policy, Route
from ._provider import Provider
from ._record import LedgerSink
from ._relay import Relay
from ._routing import Router, check_name
from ._state import TrafficState, traffic_state
from ._synthetic import ERROR_BODY, ErrorBody
from ._traffic import Clock, Traffic

if TYPE_CHECKING:  # _otel imports opentelemetry: only ever loaded when tracing is on
    from ._otel import Tracing

__all__ = ["Mesh"]

log = logging.getLogger("meshbridge")

_NEW: Final = "new"
_RUNNING: Final = "running"
_CLOSED: Final = "closed"

# Where the service layer offers its config loader (see Mesh.from_config).
CONFIG_LOADERS: Final = "meshbridge.config"
# The keyword arguments of mesh.session() that belong to its connector.
_CONNECTOR_ARGS: Final = frozenset(inspect.signature(aiohttp.BaseConnector).parameters)


class Mesh:
    """An in-process service mesh: aiohttp apps reached by name, without sockets.

    Register ``aiohttp.web.Application`` objects under provider names, start
    the mesh, and talk to them through :meth:`session` (a real
    ``aiohttp.ClientSession``) with the provider name as the URL host.

    Args:
        registry: where the metrics go; a new ``CollectorRegistry`` by default
            (never prometheus_client's global one).
        metrics: False to record no metrics at all.
        grace_period: seconds that in-flight requests get to finish when the
            mesh closes or a provider is replaced, before they are cancelled.
        rng: the random source of splits, retry jitter and fault injection
            (seed one in tests for repeatable runs).
        clock: monotonic seconds for circuit breakers and retry budgets
            (``time.monotonic``).
        tracer_provider: an OpenTelemetry ``TracerProvider``: a span for every
            request (see the README's Tracing). By default the global one, if
            the application set one before the mesh starts; else no tracing.
        ledger: where every call's :class:`CallRecord` goes when it ends (a
            :class:`LedgerSink`, such as ``meshbridge.service.Ledger``); the
            mesh starts it and, once its providers stopped, closes it.
        limiter: limits and budgets per caller (a :class:`Limiter`): every
            call it applies to is admitted before its provider is reached
            (or answered 429) and settled when it ends. Its metrics go on
            :attr:`registry`; the mesh closes it.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
        grace_period: float = 10.0,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        tracer_provider: object | None = None,
        ledger: LedgerSink | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        if grace_period < 0:
            raise ValueError(f"grace_period must be >= 0, got {grace_period!r}")
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = MeshMetrics(self.registry) if metrics else None
        self._grace_period = grace_period
        self._router: Router[Provider] = Router()
        self._traffic = (
            Traffic(self._metrics, rng=rng)
            if clock is None
            else Traffic(self._metrics, rng=rng, clock=clock)
        )
        self._calls = Calls(self._metrics.traffic[Family.CALLS].values if self._metrics else None)
        if ledger is not None:
            if not isinstance(ledger, LedgerSink):
                raise TypeError(f"ledger must have record(), start() and aclose(), got {ledger!r}")
            self._calls.set_ledger(ledger)
        self._limiter: Limiter | None = None
        if limiter is not None:
            self.set_limiter(limiter)
        self._stats = PipeStats()
        self._state = _NEW
        self._background: set[asyncio.Task[None]] = set()
        self._tracer_provider = tracer_provider
        self._tracing = _tracing(tracer_provider) if tracer_provider is not None else None

    def __repr__(self) -> str:
        return f"<Mesh {self._state} providers={list(self.providers)}>"

    # -- the router table ------------------------------------------------------

    @property
    def providers(self) -> tuple[str, ...]:
        """The names of the registered providers."""
        return tuple(self._router.table)

    def __contains__(self, name: object) -> bool:
        return name in self._router.table

    def register(
        self,
        name: str,
        app: web.Application,
        *,
        require_api_key_id: bool = False,
        replace: bool = False,
        policy: Policy | None = None,
    ) -> None:
        """Serve ``app`` under the provider name ``name``.

        On a running mesh the app starts at once (requests to it wait for its
        startup). With ``replace=True`` an existing provider of that name is
        swapped out atomically: requests already running finish on the old app,
        which is then shut down. ``policy`` governs every request to it (see
        :meth:`set_policy`).

        Raises:
            ValueError: ``name`` is not a valid provider name, it is taken (and
                ``replace`` is False), it names a route, or ``app`` has already
                been started.
        """
        check_name(name)
        if self._traffic.is_route(name):
            raise ValueError(f"{name!r} is a route; a provider may not have a route's name")
        if self._state == _CLOSED:
            raise RuntimeError("the mesh is closed")
        if name in self._router.table and not replace:
            raise ValueError(
                f"provider {name!r} is already registered: unregister it first, "
                "or pass replace=True to swap it"
            )
        provider = self._provider(name, app, require_api_key_id)
        table = dict(self._router.table)
        old = table.get(name)
        table[name] = provider
        self._router.swap(table)
        if policy is not None or not replace:
            self._traffic.set_policy(name, policy)
        if self._state == _RUNNING:
            provider.starting()
            self._in_background(provider.start(), f"starting provider {name!r}")
            if old is not None:
                self._in_background(old.stop(), f"stopping provider {name!r}")

    def unregister(self, name: str) -> None:
        """Remove a provider. New requests to it fail with ``ProviderNotFound``;
        requests in flight finish, then the app shuts down.

        Raises:
            KeyError: no provider has that name.
        """
        table = dict(self._router.table)
        try:
            provider = table.pop(name)
        except KeyError:
            raise KeyError(f"no provider named {name!r} is registered") from None
        self._router.swap(table)
        self._traffic.set_policy(name, None)
        if self._state == _RUNNING:
            self._in_background(provider.stop(), f"stopping provider {name!r}")

    async def reconfigure(
        self,
        apps: Mapping[str, web.Application],
        *,
        require_api_key_id: Collection[str] = (),
        policies: Mapping[str, Policy] | None = None,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        """Replace the whole router table with ``apps``, atomically.

        With ``policies`` and ``routes`` (a config's), those replace the
        mesh's in the same step; an unchanged policy keeps its state (its
        breaker stays open, its budget counts on).

        Names whose app is the one already registered keep running untouched.
        On a running mesh every new app is started first; if one fails, those
        are stopped again and the table is left as it was. Then the table is
        swapped in one step; requests in flight finish on the apps they started
        on, and the apps no longer in the table shut down in the background.

        Raises:
            ValueError: a name is invalid, or an app has already been started.
            Exception: whatever a new app's startup raised (table untouched).
        """
        unknown = set(require_api_key_id) - set(apps)
        if unknown:
            raise ValueError(f"require_api_key_id names unknown providers: {sorted(unknown)}")
        _check_traffic(apps, policies or {}, routes or {})
        for name in apps:
            check_name(name)
        current = self._router.table
        table: dict[str, Provider] = {}
        fresh: list[Provider] = []
        for name, app in apps.items():
            needs_key = name in require_api_key_id
            old = current.get(name)
            if old is not None and old.app is app and old.require_api_key_id == needs_key:
                table[name] = old
            else:
                table[name] = self._provider(name, app, needs_key)
                fresh.append(table[name])
        if self._state == _RUNNING:
            await self._start_all(fresh)
        old_table = self._router.swap(table)
        if policies is not None or routes is not None:
            self._traffic.replace(policies or {}, routes or {})
        if self._state == _RUNNING:
            kept = set(map(id, table.values()))
            for name, provider in old_table.items():
                if id(provider) not in kept:
                    self._in_background(provider.stop(), f"stopping provider {name!r}")

    async def wait_started(self, name: str) -> None:
        """Return once provider ``name`` has run its startup (``on_startup``,
        ``cleanup_ctx``), as requests to it would wait for.

        Raises:
            KeyError: no provider has that name.
            MeshError: its startup failed, or it was stopped (or the mesh is
                not running).
        """
        provider = self._router.table.get(name)
        if provider is None:
            raise KeyError(f"no provider named {name!r} is registered")
        await provider.wait_started()

    def _provider(self, name: str, app: web.Application, require_api_key_id: bool) -> Provider:
        return Provider(
            name,
            app,
            require_api_key_id=require_api_key_id,
            grace_period=self._grace_period,
            stats=self._stats,
        )

    # -- limits and budgets ---------------------------------------------------------

    @property
    def limiter(self) -> Limiter | None:
        """The limits and budgets calls are admitted by (None: none)."""
        return self._limiter

    def set_limiter(self, limiter: Limiter | None) -> None:
        """Admit calls by ``limiter`` from the next one on (None: no limits).

        Calls admitted by the previous limiter settle on it, and its metrics
        leave the registry; it is not closed here (its store may be the new
        one's): close it with ``await old.aclose(close_store=...)``. To change
        the limits of the same store, :meth:`Limiter.reconfigure` is simpler.
        """
        old = self._limiter
        if old is not None and old is not limiter:
            old.unregister_metrics()  # the new one's families replace its own
        if limiter is not None and self._metrics is not None:
            limiter.register_metrics(self.registry)
        self._limiter = limiter

    # -- traffic policies --------------------------------------------------------

    @property
    def policies(self) -> Mapping[str, Policy]:
        """Every provider's policy, by provider name (those without one are absent)."""
        return self._traffic.policies

    @property
    def routes(self) -> Mapping[str, Route]:
        """Every route, by the virtual name callers use."""
        return self._traffic.routes

    def set_policy(self, name: str, policy: Policy | None) -> None:
        """Govern every request to provider ``name`` by ``policy`` (None: no
        policy), from its next request on, through any session or connector.

        A policy whose circuit breaker settings did not change keeps its state.

        Raises:
            KeyError: no provider has that name.
        """
        if name not in self._router.table:
            raise KeyError(f"no provider named {name!r} is registered")
        self._traffic.set_policy(name, policy)

    def add_route(self, name: str, split: Mapping[str, int], *, sticky: str | None = None) -> None:
        """Add (or replace) a route: callers use ``http://NAME/...`` and each
        request goes to one provider of ``split`` by weight.

        Args:
            name: the virtual name; not a provider's.
            split: provider name to weight (integers; 0 takes no traffic).
            sticky: ``"api_key_id"`` or ``"source"``: the same caller always
                lands on the same provider while the weights hold.

        Raises:
            ValueError: a bad name or weight, a provider's name, or a split
                naming a provider that is not registered.
        """
        check_name(name)
        route = Route(split, sticky)
        if name in self._router.table:
            raise ValueError(f"{name!r} is a provider; a route may not have a provider's name")
        missing = sorted(set(split) - set(self._router.table))
        if missing:
            raise ValueError(f"route {name!r} splits to unknown providers: {missing}")
        self._traffic.set_route(name, route)

    def remove_route(self, name: str) -> None:
        """Remove a route; new requests to its name fail with ``ProviderNotFound``.

        Raises:
            KeyError: no route has that name.
        """
        if not self._traffic.is_route(name):
            raise KeyError(f"no route named {name!r}")
        self._traffic.set_route(name, None)

    def _relay(self, target: str, protocol: asyncio.Protocol, secure: bool) -> Relay:
        """A new relay connection for the connector (a governed ``target``)."""
        return Relay(
            target,
            protocol,
            router=self._router,
            traffic=self._traffic,
            metrics=self._metrics,
            error_body=self._error_body,
            loop=asyncio.get_running_loop(),
            stats=self._stats,
            secure=secure,
        )

    def _error_body(self, provider: str) -> ErrorBody | None:
        found = self._router.table.get(provider)
        return found.app.get(ERROR_BODY) if found is not None else None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start every registered app (``on_startup``, ``cleanup_ctx``) and
        accept requests. If an app fails to start, the ones started are
        stopped again and the error is raised."""
        if self._state != _NEW:
            raise RuntimeError(f"the mesh is {self._state}; a mesh starts once")
        if self._tracer_provider is None:
            self._tracing = _tracing(None)
        ledger = self._calls.ledger
        if ledger is not None:
            await ledger.start()
        try:
            await self._start_all(list(self._router.table.values()))
        except BaseException:
            self._state = _CLOSED  # its apps have run their cleanup: they cannot start again
            if ledger is not None:
                await ledger.aclose()
            raise
        self._state = _RUNNING
        self._router.accepting = True

    async def aclose(self) -> None:
        """Stop accepting requests, give in-flight ones the grace period to
        finish, cancel the rest, and shut every app down. Idempotent."""
        if self._state == _CLOSED:
            return
        running = self._state == _RUNNING
        self._state = _CLOSED
        self._router.accepting = False
        table = self._router.swap({})
        if running:
            await asyncio.gather(*(p.stop() for p in table.values()))
        while self._background:
            waiting = list(self._background)
            await asyncio.gather(*waiting, return_exceptions=True)
            # Not left to the tasks' done callbacks: on 3.12+ gathering tasks
            # that are already done need not yield to the loop, so those
            # callbacks might never run between two turns of this loop.
            self._background.difference_update(waiting)
        ledger = self._calls.ledger
        if ledger is not None and running:
            await ledger.aclose()  # after the providers: every call has ended
        if self._limiter is not None:
            await self._limiter.aclose()  # its last settlements, then its store

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start_all(self, providers: list[Provider]) -> None:
        started: list[Provider] = []
        try:
            for provider in providers:
                await provider.start()
                started.append(provider)
        except BaseException:
            await asyncio.gather(*(p.stop() for p in started), return_exceptions=True)
            raise

    def _in_background(self, coro: Any, what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("meshbridge: error %s", what)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- clients -----------------------------------------------------------------

    def connector(
        self,
        *,
        provider: str | None = None,
        source: str | None = None,
        api_key_id: str | None = None,
        **kwargs: Any,
    ) -> MeshConnector:
        """A connector for ``aiohttp.ClientSession(connector=...)``:
        ``MeshConnector(self, ...)``, whose arguments it takes."""
        return MeshConnector(
            self,
            provider=provider,
            source=source,
            api_key_id=api_key_id,
            **kwargs,
        )

    def session(
        self,
        *,
        provider: str | None = None,
        source: str | None = None,
        api_key_id: str | None = None,
        **kwargs: Any,
    ) -> aiohttp.ClientSession:
        """A real ``aiohttp.ClientSession`` on a new :meth:`connector`.

        ``kwargs`` go to the connector when ``aiohttp.BaseConnector`` takes
        them (``limit``, ``keepalive_timeout``, ``force_close``...), and to
        ``ClientSession`` otherwise (``base_url``, ``timeout``, ``headers``...).
        Closing the session closes its connector.
        """
        for_connector = {k: v for k, v in kwargs.items() if k in _CONNECTOR_ARGS}
        for_session = {k: v for k, v in kwargs.items() if k not in _CONNECTOR_ARGS}
        connector = self.connector(
            provider=provider, source=source, api_key_id=api_key_id, **for_connector
        )
        return aiohttp.ClientSession(connector=connector, **for_session)

    # -- observability -----------------------------------------------------------

    def metrics_handler(self) -> Handler:
        """An aiohttp handler serving :attr:`registry` in the Prometheus text
        format (or OpenMetrics, when the scraper asks for it)."""
        return make_aiohttp_handler(self.registry)

    def traffic_state(self) -> TrafficState:
        """A snapshot of every provider's and route's traffic right now: requests,
        errors and in flight per provider, its circuit and the time to its next
        probe, what its ``max_in_flight`` admitted, where each route's requests
        went. Plain values, read from what the mesh counts anyway; about the
        cost of a scrape, so for pages and periodic tasks, not for every request.

        Returns:
            A frozen :class:`TrafficState` (see ``meshbridge/_state.py``'s rules).
        """
        return traffic_state(self._router.table, self._traffic, self._metrics)

    @property
    def buffered_bytes(self) -> int:
        """Bytes the mesh's pipes hold right now, waiting for paused readers."""
        return self._stats.buffered

    @property
    def peak_buffered_bytes(self) -> int:
        """The most bytes the mesh's pipes have held at any one moment."""
        return self._stats.peak

    # -- configuration -----------------------------------------------------------

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str], *, registry: CollectorRegistry | None = None
    ) -> Mesh:
        """A mesh with every provider of a TOML config file registered.

        The same router table ``meshbridge serve`` runs: each ``[providers.NAME]``
        table is built by its kind with its options and ``require_api_key_id``;
        ``server.grace_period`` becomes the mesh's grace period.

        Reading configs is the service layer's job (``meshbridge.service``);
        the core finds its loader through the ``meshbridge.config`` entry
        point group instead of importing it.

        Raises:
            ConfigError: the file cannot be read or has errors (all are listed,
                each with its key path); nothing is registered.
            RuntimeError: no config loader is installed.
        """
        return _config_loader()(path, registry=registry)


def _tracing(provider: object | None) -> Tracing | None:
    """The mesh's tracing, or None: ``provider``'s, else the global tracer
    provider's if the application set one."""
    if provider is None and "opentelemetry.trace" not in sys.modules:
        return None  # nothing can have set a global provider: import nothing
    from ._otel import tracing_for  # never on `import meshbridge`: it loads opentelemetry

    return tracing_for(provider)


def _config_loader() -> Callable[..., Mesh]:
    found = entry_points(group=CONFIG_LOADERS)
    if not found:
        raise RuntimeError(
            f"no config loader is installed (entry point group {CONFIG_LOADERS!r}): "
            "install meshbridge as a package, which registers meshbridge.service's"
        )
    loader: Callable[..., Mesh] = next(iter(found)).load()
    return loader


def _check_traffic(
    apps: Mapping[str, object], policies: Mapping[str, Policy], routes: Mapping[str, Route]
) -> None:
    """Every name policies and routes use must be a provider of ``apps``."""
    problems = []
    for name, policy in policies.items():
        if name not in apps:
            problems.append(f"a policy for unknown provider {name!r}")
        problems += [
            f"{name!r} falls back to unknown provider {f!r}"
            for f in policy.fallback
            if f not in apps
        ]
    for name, route in routes.items():
        if name in apps:
            problems.append(f"route {name!r} has a provider's name")
        problems += [
            f"route {name!r} splits to unknown provider {p!r}"
            for p, _ in route.weights
            if p not in apps
        ]
    if problems:
        raise ValueError("; ".join(problems))
