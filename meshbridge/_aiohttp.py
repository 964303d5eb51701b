"""Every use of aiohttp's private or undocumented names, in one place.

An aiohttp upgrade should touch this file only. What we rely on:

* ``BaseConnector._create_connection`` (documented, underscore-named): the
  hook a connector overrides to make a new connection; we hand back aiohttp's
  own client protocol, ``client_proto.ResponseHandler``, wired to a pipe.
* ``BaseConnector._loop``: the loop the connector runs on.
* ``BaseConnector._get``: takes a pooled connection, as ``connect`` does
  first; ``Connection._protocol``: the protocol it runs on, to find its channel.
* ``web.Server.request_factory`` (a public attribute, private type),
  ``_loop`` and ``_kwargs``: the server's own protocol is made here, as
  ``web.Server.__call__`` makes it, as a subclass of
  ``web_protocol.RequestHandler`` whose ``_request_factory`` gives each
  request its Exchange and an observing writer, and whose ``_handle_request``,
  ``handle_error`` and ``finish_response`` (and ``web_protocol.ERROR``, the
  message of a request that did not parse, compared with ``BaseRequest._message``)
  tell it when a handler failed; ``shutdown`` (and its ``_task_handler``)
  so that closing gives in-flight requests the grace period once, not twice.
* ``http_writer.StreamWriter``: subclassed to learn the status, body size and
  end of each response, exactly where aiohttp's server writes them.
* ``StreamReader.total_bytes``: the request body bytes a provider received.
* Bodies past the parser (the pipe's Rule 6): ``ResponseHandler.feed_data``
  (its queue of parsed responses), ``_parser``, ``_payload``,
  ``_reading_paused``, ``_buffer_paused``, ``_upgraded``,
  ``_reschedule_timeout``, ``RequestHandler._messages``, ``_force_close``,
  ``_close``, ``_read_bufsize``, ``_max_msg_queue_size``,
  ``StreamReader._eof``, ``_high_water``, ``_size``,
  ``StreamWriter._compress``; ``http_exceptions.ContentLengthError``, the
  error llhttp gives a body cut short, and ``web_protocol.RequestPayloadError``.
* ``web.Application._handler_args``: what an app asked of its server
  (``handler_args=``), read to honour an access log it configured.

The pinned range in pyproject.toml is the range these are tested against.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from aiohttp import BaseConnector, ClientRequest, hdrs, web
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from aiohttp.http_exceptions import ContentLengthError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage, RawResponseMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.log import server_logger
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import ERROR as _UNPARSED
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from ._call import Call
from ._exceptions import StreamBroken
from ._exchange import EXCHANGE, Exchange
from ._pipe import MAX_PIECE, PipeEnd

__all__ = [
    "ConnectorBase",
    "ResponseHandler",
    "ServerProtocol",
    "channel_of",
    "configures_access_log",
    "server_protocols",
]

log = logging.getLogger("meshbridge")

_ACCESS_LOG_ARGS: Final = frozenset({"access_log", "access_log_class", "access_log_format"})


class ConnectorBase(BaseConnector):
    """A ``BaseConnector`` whose connections are made by :meth:`open_pipe`."""

    # A pooled connection for a connection key, or None: the first thing
    # ``BaseConnector.connect`` tries, without the rest of it.
    pooled = BaseConnector._get

    async def _create_connection(
        self, req: ClientRequest, traces: list[Any], timeout: Any
    ) -> ResponseHandler:
        protocol = _MeshResponseHandler(self._loop)
        protocol.channel = self.open_pipe(req, protocol)
        return protocol

    def open_pipe(self, req: ClientRequest, protocol: asyncio.Protocol) -> object:
        """Connect ``protocol`` to a provider (calls its ``connection_made``);
        return the channel it runs on (see :func:`channel_of`)."""
        raise NotImplementedError


def channel_of(conn: Connection) -> Any:
    """What ``open_pipe`` returned for the connection ``conn`` runs on."""
    return conn._protocol.channel  # type: ignore[union-attr]


# -- bodies past the parser -----------------------------------------------------------
#
# A body whose length its head gave (Content-Length; not chunked, compressed
# or upgraded) goes from the pipe straight into its StreamReader
# (``PipeEnd.set_receiver``, the pipe's Rule 6): the bytes objects the pipe
# delivers, fed as llhttp feeds them but not copied again, in pieces as large
# as the StreamReader has room for. Flow control is the StreamReader's own (it
# pauses the protocol, which pauses the pipe). The body moves over right after
# its head is parsed, unless that piece paused the reader: llhttp then keeps
# the rest of the piece, and the body stays with llhttp. At the body's end the
# StreamReader gets its EOF, as from llhttp, and llhttp (which still expects
# the body) is replaced: by a new one on the server, whose connection parses
# on; by none on the client, whose next request brings one.


class _Body:
    """A body on its way past the parser: its StreamReader, what is left, and
    the pipe end whose receiver it is until it ends."""

    __slots__ = ("left", "length", "payload", "transport")

    def __init__(self, payload: StreamReader, length: int, transport: PipeEnd) -> None:
        self.payload = payload
        self.length = length
        self.left = length - payload.total_bytes
        self.transport = transport

    def room(self) -> int:
        """What its StreamReader takes before it pauses."""
        payload = self.payload
        return payload._high_water - payload._size

    def feed(self, data: bytes) -> bytes | None:
        """Feed a piece; None, or at the body's end what follows it (b"" for
        nothing), the pipe end then delivering to its protocol again."""
        left, size = self.left, len(data)
        if size < left:
            self.left = left - size
            self.payload.feed_data(data)
            return None
        self.left = 0
        self.payload.feed_data(data if size == left else data[:left])
        self.transport.set_receiver(None)
        return data[left:]


def _no_room() -> int:
    return 0


def _plain_body(
    message: RawRequestMessage | RawResponseMessage, payload: StreamReader, protocol: Any
) -> _Body | None:
    """The body of ``message`` if it may go past the parser, with bytes still to come."""
    if message.chunked or message.compression is not None or message.upgrade:
        return None
    if protocol._reading_paused or protocol._buffer_paused or protocol._upgraded:
        return None  # llhttp may hold bytes it has not parsed yet
    transport = protocol.transport
    if not isinstance(transport, PipeEnd):
        return None
    length = message.headers.get(hdrs.CONTENT_LENGTH)
    if length is None or not (length.isascii() and length.isdigit()):
        return None
    body = _Body(payload, int(length), transport)
    return body if body.left > 0 else None


class _Unfinished:
    """Stands in for llhttp when a body past it is cut short: llhttp's error."""

    __slots__ = ("_body",)

    def __init__(self, body: _Body) -> None:
        self._body = body

    def feed_eof(self) -> None:
        body = self._body
        raise ContentLengthError(
            "Not enough data to satisfy content length header "
            f"(received {body.length - body.left} of {body.length} bytes)."
        )


