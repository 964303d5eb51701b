"""Fixtures that clean up after themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web

from meshbridge import Mesh

from .helpers import MeshFactory


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
