"""The interface every provider kind offers.

A kind is a module (``providers/fake.py``, ``providers/openai.py``, …) with
two functions and an options dataclass:

* ``parse_options(reader) -> Options``: reads its keys from an
  :class:`~providers._options.OptionReader`, recording every problem with
  its key path instead of raising;
* ``create_app(options, context) -> web.Application``: builds the provider.

:class:`Kind` bundles the two so the config layer can treat every kind alike:
:meth:`Kind.prepare` parses a table and returns a :class:`Plan`, a provider
ready to build, that names its upstream and options for ``meshbridge routes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aiohttp import web

from ._metrics import TokenMetrics
from ._options import OptionReader

__all__ = ["Kind", "Plan", "ProviderContext"]


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider app learns about where it runs.

    ``name`` is the provider's name in the mesh (its ``provider`` metric
    label); ``metrics`` are the token metrics of the mesh's registry, made once
    per mesh by whoever builds its providers and shared by all of them.
    """

    name: str
    metrics: TokenMetrics


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
    """One provider kind: its name, its options parser and its app factory."""

    name: str
    summary: str
    parse_options: Callable[[OptionReader], OptionsT]
    create_app: Callable[[OptionsT, ProviderContext], web.Application]

    def prepare(self, reader: OptionReader) -> Plan:
        """Read the options from ``reader`` (errors stay on the reader)."""
        options = self.parse_options(reader)
        create_app = self.create_app
        return Plan(self.name, options, lambda context: create_app(options, context))
