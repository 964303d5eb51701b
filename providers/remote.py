"""The ``remote`` kind: a provider that lives in another process, reached over HTTP.

``[providers.billing] kind = "remote"``, ``url = "http://billing.internal:8080/billing"``:
every request to ``billing`` goes to the URL with its path and query
appended (``/v1/x?y`` to ``/billing/v1/x?y``), whatever the method, to any
HTTP service or to another ``meshbridge serve``. Callers do not change: moving
a provider out of the process is a change of its table in the router config.

Rules of the remote provider:

1. Bytes stream both ways with flow control: the request body is read from
   the caller as the upstream takes it, the answer is written to the caller
   chunk by chunk as it arrives; neither is held whole.
2. The request goes as it came, less the hop-by-hop headers (``Connection``
   and the headers it names, ``Keep-Alive``, ``TE``, ``Trailer``,
   ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) and any caller's
   ``X-Meshbridge-Peer``; the answer comes back the same way.
3. A caller that goes away (its task cancelled, its response closed, its
   timeout) cancels this handler, which closes the upstream connection: it
   never goes back to the pool half-read.
4. Failures as the other proxies: a refused or failed connection is a 502, no
   answer within ``timeout`` a 504 (both ``application/problem+json``, with
   ``x-meshbridge-reason``); a body that breaks or goes silent past
   ``read_timeout`` after the answer started fails the caller's read: never
   a clean end. A connection that could not be made (refused, DNS, TLS, or
   ``connect_timeout``) is reported as a connect failure, which traffic
   policies count as they count an in-process provider that is not running.
5. Identity travels only when signed: with ``peer_secret_env``, the caller's
   Source and API key id go in ``X-Meshbridge-Peer`` (see
   :mod:`meshbridge.providers._signing`), which a receiving ``meshbridge
   serve`` with that key id in ``[server.peers]`` checks.
6. One connection pool (keep-alive) per app, for as long as the app runs;
   TLS is verified (``ca_file`` adds a private CA, nothing turns it off).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from meshbridge import StreamBroken, api_key_id_of, report_connect_failure, source_of

from ._kind import Kind, ProviderContext
from ._options import OptionReader
from ._proxy import CONNECT_FAILURES
from ._signing import MIN_SECRET, PEER_HEADER, check_key_id, sign_identity

__all__ = ["KIND", "RemoteOptions", "RemoteStreamError", "create_app", "parse_options"]

_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Also never forwarded upstream: what aiohttp sets for the new hop, and a
# caller's attempt at an identity header (only this provider signs one).
_DROP_REQUEST: Final = _HOP_BY_HOP | {"host", "content-length", "expect", PEER_HEADER.lower()}
_DROP_RESPONSE: Final = _HOP_BY_HOP | {"content-length"}
# aiohttp would add these when absent; a relay adds nothing of its own.
_NO_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """Options of a remote provider; only ``url`` is required."""

    url: URL  # the base; the request's path and query are appended
    timeout: float = 600.0  # seconds to the answer's head, from the request's start
    connect_timeout: float = 10.0
    read_timeout: float = 300.0  # longest silence of the upstream once the request is sent
    max_connections: int = 100  # the pool's size; more requests wait for a connection
    ca_file: str | None = None  # a PEM bundle of CAs to trust besides the system's
    peer_secret: str | None = field(default=None, repr=False)  # from peer_secret_env
    peer_secret_env: str | None = None
    peer_key_id: str = "1"

    def describe(self) -> Mapping[str, str]:
        shown = {
            "upstream": str(self.url),
            "timeout": f"{self.timeout:g}s",
            "read_timeout": f"{self.read_timeout:g}s",
            "max_connections": str(self.max_connections),
        }
        if self.peer_secret_env:
            shown["identity"] = f"signed (key id {self.peer_key_id}, ${self.peer_secret_env})"
        if self.ca_file:
            shown["ca_file"] = self.ca_file
        return shown


def parse_options(reader: OptionReader) -> RemoteOptions:
    """Read a remote provider's options; problems are recorded on ``reader``."""
    d = RemoteOptions(URL("http://remote.invalid"))
    url = reader.url("url", required=True)
    secret = reader.env("peer_secret_env")
    key_id = reader.string("peer_key_id", d.peer_key_id)
    if reader.has("peer_key_id") and not reader.has("peer_secret_env"):
        reader.error("peer_key_id", "set without peer_secret_env: nothing would be signed")
    try:
        check_key_id(key_id)
    except ValueError as exc:
        reader.error("peer_key_id", str(exc))
        key_id = d.peer_key_id
    if secret and secret[1] and len(secret[1].encode()) < MIN_SECRET:
        reader.error(
            "peer_secret_env",
            f"the secret in {secret[0]} is {len(secret[1].encode())} bytes: "
            f"expected at least {MIN_SECRET} (such as `openssl rand -base64 32`)",
        )
    ca_file = reader.string("ca_file", "") or None
    if ca_file is not None:
        if url is not None and url.scheme != "https":
            reader.error("ca_file", "set for an http:// url: it trusts CAs for https:// only")
        try:
            ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            reader.error("ca_file", f"cannot load CA certificates from {ca_file!r}: {exc}")
    return RemoteOptions(
        url=url or d.url,
        timeout=reader.number("timeout", d.timeout, exclusive=True),
        connect_timeout=reader.number("connect_timeout", d.connect_timeout, exclusive=True),
        read_timeout=reader.number("read_timeout", d.read_timeout, exclusive=True),
        max_connections=reader.integer(
            "max_connections", d.max_connections, minimum=1, maximum=100_000
        ),
        ca_file=ca_file,
        peer_secret=secret[1] if secret else None,
        peer_secret_env=secret[0] if secret else None,
        peer_key_id=key_id,
    )