class _MeshResponseHandler(ResponseHandler):
    """aiohttp's client protocol, taking a response body past its parser."""

    # Slots, not instance attributes: one added after aiohttp's __init__ would
    # turn the instance's attributes into a plain dict, slower to read.
    __slots__ = ("_body", "channel")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.channel: object = None  # what the connector's open_pipe returned for it
        self._body: _Body | None = None  # the body going past the parser now

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        ResponseHandler.feed_data(self, data, size)  # a parsed response: once per response
        payload = data[1]
        if type(payload) is StreamReader and not payload._eof:
            body = _plain_body(data[0], payload, self)
            if body is not None:
                self._body = body
                body.transport.set_receiver(self._body_received, body.room)

    def _body_received(self, data: bytes) -> None:
        self._reschedule_timeout()  # as data_received does: sock_read is per piece
        body = self._body
        assert body is not None
        rest = body.feed(data)
        if rest is None:
            return
        self._body = None
        self._parser = None  # llhttp never saw this body; the next request brings a parser
        body.payload.feed_eof()
        if rest:  # bytes past the response: kept unparsed, so the connection is not reused
            ResponseHandler.data_received(self, rest)

    def connection_lost(self, exc: BaseException | None) -> None:
        body = self._body
        if body is not None:
            self._body = None
            self._parser = _Unfinished(body)  # type: ignore[assignment]  # only feed_eof is asked
        super().connection_lost(exc)


