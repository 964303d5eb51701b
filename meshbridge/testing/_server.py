"""aiohttp's test server and client, with the socket replaced by a mesh.

``MeshTestServer`` is an ``aiohttp.test_utils.TestServer`` (so
``aiohttp.test_utils.TestClient`` takes it) whose app is a provider of a
mesh: starting it runs the app's startup, ``make_url`` names the provider's
address, and closing it runs the app's cleanup. A ``TestClient`` built on it
with a mesh connector sends its requests through the mesh.

It overrides public methods only (``start_server``, ``close``,
``make_url``, ``started``, ``closed``); ``server.runner`` stays None, so
``server.handler`` (aiohttp's ``web.Server``) is not available.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import ClientRequest, ClientTimeout, web
from aiohttp.connector import Connection
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import StrOrURL
from yarl import URL

from meshbridge import Mesh, MeshConnector, Policy

__all__ = ["MeshTestServer", "ServerConnector"]


class MeshTestServer(TestServer):
    """A ``TestServer`` whose app runs in ``mesh`` as provider ``name``.

    Args:
        app: the app under test.
        mesh: where it runs.
        name: its provider name in ``mesh``.
        url: what ``make_url`` joins paths to (``host`` and ``port`` come
            from it).
        owns_mesh: True when the mesh serves this app alone: starting the
            server starts the mesh and closing it closes the mesh (so the
            app's cleanup has run when ``close()`` returns). Otherwise the
            app is registered in a running mesh and unregistered on close.
        policy: the traffic policy of its provider (None: the direct link).
        on_close: called once when the server closes.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        mesh: Mesh,
        name: str,
        url: URL,
        owns_mesh: bool,
        policy: Policy | None = None,
        skip_url_asserts: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            app,
            scheme=url.scheme,
            host=url.host or name,
            port=url.port,
            skip_url_asserts=skip_url_asserts,
        )
        self.mesh = mesh
        self.name = name
        self.url = url
        self._owns_mesh = owns_mesh
        self._policy = policy
        self._on_close = on_close
        self._is_started = False
        self._is_closed = False

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **_: Any) -> None:
        """Run the app's startup in the mesh (once; later calls do nothing)."""
        if self._is_started:
            return
        self._is_started = True
        self.mesh.register(self.name, self.app, policy=self._policy)
        if self._owns_mesh:
            await self.mesh.start()
        else:
            await self.mesh.wait_started(self.name)

    @property
    def started(self) -> bool:
        return self._is_started

    @property
    def closed(self) -> bool:
        return self._is_closed

    def make_url(self, path: StrOrURL) -> URL:
        url = URL(path)
        if not self.skip_url_asserts:
            assert not url.absolute  # as aiohttp's TestServer has it
            return self.url.join(url)
        return URL(str(self.url) + str(path))

    async def close(self) -> None:
        """Shut the app down (idempotent)."""
        if self._is_closed:
            return
        self._is_closed = True
        try:
            if self._owns_mesh:
                await self.mesh.aclose()
            elif self.name in self.mesh:
                self.mesh.unregister(self.name)
        finally:
            if self._on_close is not None:
                self._on_close()


Resolve = Callable[[URL], MeshTestServer | None]


class ServerConnector(MeshConnector):
    """The connector of a test client of ``server``: a mesh connector pinned to it.

    Requests to ``server``'s address go through its mesh on this connector's
    own pool, as a ``TCPConnector``'s would. Those to another test server's
    address (``resolve`` finds it) go through that server's mesh, and any
    other address over TCP, as without the plugin.
    """

    def __init__(self, server: MeshTestServer, resolve: Resolve, **kwargs: Any) -> None:
        super().__init__(server.mesh, provider=server.name, **kwargs)
        self._server = server
        self._resolve = resolve
        self._kwargs = kwargs
        self._others: dict[MeshTestServer, aiohttp.BaseConnector] = {}
        self._tcp: aiohttp.TCPConnector | None = None
        self.tcp_requests = 0

    async def connect(
        self, req: ClientRequest, traces: list[Any], timeout: ClientTimeout
    ) -> Connection:
        server = self._resolve(req.url)
        if server is self._server:
            return await super().connect(req, traces, timeout)
        if server is None:
            self.tcp_requests += 1
            if self._tcp is None:
                self._tcp = aiohttp.TCPConnector(**self._kwargs)
            return await self._tcp.connect(req, traces, timeout)
        other = self._others.get(server)
        if other is None:
            other = self._others[server] = server.mesh.connector(
                provider=server.name, **self._kwargs
            )
        return await other.connect(req, traces, timeout)

    def close(self, *, abort_ssl: bool = False) -> Awaitable[None]:
        connectors: list[aiohttp.BaseConnector] = [*self._others.values()]
        if self._tcp is not None:
            connectors.append(self._tcp)
        self._others.clear()
        self._tcp = None
        waiters = [c.close(abort_ssl=abort_ssl) for c in connectors]
        return _all([*waiters, super().close(abort_ssl=abort_ssl)])


async def _all(waiters: Iterable[Awaitable[None]]) -> None:
    for waiter in waiters:
        await waiter
