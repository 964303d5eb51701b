"""Reading a provider's options from a config table, collecting every error.

An :class:`OptionReader` wraps one table (``providers.<name>`` of a config
file, or a plain dict in code). Each typed read records a problem instead of
raising, so one pass over a file reports every mistake at once, each with its
key path (``providers.openai.upstream``) and what was expected. A kind's
parser reads what it knows; :meth:`OptionReader.finish` then reports the keys
nobody read, and raises the core's :class:`~meshbridge.ConfigError` (the one
error type for config problems) if anything was wrong.

Numbers have upper bounds as well as lower ones (by default 2**31 - 1 for
integers and 1e9 for numbers; a kind can ask for less), so a typo such as
``reply_tokens = 99999999999999999`` is an error with its key path rather
than a provider that never finishes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from yarl import URL

from meshbridge import ConfigError

__all__ = ["MAX_INTEGER", "MAX_NUMBER", "KeyRead", "OptionReader", "Problems"]

MAX_INTEGER: Final = 2**31 - 1  # the default upper bound of OptionReader.integer
MAX_NUMBER: Final = 1e9  # the default upper bound of OptionReader.number

# Every problem found so far, as (key path, what is wrong): the pairs a
# ConfigError lists. Readers of one file share one list.
Problems = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class KeyRead:
    """One key a parser asked an :class:`OptionReader` for, whether or not the
    table had it: the config reference (``docs/reference/config.md``) is
    made from these, so it lists exactly the keys the code reads.

    Attributes:
        path: the full key path (``providers.local.tokens_per_second``).
        expects: what the key accepts, as the error messages say it
            (``a number >= 0``, ``an integer from 1 to 1073741824``).
        default: the value when the key is absent (None: no default).
    """

    path: str
    expects: str
    default: object = None


def _redacted(url: str) -> str:
    """``url`` with its credentials and query hidden: refused, it is still
    printed and logged, and must not carry a secret there."""
    url = re.sub(r"(?<=//)[^/?#]*@", "***@", url)
    return re.sub(r"\?[^#]*", "?***", url, count=1)


def _kind_of(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for type_, name in names.items():
        if type(value) is type_:
            return f"{name} ({value!r})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


class OptionReader:
    """Typed reads from one options table; errors are collected, not raised.

    Args:
        raw: the table (``dict`` from ``tomllib`` or from code).
        path: the key path of the table, used in error messages.
        environ: where ``*_env`` options are looked up (``os.environ``).
        errors: a list shared with other readers, to report a whole file.
        require_env: False to check a config without its secrets: an unset
            variable is then recorded in ``missing_env`` instead of ``errors``
            and read as ``""``, so the options are for checking only and
            must never be built into a provider.
        missing_env: a list shared with other readers: ``(key path, variable)``
            of every unset variable when ``require_env`` is False.
        reads: a list shared with other readers, to which every read appends
            a :class:`KeyRead` (the key, what it accepts, its default).
    """

    def __init__(
        self,
        raw: Mapping[str, object],
        path: str = "options",
        *,
        environ: Mapping[str, str] | None = None,
        errors: Problems | None = None,
        require_env: bool = True,
        missing_env: list[tuple[str, str]] | None = None,
        reads: list[KeyRead] | None = None,
    ) -> None:
        self._raw = raw
        self.path = path
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.errors: Problems = [] if errors is None else errors
        self.require_env = require_env
        self.missing_env: list[tuple[str, str]] = [] if missing_env is None else missing_env
        self.reads = reads
        self._read: set[str] = set()

    def child(self, raw: Mapping[str, object], path: str) -> OptionReader:
        """A reader of a table found inside this one, sharing its environment,
        its error list and its ``require_env`` mode."""
        return OptionReader(
            raw,
            path,
            environ=self.environ,
            errors=self.errors,
            require_env=self.require_env,
            missing_env=self.missing_env,
            reads=self.reads,
        )

    def key(self, key: str) -> str:
        """The full key path of ``key`` in this table (of the table itself for "")."""
        return f"{self.path}.{key}" if self.path and key else self.path or key

    def error(self, key: str, message: str) -> None:
        """Record a problem with ``key``."""
        self.errors.append((self.key(key), message))

    def _get(self, key: str, expects: str, default: object = None) -> object:
        self._read.add(key)
        if self.reads is not None:
            self.reads.append(KeyRead(self.key(key), expects, default))
        return self._raw.get(key)

    def _wrong(self, key: str, expected: str, value: object) -> None:
        self.error(key, f"expected {expected}, got {_kind_of(value)}")

    def has(self, key: str) -> bool:
        return key in self._raw

    def string(self, key: str, default: str) -> str:
        """A string; ``default`` when absent."""
        value = self._get(key, "a string", default)
        if value is None:
            return default
        if not isinstance(value, str):
            self._wrong(key, "a string", value)
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, "true or false", default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._wrong(key, "true or false", value)
            return default
        return value

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float = 0.0,
        exclusive: bool = False,
        maximum: float = MAX_NUMBER,
    ) -> float:
        """A finite number >= ``minimum`` (> with ``exclusive``) and <= ``maximum``;
        ints are accepted."""
        bound = f"{'>' if exclusive else '>='} {minimum:g}"
        value = self._get(key, f"a number {bound} and <= {maximum:g}", default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._wrong(key, f"a number {bound}", value)
            return default
        if value > maximum:  # inf too; compared before float() overflows on a huge int
            self.error(key, f"expected a number <= {maximum:g}, got {value!r}")
            return default
        if math.isnan(value) or value < minimum or (exclusive and value == minimum):
            self.error(key, f"expected a number {bound}, got {value!r}")
            return default
        return float(value)

    def integer(
        self, key: str, default: int, *, minimum: int = 0, maximum: int = MAX_INTEGER
    ) -> int:
        """An integer from ``minimum`` to ``maximum``."""
        value = self._get(key, f"an integer from {minimum} to {maximum}", default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong(key, f"an integer >= {minimum}", value)
            return default
        if value < minimum:
            self.error(key, f"expected an integer >= {minimum}, got {value!r}")
            return default
        if value > maximum:
            self.error(key, f"expected an integer <= {maximum}, got {value!r}")
            return default
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """An array of non-empty strings."""
        value = self._get(key, "an array of non-empty strings", list(default) or None)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self._wrong(key, "an array of non-empty strings", value)
            return default
        return tuple(str(v) for v in value)

    def url(self, key: str, *, required: bool) -> URL | None:
        """An absolute ``http``/``https`` URL with a host and no query or fragment."""
        value = self._get(key, "an http:// or https:// URL" + (" (required)" if required else ""))
        if value is None:
            if required:
                self.error(key, "missing: expected an http:// or https:// URL")
            return None
        if not isinstance(value, str):
            self._wrong(key, "an http:// or https:// URL", value)
            return None
        try:
            url = URL(value)
            ok = url.scheme in ("http", "https") and bool(url.host) and url.port is not None
        except ValueError:
            ok = False
        if not ok or url.query_string or url.fragment or url.user or url.password:
            self.error(
                key,
                f"expected an http:// or https:// URL with a host and no query, fragment "
                f"or credentials, got {_redacted(value)!r}",
            )
            return None
        return url.with_path(url.path.rstrip("/"))

    def env(self, key: str, *, required: bool = False) -> tuple[str, str] | None:
        """The name of an environment variable and its value (``*_env`` options).

        An option that names a variable which is not set (or is empty) is an
        error: a missing key is found when the config is checked, not by the
        first request.
        """
        expects = "the name of an environment variable"
        name = self._get(key, expects + (" (required)" if required else ""))
        if name is None:
            if required:
                self.error(key, "missing: expected the name of an environment variable")
            return None
        if not isinstance(name, str) or not name:
            self._wrong(key, "the name of an environment variable", name)
            return None
        value = self.environ.get(name)
        if not value:
            if self.require_env:
                self.error(key, f"environment variable {name} is not set (or is empty)")
                return None
            self.missing_env.append((self.key(key), name))
            return name, ""
        return name, value

    def table(self, key: str) -> Mapping[str, object] | None:
        value = self._get(key, "a table")
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self._wrong(key, "a table", value)
            return None
        return value

    def value(self, key: str) -> object:
        """The raw value of ``key`` (None when absent), for a shape no typed read
        covers (such as an array mixing numbers and strings); marks it read."""
        return self._get(key, "see its description")

    def check_unknown(self) -> None:
        """Record every key of the table that no read asked for as unknown."""
        expected = ", ".join(sorted(self._read)) or "no keys"
        for key in self._raw:
            if key not in self._read:
                self.error(key, f"unknown key (expected one of: {expected})")

    def finish(self) -> None:
        """Check for unknown keys, then raise if anything was wrong.

        Raises:
            ConfigError: this reader (or any sharing its error list) recorded errors.
        """
        self.check_unknown()
        if self.errors:
            raise ConfigError(self.errors)
