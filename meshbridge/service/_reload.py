"""Reloading a config into a running mesh, all or nothing.

A reload reads the file again; if it has errors, or a new provider fails to
be built or to start, the running table stays as it was, the errors are
logged, and ``meshbridge_config_reloads_total{result="failure"}`` counts it:
every failed reload is counted, whatever went wrong. Otherwise
:meth:`Mesh.reconfigure` swaps the new table in atomically: streams already
running finish on the old apps. Providers whose kind, options and
``require_api_key_id`` did not change keep their running app (and its
upstream connections); only changed or new ones are built and started.

A :class:`Reloader` is the one path from a config to a mesh: ``serve``,
``demo`` and :meth:`meshbridge.Mesh.from_config` all register a config's
providers through :meth:`Reloader.install`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from meshbridge import ConfigError, Mesh

from ._config import Config, ProviderConfig, load_config
from ._ledger import Ledger
from ._limits_config import LimitsConfig

__all__ = ["ReloadFailure", "Reloader", "mesh_from_config"]

log = logging.getLogger("meshbridge")


def _same(a: ProviderConfig, b: ProviderConfig) -> bool:
    return (
        a.kind == b.kind
        and a.require_api_key_id == b.require_api_key_id
        and a.plan.options == b.plan.options
    )


class _ReloadMetrics:
    """``meshbridge_config_reloads_total{result}``: plain numbers behind a
    collector, as the core's metrics are."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.success = 0
        self.failure = 0
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        family.add_metric(["success"], self.success)
        family.add_metric(["failure"], self.failure)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "meshbridge_config_reloads",
            "Config reloads, by result (success, failure).",
            labels=["result"],
        )


@dataclass(frozen=True, slots=True)
class ReloadFailure:
    """A reload that left the running table as it was.

    Attributes:
        at: when it failed, seconds since the epoch.
        error: what was wrong, as logged (a config's errors, each with its key path).
    """

    at: float
    error: str


