"""Provider routing configs: a TOML file read into a router table, all or nothing.

A config names each provider instance, its kind (one of
:func:`meshbridge.providers.kinds`) and that kind's options; an optional ``[server]``
table configures ``meshbridge serve``::

    [server]
    listen = "127.0.0.1:8080"
    [server.clients.ci]              # an outside caller of `serve`
    token_env = "MESHBRIDGE_CI_TOKEN"
    source = "api"
    [server.peers.edge]              # another meshbridge, signing with key id "1"
    secret_env = "MESHBRIDGE_PEER_SECRET"
    [ledger]                         # the usage ledger (see _ledger_config.py)
    retention_days = 30
    [providers.local]
    kind = "fake"

Reading never stops at the first mistake: every error (TOML syntax, unknown
keys, wrong types, unknown kinds, bad names, bad URLs, unset environment
variables) is collected with the file, the key path and what was expected,
and :class:`ConfigError` carries them all. Nothing is built from a config
with errors, so a bad file never starts (or reloads into) half a mesh.

Every bad file is a :class:`ConfigError`, whatever is wrong with it: a file
over 1 MiB, bytes that are not UTF-8, tables and arrays nested deeper than 32
levels, more than 1,000 providers, and numbers out of their range are
reported with their place like any other mistake.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import web

from meshbridge import ConfigError, Policy, Route, Source, check_api_key_id, check_provider_name
from meshbridge.providers import KeyRead, Kind, OptionReader, Plan, ProviderContext, kinds

from ._ledger_config import LedgerConfig, parse_ledger
from ._limits_config import LimitsConfig, parse_limits
from ._peer_auth import PeerConfig, parse_peers
from ._policies import check_names, parse_policy, parse_route
from ._toml import MAX_DEPTH, read_toml, too_deep

__all__ = [
    "ClientConfig",
    "Config",
    "PeerConfig",
    "ProviderConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
    "parse_listen",
]

DEFAULT_LISTEN: Final = "127.0.0.1:8080"
MAX_PROVIDERS: Final = 1000
_LISTEN_RE: Final = re.compile(
    r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})"
)
_MIN_TOKEN_LEN: Final = 8

T = TypeVar("T")
Problems = list[tuple[str, str]]  # (key path, what is wrong), as ConfigError lists them


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """An outside caller of ``serve``: its bearer token and who it is in the mesh."""

    name: str
    token: str = field(repr=False)
    source: Source
    api_key_id: str | None = None
    providers: frozenset[str] | None = None  # the providers it may use (None: all)
    admin: bool = False  # its token also opens the admin API (see _admin_gate.py)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``[server]`` table (``meshbridge serve`` and ``demo``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024  # larger request bodies get 413
    grace_period: float = 10.0  # seconds in-flight requests get on shutdown and reload
    pid_file: Path | None = None  # where `serve` writes its pid, for `meshbridge reload`
    clients: tuple[ClientConfig, ...] = ()
    header_timeout: float = 10.0  # seconds for a whole request head
    body_timeout: float = 30.0  # longest gap, in seconds, between request body bytes
    idle_timeout: float = 60.0  # seconds a kept-alive connection may wait for its next request
    max_connections: int = 1024  # per listener; beyond it, a 503 and close
    admin: tuple[str, int] | None = None  # admin_listen: /metrics and /readyz apart
    peers: tuple[PeerConfig, ...] = ()  # other meshbridges whose signed requests pass the gate
    admin_token: str | None = field(default=None, repr=False)  # admin_token_env's value
    admin_api_public: bool = False  # the admin API on `listen` too, not only `admin_listen`
    admin_refresh: float = 2.0  # seconds between two refreshes of the admin page's live state
    trust_trace_context: bool = False  # continue outside callers' traceparent and baggage

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One ``[providers.NAME]`` table: a provider ready to be built."""

    name: str
    kind: str
    plan: Plan
    require_api_key_id: bool = False
    policy: Policy | None = None  # [providers.NAME.policy]

    def describe(self) -> Mapping[str, str]:
        return self.plan.describe()


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config file, validated.

    ``missing_env`` lists ``(key path, variable)`` for every unset variable
    of a config read with ``require_env=False``; such a config is for
    checking only, and :meth:`build` refuses it.
    """

    path: Path
    server: ServerConfig
    providers: Mapping[str, ProviderConfig]
    missing_env: tuple[tuple[str, str], ...] = ()
    routes: Mapping[str, Route] = field(default_factory=dict)  # [routes.NAME]
    limits: LimitsConfig = field(default_factory=LimitsConfig)  # [limits.*], [prices.*], [store]
    ledger: LedgerConfig = field(default_factory=LedgerConfig)  # [ledger]

    @property
    def policies(self) -> dict[str, Policy]:
        """The providers' policies, by provider name (those with one)."""
        return {n: p.policy for n, p in self.providers.items() if p.policy is not None}

    def build(self, name: str) -> web.Application:
        """A new app for provider ``name``.

        Raises:
            ConfigError: the config was read without its environment variables.
        """
        if self.missing_env:
            unset = [(key, f"environment variable {var} is not set (or is empty)")
                     for key, var in self.missing_env]  # fmt: skip
            raise ConfigError(unset, self.path)
        return self.providers[name].plan.build(ProviderContext(name))


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[V6]:PORT``) as a (host, port) pair, or None if malformed."""
    match = _LISTEN_RE.fullmatch(value)
    if match is None or int(match["port"]) > 65535:
        return None
    return match["v6"] or match["host"], int(match["port"])


def _server(
    reader: OptionReader, errors: Problems, providers: Collection[str] | None = None
) -> ServerConfig:
    d = ServerConfig()
    listen = reader.string("listen", DEFAULT_LISTEN)
    address = parse_listen(listen)
    if address is None:
        reader.error("listen", f"expected HOST:PORT (such as {DEFAULT_LISTEN!r}), got {listen!r}")
    pid_file = reader.string("pid_file", "")
    clients: list[ClientConfig] = []
    tokens: dict[str, str] = {}
    for name, raw in (reader.table("clients") or {}).items():
        where = reader.key(f"clients.{name}")
        if not isinstance(raw, Mapping):
            errors.append((where, "expected a table with token or token_env, and source"))
            continue
        client = reader.child(raw, where)
        literal = client.string("token", "")
        from_env = client.env("token_env")
        token = from_env[1] if from_env else literal
        if bool(literal) == client.has("token_env"):
            client.error("token", "expected exactly one of token or token_env")
        elif token and len(token) < _MIN_TOKEN_LEN:
            client.error("token", f"expected a token of at least {_MIN_TOKEN_LEN} characters")
        elif token != token.strip():  # a caller's token is read stripped: it could never match
            where_token = "token_env" if from_env else "token"
            client.error(where_token, "expected a token without leading or trailing whitespace")
        elif token in tokens:
            client.error("token", f"the same token as server.clients.{tokens[token]}")
        elif token:
            tokens[token] = name
        source = _checked(client, "source", Source, client.string("source", "api"))
        key_id = client.string("api_key_id", "")
        api_key_id = _checked(client, "api_key_id", check_api_key_id, key_id) if key_id else None
        scope = _scope(client, providers)
        admin = client.boolean("admin", False)
        client.check_unknown()
        if token and source is not None:
            clients.append(ClientConfig(name, token, source, api_key_id, scope, admin))
    server = ServerConfig(
        host=address[0] if address else d.host,
        port=address[1] if address else d.port,
        max_body_bytes=reader.integer(
            "max_body_bytes", d.max_body_bytes, minimum=1, maximum=1024**3
        ),
        grace_period=reader.number("grace_period", d.grace_period, maximum=3600),
        pid_file=Path(pid_file) if pid_file else None,
        clients=tuple(clients),
        header_timeout=_seconds(reader, "header_timeout", d.header_timeout),
        body_timeout=_seconds(reader, "body_timeout", d.body_timeout),
        idle_timeout=_seconds(reader, "idle_timeout", d.idle_timeout),
        max_connections=reader.integer(
            "max_connections", d.max_connections, minimum=1, maximum=1_000_000
        ),
        admin=_admin_listen(reader, address),
        peers=parse_peers(reader, providers, _scope),
        admin_token=_admin_token(reader, tokens),
        admin_api_public=reader.boolean("admin_api_public", False),
        admin_refresh=reader.number("admin_refresh", d.admin_refresh, minimum=0.2, maximum=3600),
        trust_trace_context=reader.boolean("trust_trace_context", d.trust_trace_context),
    )
    reader.check_unknown()
    return server


def _admin_token(reader: OptionReader, tokens: Mapping[str, str]) -> str | None:
    """``admin_token_env``'s token: as long as a client's, and none of theirs."""
    from_env = reader.env("admin_token_env")
    if not from_env or not from_env[1]:
        return None
    token = from_env[1]
    if len(token) < _MIN_TOKEN_LEN:
        reader.error("admin_token_env", f"expected a token of at least {_MIN_TOKEN_LEN} characters")
        return None
    if token in tokens:
        reader.error("admin_token_env", f"the same token as server.clients.{tokens[token]}")
        return None
    return token


def _seconds(reader: OptionReader, key: str, default: float) -> float:
    return reader.number(key, default, minimum=0, exclusive=True, maximum=86400)


def _admin_listen(reader: OptionReader, public: tuple[str, int] | None) -> tuple[str, int] | None:
    value = reader.string("admin_listen", "")
    if not value:
        return None
    address = parse_listen(value)
    if address is None:
        expected = "expected HOST:PORT (such as '127.0.0.1:9090')"
        reader.error("admin_listen", f"{expected}, got {value!r}")
    elif public is not None and _overlap(address, public):
        reader.error("admin_listen", f"expected another address than listen "
                     f"({public[0]}:{public[1]}), got {value!r}")  # fmt: skip
        return None
    return address


_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})


def _overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listen addresses can take the same connections: the same
    port (not 0) on the same host once resolved ("localhost" and "127.0.0.1"),
    or on a wildcard address."""
    if a[1] != b[1] or a[1] == 0:
        return False
    if a[0] in _WILDCARDS or b[0] in _WILDCARDS or a[0] == b[0]:
        return True
    return bool(_resolved(a[0]) & _resolved(b[0]))


