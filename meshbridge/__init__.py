"""meshbridge: an in-process service mesh for aiohttp.

Requests made through :meth:`Mesh.session` reach aiohttp apps registered in
the same process, chosen by provider name, with no socket, port or TLS, and
the same HTTP a caller would see over the network. Each request carries its
caller's :class:`Source` and delegated API key id beside it, where no header
can forge them, and is measured in Prometheus metrics.
"""

from __future__ import annotations

from aiohttp import web

from ._aiohttp import EXCHANGE
from ._connector import MeshConnector
from ._exceptions import MeshError, MeshNotRunning, MissingAPIKeyID, ProviderNotFound
from ._mesh import Mesh
from ._source import Source, use_api_key_id, use_source

__all__ = [
    "Mesh",
    "MeshConnector",
    "MeshError",
    "MeshNotRunning",
    "MissingAPIKeyID",
    "ProviderNotFound",
    "Source",
    "api_key_id_of",
    "source_of",
    "use_api_key_id",
    "use_source",
]

__version__ = "0.1.0"


def source_of(request: web.BaseRequest) -> Source | None:
    """The Source of the caller that made ``request``.

    None for a request without a source, and for anything that did not come
    through a mesh (plain HTTP traffic to the same app): no header can set it.
    """
    exchange = request.get(EXCHANGE)
    return exchange.source if exchange is not None else None


def api_key_id_of(request: web.BaseRequest) -> str | None:
    """The delegated API key id ``request`` carries, or None (see :func:`source_of`)."""
    exchange = request.get(EXCHANGE)
    return exchange.api_key_id if exchange is not None else None
