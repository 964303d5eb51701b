"""The HTTP edge of ``meshbridge serve``: what happens to a connection before
and around the gateway's handlers, where aiohttp's defaults assume friendly
callers.

Rules of the listener:

1. A request head has ``header_timeout`` seconds to arrive whole: from the
   accept for a connection's first request, from its first byte for a later
   one. A head not complete by then closes the connection (an access-log line
   with status 408 if any byte of it came).
2. A kept-alive connection may idle ``idle_timeout`` seconds between requests
   (aiohttp's ``keepalive_timeout``); the gateway bounds the gaps inside a
   request body with ``body_timeout``.
3. A request whose body was not read whole when its answer is ready (a
   refusal, a route that takes no body) closes its connection after that
   answer (``Connection: close``). Before it closes, what more of the body
   comes is read and dropped for at most :data:`LINGER` seconds and
   ``max_body_bytes`` bytes, so an honest client still uploading reads the
   answer rather than a reset; aiohttp's own "lingering" read the rest for
   up to 10 s, however much came. No byte after that body starts a request,
   so none escapes rule 1.
4. A listener holds at most ``max_connections`` connections: the next one is
   answered with a fixed 503 and closed at once, before a byte of it is read.
5. Malformed HTTP gets one log line (no traceback), one access-log line and a
   fixed short 400 that never repeats what the caller sent.
6. Every response says ``Server: meshbridge``, never a Python or aiohttp version.
7. A provider path is decoded once, into one canonical provider name, and the
   rest is forwarded exactly as it came (see :func:`provider_path`).

Only public aiohttp names are used: a :class:`web.BaseSite` that makes its own
protocols, each a :class:`web.RequestHandler` of the runner's ``web.Server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

__all__ = [
    "SERVER",
    "Limits",
    "Listener",
    "answer_and_close",
    "json_error",
    "listener_of",
    "provider_path",
]

log = logging.getLogger("meshbridge")

SERVER: Final = "meshbridge"  # the whole Server header: no version to fingerprint

# Called for what never reaches a handler: (remote address, status, outcome).
Rejected = Callable[[str | None, int, str], None]
Phase = Literal["head", "busy", "idle", "closing"]

_SEEN: Final = web.RequestKey("meshbridge_seen", bool)  # the app's middlewares ran
_ENCODED_SEPARATOR: Final = re.compile(r"%2f|%5c|\\", re.IGNORECASE)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


LINGER: Final = 1.0  # seconds an unread body is still taken (and dropped) after the answer


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may take; read when it is accepted."""

    header_timeout: float
    idle_timeout: float
    max_connections: int
    max_body_bytes: int = 0  # what rule 3 drops at most after an answer


def json_error(status: int, type_: str, message: str, **extra: object) -> web.Response:
    """The gateway's error shape: ``{"error": {"type", "message", ...}}``."""
    body = {"error": {"type": type_, "message": message, **extra}}
    return web.json_response(body, status=status, headers={"Server": SERVER})


def _raw_response(status: int, reason: str, type_: str, message: str) -> bytes:
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_FULL: Final = _raw_response(
    503, "Service Unavailable", "unavailable", "too many connections, try again later"
)
_FIXED: Final = {  # status -> (type, message) of the answers aiohttp itself would make
    400: ("invalid_request_error", "malformed HTTP request"),
    500: ("api_error", "internal server error"),
    504: ("timeout", "the request timed out"),
}


