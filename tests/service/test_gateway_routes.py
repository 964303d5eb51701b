"""Routes through `meshbridge serve`: an outside caller reaches `[routes.NAME]`
as in-process code does, and a client's scope names the routes it may use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshbridge import ConfigError
from meshbridge.service import Service, load_config

from .conftest import ServiceFactory

OPEN, SCOPED, ROUTED = "token-of-every-name", "token-of-blue-only", "token-of-the-route"
CONFIG = f"""
[server]
listen = "127.0.0.1:0"
[server.clients.all]
token = "{OPEN}"
source = "api"
[server.clients.blue-only]
token = "{SCOPED}"
source = "api"
providers = ["blue"]
[server.clients.route-only]
token = "{ROUTED}"
source = "agents"
providers = ["chat"]
[providers.blue]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
[providers.green]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
[routes.chat]
split = {{ blue = 50, green = 50 }}
"""
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


async def post(service: Service, name: str, token: str) -> tuple[int, dict[str, Any]]:
    url = f"{service.url}/{name}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=CHAT, headers=headers) as r,
    ):
        return r.status, await r.json()


def counted(service: Service, name: str, **labels: str) -> float:
    """The samples ``name`` of the mesh with ``labels``, summed over the other labels."""
    return sum(
        s.value
        for family in service.mesh.registry.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_an_outside_caller_reaches_a_route_and_its_split_chooses_the_provider(
    serve: ServiceFactory,
) -> None:
    service = await serve(CONFIG)
    for _ in range(20):
        status, body = await post(service, "chat", OPEN)
        assert status == 200
        assert body["object"] == "chat.completion"
    total = "meshbridge_route_requests_total"
    went = {p: counted(service, total, route="chat", provider=p) for p in ("blue", "green")}
    assert sum(went.values()) == 20, went
    served = {p: counted(service, "meshbridge_requests_total", provider=p) for p in went}
    assert served == went  # each call went once, where the split sent it
    assert counted(service, "meshbridge_calls_total", target="chat", code="200") == 20


async def test_a_client_uses_a_route_only_when_its_scope_names_it(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    status, body = await post(service, "chat", SCOPED)
    assert status == 403
    assert body["error"]["message"] == "client 'blue-only' may not use provider 'chat'"
    assert (await post(service, "chat", ROUTED))[0] == 200
    status, _ = await post(service, "blue", ROUTED)  # the route's providers are not granted
    assert status == 403


async def test_an_unknown_name_is_a_404_naming_the_providers_and_the_routes(
    serve: ServiceFactory,
) -> None:
    service = await serve(CONFIG)
    status, body = await post(service, "nowhere", OPEN)
    assert (status, body["error"]["providers"]) == (404, ["blue", "chat", "green"])
    status, body = await post(service, "nowhere", ROUTED)  # its scope comes first
    assert (status, body["error"]["type"]) == (403, "permission_error")


def test_a_scope_naming_neither_a_provider_nor_a_route_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "scoped.toml"
    path.write_text(CONFIG.replace('providers = ["chat"]', 'providers = ["chat", "ghost"]'))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (
        "server.clients.route-only.providers: no provider or route named 'ghost'"
        " (they are: blue, green, chat)"
    ) in str(caught.value)
