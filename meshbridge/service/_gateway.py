"""``meshbridge serve``: the mesh's providers behind one HTTP server.

Rules of the gateway:

1. The gate comes first. Every ``/<provider>/...`` request must carry one
   ``Authorization: Bearer <token>`` header matching a configured client
   (compared in constant time, against every client), or one
   ``X-Meshbridge-Peer`` header signed by a configured peer for this method
   and target (``_peer_auth.py``; a request carrying one is judged by it
   alone); a second ``Authorization`` header is a 400, anything else a 401
   that never reaches a provider, and does not learn which providers exist.
2. Outside callers never choose who they are. The client's configured Source
   and API key id, or those a peer signed for, are set by the server
   (``use_source``/``use_api_key_id``); the gate's ``Authorization`` header
   and the signature are not forwarded (a signed request's ``Authorization``
   is its caller's own, and goes on as it would in-process); the mesh carries
   identity beside the request, so no header can forge it.
3. One provider name per request: the first path segment, percent-decoded
   once. That name is the one the client's scope (``providers``) allows or
   refuses with 403, the one logged and the one routed to; the rest of the
   path goes upstream exactly as it came. Encoded slashes and backslashes,
   dot-segments and control characters are a 400, never forwarded.
4. Nothing is read of a body before the gate, the scope, the provider and
   the declared size are checked: ``Expect: 100-continue`` is answered only
   then, and a refusal closes the connection without reading the rest of the
   body (``_http_guard.py``, rule 3), whether or not it waited for 100. The
   body's gaps are bounded by ``body_timeout`` (408), its size by
   ``max_body_bytes`` (413).
5. Requests are forwarded through ``mesh.session()`` to
   ``http://<provider>/...`` with the caller's headers less those above, and
   nothing of aiohttp's own (no ``User-Agent``, ``Accept``,
   ``Accept-Encoding`` or ``Content-Type`` the caller did not send);
   responses stream back chunk by chunk, and a provider stream that breaks
   breaks the caller's stream too.
6. Outside callers' trace context (``traceparent``, ``baggage``) is not
   trusted unless ``trust_trace_context``: see ``_edge_trace.py``.
7. ``/healthz`` (the process is up), ``/readyz`` (every provider started, not
   shutting down) and ``/metrics`` (the mesh registry) need no token. With
   ``admin_listen`` they are served on that listener only (``/healthz`` on
   both), and the admin listener serves nothing else but the admin page and
   API (``/admin/``, ``/admin/api/...``, behind their own gate:
   ``_admin_gate.py``, ``_admin_page.py``).
8. One structured access-log line per request (``_access_log.py``),
   also for what never reached a handler (malformed HTTP, head timeouts).
9. A request the gateway refuses after the gate knew its caller is recorded
   in the usage ledger as that caller's call (``_refusals.py``); what the
   mesh was handed, the mesh records.

The connection-level rules (timeouts, the connection cap, fixed answers to
malformed HTTP, the ``Server`` header) are in ``_http_guard.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from meshbridge import (
    MeshError,
    MissingAPIKeyID,
    ProviderNotFound,
    use_api_key_id,
    use_client,
    use_source,
)
from meshbridge.providers import PEER_HEADER

from ._access_log import CLIENT, HANDED, ON_END, PROVIDER, RESPONSE, SENT, access_log, log_rejected
from ._admin_gate import AdminGate
from ._admin_page import AdminPage
from ._admin_rates import Rates
from ._admin_state import AdminState, WorkerFamilies
from ._config import ClientConfig, ServerConfig
from ._edge_trace import TRACE_HEADERS, EdgeTracing, edge_tracing
from ._http_guard import (
    Limits,
    answer_and_close,
    listener_of,
    provider_path,
    server_header,
    track_requests,
)
from ._http_guard import json_error as _error
from ._peer_auth import Caller, PeerGate
from ._refusals import record_refusals
from ._reload import Reloader
from ._usage_api import UsageAPI

__all__ = ["Gateway"]

# Request headers never forwarded: hop-by-hop, the gate's credentials, and
# anything claiming to be meshbridge's own.
_DROP_REQUEST: Final = frozenset(
    {
        "authorization",
        "connection",
        "content-length",
        "expect",
        "host",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        PEER_HEADER.lower(),
    }
)
_DROP_SIGNED: Final = _DROP_REQUEST - {"authorization"}  # the caller's own, behind a peer
_DROP_RESPONSE: Final = frozenset(
    {"connection", "content-length", "keep-alive", "transfer-encoding", "upgrade", "server", "date"}
)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
# aiohttp's client adds these when absent; the gateway adds nothing of its own (rule 5).
_NO_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _no_continue(request: web.Request) -> None:
    """Routes never answer ``Expect: 100-continue`` before their handler:
    the gateway does, once the request has passed the gate (rule 4)."""


def _expects_continue(request: web.BaseRequest) -> bool:
    return request.version >= (1, 1) and "Expect" in request.headers


class Gateway:
    """The HTTP face of a mesh: gate, routes, forwarding, access log."""

    def __init__(self, reloader: Reloader, *, tracer_provider: object | None = None) -> None:
        self.reloader = reloader
        self.tracer_provider = tracer_provider  # the mesh's: None for the global one
        self._edge: EdgeTracing | None = None  # set at start: None when tracing is off
        self.mesh = reloader.mesh
        self.ready = False
        # fixed at start: a separate admin listener needs a restart
        self.admin_apart = reloader.config.server.admin is not None
        self._session: aiohttp.ClientSession | None = None
        self.peers = PeerGate(self.mesh.registry, lambda: self.settings.peers)
        self.worker: int | None = None  # its index under `serve --workers`, for /healthz
        self.metrics: Handler | None = None  # /metrics, if not the mesh registry's own
        self.ledger = reloader.ledger
        self.admin_gate = AdminGate(
            lambda: self.settings, admin_apart=self.admin_apart, not_found=self._no_route
        )
        self.usage = UsageAPI(
            lambda: self.reloader.config.ledger if self.ledger is not None else None,
            self.admin_gate,
        )
        # the merged metrics of every worker, under `serve --workers` (_worker.py)
        self.worker_families: WorkerFamilies | None = None
        state = AdminState(
            reloader,
            Rates(),
            worker=lambda: self.worker,
            worker_families=lambda: self.worker_families,
        )
        self.admin_page = AdminPage(self.admin_gate, state, self.usage, lambda: self.settings)

    rejected = staticmethod(log_rejected)  # the listener's access lines (_http_guard.py)

    @property
    def settings(self) -> ServerConfig:
        return self.reloader.config.server

    @property
    def max_body_bytes(self) -> int:
        return self.settings.max_body_bytes

    def limits(self) -> Limits:
        """The connection limits of the running config (new connections)."""
        s = self.settings
        return Limits(s.header_timeout, s.idle_timeout, s.max_connections, s.max_body_bytes)

    def app(self) -> web.Application:
        """The server's ``web.Application`` (public and admin routes)."""
        app = web.Application(middlewares=[track_requests, access_log])
        if self.ledger is not None:
            app[ON_END] = [record_refusals(self.ledger)]
        app.on_response_prepare.append(server_header)
        app.cleanup_ctx.append(self._mesh_session)
        app.cleanup_ctx.append(self.admin_page.sampling)
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/healthz", self._healthz),
            ("GET", "/readyz", self._admin(self._readyz)),
            ("GET", "/metrics", self._admin(self.metrics or self.mesh.metrics_handler())),
            *self.usage.routes(),
            *self.admin_page.routes(),
            ("*", "/{provider}/{tail:.*}", self._forward),
            ("*", "/{tail:.*}", self._no_route),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler, expect_handler=_no_continue)
        return app

    async def _mesh_session(self, app: web.Application) -> AsyncIterator[None]:
        self._edge = edge_tracing(self.tracer_provider)  # as the mesh's, once it started
        timeout = aiohttp.ClientTimeout(total=None)
        async with self.mesh.session(timeout=timeout, auto_decompress=False) as session:
            self._session = session
            yield
        self._session = None
        await self.usage.close()

    # -- routes ----------------------------------------------------------------

    def _on_admin(self, request: web.BaseRequest) -> bool:
        listener = listener_of(request)
        return listener is not None and listener.admin

    def _admin(self, handler: Handler) -> Handler:
        """Served on the admin listener when there is one, else on the public one."""

        async def admin_only(request: web.Request) -> web.StreamResponse:
            if self.admin_apart and not self._on_admin(request):
                return await self._no_route(request)
            return await handler(request)

        return admin_only

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.worker is not None:
            return web.json_response({"status": "ok", "worker": self.worker})
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.json_response({"status": "not ready"}, status=503)
        return web.json_response({"status": "ready", "providers": list(self.mesh.providers)})

    async def _no_route(self, request: web.Request) -> web.Response:
        if self._on_admin(request):
            message = "the admin listener serves /metrics, /healthz, /readyz and /admin/"
        elif self.admin_apart:
            message = "use /<provider>/... or /healthz"
        else:
            message = "use /<provider>/..., /metrics, /healthz or /readyz"
        return _error(404, "not_found", message)

    def client_for(self, request: web.BaseRequest) -> ClientConfig | None:
        """The configured client whose token the request carries, or None
        (also for more than one ``Authorization`` header)."""
        offered_headers = request.headers.getall("Authorization", [])
        if len(offered_headers) != 1:
            return None
        scheme, _, token = offered_headers[0].partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            offered = token.strip().encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8: no configured token
            return None
        found = None
        for client in self.settings.clients:
            # every client is compared, so timing does not tell which one matched
            if hmac.compare_digest(offered, client.token.encode()):
                found = client
        return found

    async def _caller(self, request: web.BaseRequest) -> Caller | web.Response:
        """Who passes the gate (rule 1), or the refusal."""
        if PEER_HEADER in request.headers:
            return await self.peers.check(request)
        client = self.client_for(request)
        if client is None:
            denied = _error(401, "authentication_error", "missing or invalid bearer token")
            denied.headers["WWW-Authenticate"] = 'Bearer realm="meshbridge"'
            return denied
        return Caller(client.name, client.source, client.api_key_id, client.providers)

    async def _refuse(
        self, request: web.Request, response: web.StreamResponse
    ) -> web.StreamResponse:
        """A refusal before the body was read: a caller waiting for
        ``100 Continue`` never gets it, and its connection closes unread."""
        if _expects_continue(request) and not request.content.is_eof():
            return await answer_and_close(request, response)
        return response

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self._on_admin(request):
            return await self._refuse(request, await self._no_route(request))
        if len(request.headers.getall("Authorization", [])) > 1:
            message = "more than one Authorization header"
            return await self._refuse(request, _error(400, "invalid_request_error", message))
        client = await self._caller(request)
        if isinstance(client, web.Response):
            return await self._refuse(request, client)
        request[CLIENT] = client
        try:
            name, path = provider_path(request.rel_url.raw_path)
        except ValueError as exc:
            return await self._refuse(request, _error(400, "invalid_request_error", str(exc)))
        request[PROVIDER] = name
        refused = self._check(request, client, name)
        if refused is not None:
            return await self._refuse(request, refused)
        if _expects_continue(request):
            await request.writer.write(_CONTINUE)
            request.writer.output_size = 0  # the response proper has not started
        try:
            body = await self._body(request)
        except TimeoutError:
            message = f"no request body bytes for {self.settings.body_timeout:g} s"
            return await answer_and_close(request, _error(408, "timeout", message))
        except web.RequestPayloadError:
            message = "malformed request body"
            return await answer_and_close(request, _error(400, "invalid_request_error", message))
        if body is None:
            return self._too_large()
        query = request.rel_url.raw_query_string
        url = URL(f"http://{name}{path}" + (f"?{query}" if query else ""), encoded=True)
        trusted = self.settings.trust_trace_context
        if trusted or self._edge is None:
            return await self._send(request, client, url, body, trusted=trusted)
        with self._edge.span(request, name) as answered:  # _edge_trace.py, rule 2
            response = await self._send(request, client, url, body, trusted=False)
            answered(response.status)
            return response

    async def _send(
        self, request: web.Request, client: Caller, url: URL, body: bytes, *, trusted: bool
    ) -> web.StreamResponse:
        """Forward the request (gate passed, body read) and relay the answer."""
        name = request[PROVIDER]
        drop = _DROP_SIGNED if client.signed else _DROP_REQUEST
        if not trusted:
            drop = drop | TRACE_HEADERS
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
        assert self._session is not None
        try:
            with contextlib.ExitStack() as identity:
                if client.signed:  # a peer forwards its caller: the ledger names both
                    identity.enter_context(use_client(None, peer=client.name.removeprefix("peer:")))
                else:
                    identity.enter_context(use_client(client.name))
                if client.source is not None:
                    identity.enter_context(use_source(client.source))
                if client.api_key_id is not None:
                    identity.enter_context(use_api_key_id(client.api_key_id))
                request[HANDED] = True
                upstream = await self._session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body or None,
                    skip_auto_headers=_NO_AUTO_HEADERS,
                )
        except MeshError as exc:
            request[HANDED] = False  # refused before the mesh made it a call
            if isinstance(exc, ProviderNotFound):
                return self._unknown(name, client)  # unregistered by a reload meanwhile
            if isinstance(exc, MissingAPIKeyID):
                message = f"provider {name!r} requires an API key id; {client.name!r} has none"
                return _error(403, "permission_error", message)
            return _error(503, "unavailable", f"provider {name!r} is unavailable: {exc}")
        async with upstream:
            return await self._relay(request, upstream)

    def _check(self, request: web.Request, client: Caller, name: str) -> web.Response | None:
        """The refusal of what the gate let through, before any body is read."""
        if client.providers is not None and name not in client.providers:
            message = f"client {client.name!r} may not use provider {name!r}"
            return _error(403, "permission_error", message)
        if name not in self.mesh:
            return self._unknown(name, client)
        expect = ",".join(request.headers.getall("Expect", [])).strip().lower()
        if _expects_continue(request) and expect != "100-continue":
            return _error(417, "expectation_failed", "the only Expect supported is 100-continue")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._too_large()
        return None

    async def _body(self, request: web.Request) -> bytes | None:
        """The request body, or None if it is over the limit.

        Raises:
            TimeoutError: no byte of it came for ``body_timeout`` seconds.
            web.RequestPayloadError: the body is malformed (its chunking, say).
        """
        limit, gap = self.max_body_bytes, self.settings.body_timeout
        body = bytearray()
        while True:
            async with asyncio.timeout(gap):
                chunk = await request.content.readany()
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > limit:
                return None

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in _DROP_RESPONSE:
                response.headers.add(key, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        request[RESPONSE] = response
        request[SENT] = 0
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
            request[SENT] += len(chunk)
        await response.write_eof()
        return response

    def _unknown(self, name: str, client: Caller) -> web.Response:
        scope = client.providers
        known = sorted(p for p in self.mesh.providers if scope is None or p in scope)
        message = f"no provider named {name!r}; known providers: {', '.join(known) or 'none'}"
        return _error(404, "not_found", message, providers=known)

    def _too_large(self) -> web.Response:
        limit = self.max_body_bytes
        message = f"request body is larger than the limit of {limit} bytes"
        return _error(413, "request_too_large", message, limit=limit)
