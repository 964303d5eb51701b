"""The router table: provider names to providers, and the rules for names.

Pure bookkeeping, no I/O: the table is swapped whole (a dict assignment), so
a lookup sees the table either before or after a change, never half of one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Generic, TypeVar

from ._exceptions import MeshNotRunning, ProviderNotFound

__all__ = ["NAME_PATTERN", "Router", "check_name"]

NAME_PATTERN: Final = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_NAME_RE: Final = re.compile(NAME_PATTERN)
_MAX_NAME_LEN: Final = 63  # one DNS label: the name is also a URL host

P = TypeVar("P")


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid provider name, else raise ``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"provider name must be a str, not {type(name).__name__}")
    if len(name) > _MAX_NAME_LEN or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid provider name {name!r}: expected lower-case letters and digits, "
            f"words joined by single '-' (pattern {NAME_PATTERN}, at most {_MAX_NAME_LEN} "
            "characters), because the name is the URL host callers use"
        )
    return name


class Router(Generic[P]):
    """Which provider serves which name, and whether requests are accepted."""

    __slots__ = ("_table", "accepting")

    def __init__(self) -> None:
        self._table: dict[str, P] = {}
        self.accepting = False

    @property
    def table(self) -> Mapping[str, P]:
        return self._table

    def lookup(self, name: str) -> P:
        """The provider for ``name``.

        Raises:
            MeshNotRunning: the mesh is not started or is closing.
            ProviderNotFound: no provider is registered as ``name``.
        """
        if not self.accepting:
            raise MeshNotRunning(
                "the mesh is not running: start it with `async with mesh:` "
                "(or `await mesh.start()`) before making requests"
            )
        provider = self._table.get(name)
        if provider is None:
            raise ProviderNotFound(name, self._table)
        return provider

    def swap(self, table: dict[str, P]) -> dict[str, P]:
        """Install ``table`` whole; return the one it replaces."""
        old, self._table = self._table, table
        return old
