"""The remote provider: a mesh caller, the remote kind, a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from meshbridge import CircuitBreaker, ConfigError, Mesh, Policy
from meshbridge.providers import (
    PEER_HEADER,
    NonceCache,
    OptionReader,
    check_identity,
    read_identity,
)
from meshbridge.providers import remote as remote_kind

from ..helpers import settle
from .conftest import CANCELLED, Upstream, context, watched

MiB = 1024 * 1024
TOTAL = 64 * MiB  # for flow control: far more than the sockets between hold
SECRET = "a-peer-secret-of-at-least-32-bytes!"
GATE: web.AppKey[asyncio.Event] = web.AppKey("gate", asyncio.Event)
PROGRESS: web.AppKey[list[int]] = web.AppKey("progress", list)


async def start(
    mesh: Mesh,
    upstream: TestServer | str,
    path: str = "/billing",
    policy: Policy | None = None,
    **options: object,
) -> web.Application:
    """Register a remote provider ``billing`` for ``upstream`` + ``path``; start the mesh."""
    base = upstream if isinstance(upstream, str) else str(upstream.make_url(path))
    reader = OptionReader({"url": base, **options}, "providers.billing",
                          environ={"PEER_SECRET": SECRET})  # fmt: skip
    parsed = remote_kind.parse_options(reader)
    reader.finish()
    app = remote_kind.create_app(parsed, context(mesh, "billing"))
    mesh.register("billing", app, policy=policy)
    await mesh.start()
    return app


# -- the upstream's handlers ----------------------------------------------------------


async def echo(request: web.Request) -> web.Response:
    """What the upstream got: method, raw target, headers, body."""
    body = await request.read()
    seen = {
        "method": request.method,
        "target": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body": body.decode(),
    }
    response = web.json_response(seen, headers={"X-Upstream": "1", "Keep-Alive": "timeout=9"})
    response.headers["Trailer"] = "X-Checksum"
    return response


async def gated_stream(request: web.Request) -> web.StreamResponse:
    """One event, then another once the test opens the gate."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: one\n\n")
    await request.app[GATE].wait()
    await response.write(b"data: two\n\n")
    await response.write_eof()
    return response


async def cut_stream(request: web.Request) -> web.StreamResponse:
    """A body promised at 1000 bytes that ends after 10: the connection dies."""
    response = web.StreamResponse()
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b"x" * 10)
    await response.drain()
    assert request.transport is not None
    request.transport.close()
    return response