class _ObservedWriter(StreamWriter):
    """aiohttp's server writer, telling an Exchange what it writes (set
    ``_exchange`` and ``on_body_write`` right after making one)."""

    __slots__ = ("_exchange",)  # see _MeshResponseHandler
    _exchange: Exchange

    def write_headers(self, status_line: str, headers: Any) -> Coroutine[Any, Any, None]:
        # A plain def returning aiohttp's coroutine: no extra coroutine layer.
        self._exchange.headers_sent(int(status_line[9:12]))
        return StreamWriter.write_headers(self, status_line, headers)  # not super(): per request

    async def write_eof(self, chunk: bytes = b"") -> None:
        if len(chunk) > MAX_PIECE and not self.chunked and self._compress is None:
            # aiohttp would join the head and the body into one new bytes
            # object; the head goes first, the body by reference.
            self.send_headers()
        await StreamWriter.write_eof(self, chunk)
        transport = self._protocol.transport
        if type(transport) is PipeEnd:
            transport.when_flushed(self._exchange.body_delivered)


def configures_access_log(app: web.Application) -> bool:
    """Whether ``app`` set up its own access log through ``handler_args``."""
    handler_args = app._handler_args or {}
    return not _ACCESS_LOG_ARGS.isdisjoint(handler_args)


