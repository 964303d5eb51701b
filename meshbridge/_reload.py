"""Reloading a config into a running mesh, all or nothing.

A reload reads the file again; if it has errors, or a new provider fails to
start, the running table stays as it was, the errors are logged, and
``meshbridge_config_reloads_total{result="failure"}`` counts it. Otherwise
:meth:`Mesh.reconfigure` swaps the new table in atomically: streams already
running finish on the old apps. Providers whose kind, options and
``require_api_key_id`` did not change keep their running app (and its
upstream connections); only changed or new ones are built and started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import Counter

from ._config import Config, ConfigError, ProviderConfig, load_config

if TYPE_CHECKING:
    from ._mesh import Mesh

__all__ = ["Reloader"]

log = logging.getLogger("meshbridge")


def _same(a: ProviderConfig, b: ProviderConfig) -> bool:
    return (
        a.kind == b.kind
        and a.require_api_key_id == b.require_api_key_id
        and a.plan.options == b.plan.options
    )


class Reloader:
    """Keeps a mesh's router table in step with a config file.

    Args:
        mesh: the mesh to configure (started or not).
        config: the config it runs now; :meth:`install` registers it.
        environ: where ``*_env`` options are looked up on reload.
    """

    def __init__(
        self, mesh: Mesh, config: Config, *, environ: Mapping[str, str] | None = None
    ) -> None:
        from providers import TokenMetrics

        self.mesh = mesh
        self.config = config
        self._environ = environ
        self._apps: dict[str, web.Application] = {}
        self._lock = asyncio.Lock()
        # One reloader per mesh owns the mesh's token metrics and reload counter.
        self._metrics = TokenMetrics(mesh.registry)
        self._counter = Counter(
            "meshbridge_config_reloads",
            "Config reloads, by result (success, failure).",
            ["result"],
            registry=mesh.registry,
        )
        for result in ("success", "failure"):
            self._counter.labels(result)  # both series exist from the start, at 0

    def install(self) -> None:
        """Register the providers of :attr:`config` on the (not yet started) mesh."""
        for name, provider in self.config.providers.items():
            app = self._apps[name] = self.config.build(name, self._metrics)
            self.mesh.register(name, app, require_api_key_id=provider.require_api_key_id)

    async def reload(self) -> bool:
        """Read the config file again and swap its table in.

        Returns:
            True if the new table runs; False if the file had errors or a
            provider failed to start (the old table keeps running).
        """
        async with self._lock:
            path = self.config.path
            try:
                config = load_config(path, self._environ)
            except ConfigError as exc:
                self._counter.labels("failure").inc()
                log.error("config reload rejected, the running table is unchanged:\n%s", exc)
                return False
            apps: dict[str, web.Application] = {}
            for name, provider in config.providers.items():
                old = self.config.providers.get(name)
                if old is not None and name in self._apps and _same(old, provider):
                    apps[name] = self._apps[name]
                else:
                    apps[name] = config.build(name, self._metrics)
            require = {n for n, p in config.providers.items() if p.require_api_key_id}
            try:
                await self.mesh.reconfigure(apps, require_api_key_id=require)
            except Exception:
                self._counter.labels("failure").inc()
                log.exception("config reload failed to start, the running table is unchanged")
                return False
            if config.server.listen != self.config.server.listen:
                log.warning("server.listen changed in %s: restart to apply it", path)
            self.config, self._apps = config, apps
            self._counter.labels("success").inc()
            log.info("config reloaded from %s: providers %s", path, ", ".join(apps))
            return True