async def firehose(request: web.Request) -> web.StreamResponse:
    """TOTAL bytes as fast as the connection takes them; ``PROGRESS`` counts what was written."""
    response = web.StreamResponse()
    await response.prepare(request)
    block = b"d" * (64 * 1024)
    for _ in range(TOTAL // len(block)):
        await response.write(block)
        request.app[PROGRESS].append(len(block))
    await response.write_eof()
    return response


async def slow_sink(request: web.Request) -> web.Response:
    """Reads an upload slowly; ``PROGRESS`` counts what was read."""
    while chunk := await request.content.read(64 * 1024):
        request.app[PROGRESS].append(len(chunk))
        await asyncio.sleep(0.001)  # a slow consumer, not a synchronisation
    read: list[int] = request.app[PROGRESS]
    return web.Response(text=str(sum(read)))


async def hang(request: web.Request) -> web.Response:
    await request.app[GATE].wait()
    return web.Response(text="late")


async def whoami(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return web.json_response({"port": peer[1] if peer else None})


async def answer_here(request: web.Request) -> web.Response:
    return web.Response(text="here")


def upstream_app() -> web.Application:
    app = watched(web.Application())
    app[GATE] = asyncio.Event()
    app[PROGRESS] = []
    app.router.add_get("/billing/stream", gated_stream)
    app.router.add_get("/billing/cut", cut_stream)
    app.router.add_get("/billing/firehose", firehose)
    app.router.add_post("/billing/sink", slow_sink)
    app.router.add_get("/billing/hang", hang)
    app.router.add_get("/billing/whoami", whoami)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def problem(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


# -- relaying -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_and_path_goes_to_the_url_with_its_query(
    mesh: Mesh, upstream: Upstream, method: str
) -> None:
    await start(mesh, await upstream(upstream_app()))
    data = b"payload" if method in ("POST", "PUT", "PATCH") else None
    async with (
        mesh.session() as s,
        s.request(method, URL("http://billing/v1/a%20b/c?q=1%2F2&r", encoded=True), data=data) as r,
    ):
        assert r.status == 200
        seen = await r.json()
    assert seen["method"] == method
    assert seen["target"] == "/billing/v1/a%20b/c?q=1%2F2&r"  # exactly as the caller sent it
    assert seen["body"] == (data or b"").decode()


@pytest.mark.parametrize("path", ["/billing/", "/billing//", "/"])
@pytest.mark.parametrize("given", ["config", "options"])
async def test_a_url_with_a_trailing_slash_sends_one_slash_before_the_path(
    mesh: Mesh, upstream: Upstream, path: str, given: str
) -> None:
    server = await upstream(upstream_app())
    if given == "config":
        await start(mesh, server, path=path)
    else:  # RemoteOptions made in code, not read from a config
        options = remote_kind.RemoteOptions(URL(str(server.make_url("/")).rstrip("/") + path))
        mesh.register("billing", remote_kind.create_app(options, context(mesh, "billing")))
        await mesh.start()
    async with mesh.session() as s, s.get("http://billing/v1/x?y=1") as r:
        seen = await r.json()
    assert seen["target"] == path.rstrip("/") + "/v1/x?y=1"


async def test_hop_by_hop_headers_are_dropped_both_ways(mesh: Mesh, upstream: Upstream) -> None:
    await start(mesh, await upstream(upstream_app()))
    sent = {
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "named by Connection",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic eDp5",
        "Upgrade": "websocket",
        PEER_HEADER: "a caller's forgery",
        "Authorization": "Bearer caller-own-key",
        "X-End-To-End": "kept",
    }
    async with mesh.session() as s, s.post("http://billing/v1/x", data=b"{}", headers=sent) as r:
        seen = await r.json()
        answered = r.headers
    names = {name.lower() for name, _ in seen["headers"]}
    assert {"x-end-to-end", "authorization"} <= names
    dropped = {"x-hop", "keep-alive", "te", "proxy-authorization", "upgrade", PEER_HEADER.lower()}
    assert not names & dropped
    assert ["Content-Length", "2"] in seen["headers"]  # a sized body stays sized
    assert answered["X-Upstream"] == "1"
    assert "Keep-Alive" not in answered
    assert "Trailer" not in answered


async def test_a_head_request_gets_the_head_only(mesh: Mesh, upstream: Upstream) -> None:
    await start(mesh, await upstream(upstream_app()))
    async with mesh.session() as s, s.head("http://billing/v1/x") as r:
        assert r.status == 200
        assert r.headers["X-Upstream"] == "1"
        assert await r.read() == b""


async def test_a_stream_reaches_the_caller_event_by_event(mesh: Mesh, upstream: Upstream) -> None:
    server = await upstream(upstream_app())
    await start(mesh, server)
    async with mesh.session() as s, s.get("http://billing/stream") as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        assert await r.content.readuntil(b"\n\n") == b"data: one\n\n"  # before "two" exists
        server.app[GATE].set()
        assert await r.read() == b"data: two\n\n"


async def test_a_reader_that_falls_behind_holds_the_upstream_back(
    mesh: Mesh, upstream: Upstream
) -> None:
    server = await upstream(upstream_app())
    await start(mesh, server)
    written = server.app[PROGRESS]
    received, ahead = 0, 0
    async with mesh.session() as s, s.get("http://billing/firehose") as r:
        while chunk := await r.content.read(64 * 1024):
            received += len(chunk)
            ahead = max(ahead, sum(written) - received)
            await asyncio.sleep(0.001)  # a slow reader
    assert received == TOTAL
    # what sockets and buffers between them hold (some MiB), never the whole body
    assert ahead < TOTAL // 2, ahead
    assert mesh.peak_buffered_bytes < 1 * MiB


async def test_an_upload_streams_as_the_upstream_reads_it(mesh: Mesh, upstream: Upstream) -> None:
    server = await upstream(upstream_app())
    await start(mesh, server)
    read = server.app[PROGRESS]
    produced, ahead = 0, 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced, ahead
        for _ in range(TOTAL // (64 * 1024)):
            produced += 64 * 1024
            ahead = max(ahead, produced - sum(read))
            yield b"u" * (64 * 1024)

    async with mesh.session() as s, s.post("http://billing/sink", data=body()) as r:
        assert await r.text() == str(TOTAL)
    assert ahead < TOTAL // 2, ahead


async def test_connections_to_the_remote_are_kept_alive(mesh: Mesh, upstream: Upstream) -> None:
    await start(mesh, await upstream(upstream_app()))
    ports = []
    async with mesh.session() as s:
        for _ in range(3):
            async with s.get("http://billing/whoami") as r:
                ports.append((await r.json())["port"])
    assert len(set(ports)) == 1, ports


# -- failures -------------------------------------------------------------------------


async def test_a_refused_connection_is_a_502(mesh: Mesh, closed_port: int) -> None:
    await start(mesh, f"http://127.0.0.1:{closed_port}/billing")
    async with mesh.session() as s, s.get("http://billing/v1/x") as r:
        assert r.status == 502
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.headers["x-meshbridge-reason"] == "unreachable"
        detail = problem(await r.read())["detail"]
    assert "remote 127.0.0.1 unreachable: ClientConnectorError" in detail


async def test_policies_apply_to_a_remote_provider(mesh: Mesh, closed_port: int) -> None:
    here = web.Application()
    here.router.add_get("/{tail:.*}", answer_here)
    mesh.register("local", here)
    policy = Policy(retries=1, retry_backoff=(0.001, 0.001), fallback=("local",))
    await start(mesh, f"http://127.0.0.1:{closed_port}/billing", policy=policy)
    async with mesh.session(source="agents") as s, s.get("http://billing/v1/x") as r:
        assert (r.status, await r.text()) == (200, "here")  # its 502s retried, then moved
    retried = mesh.registry.get_sample_value(
        "meshbridge_requests_total",
        {"provider": "billing", "source": "agents", "method": "GET", "code": "502",
         "outcome": "completed"},
    )  # fmt: skip
    assert retried == 2


CONNECT_ONLY = Policy(
    retries=1,
    retry_backoff=(0.001, 0.001),
    retry_on=frozenset({"connect-failure"}),
    circuit_breaker=CircuitBreaker(failures=2, on=frozenset({"connect-failure"})),
)


async def connect_failures(mesh: Mesh) -> tuple[float, float]:
    """Two calls, then the retries counted as connect failures and the circuit state."""
    async with mesh.session(source="agents") as s:
        async with s.get("http://billing/v1/x") as r:
            assert r.status == 502
        async with s.get("http://billing/v1/x") as r:
            await r.read()
    labels = {"provider": "billing", "source": "agents", "reason": "connect-failure"}
    retries = mesh.registry.get_sample_value("meshbridge_retries_total", labels) or 0.0
    state = mesh.registry.get_sample_value("meshbridge_circuit_state", {"provider": "billing"})
    return retries, state or 0.0


async def test_a_refused_connection_is_a_connect_failure_that_opens_the_breaker(
    mesh: Mesh, closed_port: int
) -> None:
    await start(mesh, f"http://127.0.0.1:{closed_port}/billing", policy=CONNECT_ONLY)
    assert await connect_failures(mesh) == (1.0, 1.0)  # retried once, then open


async def test_a_name_that_does_not_resolve_is_a_connect_failure(mesh: Mesh) -> None:
    await start(mesh, "http://billing.nowhere.invalid/billing", policy=CONNECT_ONLY)
    assert await connect_failures(mesh) == (1.0, 1.0)


async def test_a_tls_handshake_that_fails_is_a_connect_failure(
    mesh: Mesh, aiohttp_server: Any, ca: trustme.CA
) -> None:
    server = await tls_upstream(aiohttp_server, ca)  # a certificate we do not trust
    await start(mesh, server, policy=CONNECT_ONLY)
    assert await connect_failures(mesh) == (1.0, 1.0)


async def test_no_answer_within_timeout_is_a_504(mesh: Mesh, upstream: Upstream) -> None:
    server = await upstream(upstream_app())
    await start(mesh, server, timeout=0.2)
    async with mesh.session() as s, s.get("http://billing/hang") as r:
        assert r.status == 504
        assert r.headers["x-meshbridge-reason"] == "timeout"
        assert "did not answer within timeout (0.2s)" in problem(await r.read())["detail"]
    assert await settle(lambda: server.app[CANCELLED] == ["/billing/hang"])


async def test_a_silence_past_read_timeout_before_the_answer_is_a_504(
    mesh: Mesh, upstream: Upstream
) -> None:
    await start(mesh, await upstream(upstream_app()), read_timeout=0.2)
    async with mesh.session() as s, s.get("http://billing/hang") as r:
        assert r.status == 504
        assert "did not answer within read_timeout (0.2s)" in problem(await r.read())["detail"]


async def test_a_body_cut_short_fails_the_callers_read(mesh: Mesh, upstream: Upstream) -> None:
    await start(mesh, await upstream(upstream_app()))
    async with mesh.session() as s, s.get("http://billing/cut") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_a_body_cut_short_is_logged_in_one_line_without_a_traceback(
    mesh: Mesh, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    await start(mesh, await upstream(upstream_app()))
    with caplog.at_level(logging.INFO):
        async with mesh.session() as s, s.get("http://billing/cut") as r:
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()

        def broken() -> list[logging.LogRecord]:
            return [
                record
                for record in caplog.records
                if "stream broke" in record.getMessage()
                or (record.exc_info and "stream broke" in str(record.exc_info[1]))
            ]

        assert await settle(lambda: bool(broken()))
    assert len(broken()) == 1
    assert broken()[0].exc_info is None  # one line, no traceback


async def test_a_stream_silent_past_read_timeout_fails_the_callers_read(
    mesh: Mesh, upstream: Upstream
) -> None:
    server = await upstream(upstream_app())
    await start(mesh, server, read_timeout=0.2)
    async with mesh.session() as s, s.get("http://billing/stream") as r:
        assert await r.content.readuntil(b"\n\n") == b"data: one\n\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # never a clean end
    assert await settle(lambda: server.app[CANCELLED] == ["/billing/stream"])


@pytest.mark.parametrize("leave", ["close", "cancel"])
async def test_a_caller_that_leaves_closes_the_upstream_connection(
    mesh: Mesh, upstream: Upstream, leave: str
) -> None:
    server = await upstream(upstream_app())
    await start(mesh, server)
    first = asyncio.Event()

    async def call() -> None:
        async with mesh.session() as s, s.get("http://billing/stream") as r:
            await r.content.readuntil(b"\n\n")
            first.set()
            if leave == "close":
                r.close()
                return
            await r.read()

    task = asyncio.create_task(call())
    await first.wait()
    if leave == "cancel":
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # the upstream's handler is cancelled only when its connection is lost
    assert await settle(lambda: server.app[CANCELLED] == ["/billing/stream"])
    async with mesh.session() as s, s.get("http://billing/whoami") as r:
        assert r.status == 200  # the pool goes on with a fresh connection


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def tls_upstream(aiohttp_server: Any, ca: trustme.CA) -> TestServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server: TestServer = await aiohttp_server(upstream_app(), ssl=context)
    return server


async def test_tls_is_verified_by_default(mesh: Mesh, aiohttp_server: Any, ca: trustme.CA) -> None:
    server = await tls_upstream(aiohttp_server, ca)
    await start(mesh, server)
    async with mesh.session() as s, s.get("http://billing/v1/x") as r:
        assert r.status == 502
        assert "certificate verify failed" in problem(await r.read())["detail"]


async def test_ca_file_trusts_a_private_ca(
    mesh: Mesh, aiohttp_server: Any, ca: trustme.CA, tmp_path: Path
) -> None:
    server = await tls_upstream(aiohttp_server, ca)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    await start(mesh, server, ca_file=str(ca_file))
    async with mesh.session() as s, s.get("http://billing/v1/x") as r:
        assert r.status == 200
        assert (await r.json())["target"] == "/billing/v1/x"


# -- identity -------------------------------------------------------------------------


async def test_a_signed_identity_vouches_for_the_caller_and_this_request(
    mesh: Mesh, upstream: Upstream
) -> None:
    await start(mesh, await upstream(upstream_app()), peer_secret_env="PEER_SECRET",
                peer_key_id="2024-06")  # fmt: skip
    async with (
        mesh.session(source="agents", api_key_id="team-7") as s,
        s.post("http://billing/v1/x?y=1", data=b"{}", headers={PEER_HEADER: "forged"}) as r,
    ):
        seen = await r.json()
    values = [v for k, v in seen["headers"] if k.lower() == PEER_HEADER.lower()]
    assert len(values) == 1
    identity = read_identity(values[0])
    assert identity.key_id == "2024-06"
    assert (identity.source, identity.api_key_id) == ("agents", "team-7")
    check_identity(identity, SECRET.encode(), "POST", "/billing/v1/x?y=1",
                   now=identity.timestamp, nonces=NonceCache())  # fmt: skip


async def test_without_a_peer_secret_no_identity_travels(mesh: Mesh, upstream: Upstream) -> None:
    await start(mesh, await upstream(upstream_app()))
    async with mesh.session(source="agents") as s, s.get("http://billing/v1/x") as r:
        seen = await r.json()
    assert not [k for k, _ in seen["headers"] if k.lower() == PEER_HEADER.lower()]


# -- options --------------------------------------------------------------------------


def test_options_errors_name_their_key_paths(tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    reader = OptionReader(
        {
            "url": "https://user:hunter2@billing.internal/x?token=abc",
            "peer_secret_env": "SHORT",
            "peer_key_id": "a key",
            "ca_file": str(not_pem),
            "max_connections": 0,
        },
        "providers.billing",
        environ={"SHORT": "too-short"},
    )
    remote_kind.parse_options(reader)
    with pytest.raises(ConfigError) as caught:
        reader.finish()
    errors = dict(caught.value.errors)
    assert set(errors) == {
        "providers.billing.url",
        "providers.billing.peer_secret_env",
        "providers.billing.peer_key_id",
        "providers.billing.ca_file",
        "providers.billing.max_connections",
    }
    assert "hunter2" not in str(caught.value)
    assert "abc" not in str(caught.value)
    assert "expected at least 32" in errors["providers.billing.peer_secret_env"]
    assert "too-short" not in str(caught.value)


def test_a_key_id_or_ca_file_that_cannot_apply_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    reader = OptionReader(
        {"url": "http://billing.internal:8080/billing", "peer_key_id": "2",
         "ca_file": str(ca_file)},
        "providers.billing",
    )  # fmt: skip
    remote_kind.parse_options(reader)
    with pytest.raises(ConfigError) as caught:
        reader.finish()
    assert list(caught.value.errors) == [
        ("providers.billing.peer_key_id", "set without peer_secret_env: nothing would be signed"),
        ("providers.billing.ca_file", "set for an http:// url: it trusts CAs for https:// only"),
    ]


def test_the_description_names_the_key_never_the_secret() -> None:
    reader = OptionReader(
        {"url": "https://billing.internal/billing", "peer_secret_env": "PEER_SECRET"},
        "providers.billing",
        environ={"PEER_SECRET": SECRET},
    )
    options = remote_kind.parse_options(reader)
    reader.finish()
    shown = options.describe()
    assert shown["upstream"] == "https://billing.internal/billing"
    assert shown["identity"] == "signed (key id 1, $PEER_SECRET)"
    assert SECRET not in repr(options)
    assert SECRET not in str(shown)