def server_protocols(server: web.Server) -> Callable[[], ServerProtocol]:
    """A factory of ``server``'s protocols, each aiohttp's own
    ``RequestHandler`` (subclassed, not wrapped: what a handler observes is
    unchanged, and a request costs no extra coroutine frame). A request that
    comes with an Exchange (``next_exchange``) gets it beside the request and
    an observing writer; the handler of a watched call (traced, recorded in a
    ledger, or admitted by a limiter) tells its Call when it starts and returns."""
    make_request = server.request_factory
    loop = server._loop
    kwargs = server._kwargs

    def request_factory(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        exchange = protocol.next_exchange
        if exchange is None:
            protocol.exchange = None
            return make_request(message, payload, protocol, writer, task)
        protocol.next_exchange = None
        # The request being handled now: only one at a time per connection. A
        # request that did not parse is aiohttp's to answer, no handler's.
        protocol.exchange = exchange if message is not _UNPARSED else None
        exchange.request_body = payload
        # A writer of our own, made as start() made aiohttp's (changing the class
        # of aiohttp's costs more: CPython turns its attributes into a slow dict).
        writer = _ObservedWriter(protocol, loop)
        writer._exchange = exchange
        # A method of the exchange, not of the writer: no reference cycle per request.
        writer.on_body_write = exchange.body_written
        request = make_request(message, payload, protocol, writer, task)
        request._state[EXCHANGE] = exchange
        return request

    try:
        ServerProtocol(server, loop=loop, **kwargs)
    except TypeError:  # bad handler_args: what web.Server.__call__ falls back to
        server_logger.warning("Failed to create request handler with custom kwargs %r", kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k in ("debug", "access_log_class")}

    auto_decompress = bool(kwargs.get("auto_decompress", True))

    def protocol() -> ServerProtocol:
        handler = ServerProtocol(server, loop=loop, **kwargs)
        # A plain function, not a bound method of the handler: no cycle per connection.
        handler._request_factory = request_factory
        handler.next_exchange = handler.exchange = handler._body = None
        handler._auto_decompress = auto_decompress
        return handler

    return protocol


class ServerProtocol(RequestHandler):
    """aiohttp's server protocol, taking each request's Exchange from whatever
    carries the request (``next_exchange``: a link or a relay's upstream sets
    it before the request's first byte) and telling it when its handler failed."""

    __slots__ = ("_auto_decompress", "_body", "exchange", "next_exchange")
    next_exchange: Exchange | None  # the Exchange of the next request parsed
    exchange: Exchange | None  # that of the request being handled
    _body: _Body | None  # the request body going past the parser now
    _auto_decompress: bool  # for the parser that follows a body past the parser

    # -- a request body past the parser (see _Body) --------------------------------

    def expect_body(self) -> None:
        """The next request has a body: look for one of known length as its
        head is parsed (a request without one costs nothing of this)."""
        transport = self.transport
        if type(transport) is PipeEnd and self._body is None:
            # A receiver with no room of its own: a write of up to a body piece
            # comes whole (by reference), so its head and body can be told apart.
            transport.set_receiver(self._watch_for_body, _no_room)

    def _watch_for_body(self, data: bytes) -> None:
        # llhttp is given the bytes up to the end of the first head in ``data``
        # alone, so that a body that follows at once goes past it whole (a head
        # and body written together, as aiohttp's client does on older
        # Pythons, would otherwise leave llhttp's copy of the body's first bytes
        # and the rest in two pieces, for the handler's read() to join).
        end = data.find(b"\r\n\r\n") + 4
        rest = b""
        if 4 < end < len(data):
            self.data_received(data[:end])
            rest = data[end:]
        else:
            self.data_received(data)
        messages = self._messages
        if not messages:  # no head parsed (or its request already taken by start())
            if rest:
                self.data_received(rest)  # llhttp parses on; the next piece is watched
            return
        transport = self.transport
        assert type(transport) is PipeEnd
        message, payload = messages[-1]
        body = None
        if type(payload) is StreamReader and not payload._eof:
            assert isinstance(message, RawRequestMessage)
            body = _plain_body(message, payload, self)
        if body is None:
            transport.set_receiver(None)
            if rest:
                self.data_received(rest)
        else:
            self._body = body
            transport.set_receiver(self._body_received, body.room)
            if rest:
                self._body_received(rest)

    def _body_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return  # as data_received: a closing connection reads nothing more
        body = self._body
        assert body is not None
        rest = body.feed(data)
        if rest is None:
            return
        self._body = None
        # llhttp still expects this body: the connection's next request gets a new one.
        self._parser = HttpRequestParser(
            self,
            self._loop,
            self._read_bufsize,
            max_line_size=self.max_line_size,
            max_field_size=self.max_field_size,
            max_headers=self.max_headers,
            payload_exception=RequestPayloadError,
            auto_decompress=self._auto_decompress,
            max_msg_queue_size=self._max_msg_queue_size,
        )
        body.payload.feed_eof()
        if rest:  # a pipelined request follows
            self.data_received(rest)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._body = None
        super().connection_lost(exc)

    # -- what the handler did --------------------------------------------------------

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        # aiohttp waits up to ``timeout`` for the handler, then fails its
        # request's reads and waits up to ``timeout`` again, so a handler that
        # never reads (a stream) held Mesh.aclose() for twice the grace period.
        # One period in all: what is still running at its end is cancelled.
        if timeout is None:
            return await super().shutdown(timeout)
        try:
            async with asyncio.timeout(timeout):
                await super().shutdown(timeout)
        except TimeoutError:
            if self._task_handler is not None:
                self._task_handler.cancel()
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's answer to a handler that raised (500, or 504 for a
        # TimeoutError), and to a request it could not parse.
        exchange = self.exchange
        if exchange is not None:
            exchange.handler_failed()
        if isinstance(exc, StreamBroken) and request.writer.output_size > 0:
            # What aiohttp does for a response that has started (the caller's
            # read fails), with one line for a traceback.
            provider = exchange.provider if exchange is not None else "?"
            log.warning("meshbridge: provider %r ended a stream with an error: %s", provider, exc)
            raise ConnectionError("the response has started; it ends with an error")
        return super().handle_error(request, status, exc, message)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # Also what aiohttp does, and all it does, when a handler returned no
        # response (it answers 500) or the request's processing raised.
        exchange = self.exchange
        if exchange is not None:
            exchange.handler_failed()
        super().log_exception(*args, **kw)

    # A watched call (traced, recorded in a ledger, or admitted by a limiter,
    # which may be set after the provider started): its handlers tell it when
    # they start and return, and a traced request's handler runs in its span.

    def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        # Called in the connection's task just before it starts the request's
        # own task (which copies the context); a plain def adds no frame.
        exchange = self.exchange
        if exchange is not None and exchange.call.watched:
            return self._handle_watched(request, start_time, request_handler, exchange.call)
        return RequestHandler._handle_request(self, request, start_time, request_handler)

    async def _handle_watched(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        call: Call,
    ) -> tuple[web.StreamResponse, bool]:
        # The call waits for its handlers before it finishes (_call.py, Rule 3),
        # and a traced request's span is current in its handler (its own task).
        call.handler_started()
        trace = call.trace
        token = trace.attach() if trace is not None else None
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            if trace is not None:
                trace.detach(token)
            call.handler_returned()
