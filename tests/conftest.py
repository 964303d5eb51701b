"""Fixtures that clean up after themselves."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
from _pytest.nodeid import coerce_node_id
from aiohttp import web

from meshbridge import Mesh

from .helpers import MeshFactory
from .postgres import PostgresServer, running_postgres


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each ``xdist_group`` in one worker under ``--dist loadgroup``.

    pytest-xdist 3.8 marks a test's group by appending ``@group`` to the
    item's ``_nodeid``, which pytest 9.2's structured node ids no longer read:
    every group was silently spread over the workers (two Prometheus stacks,
    two browsers, serve processes side by side; pytest-dev/pytest-xdist#1386).
    This appends it where pytest 9.2 reads it. Drop it once xdist does so."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = {m.args[0] if m.args else m.kwargs.get("name", "default")
                 for m in item.iter_markers("xdist_group")}  # fmt: skip
        suffix = "@" + "_".join(sorted(map(str, names)))
        if names and not item.nodeid.endswith(suffix):
            item._id = coerce_node_id(item.nodeid + suffix)


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A state directory of the test run's own (XDG_STATE_HOME), for this
    process and the ones it starts: `serve` and `demo` keep their usage
    ledger there by default, never in the home directory of whoever runs the tests."""
    before = os.environ.get("XDG_STATE_HOME")
    state = tmp_path_factory.mktemp("state")
    state.chmod(0o700)
    os.environ["XDG_STATE_HOME"] = str(state)
    yield
    if before is None:
        del os.environ["XDG_STATE_HOME"]
    else:
        os.environ["XDG_STATE_HOME"] = before


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the session (tests/postgres.py); skipped when
    not installed, a failure under CI=true."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's PostgreSQL."""
    return postgres_server.new_database()


@pytest.fixture
async def make_mesh() -> AsyncIterator[MeshFactory]:
    """Start a Mesh with the given apps; every mesh made is closed on teardown."""
    meshes: list[Mesh] = []

    async def make(apps: Mapping[str, web.Application], **kwargs: Any) -> Mesh:
        require = kwargs.pop("require_api_key_id", ())
        mesh = Mesh(**kwargs)
        for name, app in apps.items():
            mesh.register(name, app, require_api_key_id=name in require)
        await mesh.start()
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        await mesh.aclose()
