"""The meshbridge pytest plugin (entry point ``pytest11``: ``meshbridge``).

Installing meshbridge is enough to get it. Fixtures:

* ``mesh``: a running :class:`meshbridge.Mesh` for the test. Register apps on
  it (their startup runs before any request reaches them); at teardown it
  fails the test if a request is still in flight or a task the test started
  is still running, then closes the mesh (every app's cleanup).
* ``mesh_client``: ``await mesh_client(app, source=None, api_key_id=None,
  **session_kwargs)`` registers ``app`` in ``mesh`` and returns an
  ``aiohttp.test_utils.TestClient`` whose requests go through the mesh
  (``client.make_url("/x")`` is ``http://<provider>/x``).
* ``fake_llm``: a scriptable fake LLM provider in ``mesh``, with ready
  ``openai.AsyncOpenAI`` and ``anthropic.AsyncAnthropic`` clients (see
  :class:`meshbridge.testing.FakeLLM`).

Options: ``--meshbridge-aiohttp`` (or ``meshbridge_aiohttp = true`` in the
ini file) serves pytest-aiohttp's own ``aiohttp_client`` and
``aiohttp_server`` through a mesh, with no edit to the tests; a test that
needs a real socket is marked ``@pytest.mark.meshbridge_socket``. With
``--meshbridge-governed`` (``meshbridge_governed = true``) too, every such
server is governed by a traffic policy that never acts, so its requests go
through the relay: a suite that passes both ways observes the same HTTP
with a policy as without.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from meshbridge import Mesh

    from ._fake import FakeLLM

try:  # pytest-aiohttp's users have it; without it, whatever runs async fixtures does
    import pytest_asyncio

    _async_fixture: Callable[..., Any] = pytest_asyncio.fixture
except ImportError:  # pragma: no cover
    _async_fixture = pytest.fixture

__all__ = ["fake_llm", "mesh", "mesh_client"]

_MARKER = (
    "meshbridge_socket: the test needs a real socket, so with --meshbridge-aiohttp its "
    "aiohttp_client and aiohttp_server stay on TCP"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meshbridge", "meshbridge: aiohttp test servers without sockets")
    group.addoption(
        "--meshbridge-aiohttp",
        action="store_true",
        default=False,
        dest="meshbridge_aiohttp",
        help="serve pytest-aiohttp's aiohttp_client and aiohttp_server fixtures through an "
        "in-process mesh instead of a port per test; mark a test that needs a real socket "
        "@pytest.mark.meshbridge_socket",
    )
    parser.addini(
        "meshbridge_aiohttp",
        type="bool",
        default=False,
        help="as --meshbridge-aiohttp: aiohttp_client and aiohttp_server through a mesh",
    )
    group.addoption(
        "--meshbridge-governed",
        action="store_true",
        default=False,
        dest="meshbridge_governed",
        help="with --meshbridge-aiohttp: govern every test server by a traffic policy that "
        "never acts (requests go through the relay), to check a policy changes nothing",
    )
    parser.addini(
        "meshbridge_governed",
        type="bool",
        default=False,
        help="as --meshbridge-governed",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)
    if config.getoption("meshbridge_aiohttp", False) or config.getini("meshbridge_aiohttp"):
        from . import _compat
        from ._sentinel import Sentinel

        config.stash[_compat.SENTINEL] = Sentinel()  # its thread starts with a first server
        if config.getoption("meshbridge_governed", False) or config.getini("meshbridge_governed"):
            config.stash[_compat.POLICY] = _compat.NEVER_ACTS
        stats = config.stash[_compat.STATS] = _compat.Stats()
        config.pluginmanager.register(_compat, "meshbridge-aiohttp")
        config.pluginmanager.register(_compat.Reports(stats), "meshbridge-aiohttp-reports")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _compat_loaded(config):
        return
    from . import _compat

    sentinel = config.stash.get(_compat.SENTINEL, None)
    if sentinel is not None:
        sentinel.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _compat_loaded(config):
        return
    from . import _compat

    stats = config.stash[_compat.STATS]
    needed = (
        f", {stats.socket} needed a socket (failed: mark them meshbridge_socket)"
        if stats.socket
        else ""
    )
    terminalreporter.write_line(
        f"meshbridge: {stats.mesh} tests served their aiohttp test servers through a mesh, "
        f"{stats.tcp} over TCP ({stats.marked} marked meshbridge_socket){needed}"
    )


def _compat_loaded(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("meshbridge-aiohttp")


# -- mesh ------------------------------------------------------------------------


@_async_fixture
async def mesh() -> AsyncIterator[Mesh]:
    """A running Mesh; closed at teardown, failing the test if it left a
    request in flight or a task running."""
    from meshbridge import Mesh

    from ._leaks import check_leaks

    before = asyncio.all_tasks()
    running = Mesh(grace_period=1.0)
    await running.start()
    try:
        yield running
    finally:
        problems = await check_leaks(running, before)
    if problems:
        pytest.fail("meshbridge: " + "; ".join(problems), pytrace=False)


# -- mesh_client -------------------------------------------------------------------


@_async_fixture
async def mesh_client(mesh: Mesh) -> AsyncIterator[Callable[..., Any]]:
    """``await mesh_client(app, source=None, api_key_id=None, **session_kwargs)``:
    a ``TestClient`` whose requests reach ``app`` through ``mesh``; every
    client made is closed at teardown."""
    from aiohttp import BaseConnector
    from aiohttp.test_utils import TestClient
    from yarl import URL

    from ._server import MeshTestServer

    connector_args = frozenset(inspect.signature(BaseConnector).parameters)
    clients: list[TestClient[Any, Any]] = []
    numbers = itertools.count(1)

    async def make(
        app: web.Application,
        *,
        source: str | None = None,
        api_key_id: str | None = None,
        **session_kwargs: Any,
    ) -> TestClient[web.Request, web.Application]:
        name = next(n for n in _names(numbers) if n not in mesh)
        for_connector = {k: v for k, v in session_kwargs.items() if k in connector_args}
        for_session = {k: v for k, v in session_kwargs.items() if k not in connector_args}
        server = MeshTestServer(
            app, mesh=mesh, name=name, url=URL.build(scheme="http", host=name), owns_mesh=False
        )
        connector = mesh.connector(source=source, api_key_id=api_key_id, **for_connector)
        client: TestClient[web.Request, web.Application] = TestClient(
            server, connector=connector, **for_session
        )
        clients.append(client)
        await client.start_server()
        return client

    yield make
    while clients:
        await clients.pop().close()


def _names(numbers: Iterator[int]) -> Iterator[str]:
    return (f"app-{n}" if n > 1 else "app" for n in numbers)


# -- fake_llm ----------------------------------------------------------------------


@_async_fixture
async def fake_llm(mesh: Mesh) -> AsyncIterator[FakeLLM]:
    """A scriptable fake LLM provider ``llm`` in ``mesh``, with SDK clients."""
    from ._fake import FakeLLM

    fake = await FakeLLM.start(mesh)
    try:
        yield fake
    finally:
        await fake.aclose()