def provider_path(raw_path: str) -> tuple[str, str]:
    """Split a request path ``/<provider>/<rest>`` as it came on the wire.

    Returns:
        The provider name, percent-decoded once (the one name the gate checks,
        the log records and the mesh routes to), and the rest of the path
        exactly as sent (``/`` if empty), for the provider to decode once.

    Raises:
        ValueError: a fixed message (never the path itself) if the path holds
            an encoded slash or backslash (``%2f``, ``%5c``), a backslash, a
            dot-segment (``.`` or ``..``, encoded or not), a control
            character, or escapes that are not UTF-8.
    """
    if _ENCODED_SEPARATOR.search(raw_path):
        raise ValueError("the path holds an encoded slash or backslash, or a backslash")
    segments = raw_path.split("/")
    for segment in segments[1:]:
        try:
            text = unquote(segment, errors="strict")
        except UnicodeDecodeError:
            raise ValueError("the path holds percent-escapes that are not UTF-8") from None
        if text in (".", ".."):
            raise ValueError("the path holds a dot-segment (. or ..)")
        if _CONTROL.search(text):
            raise ValueError("the path holds a control character")
    first = segments[1] if len(segments) > 1 else ""
    return unquote(first), raw_path[1 + len(first) :] or "/"


def listener_of(request: web.BaseRequest) -> Listener | None:
    """The :class:`Listener` a request came in on (None for another site)."""
    protocol = request.protocol
    return protocol.listener if isinstance(protocol, _Connection) else None


async def answer_and_close(
    request: web.BaseRequest, response: web.StreamResponse, *, drop: int = 0
) -> web.StreamResponse:
    """Send ``response`` and close the connection, reading no more of the
    request body than ``drop`` bytes, within :data:`LINGER` seconds (rule 3;
    aiohttp would otherwise drain it all for up to 10 s)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    content = request.content
    with contextlib.suppress(TimeoutError, web.RequestPayloadError, ConnectionError):
        async with asyncio.timeout(LINGER):
            while drop > 0 and not content.is_eof():
                drop -= len(await content.readany())
    request.protocol.force_close()
    return response


@web.middleware
async def track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell the connection a request head is complete and when its handler
    is done, so it knows when a head deadline runs; an answer given before
    the body was read whole closes the connection (rule 3)."""
    request[_SEEN] = True
    protocol = request.protocol
    connection = protocol if isinstance(protocol, _Connection) else None
    if connection is not None:
        connection.request_started()
    try:
        response = await handler(request)
        if not request.content.is_eof() and not response.prepared:
            drop = connection.mb_limits.max_body_bytes if connection is not None else 0
            return await answer_and_close(request, response, drop=drop)
        return response
    finally:
        if connection is not None:
            connection.request_finished(body_read=request.content.is_eof())


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: replace aiohttp's ``Server: Python/... aiohttp/...``."""
    response.headers["Server"] = SERVER