class RemoteStreamError(StreamBroken):
    """The upstream's body broke after the answer started (the caller's read fails)."""


def _problem(status: int, reason: str, message: str) -> web.Response:
    """An error this provider answers itself (RFC 9457, as the mesh's own)."""
    title = HTTPStatus(status).phrase
    body = {"type": "about:blank", "title": title, "status": status, "detail": message,
            "reason": reason}  # fmt: skip
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
        headers={"x-meshbridge-reason": reason},
    )


def _copy(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """``headers`` less ``drop`` and the headers its ``Connection`` names."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
    }
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop | named)


class _Remote:
    """One remote provider app's state: options, signing key, connection pool."""

    def __init__(self, options: RemoteOptions, context: ProviderContext) -> None:
        self.options = options
        self.provider = context.name
        self.base = str(options.url).rstrip("/")  # url ".../billing/" + "/v1/x": one slash
        self.host = options.url.host
        self.secret = options.peer_secret.encode() if options.peer_secret else None
        self._session: aiohttp.ClientSession | None = None

    async def pool(self, app: web.Application) -> AsyncIterator[None]:
        """A ``cleanup_ctx``: the connection pool lives as long as the app."""
        o = self.options
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=o.connect_timeout, sock_read=o.read_timeout
        )
        tls: ssl.SSLContext | bool = True
        if o.ca_file is not None:
            tls = ssl.create_default_context(cafile=o.ca_file)
        connector = aiohttp.TCPConnector(limit=o.max_connections, ssl=tls)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            self._session = session
            yield
        self._session = None

    def _request_headers(self, request: web.Request, target: str) -> CIMultiDict[str]:
        headers = _copy(request.headers, _DROP_REQUEST)
        if request.body_exists and request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)  # else it goes chunked
        if self.secret is not None:
            headers[PEER_HEADER] = sign_identity(
                self.secret,
                self.options.peer_key_id,
                request.method,
                target,
                source_of(request),
                api_key_id_of(request),
                now=time.time(),
                nonce=secrets.token_urlsafe(16),
            )
        return headers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Relay ``request`` to the remote and its answer back (module rules)."""
        if self._session is None:
            raise RuntimeError(f"provider {self.provider!r} is not started")
        if not request.raw_path.startswith("/"):
            return _problem(400, "bad-request", "expected a request target that is a path")
        url = URL(self.base + request.raw_path, encoded=True)
        headers = self._request_headers(request, url.raw_path_qs)
        deadline = asyncio.get_running_loop().time() + self.options.timeout
        try:
            async with asyncio.timeout_at(deadline):
                upstream = await self._session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=request.content if request.body_exists else None,
                    allow_redirects=False,
                    skip_auto_headers=_NO_AUTO_HEADERS,
                )
        except TimeoutError:
            message = f"remote {self.host} did not answer within {self._waited(deadline)}"
            return _problem(504, "timeout", message)
        except aiohttp.ClientError as exc:
            if isinstance(exc, CONNECT_FAILURES):
                report_connect_failure(request)  # refused, DNS, TLS, connect timeout
            message = f"remote {self.host} unreachable: {exc.__class__.__name__}: {exc}"
            return _problem(502, "unreachable", message)
        try:
            response = await self._relay(request, upstream)
        except BaseException:
            upstream.close()
            raise
        if request.content.is_eof():
            upstream.release()
        else:  # answered before the whole body was sent: the connection is mid-request
            upstream.close()
        return response

    def _waited(self, deadline: float) -> str:
        if asyncio.get_running_loop().time() >= deadline:
            return f"timeout ({self.options.timeout:g}s)"
        return f"read_timeout ({self.options.read_timeout:g}s)"

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(_copy(upstream.headers, _DROP_RESPONSE))
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        chunks = upstream.content.iter_any()
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                silent = self.options.read_timeout
                raise RemoteStreamError(f"remote {self.host} went silent for {silent:g}s") from None
            except aiohttp.ClientError as exc:
                name = exc.__class__.__name__
                raise RemoteStreamError(f"remote {self.host} stream broke: {name}: {exc}") from exc
            await response.write(chunk)
        await response.write_eof()
        return response


def create_app(options: RemoteOptions, context: ProviderContext) -> web.Application:
    """A provider app relaying every method and path to ``options.url``."""
    remote = _Remote(options, context)
    app = web.Application()
    app.cleanup_ctx.append(remote.pool)
    app.router.add_route("*", "/{tail:.*}", remote.handle)
    return app


KIND: Final = Kind(
    name="remote",
    summary="a provider in another process: any HTTP service or another meshbridge serve",
    parse_options=parse_options,
    create_app=create_app,
)
