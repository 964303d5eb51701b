"""``--meshbridge-aiohttp``: pytest-aiohttp's fixtures, served through a mesh.

Registered as a plugin of its own when the option is on, after the plugins
that define ``aiohttp_client`` and ``aiohttp_server`` (pytest-aiohttp's, or
aiohttp's legacy ``aiohttp.pytest_plugin``), so its two fixtures override
theirs and can ask for them by the same name: a test marked
``meshbridge_socket`` gets the originals untouched, and the originals keep
running on whichever event loop their plugin runs tests on.

Every app gets a mesh of its own (closing its server runs its cleanup, as
with a socket) and a sentinel address of its own (see ``_sentinel``), named
by the ``host`` it was given (``127.0.0.1`` or ``localhost``). The test
clients' connector routes each request by that address, so a client of one
server reaching another server's URL (a redirect, say) lands on that app.

What happened to each test is a user property of its report (``meshbridge``:
``mesh``, ``tcp``, ``marked`` or ``socket``), counted where the reports
arrive: the summary is right under pytest-xdist too. A mesh-served test that
fails gets a ``meshbridge`` section in its report, saying what a mesh lacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient
from yarl import URL

from meshbridge import Mesh, Policy

from ._sentinel import SOCKET_HINT, Sentinel
from ._server import MeshTestServer, ServerConnector

__all__ = ["NEVER_ACTS", "POLICY", "SENTINEL", "STATS", "MeshSocketRequired", "Reports", "Stats"]

MARKER: Final = "meshbridge_socket"
_LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost"})
# TestServer keyword arguments that change nothing through a mesh, or that
# the mesh already does (handler_cancellation) or maps (shutdown_timeout).
_HARMLESS: Final = frozenset({"handler_cancellation", "shutdown_timeout", "loop", "host"})
PROPERTY: Final = "meshbridge"  # the user property of a test's report: what happened
_NO_SOCKET: Final = (
    "this test's aiohttp test servers were served through an in-process mesh "
    "(--meshbridge-aiohttp), which has no socket: request.transport.get_extra_info('socket') "
    "is None, there is no TLS, and nothing but the test client reaches the app. If the test "
    "needs a socket, mark it @pytest.mark.meshbridge_socket"
)


class MeshSocketRequired(Exception):
    """A test asked for something a mesh cannot give (only a real server can)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"meshbridge: {what}; {SOCKET_HINT}")


class Stats:
    """How the tests of this run reached their test servers (for the summary)."""

    def __init__(self) -> None:
        self.mesh = 0  # tests whose servers were all served through a mesh
        self.tcp = 0  # tests that made a TCP server or client
        self.marked = 0  # of those, marked meshbridge_socket
        self.socket = 0  # tests that asked for a socket, or aimed one at a server (failed)

    def count(self, how: str) -> None:
        """One test's report property (see :meth:`_Servers.finish`)."""
        self.mesh += how == "mesh"
        self.tcp += how in ("tcp", "marked")
        self.marked += how == "marked"
        self.socket += how == "socket"


SENTINEL: pytest.StashKey[Sentinel] = pytest.StashKey()
# --meshbridge-governed: the policy every test server gets (it never acts).
POLICY: pytest.StashKey[Policy] = pytest.StashKey()
NEVER_ACTS: Final = Policy(timeout=24 * 3600.0)
STATS: pytest.StashKey[Stats] = pytest.StashKey()