class _NoAccessLog(AbstractAccessLogger):
    """The gateway writes its own access lines."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        pass

    @property
    def enabled(self) -> bool:
        return False


class Listener(web.BaseSite):
    """A TCP site of an :class:`web.AppRunner` whose connections keep the
    rules of this module.

    Args:
        runner: the runner, set up.
        host, port: where to listen (port 0 picks a free one).
        limits: called for each new connection (so a reload applies to new ones).
        rejected: told of what never reached a handler (malformed heads, head
            timeouts), for the access log.
        admin: whether this is the admin listener (see :func:`listener_of`).
        reuse_port: bind with ``SO_REUSEPORT``, beside the other workers of
            ``serve --workers`` (the kernel spreads new connections over them).
    """

    __slots__ = ("_app_runner", "_full", "_host", "_listening", "_port", "_reuse_port", "admin",
                 "connections", "limits", "rejected")  # fmt: skip

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        limits: Callable[[], Limits],
        rejected: Rejected,
        admin: bool = False,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner)
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._app_runner = runner
        self._listening: asyncio.Server | None = None
        self.limits, self.rejected, self.admin = limits, rejected, admin
        self.connections = 0
        self._full = False

    @property
    def name(self) -> str:
        host, port = self.addresses[0][:2] if self.addresses else (self._host, self._port)
        return str(URL.build(scheme="http", host=host, port=port))

    @property
    def addresses(self) -> list[Any]:
        """The socket addresses it listens on, once started."""
        sockets = self._listening.sockets if self._listening is not None else ()
        return [sock.getsockname() for sock in sockets]

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        backlog = 128  # as web.TCPSite's
        self._listening = await loop.create_server(
            self._connection,
            self._host,
            self._port,
            backlog=backlog,
            reuse_port=self._reuse_port or None,
        )

    async def stop(self) -> None:
        if self._listening is not None:
            self._listening.close()
        await super().stop()

    def _connection(self) -> _Connection:
        server = self._app_runner.server
        assert server is not None, "the runner is set up before its sites start"
        return _Connection(server, self)

    def admit(self, limit: int) -> bool:
        if self.connections >= limit:
            if not self._full:
                log.warning("%s: %d connections, refusing more with 503", self.name, limit)
                self._full = True
            return False
        self.connections += 1
        return True

    def release(self, limit: int) -> None:
        self.connections -= 1
        if self._full and self.connections < max(1, limit * 9 // 10):
            log.info("%s: %d connections, accepting again", self.name, self.connections)
            self._full = False


class _Connection(web.RequestHandler):
    """aiohttp's protocol with the head deadline, the connection cap and
    fixed error answers.

    Phases: ``head`` (a head is due: the deadline runs), ``busy`` (a handler
    runs), ``idle`` (kept alive: aiohttp's keep-alive timeout runs; the first
    byte starts a new head) and ``closing`` (the last body was not read whole:
    the connection closes once the answer is out, reading nothing more).
    """

    __slots__ = ("listener", "mb_admitted", "mb_head_bytes", "mb_limits", "mb_phase", "mb_timer")

    def __init__(self, server: web.Server, listener: Listener) -> None:
        limits = listener.limits()
        super().__init__(
            server,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=limits.idle_timeout,
            access_log_class=_NoAccessLog,
            lingering_time=0,  # rule 3: an unread body is never drained by aiohttp
        )
        self.listener = listener
        self.mb_limits = limits
        self.mb_admitted = False
        self.mb_phase: Phase = "head"
        self.mb_timer: asyncio.TimerHandle | None = None
        self.mb_head_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.mb_admitted = self.listener.admit(self.mb_limits.max_connections)
        if not self.mb_admitted:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_FULL)
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self.mb_admitted:
            return
        if data and self.mb_phase == "idle":
            self.mb_phase = "head"
            self._arm()
        if data and self.mb_phase == "head":
            self.mb_head_bytes = True
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.mb_admitted:
            return
        self.mb_admitted = False
        self._disarm()
        self.listener.release(self.mb_limits.max_connections)
        super().connection_lost(exc)

    def request_started(self) -> None:
        self.mb_phase = "busy"
        self._disarm()

    def request_finished(self, *, body_read: bool) -> None:
        self.mb_phase = "idle" if body_read else "closing"
        self.mb_head_bytes = False

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self.mb_timer = loop.call_later(self.mb_limits.header_timeout, self._head_timeout)

    def _disarm(self) -> None:
        if self.mb_timer is not None:
            self.mb_timer.cancel()
            self.mb_timer = None

    def _head_timeout(self) -> None:
        self.mb_timer = None
        if self.mb_phase != "head" or self.transport is None:
            return
        if self.mb_head_bytes:
            peer = self.peername
            self.listener.rejected(peer[0] if isinstance(peer, tuple) else None, 408, "timeout")
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or a handler
        that failed): here fixed and short, never the caller's bytes."""
        self.request_started()
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started, it cannot become an error")
        if status >= 500:  # ours, not the caller's: worth a traceback
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            reason = type(exc).__name__ if exc is not None else str(status)
            log.info("malformed request from %s: %s", request.remote, reason)
        if not request.get(_SEEN, False):  # the gateway's access log never saw it
            self.listener.rejected(request.remote, status, "malformed")
        type_, text = _FIXED.get(status, ("invalid_request_error", "bad request"))
        response = json_error(status, type_, text)
        response.force_close()
        return response
