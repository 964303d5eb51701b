"""The ``fake_llm`` fixture's value: a scripted fake LLM and SDK clients for it.

The official SDKs reach the mesh through ``httpx_aiohttp`` (their aiohttp
transport): each client gets its own ``aiohttp.ClientSession`` on a mesh
connector pinned to the fake, so no request leaves the process and no key is
needed. ``openai``, ``anthropic`` and ``httpx-aiohttp`` are imported only
when a client is asked for, so the plugin works without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import ClientSession, web

from meshbridge import Mesh
from meshbridge.providers import ProviderContext
from meshbridge.providers.fake import FakeOptions, Received, Script, create_app, script

if TYPE_CHECKING:
    import anthropic
    import openai

__all__ = ["INSTANT", "FakeLLM"]

INSTANT: Final = FakeOptions(tokens_per_second=0, time_to_first_token=0)
"""The fixture's fake answers at once (scripted delays still apply)."""


class FakeLLM:
    """A fake LLM provider running in a mesh, scriptable, with SDK clients.

    ``fake_llm.script`` queues what it answers next (see
    :class:`meshbridge.providers.fake.Script`); ``fake_llm.received`` is what
    it received. ``fake_llm.openai`` and ``fake_llm.anthropic`` are ready
    clients (no retries, no Source); :meth:`openai_client` and
    :meth:`anthropic_client` make others. Everything is closed at teardown.

    Attributes:
        mesh: the mesh it runs in.
        name: its provider name (``llm``).
        app: its ``aiohttp.web.Application``.
        script: its :class:`~meshbridge.providers.fake.Script`.
    """

    def __init__(self, mesh: Mesh, name: str, app: web.Application) -> None:
        self.mesh = mesh
        self.name = name
        self.app = app
        self.script: Script = script(app)
        self._clients: list[Any] = []
        self._openai: openai.AsyncOpenAI | None = None
        self._anthropic: anthropic.AsyncAnthropic | None = None

    @classmethod
    async def start(
        cls, mesh: Mesh, *, name: str = "llm", options: FakeOptions = INSTANT
    ) -> FakeLLM:
        """Register a fake provider ``name`` in the running ``mesh``; return once it runs."""
        app = create_app(options, ProviderContext(name))
        fake = cls(mesh, name, app)
        mesh.register(name, app)
        await mesh.wait_started(name)
        return fake

    def __repr__(self) -> str:
        return f"<FakeLLM {self.name!r} {self.script!r}>"

    @property
    def received(self) -> list[Received]:
        """Every request the fake received, in order."""
        return self.script.received

    def _session(self, source: str | None, api_key_id: str | None) -> ClientSession:
        return self.mesh.session(provider=self.name, source=source, api_key_id=api_key_id)

    def _transport(self, source: str | None, api_key_id: str | None) -> Any:
        from httpx_aiohttp.httpx2 import AiohttpTransport

        return AiohttpTransport(client=lambda: self._session(source, api_key_id))

    def openai_client(
        self, *, source: str | None = None, api_key_id: str | None = None, **kwargs: Any
    ) -> openai.AsyncOpenAI:
        """A new ``openai.AsyncOpenAI`` reaching the fake through the mesh with
        ``source`` and ``api_key_id``; ``kwargs`` go to the client
        (``max_retries`` is 0 unless given)."""
        import openai

        http = openai.DefaultAioHttpClient(transport=self._transport(source, api_key_id))
        kwargs.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(
            base_url=f"http://{self.name}/v1", api_key="sk-fake", http_client=http, **kwargs
        )
        self._clients.append(client)
        return client

    def anthropic_client(
        self, *, source: str | None = None, api_key_id: str | None = None, **kwargs: Any
    ) -> anthropic.AsyncAnthropic:
        """A new ``anthropic.AsyncAnthropic`` (see :meth:`openai_client`)."""
        import anthropic

        http = anthropic.DefaultAioHttpClient(transport=self._transport(source, api_key_id))
        kwargs.setdefault("max_retries", 0)
        client = anthropic.AsyncAnthropic(
            base_url=f"http://{self.name}", api_key="sk-ant-fake", http_client=http, **kwargs
        )
        self._clients.append(client)
        return client

    @property
    def openai(self) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` for the fake (made on first use)."""
        if self._openai is None:
            self._openai = self.openai_client()
        return self._openai

    @property
    def anthropic(self) -> anthropic.AsyncAnthropic:
        """An ``anthropic.AsyncAnthropic`` for the fake (made on first use)."""
        if self._anthropic is None:
            self._anthropic = self.anthropic_client()
        return self._anthropic

    async def aclose(self) -> None:
        """Close every client made, and take the fake out of the mesh."""
        while self._clients:
            await self._clients.pop().close()
        if self.name in self.mesh:
            self.mesh.unregister(self.name)
