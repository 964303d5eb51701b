"""The meshbridge service: config files, reload, the gated HTTP server, the CLI.

It builds on the core (``meshbridge``) and the provider kinds
(``meshbridge.providers``); neither imports it. Its public API::

    config = load_config("meshbridge.toml")      # ConfigError lists every mistake
    async with Service(config, port=0) as service:
        ...                                      # service.url, service.mesh
        await service.reloader.reload()          # what SIGHUP does

``main`` is the ``meshbridge`` command; ``run_demo`` is ``meshbridge demo``.
"""

from __future__ import annotations

from meshbridge import ConfigError

from ._cli import main
from ._config import (
    ClientConfig,
    Config,
    PeerConfig,
    ProviderConfig,
    ServerConfig,
    load_config,
    parse_config,
)
from ._demo import run_demo
from ._gateway import Gateway
from ._limits_config import LimitsConfig, StoreConfig
from ._redis_store import RedisStore
from ._reload import Reloader, mesh_from_config
from ._service import Service, pid_file_for, serve_until_signalled

__all__ = [
    "ClientConfig",
    "Config",
    "ConfigError",
    "Gateway",
    "LimitsConfig",
    "PeerConfig",
    "ProviderConfig",
    "RedisStore",
    "Reloader",
    "ServerConfig",
    "Service",
    "StoreConfig",
    "load_config",
    "main",
    "mesh_from_config",
    "parse_config",
    "pid_file_for",
    "run_demo",
    "serve_until_signalled",
]
