"""Signed peers: ``[server.peers]`` on a real server on 127.0.0.1, and the
``remote`` kind of an in-process mesh signing for its callers."""

from __future__ import annotations

import secrets
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from meshbridge import ConfigError, Mesh, api_key_id_of, source_of
from meshbridge.providers import (
    PEER_HEADER,
    NonceCache,
    OptionReader,
    ProviderContext,
    sign_identity,
)
from meshbridge.providers import remote as remote_kind
from meshbridge.service import Service, load_config, main, parse_config
from meshbridge.service._nonces import LocalNonces

ServiceFactory = Callable[[str], Coroutine[Any, Any, Service]]

SECRET = "the-secret-peer-a-signs-with-0001"
NEXT_SECRET = "the-next-secret-of-peer-a-000002"
TOKEN = "token-of-the-ops-client"
ENV = {"PEER_A": SECRET, "PEER_A_NEXT": NEXT_SECRET}
CONFIG = f"""
[server]
listen = "127.0.0.1:0"
[server.clients.ops]
token = "{TOKEN}"
source = "api"
[server.peers.a]
secret_env = "PEER_A"
[server.peers.a-next]             # a rotation under way: both keys are accepted
secret_env = "PEER_A_NEXT"
key_id = "2"
[server.peers.billing-only]
secret_env = "PEER_A_NEXT"
key_id = "scoped"
providers = ["local"]
[providers.local]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
"""


async def whoami(request: web.Request) -> web.Response:
    """What a provider learns of its caller."""
    return web.json_response(
        {
            "source": source_of(request),
            "key": api_key_id_of(request),
            "headers": [k.lower() for k in request.headers],
            "authorization": request.headers.get("Authorization"),
        }
    )


@pytest.fixture
async def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ServiceFactory]:
    """A Service for a config text, with an ``echo`` provider that says what
    it learns of its callers; stopped on teardown."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    services: list[Service] = []

    async def start(text: str) -> Service:
        path = tmp_path / f"config-{len(services)}.toml"
        path.write_text(text)
        service = Service(load_config(path), port=0)
        await service.start()
        services.append(service)
        echo = web.Application()
        echo.router.add_route("*", "/{tail:.*}", whoami)
        service.mesh.register("echo", echo)
        return service

    yield start
    for service in services:
        await service.aclose()


@pytest.fixture
async def mesh_to(serve: ServiceFactory) -> AsyncIterator[Callable[..., Coroutine[Any, Any, Mesh]]]:
    """An in-process mesh whose ``echo`` is the server's, through the remote kind."""
    meshes: list[Mesh] = []

    async def make(service: Service, **options: object) -> Mesh:
        raw = {"url": service.url, "peer_secret_env": "PEER_A", **options}
        reader = OptionReader(raw, "providers.echo", environ=ENV)
        parsed = remote_kind.parse_options(reader)
        reader.finish()
        mesh = Mesh()
        mesh.register("echo", remote_kind.create_app(parsed, ProviderContext("echo")))
        await mesh.start()
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        await mesh.aclose()


def header(
    method: str,
    target: str,
    *,
    secret: str = SECRET,
    key_id: str = "1",
    now: float | None = None,
) -> dict[str, str]:
    value = sign_identity(
        secret.encode(), key_id, method, target, "agents", None,
        now=time.time() if now is None else now,
        nonce=secrets.token_urlsafe(16),
    )  # fmt: skip
    return {PEER_HEADER: value}


def failures(service: Service, peer: str, reason: str) -> float:
    labels = {"peer": peer, "reason": reason}
    value = service.mesh.registry.get_sample_value("meshbridge_peer_auth_failures_total", labels)
    return value if value is not None else -1.0  # -1: the series does not exist


async def call(
    service: Service, path: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, URL(service.url + path, encoded=True), headers=headers) as r,
    ):
        return r.status, await r.json()


# -- accepted -------------------------------------------------------------------------


