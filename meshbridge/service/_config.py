"""Provider routing configs: a TOML file read into a router table, all or nothing.

A config names each provider instance, its kind (one of
:func:`meshbridge.providers.kinds`) and that kind's options; an optional ``[server]``
table configures ``meshbridge serve``::

    [server]
    listen = "127.0.0.1:8080"
    [server.clients.ci]              # an outside caller of `serve`
    token_env = "MESHBRIDGE_CI_TOKEN"
    source = "api"
    [providers.local]
    kind = "fake"

Reading never stops at the first mistake: every error (TOML syntax, unknown
keys, wrong types, unknown kinds, bad names, bad URLs, unset environment
variables) is collected with the file, the key path and what was expected,
and :class:`ConfigError` carries them all. Nothing is built from a config
with errors, so a bad file never starts (or reloads into) half a mesh.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import web

from meshbridge import ConfigError, Source, check_api_key_id, check_provider_name
from meshbridge.providers import Kind, OptionReader, Plan, ProviderContext, kinds

__all__ = [
    "ClientConfig",
    "Config",
    "ProviderConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
    "parse_listen",
]

DEFAULT_LISTEN: Final = "127.0.0.1:8080"
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


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``[server]`` table (``meshbridge serve`` and ``demo``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024  # larger request bodies get 413
    grace_period: float = 10.0  # seconds in-flight requests get on shutdown and reload
    pid_file: Path | None = None  # where `serve` writes its pid, for `meshbridge reload`
    clients: tuple[ClientConfig, ...] = ()

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

    def describe(self) -> Mapping[str, str]:
        return self.plan.describe()


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config file, validated."""

    path: Path
    server: ServerConfig
    providers: Mapping[str, ProviderConfig]

    def build(self, name: str) -> web.Application:
        """A new app for provider ``name``."""
        return self.providers[name].plan.build(ProviderContext(name))


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[V6]:PORT``) as a (host, port) pair, or None if malformed."""
    match = _LISTEN_RE.fullmatch(value)
    if match is None or int(match["port"]) > 65535:
        return None
    return match["v6"] or match["host"], int(match["port"])


def _server(reader: OptionReader, errors: Problems) -> ServerConfig:
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
        client = OptionReader(raw, where, environ=reader.environ, errors=errors)
        literal = client.string("token", "")
        from_env = client.env("token_env")
        token = from_env[1] if from_env else literal
        if bool(literal) == client.has("token_env"):
            client.error("token", "expected exactly one of token or token_env")
        elif token and len(token) < _MIN_TOKEN_LEN:
            client.error("token", f"expected a token of at least {_MIN_TOKEN_LEN} characters")
        elif token in tokens:
            client.error("token", f"the same token as server.clients.{tokens[token]}")
        elif token:
            tokens[token] = name
        source = _checked(client, "source", Source, client.string("source", "api"))
        key_id = client.string("api_key_id", "")
        api_key_id = _checked(client, "api_key_id", check_api_key_id, key_id) if key_id else None
        client.check_unknown()
        if token and source is not None:
            clients.append(ClientConfig(name, token, source, api_key_id))
    server = ServerConfig(
        host=address[0] if address else d.host,
        port=address[1] if address else d.port,
        max_body_bytes=reader.integer("max_body_bytes", d.max_body_bytes, minimum=1),
        grace_period=reader.number("grace_period", d.grace_period),
        pid_file=Path(pid_file) if pid_file else None,
        clients=tuple(clients),
    )
    reader.check_unknown()
    return server


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
    kind_name = reader.string("kind", "")
    require = reader.boolean("require_api_key_id", False)
    kind = known.get(kind_name)
    if kind is None:
        got = f"got {kind_name!r}" if kind_name else "it is missing"
        reader.error("kind", f"expected one of: {', '.join(known)}; {got}")
        return None
    plan = kind.prepare(reader)
    reader.check_unknown()
    return ProviderConfig(name, kind_name, plan, require)


def parse_config(
    data: Mapping[str, object],
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a config already read from TOML (see :func:`load_config`)."""
    environ = os.environ if environ is None else environ
    errors: Problems = []
    top = OptionReader(data, "", environ=environ, errors=errors)
    server_table = top.table("server") or {}
    server = _server(OptionReader(server_table, "server", environ=environ, errors=errors), errors)
    providers: dict[str, ProviderConfig] = {}
    tables = top.table("providers")
    if not tables:
        errors.append(("providers", "expected at least one [providers.NAME] table"))
    known = kinds()
    for name, raw in (tables or {}).items():
        where = f"providers.{name}"
        if not isinstance(raw, Mapping):
            errors.append((where, "expected a table with kind = ... and its options"))
            continue
        reader = OptionReader(raw, where, environ=environ, errors=errors)
        provider = _provider(name, reader, known)
        if provider is not None:
            providers[name] = provider
    top.check_unknown()
    if errors:
        raise ConfigError(errors, path)
    return Config(Path(path), server, providers)


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file.

    Args:
        path: the file.
        environ: where ``*_env`` options are looked up (``os.environ``).

    Raises:
        ConfigError: the file cannot be read, is not TOML, or has errors;
            every error found is listed, each with its key path.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError([("", f"cannot read the file: {exc.strerror or exc}")], path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"not valid TOML: {exc}")], path) from None
    return parse_config(data, path, environ)