def _resolved(host: str) -> set[str]:
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()  # a name that does not resolve is the listener's error, at start
    return {str(info[4][0]) for info in found}


def _scope(client: OptionReader, providers: Collection[str] | None) -> frozenset[str] | None:
    """A client's ``providers``: names of ``[providers.NAME]`` tables (None: all)."""
    given, counted = client.has("providers"), len(client.errors)
    names = client.strings("providers")
    if not given or len(client.errors) > counted:
        return None
    if not names:
        client.error("providers", "expected at least one provider name")
        return None
    unknown = [n for n in names if providers is not None and n not in providers]
    if unknown:
        known = ", ".join(providers or ()) or "none"
        listed = ", ".join(repr(n) for n in unknown)
        client.error("providers", f"no provider named {listed} (the providers: {known})")
    return frozenset(names)


def _checked(reader: OptionReader, key: str, check: Callable[[str], T], value: str) -> T | None:
    try:
        return check(value)
    except ValueError as exc:
        reader.error(key, str(exc))
        return None


def _provider(
    name: str, reader: OptionReader, known: Mapping[str, Kind[Any]]
) -> ProviderConfig | None:
    try:
        check_provider_name(name)
    except ValueError as exc:
        reader.error("", str(exc))
        return None
    counted = len(reader.errors)
    kind_name = reader.string("kind", "")
    not_a_string = len(reader.errors) > counted  # already reported: one mistake, one error
    require = reader.boolean("require_api_key_id", False)
    kind = known.get(kind_name)
    if kind is None:
        if not not_a_string:
            got = f"got {kind_name!r}" if kind_name else "it is missing"
            reader.error("kind", f"expected one of: {', '.join(known)}; {got}")
        return None
    policy_table = reader.table("policy")
    policy = None
    if policy_table is not None:
        policy = parse_policy(reader.child(policy_table, reader.key("policy")))
    plan = kind.prepare(reader)
    reader.check_unknown()
    return ProviderConfig(name, kind_name, plan, require, policy)