async def test_a_signed_request_carries_its_callers_identity_and_needs_no_token(
    serve: ServiceFactory, mesh_to: Callable[..., Coroutine[Any, Any, Mesh]]
) -> None:
    service = await serve(CONFIG)
    mesh = await mesh_to(service)
    sent = {"Authorization": "Bearer sk-the-callers-own", PEER_HEADER: "forged-by-the-caller"}
    async with (
        mesh.session(source="agents", api_key_id="team-7") as s,
        s.get("http://echo/echo/v1/whoami?x=1", headers=sent) as r,
    ):
        assert r.status == 200
        seen = await r.json()
    assert (seen["source"], seen["key"]) == ("agents", "team-7")
    assert PEER_HEADER.lower() not in seen["headers"]
    assert seen["authorization"] == "Bearer sk-the-callers-own"  # as it would be in-process
    samples = service.mesh.registry
    labels = {"provider": "echo", "source": "agents", "method": "GET", "code": "200"}
    assert samples.get_sample_value("meshbridge_requests_total", {**labels, "outcome": "completed"})


async def test_a_caller_without_source_stays_without_one(
    serve: ServiceFactory, mesh_to: Callable[..., Coroutine[Any, Any, Mesh]]
) -> None:
    service = await serve(CONFIG)
    mesh = await mesh_to(service)
    async with mesh.session() as s, s.get("http://echo/echo/") as r:
        seen = await r.json()
    assert (seen["source"], seen["key"]) == (None, None)


async def test_bearer_clients_are_gated_as_before(serve: ServiceFactory) -> None:
    service = await serve(CONFIG)
    status, seen = await call(service, "/echo/x", {"Authorization": f"Bearer {TOKEN}"})
    assert (status, seen["source"], seen["authorization"]) == (200, "api", None)
    status, _ = await call(service, "/echo/x", {})
    assert status == 401


