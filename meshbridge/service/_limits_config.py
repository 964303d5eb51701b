"""Limits, prices and the limit store in a config file.

::

    [limits.agents]                 # any name; every limit whose match fits a call applies
    match = { source = "agents" }   # source, api_key_id, client, provider, target; "*": per value
    requests_per_minute = 600
    tokens_per_minute = 200000
    concurrent = 50

    [limits.per-key]
    match = { api_key_id = "*" }
    tokens_per_day = 2000000
    spend_per_month = 50.0          # in the currency of [prices]

    [prices."gpt-4o"]               # per million tokens
    input = 2.50
    cached_input = 1.25
    output = 10.00

    [store]                         # all optional
    url_env = "MESHBRIDGE_REDIS_URL"  # or url = "redis://...": shared by every worker and replica
    on_store_failure = "open"       # or "closed"
    time_zone = "Europe/Paris"      # the calendar of day and month budgets (UTC)

Every name is checked: a match's provider must be a ``[providers.NAME]``, its
target a provider or a ``[routes.NAME]``, its client a
``[server.clients.NAME]``; a spend limit needs prices. Errors are recorded
on the reader with their key path, like every other mistake in a config.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client import CollectorRegistry

from meshbridge import (
    InProcessStore,
    Limit,
    Limiter,
    LimitStore,
    Price,
    Source,
    check_api_key_id,
)
from meshbridge.providers import OptionReader

__all__ = ["LimitsConfig", "StoreConfig", "parse_limits"]

_KINDS: Final = (
    "requests_per_minute", "tokens_per_minute", "concurrent", "requests_per_day",
    "tokens_per_day", "tokens_per_month", "spend_per_day", "spend_per_month",
)  # fmt: skip
_MATCH_KEYS: Final = ("source", "api_key_id", "client", "provider", "target")
_NAME: Final = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
_PREFIX: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.-]{0,63}")
_SCHEMES: Final = ("redis://", "rediss://", "unix://")
_MAX_AMOUNT: Final = 10**15


def _redacted(url: str) -> str:
    return re.sub(r"(?<=//)[^/@]*@", "***@", url)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """The ``[store]`` table: where counters live and what happens when it fails."""

    url: str | None = field(default=None, repr=False)  # None: the in-process store
    prefix: str = "meshbridge"
    on_store_failure: str = "open"
    time_zone: str = "UTC"
    timeout: float = 0.5
    lease_seconds: float = 30.0

    @property
    def shared(self) -> bool:
        return self.url is not None

    def make(self) -> LimitStore:
        """A new store: Redis when ``url`` is set, else in-process."""
        if self.url is None:
            return InProcessStore()
        from ._redis_store import RedisStore  # redis is an extra: loaded only when configured

        return RedisStore(self.url, prefix=self.prefix, timeout=self.timeout)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """The ``[limits.NAME]``, ``[prices."MODEL"]`` and ``[store]`` tables."""

    limits: tuple[Limit, ...] = ()
    prices: Mapping[str, Price] = field(default_factory=dict)
    store: StoreConfig = field(default_factory=StoreConfig)

    def limiter(
        self, registry: CollectorRegistry | None = None, **kwargs: object
    ) -> Limiter | None:
        """A new :class:`meshbridge.Limiter` with a new store (None without
        limits); ``kwargs`` go to it (``clock``...)."""
        if not self.limits:
            return None
        store = self.store
        return Limiter(
            self.limits,
            self.prices,
            store=store.make(),
            registry=registry,
            time_zone=store.time_zone,
            on_store_failure=store.on_store_failure,
            lease_seconds=store.lease_seconds,
            **kwargs,  # type: ignore[arg-type]
        )


def _checked(reader: OptionReader, key: str, check: Callable[[str], object], value: str) -> bool:
    try:
        check(value)
    except ValueError as exc:
        reader.error(key, str(exc))
        return False
    return True


def _member(known: Collection[str], what: str, table: str) -> Callable[[str], object]:
    def check(value: str) -> object:
        if value not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise ValueError(f"no {what} named {value!r} (the {table}: {listed})")
        return value

    return check


def _match(
    reader: OptionReader, checks: Mapping[str, Callable[[str], object]]
) -> dict[str, str] | None:
    table = reader.table("match")
    if table is None:
        if not reader.has("match"):
            reader.error("match", 'missing: expected a table such as { source = "agents" } '
                         "({} for every call)")  # fmt: skip
        return None
    sub = reader.child(table, reader.key("match"))
    match: dict[str, str] = {}
    for key in table:
        if key not in checks:
            sub.value(key)  # reported here, with every key a match may have
            sub.error(key, f"unknown key (expected one of: {', '.join(_MATCH_KEYS)})")
            continue
        value = sub.string(key, "")
        if not value:
            sub.error(key, "expected a value, or '*' for each value apart")
        elif value == "*" or _checked(sub, key, checks[key], value):
            match[key] = value
    sub.check_unknown()
    return match if len(match) == len(table) else None


def _limit(
    name: str, reader: OptionReader, checks: Mapping[str, Callable[[str], object]], priced: bool
) -> Limit | None:
    counted = len(reader.errors)
    if not _NAME.fullmatch(name) or len(name) > 63:
        reader.error("", f"invalid limit name {name!r}: expected lower-case letters, digits, "
                     "'-' or '_', at most 63 characters (it is the limit label of "
                     "meshbridge_limited_total)")  # fmt: skip
    match = _match(reader, checks)
    amounts: dict[str, float | None] = {}
    for kind in _KINDS:
        if reader.value(kind) is None:  # (marks it read: unknown keys list every kind)
            amounts[kind] = None
        elif kind.startswith("spend_"):
            amounts[kind] = reader.number(kind, 0.0, exclusive=True, maximum=_MAX_AMOUNT) or None
            if not priced:
                reader.error(kind, 'a spend limit needs prices: add [prices."MODEL"] tables')
        else:
            amounts[kind] = reader.integer(kind, 0, minimum=1, maximum=_MAX_AMOUNT) or None
    if not any(reader.has(kind) for kind in _KINDS):
        reader.error("", f"expected at least one of: {', '.join(_KINDS)}")
    reader.check_unknown()
    if match is None or len(reader.errors) > counted:
        return None
    return Limit(name, match, **amounts)  # type: ignore[arg-type]


def _price(model: str, reader: OptionReader) -> Price | None:
    counted = len(reader.errors)
    if not model or len(model) > 256 or not model.isprintable():
        reader.error("", f"invalid model name {model!r}: expected 1 to 256 printable "
                     'characters ("*" prices every model not listed)')  # fmt: skip
    for key in ("input", "output"):
        if not reader.has(key):
            reader.error(key, "missing: expected a price per million tokens")
    values = {key: reader.number(key, 0.0) for key in ("input", "output")}
    cached = reader.number("cached_input", -1.0) if reader.has("cached_input") else None
    reader.check_unknown()
    if len(reader.errors) > counted:
        return None
    return Price(values["input"], values["output"], cached)


def _store(reader: OptionReader) -> StoreConfig:
    d = StoreConfig()
    literal = reader.string("url", "")
    from_env = reader.env("url_env")
    url = from_env[1] if from_env else literal
    if literal and reader.has("url_env"):
        reader.error("url", "expected one of url or url_env, not both")
    elif url and not url.startswith(_SCHEMES):
        reader.error("url_env" if from_env else "url", "expected a redis://, rediss:// or "
                     f"unix:// URL, got {_redacted(url)!r}")  # fmt: skip
    elif url and importlib.util.find_spec("redis") is None:
        reader.error("url_env" if from_env else "url", "a shared store needs redis-py: "
                     "pip install 'meshbridge[redis]'")  # fmt: skip
    prefix = reader.string("prefix", d.prefix)
    if not _PREFIX.fullmatch(prefix):
        reader.error("prefix", f"expected letters, digits, ':', '_', '.' or '-' (at most 64), "
                     f"got {prefix!r}")  # fmt: skip
    failure = reader.string("on_store_failure", d.on_store_failure)
    if failure not in ("open", "closed"):
        reader.error("on_store_failure", f"expected 'open' or 'closed', got {failure!r}")
    zone = reader.string("time_zone", d.time_zone)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        reader.error("time_zone", f"unknown time zone {zone!r}: expected an IANA name such as "
                     "'UTC' or 'Europe/Paris'")  # fmt: skip
    store = StoreConfig(
        url=url or None,
        prefix=prefix,
        on_store_failure=failure,
        time_zone=zone,
        timeout=reader.number("timeout", d.timeout, exclusive=True, maximum=60),
        lease_seconds=reader.number("lease_seconds", d.lease_seconds, minimum=1, maximum=3600),
    )
    reader.check_unknown()
    return store


def parse_limits(
    top: OptionReader,
    *,
    providers: Collection[str],
    routes: Collection[str],
    clients: Collection[str],
) -> LimitsConfig:
    """The ``[limits.NAME]``, ``[prices."MODEL"]`` and ``[store]`` tables of a
    config (``top`` reads the whole file); problems are recorded on it."""
    prices: dict[str, Price] = {}
    for model, raw in (top.table("prices") or {}).items():
        where = f'prices."{model}"'
        if not isinstance(raw, Mapping):
            top.errors.append((where, "expected a table with input and output prices"))
            continue
        price = _price(model, top.child(raw, where))
        if price is not None:
            prices[model] = price
    checks: dict[str, Callable[[str], object]] = {
        "source": Source,
        "api_key_id": check_api_key_id,
        "client": _member(clients, "client", "[server.clients.NAME] tables"),
        "provider": _member(providers, "provider", "providers"),
        "target": _member({*providers, *routes}, "provider or route", "providers and routes"),
    }
    limits: list[Limit] = []
    priced = bool(top.table("prices"))
    for name, raw in (top.table("limits") or {}).items():
        where = f"limits.{name}"
        if not isinstance(raw, Mapping):
            top.errors.append((where, "expected a table with match = { ... } and its limits"))
            continue
        limit = _limit(name, top.child(raw, where), checks, priced)
        if limit is not None:
            limits.append(limit)
    store = _store(top.child(top.table("store") or {}, "store"))
    return LimitsConfig(tuple(limits), prices, store)