class _Servers:
    """One test's servers, the addresses they borrowed, what reached them by socket."""

    def __init__(self, sentinel: Sentinel, policy: Policy | None = None) -> None:
        self._sentinel = sentinel
        self._policy = policy  # --meshbridge-governed
        self.by_port: dict[int, MeshTestServer] = {}
        self.made: list[MeshTestServer] = []
        self.clients: list[TestClient[Any, Any]] = []
        self.connectors: list[ServerConnector] = []
        self.hits: list[str] = []
        self.tcp = False
        self.refused = False  # asked for what only a socket gives
        self.loop: asyncio.AbstractEventLoop | None = None

    def resolve(self, url: URL) -> MeshTestServer | None:
        if url.raw_host not in _LOCAL_HOSTS or url.port is None:
            return None
        return self.by_port.get(url.port)

    async def serve(self, app: web.Application, **kwargs: Any) -> MeshTestServer:
        self.loop = asyncio.get_running_loop()
        try:
            return await self._serve(app, **kwargs)
        except MeshSocketRequired:
            self.refused = True
            raise

    async def _serve(self, app: web.Application, **kwargs: Any) -> MeshTestServer:
        host = kwargs.get("host") or "127.0.0.1"
        if host not in _LOCAL_HOSTS:
            raise MeshSocketRequired(
                f"aiohttp_server(app, host={host!r}) asks for an address a mesh-served server "
                "does not have (its address is a placeholder on 127.0.0.1, named 127.0.0.1 "
                "or localhost)"
            )
        if kwargs.get("ssl") is not None:
            raise MeshSocketRequired(
                "aiohttp_server(app, ssl=...) asks for TLS, which needs a socket"
            )
        if kwargs.get("port"):
            raise MeshSocketRequired(
                f"aiohttp_server(app, port={kwargs['port']}) asks for a port, which needs a socket"
            )
        unknown = sorted(set(kwargs) - _HARMLESS - {"ssl", "port", "scheme", "skip_url_asserts"})
        if unknown:
            raise MeshSocketRequired(
                f"aiohttp_server(app, {', '.join(f'{k}=...' for k in unknown)}) sets options "
                "of aiohttp's server that a mesh does not pass on"
            )
        if not isinstance(app, web.Application):
            raise TypeError(f"aiohttp_server expects an aiohttp.web.Application, got {app!r}")
        port = self._sentinel.borrow(self.hits.append)
        scheme = kwargs.get("scheme") or "http"
        mesh = Mesh(metrics=False, grace_period=kwargs.get("shutdown_timeout", 60.0))
        server = MeshTestServer(
            app,
            mesh=mesh,
            name="app",
            url=URL.build(scheme=scheme, host=host, port=port),
            owns_mesh=True,
            policy=self._policy,
            skip_url_asserts=bool(kwargs.get("skip_url_asserts", False)),
            on_close=lambda: self._release(port),
        )
        self.by_port[port] = server
        self.made.append(server)
        try:
            await server.start_server()
        except BaseException:
            await server.close()
            raise
        return server

    def _release(self, port: int) -> None:
        self.by_port.pop(port, None)
        self._sentinel.give_back(port)

    def connector(self, server: MeshTestServer) -> ServerConnector:
        connector = ServerConnector(server, self.resolve)
        self.connectors.append(connector)
        return connector

    async def aclose(self) -> None:
        while self.clients:
            await self.clients.pop().close()
        while self.made:
            await self.made.pop().close()

    @property
    def meshed(self) -> bool:
        """Whether a server of this test was served through a mesh."""
        return bool(self.made) and not self.refused  # a refusal said why already

    def finish(self, item: pytest.Item, *, marked: bool) -> None:
        """Close what is left (on the loop the test ran on), say what
        happened (the report's property), and fail the test if a socket
        reached one of its servers."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.run_until_complete(self.aclose())
        if any(c.tcp_requests for c in self.connectors):
            self.tcp = True
        how = None
        if marked:
            how = "marked"
        elif self.refused or self.hits:
            how = "socket"
        elif self.tcp:
            how = "tcp"
        elif loop is not None:
            how = "mesh"
        if how is not None:
            item.user_properties.append((PROPERTY, how))
        if self.hits:
            reached = "; ".join(sorted(set(self.hits)))
            pytest.fail(
                f"meshbridge: a socket reached this test's server ({reached}), but {SOCKET_HINT}",
                pytrace=False,
            )


_SERVERS: pytest.StashKey[_Servers] = pytest.StashKey()


@pytest.fixture
def _meshbridge_servers(request: pytest.FixtureRequest) -> _Servers:
    servers = _Servers(request.config.stash[SENTINEL], request.config.stash.get(POLICY, None))
    request.node.stash[_SERVERS] = servers
    return servers


class Reports:
    """Reads the reports of the run (registered beside this module's fixtures)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Count each test once, from its teardown report (also one that a
        pytest-xdist worker sent)."""
        if report.when == "teardown":
            for name, value in report.user_properties:
                if name == PROPERTY:
                    self.stats.count(str(value))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A mesh-served test that failed says what a mesh does not have."""
        report = yield
        servers = item.stash.get(_SERVERS, None)
        failed = report.when == "call" and report.failed
        if failed and servers is not None and servers.meshed and not _marked_item(item):
            report.sections.append(("meshbridge", _NO_SOCKET))
        return report


def _marked_item(item: pytest.Item) -> bool:
    return item.get_closest_marker(MARKER) is not None


def _marked(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker(MARKER) is not None


ServerFactory = Callable[..., Awaitable[BaseTestServer]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def aiohttp_server(
    aiohttp_server: ServerFactory,
    _meshbridge_servers: _Servers,
    request: pytest.FixtureRequest,
) -> Iterator[ServerFactory]:
    """``aiohttp_server(app, **kwargs)``: the app served through a mesh of its own."""
    servers = _meshbridge_servers
    marked = _marked(request)

    async def serve(app: web.Application, **kwargs: Any) -> BaseTestServer:
        return await servers.serve(app, **kwargs)

    try:
        yield aiohttp_server if marked else serve
    finally:
        servers.finish(request.node, marked=marked)


@pytest.fixture
def aiohttp_client(
    aiohttp_client: ClientFactory,
    aiohttp_server: ServerFactory,
    _meshbridge_servers: _Servers,
    request: pytest.FixtureRequest,
) -> Iterator[ClientFactory]:
    """``aiohttp_client(app or server, **kwargs)``: a TestClient whose requests
    reach the mesh-served test servers (other addresses over TCP)."""
    servers = _meshbridge_servers
    if _marked(request):
        yield aiohttp_client
        return

    async def client(
        param: Any, *args: Any, server_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> TestClient[Any, Any]:
        if isinstance(param, web.Application):
            param = await servers.serve(param, **(server_kwargs or {}))
        if not isinstance(param, MeshTestServer):
            servers.tcp = True  # a server the test made itself, or a raw one
            return await aiohttp_client(param, *args, server_kwargs=server_kwargs, **kwargs)
        if "connector" in kwargs:
            servers.refused = True
            raise MeshSocketRequired(
                "aiohttp_client(..., connector=...) brings its own connector, which would "
                "reach the server over TCP"
            )
        made = await aiohttp_client(param, connector=servers.connector(param), **kwargs)
        servers.clients.append(made)
        return made

    yield client
