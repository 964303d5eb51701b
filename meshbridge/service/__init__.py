"""The meshbridge service: config files, reload, the gated HTTP server, the CLI.

It builds on the core (``meshbridge``) and the provider kinds
(``meshbridge.providers``); neither imports it. Its public API::

    config = load_config("meshbridge.toml")      # ConfigError lists every mistake
    async with Service(config, port=0) as service:
        ...                                      # service.url, service.mesh
        await service.reloader.reload()          # what SIGHUP does

``main`` is the ``meshbridge`` command; ``run_demo`` is ``meshbridge demo``.

The usage ledger::

    ledger = Ledger(LedgerConfig(url="postgresql://..."), registry=registry)
    mesh = Mesh(registry=registry, ledger=ledger)    # every call, one row
    reader = LedgerReader(LedgerConfig(url="postgresql://..."))
    reader.summary(UsageFilter(since=...), group_by="key")
"""

from __future__ import annotations

from meshbridge import ConfigError

from ._admin_gate import AdminGate
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
from ._ledger import Ledger
from ._ledger_config import LedgerConfig
from ._ledger_query import LedgerReader, UsageFilter, UsageRow
from ._limits_config import LimitsConfig, StoreConfig
from ._redis_store import RedisStore
from ._reload import Reloader, mesh_from_config
from ._service import Service, pid_file_for, serve_until_signalled

__all__ = [
    "AdminGate",
    "ClientConfig",
    "Config",
    "ConfigError",
    "Gateway",
    "Ledger",
    "LedgerConfig",
    "LedgerReader",
    "LimitsConfig",
    "PeerConfig",
    "ProviderConfig",
    "RedisStore",
    "Reloader",
    "ServerConfig",
    "Service",
    "StoreConfig",
    "UsageFilter",
    "UsageRow",
    "load_config",
    "main",
    "mesh_from_config",
    "parse_config",
    "pid_file_for",
    "run_demo",
    "serve_until_signalled",
]
