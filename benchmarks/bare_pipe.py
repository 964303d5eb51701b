"""Contender 2b: the bare in-memory pipe, with nothing of meshbridge above it.

A connector that, for each new connection, joins aiohttp's client protocol to
a fresh server protocol of one app through :class:`meshbridge._pipe.Pipe`:
no router, no provider lifecycle, no Source, no Exchange, no metrics. The
difference between this and the full mesh is what routing and metrics cost.
"""

from __future__ import annotations

import asyncio

from aiohttp import ClientRequest, web

from meshbridge._aiohttp import ConnectorBase
from meshbridge._pipe import Pipe, PipeStats

__all__ = ["BarePipeConnector"]


class BarePipeConnector(ConnectorBase):
    """Every connection is a pipe to a new protocol of ``server``.

    Pooling and keep-alive are ``BaseConnector``'s own, as for TCP.
    """

    def __init__(self, server: web.Server, stats: PipeStats) -> None:
        super().__init__(limit=0)
        self._web_server = server
        self.stats = stats

    def open_pipe(self, req: ClientRequest, protocol: asyncio.Protocol) -> None:
        pipe = Pipe(
            asyncio.get_running_loop(),
            client_extra={"peername": ("127.0.0.1", 80), "sockname": ("127.0.0.1", 0)},
            server_extra={"peername": ("127.0.0.1", 0), "sockname": ("127.0.0.1", 80)},
            stats=self.stats,
        )
        pipe.connect(protocol, self._web_server())