class Reloader:
    """Keeps a mesh's router table in step with a config file.

    Args:
        mesh: the mesh to configure (started or not).
        config: the config it runs now; :meth:`install` registers it.
        environ: where ``*_env`` options are looked up on reload.
        ledger: the mesh's usage ledger: a reload flushes it and applies the
            ``[ledger]`` settings that need no restart.

    :attr:`listening_on` is the ``server.listen`` the server was started
    with (None when the address came from elsewhere, such as ``serve
    --listen``); a reload whose ``server.listen`` differs from it logs that
    a restart is needed to apply it. So does one that adds, changes or
    removes ``server.admin_listen`` (:attr:`admin_on`, as started).

    For the admin page it remembers :attr:`loaded_at` (when the running
    config was loaded, seconds since the epoch), :attr:`generation` (0 for
    the config it started with, then one more per successful reload),
    :attr:`successes` and :attr:`failures`, and :attr:`last_failure` (the
    latest failed reload, kept after a later success).
    """

    def __init__(
        self,
        mesh: Mesh,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.mesh = mesh
        self.ledger = ledger
        self.config = config
        self._environ = environ
        self._apps: dict[str, web.Application] = {}
        self._lock = asyncio.Lock()
        self._reloads = _ReloadMetrics(mesh.registry)
        self.listening_on: str | None = config.server.listen
        self.admin_on: tuple[str, int] | None = config.server.admin
        self.loaded_at = time.time()
        self.generation = 0
        self.last_failure: ReloadFailure | None = None

    @property
    def successes(self) -> int:
        """Reloads that swapped a new table in (``meshbridge_config_reloads_total``)."""
        return self._reloads.success

    @property
    def failures(self) -> int:
        """Reloads that left the running table as it was."""
        return self._reloads.failure

    def _failed(self, error: str) -> bool:
        self._reloads.failure += 1
        self.last_failure = ReloadFailure(time.time(), error)
        return False

    def install(self) -> None:
        """Register the providers of :attr:`config` on the (not yet started) mesh."""
        for name, provider in self.config.providers.items():
            app = self._apps[name] = self.config.build(name)
            self.mesh.register(
                name, app, require_api_key_id=provider.require_api_key_id, policy=provider.policy
            )
        for name, route in self.config.routes.items():
            self.mesh.add_route(name, route.split, sticky=route.sticky)
        limiter = self.config.limits.limiter()
        if limiter is not None:
            self.mesh.set_limiter(limiter)

    async def reload(self, content: bytes | None = None) -> bool:
        """Read the config file again (or take ``content``, its bytes read
        already) and swap its table in.

        Returns:
            True if the new table runs; False if the file had errors or a
            provider failed to start (the old table keeps running).
        """
        async with self._lock:
            path = self.config.path
            try:
                config = load_config(path, self._environ, content=content)
            except ConfigError as exc:
                log.error("config reload rejected, the running table is unchanged:\n%s", exc)
                return self._failed(str(exc))
            except Exception as exc:  # a kind's parser that fails: still one counted failure
                log.exception("config reload failed, the running table is unchanged")
                return self._failed(f"{type(exc).__name__}: {exc}")
            try:
                apps: dict[str, web.Application] = {}
                for name, provider in config.providers.items():
                    old = self.config.providers.get(name)
                    if old is not None and name in self._apps and _same(old, provider):
                        apps[name] = self._apps[name]
                    else:
                        apps[name] = config.build(name)
                require = {n for n, p in config.providers.items() if p.require_api_key_id}
                await self.mesh.reconfigure(
                    apps,
                    require_api_key_id=require,
                    policies=config.policies,
                    routes=config.routes,
                )
            except Exception as exc:
                log.exception("config reload failed to start, the running table is unchanged")
                return self._failed(f"a provider failed to start: {type(exc).__name__}: {exc}")
            listen = config.server.listen
            if self.listening_on is not None and listen != self.listening_on:
                log.warning(
                    "server.listen is %s in %s, the server listens on %s: restart to apply it",
                    listen,
                    path,
                    self.listening_on,
                )
            if config.server.admin != self.admin_on:
                log.warning(
                    "server.admin_listen is %s in %s, the admin listener is %s: "
                    "restart to apply it",
                    _shown(config.server.admin, "unset"),
                    path,
                    _shown(self.admin_on, "not started (admin_listen was unset)"),
                )
            await self._reload_limits(config.limits, path)
            self.config, self._apps = config, apps
            self.loaded_at, self.generation = time.time(), self.generation + 1
            if self.ledger is not None:
                await self._reload_ledger(config)
            self._reloads.success += 1
            log.info("config reloaded from %s: providers %s", path, ", ".join(apps))
            return True

    async def _reload_ledger(self, config: Config) -> None:
        assert self.ledger is not None
        restart = self.ledger.reconfigure(config.ledger)
        if restart:
            keys = ", ".join(f"ledger.{key}" for key in restart)
            log.warning("%s changed in %s: restart to apply", keys, config.path)
        await self.ledger.flush()

    async def _reload_limits(self, new: LimitsConfig, path: object) -> None:
        """Limits and prices change in place: the store and its counters stay
        (a limit that stays keeps what it counted). The store itself is where
        the counters are: like the listeners, it changes on a restart."""
        old = self.config.limits
        limiter = self.mesh.limiter
        if new == old:
            return
        if limiter is None or not new.limits:
            self.mesh.set_limiter(new.limiter())  # limits appear, or go
            if limiter is not None:
                await limiter.aclose()  # its calls settled in-process; Redis keeps its counts
            return
        store, before = new.store, old.store
        if (store.url, store.prefix, store.timeout, store.lease_seconds) != (
            before.url,
            before.prefix,
            before.timeout,
            before.lease_seconds,
        ):
            log.warning("[store] changed in %s: the limit store changes on a restart", path)
        limiter.reconfigure(
            new.limits,
            new.prices,
            time_zone=store.time_zone,
            on_store_failure=store.on_store_failure,
        )


def _shown(address: tuple[str, int] | None, otherwise: str) -> str:
    if address is None:
        return otherwise
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mesh_from_config(
    path: str | os.PathLike[str],
    *,
    registry: CollectorRegistry | None = None,
    environ: Mapping[str, str] | None = None,
) -> Mesh:
    """A new mesh with every provider of the config file ``path`` registered
    (what :meth:`meshbridge.Mesh.from_config` calls, through the
    ``meshbridge.config`` entry point).

    Raises:
        ConfigError: the file cannot be read or has errors; nothing is built.
    """
    config = load_config(path, environ)
    mesh = Mesh(registry=registry, grace_period=config.server.grace_period)
    Reloader(mesh, config, environ=environ).install()
    return mesh
