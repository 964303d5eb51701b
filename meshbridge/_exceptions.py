"""The exceptions meshbridge raises.

Every error is a :class:`MeshError`, and a ``MeshError`` is an
``aiohttp.ClientConnectionError``, so code that already handles
``aiohttp.ClientError`` keeps working when its session is moved onto a mesh::

    aiohttp.ClientError
    └── aiohttp.ClientConnectionError
        └── MeshError                 the mesh cannot carry this request
            ├── ProviderNotFound      no provider is registered under that name
            ├── MissingAPIKeyID       the provider requires a delegated API key id
            └── MeshNotRunning        the mesh is not started, or is closing

Bad arguments (an invalid provider name, source or option) raise ``ValueError``
or ``TypeError`` at the call that received them, never later. A config file
with errors raises ``ConfigError`` (a ``ValueError``, in ``_config.py``) listing
every error with its key path.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp

__all__ = ["MeshError", "MeshNotRunning", "MissingAPIKeyID", "ProviderNotFound"]


class MeshError(aiohttp.ClientConnectionError):
    """The mesh cannot carry a request."""


class ProviderNotFound(MeshError):
    """No provider is registered under the requested name."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        listed = ", ".join(repr(k) for k in self.known) or "none"
        super().__init__(f"no provider named {name!r} in the mesh (known providers: {listed})")


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
