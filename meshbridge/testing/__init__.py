"""meshbridge for tests: a pytest plugin and the types of its fixtures.

The plugin (:mod:`meshbridge.testing.plugin`) is registered through the
``pytest11`` entry point ``meshbridge``: installing meshbridge is enough.

    fixture         what the test gets
    mesh            a running Mesh; fails the test if a request or task is left behind
    mesh_client     await mesh_client(app, source=None, api_key_id=None, **session_kwargs):
                    an aiohttp TestClient whose requests go through the mesh
    fake_llm        a scriptable fake LLM in the mesh, with openai and anthropic SDK clients

``--meshbridge-aiohttp`` (or ``meshbridge_aiohttp = true``) serves
pytest-aiohttp's ``aiohttp_client`` and ``aiohttp_server`` through a mesh;
``@pytest.mark.meshbridge_socket`` keeps a test on TCP.

This is the layer above the core and the provider kinds: it imports their
public names only, and nothing imports it (the core does not know about it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from ._fake import FakeLLM

__all__ = ["FakeLLM", "MeshClient"]


def __getattr__(name: str) -> Any:
    # pytest loads the plugin in every run where meshbridge is installed; the
    # mesh and aiohttp are imported only when a test uses them.
    if name == "FakeLLM":
        from ._fake import FakeLLM

        return FakeLLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MeshClient(Protocol):
    """The ``mesh_client`` fixture: annotate it with this."""

    async def __call__(
        self,
        app: web.Application,
        *,
        source: str | None = None,
        api_key_id: str | None = None,
        **session_kwargs: Any,
    ) -> TestClient[web.Request, web.Application]: ...
