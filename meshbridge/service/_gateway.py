"""``meshbridge serve``: the mesh's providers behind one HTTP server.

Rules of the gateway:

1. The gate comes first. Every ``/<provider>/...`` request must carry
   ``Authorization: Bearer <token>`` matching a configured client (compared
   in constant time, against every client); anything else is a 401 that never
   reaches a provider, and does not learn which providers exist.
2. Outside callers never choose who they are. The client's configured Source
   and API key id are set by the server (``use_source``/``use_api_key_id``)
   and the gate's ``Authorization`` header is not forwarded; the mesh carries
   identity beside the request, so no header can forge it.
3. Requests are forwarded through ``mesh.session()`` to
   ``http://<provider>/...``; responses stream back chunk by chunk, and a
   provider stream that breaks breaks the caller's stream too.
4. ``/metrics`` (the mesh registry), ``/healthz`` (the process is up) and
   ``/readyz`` (every provider started, not shutting down) need no token.
5. One structured access-log line per request (logger ``meshbridge.access``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from meshbridge import MeshError, MissingAPIKeyID, ProviderNotFound, use_api_key_id, use_source

from ._config import ClientConfig
from ._reload import Reloader

__all__ = ["Gateway"]

access_log = logging.getLogger("meshbridge.access")

# Request headers never forwarded: hop-by-hop, the gate's credentials, and
# anything claiming to be meshbridge's own.
_DROP_REQUEST: Final = frozenset(
    {
        "authorization",
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_DROP_RESPONSE: Final = frozenset(
    {"connection", "content-length", "keep-alive", "transfer-encoding", "upgrade", "server", "date"}
)

CLIENT: Final = web.RequestKey("meshbridge_client", ClientConfig)
PROVIDER: Final = web.RequestKey("meshbridge_provider", str)
RESPONSE: Final = web.RequestKey("meshbridge_response", web.StreamResponse)
SENT: Final = web.RequestKey("meshbridge_sent", int)  # body bytes relayed so far


def _error(status: int, type_: str, message: str, **extra: object) -> web.Response:
    body = {"error": {"type": type_, "message": message, **extra}}
    return web.json_response(body, status=status)


class Gateway:
    """The HTTP face of a mesh: gate, routes, forwarding, access log."""

    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader
        self.mesh = reloader.mesh
        self.ready = False
        self._session: aiohttp.ClientSession | None = None

    @property
    def max_body_bytes(self) -> int:
        return self.reloader.config.server.max_body_bytes

    def app(self) -> web.Application:
        """The server's ``web.Application``."""
        app = web.Application(middlewares=[self._access_log])
        app.cleanup_ctx.append(self._mesh_session)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self.mesh.metrics_handler())
        app.router.add_route("*", "/{provider}/{tail:.*}", self._forward)
        app.router.add_route("*", "/{tail:.*}", self._no_route)
        return app

    async def _mesh_session(self, app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None)
        async with self.mesh.session(timeout=timeout, auto_decompress=False) as session:
            self._session = session
            yield
        self._session = None

    # -- routes ----------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.json_response({"status": "not ready"}, status=503)
        return web.json_response({"status": "ready", "providers": list(self.mesh.providers)})

    async def _no_route(self, request: web.Request) -> web.Response:
        return _error(
            404,
            "not_found",
            "use /<provider>/..., /metrics, /healthz or /readyz",
        )

    def client_for(self, request: web.BaseRequest) -> ClientConfig | None:
        """The configured client whose token the request carries, or None."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        offered = token.strip().encode()
        found = None
        for client in self.reloader.config.server.clients:
            # every client is compared, so timing does not tell which one matched
            if hmac.compare_digest(offered, client.token.encode()):
                found = client
        return found

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        client = self.client_for(request)
        if client is None:
            denied = _error(401, "authentication_error", "missing or invalid bearer token")
            denied.headers["WWW-Authenticate"] = 'Bearer realm="meshbridge"'
            return denied
        request[CLIENT] = client
        name = request.match_info["provider"]
        if name not in self.mesh:
            return self._unknown(name)
        request[PROVIDER] = name
        body = await self._body(request)
        if body is None:
            return self._too_large()
        raw = request.rel_url.raw_path[len(name) + 1 :] or "/"
        query = request.rel_url.raw_query_string
        url = URL(f"http://{name}{raw}" + (f"?{query}" if query else ""), encoded=True)
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST
        )
        assert self._session is not None
        try:
            with contextlib.ExitStack() as identity:
                identity.enter_context(use_source(client.source))
                if client.api_key_id is not None:
                    identity.enter_context(use_api_key_id(client.api_key_id))
                upstream = await self._session.request(
                    request.method, url, headers=headers, data=body or None
                )
        except ProviderNotFound:
            return self._unknown(name)  # unregistered by a reload meanwhile
        except MissingAPIKeyID:
            message = f"provider {name!r} requires an API key id; client {client.name!r} has none"
            return _error(403, "permission_error", message)
        except MeshError as exc:
            return _error(503, "unavailable", f"provider {name!r} is unavailable: {exc}")
        async with upstream:
            return await self._relay(request, upstream)

    async def _body(self, request: web.Request) -> bytes | None:
        """The request body, or None if it is over the limit."""
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

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

    def _unknown(self, name: str) -> web.Response:
        known = sorted(self.mesh.providers)
        message = f"no provider named {name!r}; known providers: {', '.join(known) or 'none'}"
        return _error(404, "not_found", message, providers=known)

    def _too_large(self) -> web.Response:
        limit = self.max_body_bytes
        message = f"request body is larger than the limit of {limit} bytes"
        return _error(413, "request_too_large", message, limit=limit)

    # -- access log --------------------------------------------------------------

    @web.middleware
    async def _access_log(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response: web.StreamResponse | None = None
        outcome = "error"
        try:
            response = await handler(request)
            outcome = "completed"
            return response
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except web.HTTPException as exc:
            response, outcome = exc, "completed"
            raise
        finally:
            self._log(request, response, outcome, time.perf_counter() - started)

    def _log(
        self,
        request: web.Request,
        response: web.StreamResponse | None,
        outcome: str,
        seconds: float,
    ) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        client = request.get(CLIENT)
        response = response or request.get(RESPONSE)  # a stream that broke had started
        if response is None:
            status, sent = (0 if outcome == "cancelled" else 500), 0
        elif isinstance(response, web.Response) and not response.prepared:
            status, sent = response.status, response.content_length or 0
        else:
            status, sent = response.status, request.get(SENT, 0)
        line = {
            "method": request.method,
            "path": request.rel_url.path,
            "provider": request.get(PROVIDER),
            "client": client.name if client is not None else None,
            "source": str(client.source) if client is not None else None,
            "status": status,
            "outcome": outcome,
            "duration_ms": round(seconds * 1000, 3),
            "bytes_in": request.content.total_bytes,
            "bytes_out": sent,
            "remote": request.remote,
        }
        access_log.info(json.dumps(line, separators=(",", ":")))