async def test_both_keys_of_a_rotation_are_accepted_until_one_is_removed(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    service = await serve(CONFIG)
    assert (await call(service, "/echo/x", header("GET", "/echo/x")))[0] == 200
    next_key = header("GET", "/echo/x", secret=NEXT_SECRET, key_id="2")
    assert (await call(service, "/echo/x", next_key))[0] == 200
    rotated = CONFIG.replace('[server.peers.a]\nsecret_env = "PEER_A"\n', "")
    service.reloader.config.path.write_text(rotated)
    assert await service.reloader.reload()
    status, answer = await call(service, "/echo/x", header("GET", "/echo/x"))
    assert status == 401
    assert "unknown-key" in answer["error"]["message"]
    assert failures(service, "unknown", "unknown-key") == 1


# -- refused --------------------------------------------------------------------------


async def test_forged_expired_replayed_and_misdirected_signatures_are_401s(
    serve: ServiceFactory,
) -> None:
    service = await serve(CONFIG)
    assert failures(service, "a", "bad-signature") == 0  # every peer's series, from the start
    replayed = header("GET", "/echo/x")
    cases = {
        "bad-signature": [
            header("GET", "/echo/x", secret="a-forger-guessing-the-secret-0000"),
            header("POST", "/echo/x"),  # for another method
            header("GET", "/echo/y"),  # for another path
            header("GET", "/echo/x?admin=1"),  # for another query
        ],
        "expired": [
            header("GET", "/echo/x", now=time.time() - 31),
            header("GET", "/echo/x", now=time.time() + 60),
        ],
        "replayed": [replayed],
        "malformed": [{PEER_HEADER: "v1;key=1"}],
    }
    assert (await call(service, "/echo/x", replayed))[0] == 200
    for reason, headers in cases.items():
        for sent in headers:
            sent = {**sent, "Authorization": f"Bearer {TOKEN}"}  # a token does not save it
            status, answer = await call(service, "/echo/x", sent)
            assert (status, answer["error"]["type"]) == (401, "authentication_error"), reason
            assert f"({reason})" in answer["error"]["message"]
    assert failures(service, "a", "bad-signature") == 4
    assert failures(service, "a", "expired") == 2
    assert failures(service, "a", "replayed") == 1
    assert failures(service, "unknown", "malformed") == 1
    labels = {"provider": "echo", "source": "agents", "method": "GET", "code": "200"}
    served = service.mesh.registry.get_sample_value(
        "meshbridge_requests_total", {**labels, "outcome": "completed"}
    )
    assert served == 1  # only the first use of the replayed header


async def test_the_gates_path_and_scope_rules_hold_for_signed_requests(
    serve: ServiceFactory,
) -> None:
    service = await serve(CONFIG)
    for target in ("/echo/%2e%2e/x", "/echo/a%2Fb"):
        status, answer = await call(service, target, header("GET", target))
        assert status == 400, target
    scoped = header("GET", "/echo/x", secret=NEXT_SECRET, key_id="scoped")
    status, answer = await call(service, "/echo/x", scoped)
    assert status == 403
    assert answer["error"]["message"] == "client 'peer:billing-only' may not use provider 'echo'"


async def test_a_full_nonce_cache_answers_503_and_forgets_nothing_live(
    serve: ServiceFactory,
) -> None:
    service = await serve(CONFIG)
    service.gateway.peers.nonces = LocalNonces(NonceCache(capacity=1))
    assert (await call(service, "/echo/x", header("GET", "/echo/x")))[0] == 200
    status, _ = await call(service, "/echo/x", header("GET", "/echo/x"))
    assert status == 503
    assert failures(service, "a", "overloaded") == 1


async def test_a_bearer_only_server_exports_no_peer_family(serve: ServiceFactory) -> None:
    bearer_only = CONFIG.split("[server.peers.a]")[0] + "[providers" + CONFIG.split("[providers")[1]
    service = await serve(bearer_only)
    assert failures(service, "unknown", "malformed") == -1
    await call(service, "/echo/x", {PEER_HEADER: "garbage"})
    assert failures(service, "unknown", "malformed") == 1


# -- config ---------------------------------------------------------------------------


def test_peer_tables_report_every_mistake(tmp_path: Path) -> None:
    text = """
[server.peers.Bad_Name]
secret_env = "PEER_A"
[server.peers.unknown]
secret_env = "PEER_A"
key_id = "u"
[server.peers.short]
secret_env = "SHORT"
key_id = "s"
[server.peers.twin]
secret_env = "PEER_A"
[server.peers.nokey]
key_id = "k"
providers = ["nope"]
extra = 1
[providers.local]
kind = "fake"
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), tmp_path / "c.toml", {**ENV, "SHORT": "short"})
    errors = dict(caught.value.errors)
    assert errors.keys() == {
        "server.peers.Bad_Name",
        "server.peers.unknown",
        "server.peers.short.secret_env",
        "server.peers.twin.key_id",
        "server.peers.nokey.secret_env",
        "server.peers.nokey.providers",
        "server.peers.nokey.extra",
    }
    assert errors["server.peers.twin.key_id"] == (
        "'1' is also server.peers.Bad_Name's: each key id names one secret"
    )
    assert "expected at least 32" in errors["server.peers.short.secret_env"]
    assert "short" not in errors["server.peers.short.secret_env"].split(":")[-1]


def test_check_names_the_peers_key_ids_never_their_secrets(tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(CONFIG), tmp_path / "c.toml", ENV)
    peers = {p.name: p.key_id for p in config.server.peers}
    assert peers == {"a": "1", "a-next": "2", "billing-only": "scoped"}
    assert SECRET not in repr(config.server)


def test_check_refuses_a_remote_url_with_credentials_without_printing_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[providers.billing]\nkind = "remote"\n'
        'url = "https://svc:hunter2@billing.internal:8443/billing?key=abc"\n'
    )
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{path}: providers.billing.url: expected an http:// or https:// URL with a host and "
        "no query, fragment or credentials, got 'https://***@billing.internal:8443/billing?***'",
        "1 error",
    ]