def parse_config(
    data: Mapping[str, object],
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    require_env: bool = True,
    reads: list[KeyRead] | None = None,
) -> Config:
    """Validate a config already read from TOML (see :func:`load_config`).

    ``reads``, when given, gets a :class:`~meshbridge.providers.KeyRead` for
    every key the parsers asked for (present or not): the config reference
    of the documentation is generated from it.
    """
    environ = os.environ if environ is None else environ
    deep = too_deep(data)
    if deep is not None:
        raise ConfigError([(deep, f"nested deeper than {MAX_DEPTH} tables and arrays")], path)
    errors: Problems = []
    missing: list[tuple[str, str]] = []
    top = OptionReader(data, "", environ=environ, errors=errors, require_env=require_env,
                       missing_env=missing, reads=reads)  # fmt: skip
    tables_seen = data.get("providers")
    names = list(tables_seen) if isinstance(tables_seen, Mapping) else None
    server = _server(top.child(top.table("server") or {}, "server"), errors, names)
    providers: dict[str, ProviderConfig] = {}
    tables = top.table("providers")
    if not tables:
        errors.append(("providers", "expected at least one [providers.NAME] table"))
    elif len(tables) > MAX_PROVIDERS:
        message = f"{len(tables)} providers, more than the limit of {MAX_PROVIDERS}"
        errors.append(("providers", message))
        tables = None
    known = kinds()
    for name, raw in (tables or {}).items():
        where = f"providers.{name}"
        if not isinstance(raw, Mapping):
            errors.append((where, "expected a table with kind = ... and its options"))
            continue
        provider = _provider(name, top.child(raw, where), known)
        if provider is not None:
            providers[name] = provider
    routes: dict[str, Route] = {}
    for name, raw in (top.table("routes") or {}).items():
        where = f"routes.{name}"
        try:
            check_provider_name(name)  # a route's name is a URL host too
        except ValueError as exc:
            errors.append((where, str(exc).replace("provider name", "route name", 1)))
            continue
        if not isinstance(raw, Mapping):
            errors.append((where, "expected a table with split = { provider = weight, ... }"))
            continue
        route = parse_route(top.child(raw, where))
        if route is not None:
            routes[name] = route
    here = Path(path).absolute().parent  # relative SQLite paths are from the config's folder
    ledger = parse_ledger(top.child(top.table("ledger") or {}, "ledger"), here)
    policies = {n: p.policy for n, p in providers.items() if p.policy is not None}
    if tables and len(providers) == len(tables):  # names are only checked against a whole table
        check_names(providers, policies, routes, errors)
    raw_server = data.get("server")
    raw_clients = raw_server.get("clients") if isinstance(raw_server, Mapping) else None
    clients = list(raw_clients) if isinstance(raw_clients, Mapping) else []
    limits = parse_limits(top, providers=names or (), routes=list(routes), clients=clients)
    top.check_unknown()
    if errors:
        raise ConfigError(errors, path)
    return Config(Path(path), server, providers, tuple(missing), routes, limits, ledger)


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    require_env: bool = True,
    content: bytes | None = None,
) -> Config:
    """Read and validate a TOML config file.

    Args:
        path: the file (UTF-8 TOML, at most 1 MiB).
        environ: where ``*_env`` options are looked up (``os.environ``).
        require_env: False to check a config without its secrets: unset
            variables are listed in :attr:`Config.missing_env` instead of
            being errors, and the config can be checked but not built.
        content: the file's bytes, read already (the generation the
            supervisor of ``serve --workers`` hands its workers): ``path``
            is then only named, never read.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or has errors;
            every error found is listed, each with its key path.
    """
    data = read_toml(path, content)
    return parse_config(data, path, environ, require_env=require_env)
