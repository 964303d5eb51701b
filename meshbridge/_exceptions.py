"""The exceptions meshbridge raises.

Every error is a :class:`MeshError`, and a ``MeshError`` is an
``aiohttp.ClientConnectionError``, so code that already handles
``aiohttp.ClientError`` keeps working when its session is moved onto a mesh::

    aiohttp.ClientError
    └── aiohttp.ClientConnectionError
        └── MeshError                 the mesh cannot carry this request
            ├── ProviderNotFound      no provider is registered under that name
            │                         (also an aiohttp.ClientConnectorError, as
            │                         an unresolvable host is over TCP)
            ├── MissingAPIKeyID       the provider requires a delegated API key id
            └── MeshNotRunning        the mesh is not started, or is closing

Bad arguments (an invalid provider name, source or option) raise ``ValueError``
or ``TypeError`` at the call that received them, never later. Configuration
has one error type of its own, raised before anything is built::

    ValueError
    └── ConfigError                   a config file or options table has errors,
                                      every one listed with its key path

A provider's handler has one exception of its own to raise::

    Exception
    └── StreamBroken                  end a response that has started with an
                                      error on the caller's side (one log line)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import NamedTuple

import aiohttp

__all__ = [
    "ConfigError",
    "MeshError",
    "MeshNotRunning",
    "MissingAPIKeyID",
    "ProviderNotFound",
    "StreamBroken",
]


class MeshError(aiohttp.ClientConnectionError):
    """The mesh cannot carry a request."""


class _Destination(NamedTuple):
    """What ``aiohttp.ClientConnectorError`` reads of a connection key."""

    host: str
    port: int | None
    ssl: bool


class ProviderNotFound(MeshError, aiohttp.ClientConnectorError):
    """No provider is registered under the requested name.

    Also an ``aiohttp.ClientConnectorError`` (an ``OSError`` with
    ``EHOSTUNREACH``): code written for TCP catches it where it catches an
    unresolvable host.
    """

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        listed = ", ".join(repr(k) for k in self.known) or "none"
        message = f"no provider named {name!r} in the mesh (known providers: {listed})"
        aiohttp.ClientConnectorError.__init__(
            self,
            _Destination(name, None, False),  # type: ignore[arg-type]  # duck-typed key
            OSError(errno.EHOSTUNREACH, message),
        )
        self._message = message

    def __str__(self) -> str:
        return self._message


class MissingAPIKeyID(MeshError):
    """The provider requires a delegated API key id and the request carried none."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        super().__init__(
            f"provider {provider!r} requires an API key id: pass api_key_id= to "
            "mesh.session()/mesh.connector(), or wrap the call in use_api_key_id(...)"
        )


class MeshNotRunning(MeshError):
    """The mesh has not been started, or is closing."""


class ConfigError(ValueError):
    """A config (a file, or a provider's options table) has errors.

    Raised by the service's config loader and by a provider kind's options
    reader; nothing is built from a config with errors.

    Args:
        errors: every problem found, as ``(key path, message)`` pairs; the key
            path is ``""`` for the file as a whole.
        path: the file the errors are in, if they come from one.
    """

    def __init__(
        self, errors: Iterable[tuple[str, str]], path: str | os.PathLike[str] | None = None
    ) -> None:
        self.errors = tuple(errors)
        self.path = str(path) if path is not None else None
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per error: ``FILE: KEY.PATH: what is wrong`` (``FILE: `` only
        when the errors come from a file)."""
        prefix = f"{self.path}: " if self.path is not None else ""
        return [f"{prefix}{where}: {what}" if where else f"{prefix}{what}"
                for where, what in self.errors]  # fmt: skip


class StreamBroken(Exception):
    """Raised by a provider's handler whose response has started, to end it
    with an error on the caller's side: its read fails (never a clean end of
    stream), as when a proxied upstream's stream breaks midway.

    The mesh logs it as one warning line naming the provider and the message
    (logger ``meshbridge``), not as a traceback: it is what happened to the
    stream, not a bug of the handler. Raised before the response started, it
    is an error like any other (a 500).
    """
