"""The router table: provider names to providers, and the rules for names.

Pure bookkeeping, no I/O: the table is swapped whole (a dict assignment), so
a lookup sees the table either before or after a change, never half of one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from ._exceptions import MeshNotRunning, ProviderNotFound
from ._names import PROVIDER

__all__ = ["Router", "check_name"]

P = TypeVar("P")


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid provider name.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: it is not lower-case words joined by ``-`` (one DNS label).
    """
    return PROVIDER.check(name)


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
