"""The client-only floor: aiohttp's client against canned bytes over the pipe.

A connector whose connections are :class:`meshbridge._pipe.Pipe` pairs, as in
``bare_pipe.py``, but with no aiohttp server at the other end:
:class:`CannedApp` finds where each request ends (the head, then
``Content-Length`` bytes of body) and writes the response at once, inside the
same ``data_received`` call. The bytes are those the benchmark app's aiohttp
server sends, header for header (``tests/test_benchmarks_smoke.py`` compares
them over TCP): no request or response objects, no handler task, no router.
What is left is aiohttp's ``ClientSession`` and the pipe, the most any
in-process transport that still speaks HTTP through aiohttp's client can
reach. It serves ``GET /small`` and ``POST /echo`` (the unary and echo
workloads); streaming responses it does not fake.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

from aiohttp import ClientRequest
from aiohttp.http import SERVER_SOFTWARE

from meshbridge._aiohttp import ConnectorBase
from meshbridge._pipe import Pipe

__all__ = ["CannedApp", "FloorConnector"]

_SMALL = b"ok"
_NOT_FOUND = b"404: Not Found"


class _Clock:
    """aiohttp's ``Date`` header: rendered once per second of ``time.time()``."""

    __slots__ = ("date", "second")

    def __init__(self) -> None:
        self.second = -1
        self.date = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.date = formatdate(second, usegmt=True).encode()
        return self.date


_CLOCK = _Clock()


def _head(status: bytes, content_type: bytes, length: int) -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\nServer: %s\r\n\r\n"
        % (status, content_type, length, _CLOCK.now(), SERVER_SOFTWARE.encode())
    )


class CannedApp(asyncio.Protocol):
    """Answers each request the moment its last byte arrives.

    Routes: ``GET /small`` (``ok``), ``POST /echo`` (the body back), anything
    else a 404, each with the bytes aiohttp sends for the app in ``apps.py``.
    A request with ``Transfer-Encoding`` is answered 501 and the connection
    closed: the workloads the floor runs in never send one.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._line = b""  # the request line whose body is awaited
        self._length = -1  # its body's length; -1: waiting for a head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            if self._length < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                self._line, _, fields = head.partition(b"\r\n")
                fields = b"\r\n" + fields.lower()
                if b"\r\ntransfer-encoding:" in fields:
                    self._answer(b"501 Not Implemented", b"text/plain; charset=utf-8", b"")
                    assert self._transport is not None
                    self._transport.close()
                    return
                self._length = _content_length(fields)
            if len(buffer) < self._length:
                return
            body = bytes(buffer[: self._length])
            del buffer[: self._length]
            self._length = -1
            self._respond(self._line, body)

    def _respond(self, line: bytes, body: bytes) -> None:
        method, _, rest = line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"GET" and path == b"/small":
            self._answer(b"200 OK", b"text/plain", _SMALL)
        elif method == b"POST" and path == b"/echo":
            self._answer(b"200 OK", b"application/octet-stream", body)
        else:
            self._answer(b"404 Not Found", b"text/plain; charset=utf-8", _NOT_FOUND)

    def _answer(self, status: bytes, content_type: bytes, body: bytes) -> None:
        assert self._transport is not None
        if len(body) <= 1024:
            self._transport.write(_head(status, content_type, len(body)) + body)
        else:  # no copy of a large body
            self._transport.write(_head(status, content_type, len(body)))
            self._transport.write(body)


def _content_length(fields: bytes) -> int:
    """The ``Content-Length`` in lowercased header lines (0 if absent)."""
    at = fields.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    value = fields[at + 17 :].partition(b"\r\n")[0]
    return int(value.strip())


class FloorConnector(ConnectorBase):
    """Every connection is a pipe to a new :class:`CannedApp`.

    Pooling and keep-alive are ``BaseConnector``'s own, as for TCP.
    """

    def __init__(self) -> None:
        super().__init__(limit=0)

    def open_pipe(self, req: ClientRequest, protocol: asyncio.Protocol) -> None:
        pipe = Pipe(
            asyncio.get_running_loop(),
            client_extra={"peername": ("127.0.0.1", 80), "sockname": ("127.0.0.1", 0)},
            server_extra={"peername": ("127.0.0.1", 0), "sockname": ("127.0.0.1", 80)},
        )
        pipe.connect(protocol, CannedApp())
