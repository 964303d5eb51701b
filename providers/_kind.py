"""The interface every provider kind offers.

A kind is a module (``fake``, ``openai``, ``anthropic``, or one of your own
package's) with an options dataclass and two functions:

* ``parse_options(reader) -> Options``: reads its keys from an
  :class:`~meshbridge.providers.OptionReader`, recording every problem with
  its key path instead of raising; ``Options`` has ``describe()``;
* ``create_app(options, context) -> web.Application``: builds the provider.

:class:`Kind` bundles them under the name a config's ``kind = "..."`` uses,
and is what the ``meshbridge.providers`` entry point group points at (see
:func:`~meshbridge.providers.kinds`). :meth:`Kind.prepare` parses a table and
returns a :class:`Plan`: a provider ready to build, that names its upstream
and options for ``meshbridge routes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aiohttp import web

from ._options import OptionReader

__all__ = ["Kind", "Plan", "ProviderContext"]


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider app learns about where it runs: its name in the mesh.

    Everything per request (Source, API key id, token metrics) comes from the
    request itself (``meshbridge.source_of``, ``meshbridge.record_tokens``).
    """

    name: str


class Described(Protocol):
    def describe(self) -> Mapping[str, str]:
        """Upstream and options as shown by ``meshbridge routes`` (no secrets)."""
        ...


OptionsT = TypeVar("OptionsT", bound=Described)


@dataclass(frozen=True, slots=True)
class Plan:
    """A provider whose options were read, ready to be built."""

    kind: str
    options: Described
    build: Callable[[ProviderContext], web.Application]

    def describe(self) -> Mapping[str, str]:
        return self.options.describe()


@dataclass(frozen=True, slots=True)
class Kind(Generic[OptionsT]):
    """One provider kind: its name, its options parser and its app factory.

    ``summary`` is the one line ``meshbridge kinds`` prints for it.
    """

    name: str
    summary: str
    parse_options: Callable[[OptionReader], OptionsT]
    create_app: Callable[[OptionsT, ProviderContext], web.Application]

    def prepare(self, reader: OptionReader) -> Plan:
        """Read the options from ``reader`` (errors stay on the reader)."""
        options = self.parse_options(reader)
        create_app = self.create_app
        return Plan(self.name, options, lambda context: create_app(options, context))
