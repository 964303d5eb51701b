"""The relay's connection to one provider: a pipe to a new server protocol
of its app, whose events it hands back to the relay that owns it."""

from __future__ import annotations

import asyncio
from typing import Protocol

from ._exchange import Exchange
from ._metrics import Series
from ._provider import Provider
from ._source import Source

__all__ = ["Upstream", "UpstreamOwner"]


class UpstreamOwner(Protocol):
    """What an upstream tells the relay that owns it."""

    def from_upstream(self, upstream: Upstream, data: bytes) -> None: ...

    def upstream_lost(self, upstream: Upstream) -> None: ...

    def upstream_full(self, upstream: Upstream, full: bool) -> None: ...


class Upstream(asyncio.Protocol):
    """The relay's connection to one provider (reused while it stays open)."""

    __slots__ = ("closed", "exchange", "pipe", "provider", "relay", "series", "server", "source")

    def __init__(self, relay: UpstreamOwner, provider: Provider, *, secure: bool) -> None:
        self.relay = relay
        self.provider = provider
        self.closed = False
        self.exchange: Exchange | None = None  # the attempt on it now
        # The metrics series of its last attempt, and that attempt's Source:
        # the next attempt from the same Source has the same series.
        self.series: Series | None = None
        self.source: Source | None = None
        self.pipe, self.server = provider.open_pipe(self, self, self._pipe_closed, secure=secure)

    def _pipe_closed(self, by_client: bool) -> Exception | None:
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.connection_closed(by_caller=by_client)
        return None

    def data_received(self, data: bytes) -> None:
        self.relay.from_upstream(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.relay.upstream_lost(self)

    def pause_writing(self) -> None:  # the provider reads slowly
        self.relay.upstream_full(self, True)

    def resume_writing(self) -> None:
        self.relay.upstream_full(self, False)
