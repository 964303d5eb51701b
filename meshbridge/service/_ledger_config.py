"""The ``[ledger]`` table: where the usage ledger writes, and its bounds.

::

    [ledger]
    url_env = "MESHBRIDGE_LEDGER_URL"   # or url = "postgresql://..."; default: SQLite
    retention_days = 90
    record_prompts = true
    prompt_max_chars = 2000
    redact = "mycompany.ledger:scrub"   # str -> str | None, applied before storing

Every key is checked when the config is read, with every error at once: a
URL of another database, a redaction hook that cannot be imported or is not
callable, numbers out of their range. Nothing here imports SQLAlchemy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from meshbridge.providers import OptionReader

from ._private_dir import state_dir

__all__ = ["DEFAULT_DATABASE", "LedgerConfig", "Redact", "database_url", "parse_ledger"]

DEFAULT_DATABASE: Final = "ledger.sqlite3"  # in the state directory
_SCHEMES: Final = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
}

# The redaction hook: the last user prompt in, what may be stored out (None: nothing).
Redact = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """How the usage ledger records (the ``[ledger]`` table, or made in code).

    Attributes:
        url: ``sqlite:///PATH`` or ``postgresql://USER:PASSWORD@HOST/DB``;
            empty: ``ledger.sqlite3`` in the state directory.
        enabled: whether ``serve`` and ``demo`` record calls.
        retention_days: rows older than this are deleted (0: kept forever).
        record_prompts: store the last user prompt of each call.
        prompt_max_chars: prompts are cut to this many characters.
        redact: called with each prompt before it is stored or spooled; its
            result is stored (None: no prompt). It runs on the writer thread.
        queue_size: records waiting to be written, at most; beyond, dropped.
        batch_size: records per database write, at most.
        flush_interval: seconds a record waits, at most, before its batch is written.
        spool_max_bytes: the local spool for when the database is down (0: none).
    """

    url: str = field(default="", repr=False)  # may carry a password
    enabled: bool = True
    retention_days: int = 90
    record_prompts: bool = False
    prompt_max_chars: int = 2000
    redact: Redact | None = None
    queue_size: int = 10_000
    batch_size: int = 500
    flush_interval: float = 0.5
    spool_max_bytes: int = 64 * 1024 * 1024


def database_url(config: LedgerConfig) -> str:
    """The SQLAlchemy URL of ``config.url`` (its driver named)."""
    url = config.url or f"sqlite:///{state_dir() / DEFAULT_DATABASE}"
    scheme, _, rest = url.partition("://")
    if _SCHEMES.get(scheme.lower()) == "postgresql":
        return f"postgresql+psycopg://{rest}"
    return f"sqlite+pysqlite://{rest}"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _url(reader: OptionReader, base: Path) -> str:
    literal = reader.string("url", "")
    from_env = reader.env("url_env")
    if literal and from_env:
        reader.error("url", "expected one of url or url_env, not both")
        return ""
    url = from_env[1] if from_env else literal
    key = "url_env" if from_env else "url"
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    dialect = _SCHEMES.get(scheme.lower())
    if not sep or dialect is None:
        reader.error(key, f"expected a sqlite:/// or postgresql:// URL, got {_redacted(url)!r}")
        return ""
    if dialect == "sqlite":
        path = rest.removeprefix("/")
        if not path or "?" in path:
            reader.error(key, f"expected sqlite:///PATH (a file, no query), got {url!r}")
            return ""
        return f"sqlite:///{(base / path) if not Path(path).is_absolute() else path}"
    if not urlsplit(url).hostname and "host=" not in url:
        reader.error(key, f"expected postgresql://USER@HOST/DATABASE, got {_redacted(url)!r}")
        return ""
    return url


def _redact(reader: OptionReader) -> Redact | None:
    spec = reader.string("redact", "")
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        reader.error("redact", f"expected 'package.module:function', got {spec!r}")
        return None
    try:
        found: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as exc:  # an import error of the user's module, whatever it is
        reader.error("redact", f"cannot import {spec!r}: {type(exc).__name__}: {exc}")
        return None
    if not callable(found):
        reader.error("redact", f"{spec!r} is not callable")
        return None
    hook: Redact = found
    return hook


def parse_ledger(reader: OptionReader, base: Path) -> LedgerConfig:
    """Read a ``[ledger]`` table (relative SQLite paths are from ``base``,
    the config file's folder); errors go to the reader's list."""
    d = LedgerConfig()
    config = LedgerConfig(
        url=_url(reader, base),
        enabled=reader.boolean("enabled", d.enabled),
        retention_days=reader.integer("retention_days", d.retention_days, maximum=36_500),
        record_prompts=reader.boolean("record_prompts", d.record_prompts),
        prompt_max_chars=reader.integer(
            "prompt_max_chars", d.prompt_max_chars, minimum=1, maximum=1_000_000
        ),
        redact=_redact(reader),
        queue_size=reader.integer("queue_size", d.queue_size, minimum=1, maximum=10_000_000),
        batch_size=reader.integer("batch_size", d.batch_size, minimum=1, maximum=100_000),
        flush_interval=reader.number(
            "flush_interval", d.flush_interval, minimum=0, exclusive=True, maximum=60
        ),
        spool_max_bytes=reader.integer("spool_max_bytes", d.spool_max_bytes, maximum=2**40),
    )
    reader.check_unknown()
    return config
