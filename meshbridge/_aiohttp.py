"""Every use of aiohttp's private or undocumented names, in one place.

An aiohttp upgrade should touch this file only. What we rely on:

* ``BaseConnector._create_connection`` (documented, underscore-named): the
  hook a connector overrides to make a new connection; we hand back aiohttp's
  own client protocol, ``client_proto.ResponseHandler``, wired to a pipe.
* ``BaseConnector._loop``: the loop the connector runs on.
* ``web.Server.request_factory`` / ``request_handler`` (public attributes,
  private types): wrapped so each request made by the provider's server gets
  its Exchange and an observing writer, and handler failures are seen.
* ``http_writer.StreamWriter``: subclassed to learn the status, body size and
  end of each response, exactly where aiohttp's server writes them.
* ``StreamReader.total_bytes``: the request body bytes a provider received.
* ``web.Application._handler_args``: what an app asked of its server
  (``handler_args=``), read to honour an access log it configured.

The pinned range in pyproject.toml is the range these are tested against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

from aiohttp import BaseConnector, ClientRequest, web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_writer import StreamWriter

from ._exchange import EXCHANGE, Exchange
from ._pipe import PipeEnd

__all__ = ["ConnectorBase", "ResponseHandler", "configures_access_log", "observe_server"]

_ACCESS_LOG_ARGS: Final = frozenset({"access_log", "access_log_class", "access_log_format"})

# Finds the Exchange for a request arriving on a server protocol (or None for
# traffic that did not come through the mesh's connector).
Bind = Callable[[web.RequestHandler], Exchange | None]


class ConnectorBase(BaseConnector):
    """A ``BaseConnector`` whose connections are made by :meth:`open_pipe`."""

    async def _create_connection(
        self, req: ClientRequest, traces: list[Any], timeout: Any
    ) -> ResponseHandler:
        protocol = ResponseHandler(self._loop)
        self.open_pipe(req, protocol)
        return protocol

    def open_pipe(self, req: ClientRequest, protocol: asyncio.Protocol) -> None:
        """Connect ``protocol`` to a provider (calls its ``connection_made``)."""
        raise NotImplementedError


class _ObservedWriter(StreamWriter):
    """aiohttp's server writer, telling an Exchange what it writes."""

    def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop, exchange: Exchange) -> None:
        super().__init__(protocol, loop)
        self._exchange = exchange
        # A method of the exchange, not of self: no reference cycle per request.
        self.on_body_write = exchange.body_written

    def write_headers(self, status_line: str, headers: Any) -> Coroutine[Any, Any, None]:
        # A plain def returning aiohttp's coroutine: no extra coroutine layer.
        self._exchange.headers_sent(int(status_line[9:12]))
        return super().write_headers(status_line, headers)

    async def write_eof(self, chunk: bytes = b"") -> None:
        await super().write_eof(chunk)
        transport = self.transport
        if isinstance(transport, PipeEnd):
            transport.when_flushed(self._exchange.body_delivered)


def configures_access_log(app: web.Application) -> bool:
    """Whether ``app`` set up its own access log through ``handler_args``."""
    handler_args = app._handler_args or {}
    return not _ACCESS_LOG_ARGS.isdisjoint(handler_args)


def observe_server(server: web.Server, bind: Bind) -> None:
    """Make ``server`` attach an Exchange to each request that has one."""
    make_request = server.request_factory
    handle = server.request_handler

    def request_factory(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        exchange = bind(protocol)
        if exchange is None:
            return make_request(message, payload, protocol, writer, task)
        exchange.received(payload)
        writer = _ObservedWriter(protocol, asyncio.get_running_loop(), exchange)
        request = make_request(message, payload, protocol, writer, task)
        request[EXCHANGE] = exchange
        return request

    async def request_handler(request: web.BaseRequest) -> web.StreamResponse:
        exchange = request.get(EXCHANGE)
        if exchange is None:
            return await handle(request)
        # The request's span is current in its handler (this request's own task).
        trace = exchange.trace
        token = trace.attach() if trace is not None else None
        try:
            response: object = await handle(request)
        except web.HTTPException:
            raise
        except Exception:
            exchange.handler_failed()
            raise
        finally:
            if trace is not None:
                trace.detach(token)
        if not isinstance(response, web.StreamResponse):
            exchange.handler_failed()  # aiohttp answers 500 for this, as over TCP
        return response  # type: ignore[return-value]  # aiohttp handles non-responses

    server.request_factory = request_factory
    server.request_handler = request_handler
