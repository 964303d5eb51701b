"""Channels: what the connector hands a caller as its connection, and the
direct link, the channel to one provider.

Every channel owns a pipe (``_pipe.py``) whose client end goes to aiohttp's
client protocol, so delivery, flow control and close are the pipe's on every
path. A :class:`Channel` declares what the connector asks of it, whatever it
is: whether a pooled one may carry a request for a name, and to begin a
call. A :class:`Link` is the direct channel: the pipe's server end goes to
the provider's server protocol. The relay (``_relay.py``) is the other: a
name governed by policies.

Requests on a channel follow one another (aiohttp's client never
pipelines), so the connector hands the channel the next call before it sends
a byte, and on a link the call's Exchange waits on the provider's server
protocol (``next_exchange``) for the request it parses next.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import ClassVar, Final

from aiohttp import ClientRequest

from ._aiohttp import ServerProtocol
from ._call import Call
from ._exchange import ERROR, Exchange
from ._metrics import MeshMetrics, Series
from ._pipe import OnClose, Pipe, PipeStats
from ._source import Source

__all__ = ["Channel", "Link", "open_pipe"]

_PEERNAME: Final = ("127.0.0.1", 0)


def open_pipe(
    owner: object,
    name: str,
    client: asyncio.Protocol,
    server: asyncio.Protocol,
    *,
    loop: asyncio.AbstractEventLoop,
    stats: PipeStats,
    tls: object | None,
    on_close: OnClose,
) -> Pipe:
    """A pipe from ``client`` to a provider's ``server`` protocol, connected, with
    the addresses a socket to ``name`` would report."""
    port = 443 if tls is not None else 80
    pipe = Pipe(
        loop,
        owner=owner,
        client_extra={"peername": (name, port), "sockname": _PEERNAME},
        server_extra={"peername": _PEERNAME, "sockname": ("127.0.0.1", port), "sslcontext": tls},
        on_close=on_close,
        stats=stats,
    )
    # The server protocol starts its tasks in connection_made; give them a
    # fresh context so no caller's context variables leak into the provider
    # (as over TCP, where the server never runs in the caller's context).
    contextvars.Context().run(pipe.connect, client, server)
    return pipe


class Channel:
    """A caller's connection, as the connector sees it (the one interface
    every kind of connection offers it)."""

    __slots__ = ()

    governed: ClassVar[bool]  # whether its calls go through traffic policies

    def serves(self, target: str, provider: object | None) -> bool:
        """Whether this pooled channel may carry a request for ``target``, to
        be served by ``provider`` (None: a governed name, whichever provider
        its policies pick)."""
        raise NotImplementedError

    def begin(self, call: Call, req: ClientRequest) -> None:
        """The caller is about to send ``req``, the request of ``call``."""
        raise NotImplementedError


class Link(Channel):
    """One direct connection between a caller and a provider."""

    __slots__ = ("_metrics", "_open", "_series", "_server", "_source", "pipe", "provider")

    governed = False

    def __init__(
        self,
        provider: object,
        name: str,
        client: asyncio.Protocol,
        server: ServerProtocol,
        *,
        loop: asyncio.AbstractEventLoop,
        stats: PipeStats,
        tls: object | None,
        metrics: MeshMetrics | None,
    ) -> None:
        self.provider = provider
        self._metrics = metrics
        self._server = server
        self._open: list[Exchange] = []  # begun and not finished
        # The metrics series of its last call, and that call's Source: the next
        # call from the same Source (the usual case) has the same series.
        self._series: Series | None = None
        self._source: Source | None = None
        self.pipe = open_pipe(
            self, name, client, server, loop=loop, stats=stats, tls=tls, on_close=self._closed
        )

    def serves(self, target: str, provider: object | None) -> bool:
        return self.provider is provider

    def begin(self, call: Call, req: ClientRequest) -> None:
        metrics = self._metrics
        series = self._series
        if (series is None or call.source != self._source) and metrics is not None:
            series = self._series = metrics.series(call.provider, call.source)
            self._source = call.source
        exchange = Exchange(call, call.provider, series, metrics)
        still_open = self._open
        if len(still_open) == 1 and still_open[0].finished:
            still_open[0] = exchange  # the usual case: the previous request is done
        else:
            self._open = [e for e in still_open if not e.finished]
            self._open.append(exchange)
        server = self._server
        server.next_exchange = exchange
        if req.body:  # a Payload: let a body of known length skip the parser
            server.expect_body()

    def _closed(self, by_client: bool) -> Exception | None:
        # What the caller's protocol is told. A provider that closes before its
        # response began is a clean close, so aiohttp raises
        # ServerDisconnectedError, as over TCP; once the response began, the
        # caller's read fails with ClientPayloadError, which carries our reason.
        error: Exception | None = None
        for exchange in self._open:
            if not exchange.finished:
                exchange.connection_closed(by_caller=by_client)
                if not by_client and exchange.outcome == ERROR and exchange.status:
                    error = ConnectionResetError(
                        f"provider {exchange.provider!r} closed the connection before the "
                        "end of the response" + (" (its handler raised)" if exchange.failed else "")
                    )
        self._open.clear()
        self._server.next_exchange = None
        return error
