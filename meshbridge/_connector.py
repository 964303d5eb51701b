"""The connector: picks the provider, attaches the caller's identity.

``MeshConnector`` is an ``aiohttp.BaseConnector``. For each request it looks
up the provider (the URL host, or the provider it is pinned to), reads the
Source and API key id (context overrides first, then its own), and begins an
Exchange on a pooled link to that provider, or on a new one. Pooled links are
reused as TCP connections are; a link to a provider that has since been
replaced is closed instead of reused, so every request runs on the app that
was registered when it started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import ClientRequest, ClientTimeout
from aiohttp.connector import Connection
from aiohttp.payload import BytesPayload

from ._aiohttp import ConnectorBase, channel_of
from ._call import Call
from ._estimate import Estimate
from ._exceptions import MeshError, MissingAPIKeyID
from ._limit_rules import Refusal, Ticket
from ._limiter import Limiter
from ._limits import CallIdentity, TokenUsage
from ._link import Channel, Link
from ._metrics import MeshMetrics, method_label
from ._provider import RUNNING, Provider
from ._relay import Relay
from ._routing import check_name
from ._source import (
    Source,
    check_api_key_id,
    current_api_key_id,
    current_origin,
    current_source,
)

if TYPE_CHECKING:  # for annotations only: the mesh module imports this one
    from ._mesh import Mesh

__all__ = ["MeshConnector"]

# How connect() wants a new connection made, for _create_connection(): both run
# in the caller's task, one inside the other.
Opener = Callable[[asyncio.Protocol, bool], Link | Relay]
_opener: ContextVar[Opener | None] = ContextVar("meshbridge_opener", default=None)


class MeshConnector(ConnectorBase):
    """An aiohttp connector whose connections lead to providers in a mesh.

    Use it like any connector (``aiohttp.ClientSession(connector=...)``);
    :meth:`Mesh.connector` makes one too.

    Args:
        mesh: the mesh whose providers its connections lead to.
        provider: send every request to this provider, whatever the URL host;
            by default the URL host names the provider.
        source: the Source of its requests (``use_source()`` overrides it).
        api_key_id: the delegated API key id of its requests
            (``use_api_key_id()`` overrides it).
        **kwargs: passed to ``aiohttp.BaseConnector`` (``limit``,
            ``keepalive_timeout``, ``force_close``...).

    Raises:
        ValueError: an invalid provider name, source or API key id.
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        provider: str | None = None,
        source: str | None = None,
        api_key_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._mesh = mesh
        self._router = mesh._router
        self._metrics = mesh._metrics
        self._traffic = mesh._traffic
        self._calls = mesh._calls
        self._pinned = check_name(provider) if provider is not None else None
        self._source = Source(source) if source is not None else None
        self._api_key_id = check_api_key_id(api_key_id) if api_key_id is not None else None
        # No sockets, no file descriptors: no reason to cap connections by default.
        kwargs.setdefault("limit", 0)
        super().__init__(**kwargs)

    @property
    def provider(self) -> str | None:
        """The provider every request goes to, or None to route by URL host."""
        return self._pinned

    @property
    def source(self) -> Source | None:
        return self._source

    async def connect(
        self, req: ClientRequest, traces: list[Any], timeout: ClientTimeout
    ) -> Connection:
        name = self._pinned or req.url.raw_host or ""
        source = current_source.get() or self._source
        api_key_id = current_api_key_id.get() or self._api_key_id
        traffic = self._traffic
        routed = name in traffic.route_table
        governed = routed or name in traffic.guards
        first = traffic.choose(name, source, api_key_id) if routed else name
        router = self._router
        provider = router._table.get(first) if router.accepting else None
        if provider is None:
            provider = router.lookup(first)  # raises what is wrong
        if api_key_id is None and provider.require_api_key_id:
            raise MissingAPIKeyID(provider.name)
        if provider.state != RUNNING:
            await provider.wait_started()
        origin = current_origin.get()
        limiter = self._mesh._limiter
        admitted: Ticket | None = None
        refusal: Refusal | None = None
        if limiter is not None:
            client = origin[0] if origin is not None else None
            identity = CallIdentity(source, api_key_id, client, first, name)
            plan = limiter.plan(identity)
            if plan is not None:
                estimate = await _estimate(limiter, req) if plan.estimates else None
                admission = (
                    limiter.admit_now(identity, estimate, plan)
                    if limiter.synchronous
                    else await limiter.admit(identity, estimate)
                )
                if isinstance(admission, Refusal):
                    refusal = admission
                    governed = True  # the mesh answers it itself, from a relay
                elif admission is not None and admission.owes:
                    admitted = admission  # settled when the call finishes
        wanted = None if governed else provider  # a relay's serves any provider
        try:
            # A pooled connection first, as BaseConnector.connect does (inline:
            # the usual case, one coroutine fewer per request).
            conn = await self.pooled(req.connection_key, traces)
            channel: Channel | None = channel_of(conn) if conn is not None else None
            if conn is None or channel is None or not channel.serves(name, wanted):
                conn, channel = await self._channel(
                    req, traces, timeout, name, provider, wanted, conn, channel
                )
        except BaseException:
            if admitted is not None and limiter is not None:
                limiter.settle_nowait(admitted, TokenUsage())  # it reached no provider
            raise
        method = method_label(req.method)
        tracing = self._mesh._tracing  # None unless tracing is on (_otel.py)
        # The span starts (reading the request's trace headers) before anything
        # is counted, so nothing a caller sends can leave a count behind.
        trace = None
        if tracing is not None:
            trace = tracing.start(req, name, source, method, relayed=channel.governed)
        call = Call(self._calls, name, first, source, api_key_id, method, req.url.raw_path, origin)
        if trace is not None:
            call.trace = trace
            call.watched = True
        if admitted is not None and limiter is not None:
            call.limits = (limiter, admitted)  # settled when the call finishes
            call.watched = True  # after its handlers reported their usage
        elif refusal is not None:
            call.refusal = refusal
        channel.begin(call, req)
        return conn

    async def _channel(
        self,
        req: ClientRequest,
        traces: list[Any],
        timeout: ClientTimeout,
        name: str,
        provider: Provider,
        wanted: Provider | None,
        conn: Connection | None = None,
        channel: Channel | None = None,
    ) -> tuple[Connection, Channel]:
        """A connection for ``name`` when the pooled one (``conn``, on
        ``channel``) is missing or serves another: a new one is made by
        ``_create_connection``, told how through ``_opener``: a relay for a
        governed name (``wanted`` None), else a link to ``provider``."""
        while conn is None or channel is None or not channel.serves(name, wanted):
            if conn is not None:
                conn.close()  # a link to a provider that was replaced: never reuse it
            opener: Opener = (
                partial(self._mesh._relay, name)
                if wanted is None
                else partial(_open_link, provider, self._metrics)
            )
            token = _opener.set(opener)
            try:
                conn = await super().connect(req, traces, timeout)
            finally:
                _opener.reset(token)
            channel = channel_of(conn)
        return conn, channel

    def open_pipe(self, req: ClientRequest, protocol: asyncio.Protocol) -> Channel:
        opener = _opener.get()
        if opener is None:
            raise MeshError("MeshConnector.connect() must be used to open connections")
        return opener(protocol, req.is_ssl())


async def _estimate(limiter: Limiter, req: ClientRequest) -> Estimate:
    """What a call may use, for its reservation: from its JSON body when the
    request holds it whole (``json=``, ``data=bytes``), else from its size."""
    body = req.body  # a Payload, or b"" for none
    data = await body.as_bytes() if isinstance(body, BytesPayload) else None
    size = None if req.chunked else (body.size if body else 0)
    return limiter.estimate(req.method, req.url.raw_path, data, size)


def _open_link(
    provider: Provider, metrics: MeshMetrics | None, protocol: asyncio.Protocol, secure: bool
) -> Link:
    return provider.open_link(protocol, secure=secure, metrics=metrics)
