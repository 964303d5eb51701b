"""`meshbridge serve` against hostile callers, round 2: what a refusal reads,
bytes that are not UTF-8, and what the gateway adds to what it forwards.

Raw HTTP on 127.0.0.1 (``Raw`` of ``test_gateway_hostile``), so nothing a
client library would add or normalise reaches the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from typing import Any

import httpx
import pytest
from aiohttp import web

from .conftest import ServiceFactory
from .test_gateway_hostile import SCOPED, TOKEN, Raw, config, head, requests

CHUNK = b"x" * 65536
ENDLESS_LIMIT = 1 << 30  # bytes an "endless" body stops at, so a failing test still ends


async def echo_headers(request: web.Request) -> web.Response:
    """A provider that answers with the request headers it got, compressed
    when the request says it accepts deflate (as aiohttp's own does)."""
    response = web.json_response({"headers": [[k, v] for k, v in request.headers.items()]})
    if "deflate" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression(web.ContentCoding.deflate)
    return response


def echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo_headers)
    return app


# -- 7. bytes that are not UTF-8 in the gate's header ---------------------------------


async def test_an_authorization_header_that_is_not_utf8_is_a_401_without_a_traceback(
    serve: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await serve(config())
    raw = await Raw.open(service.url)
    with caplog.at_level(logging.INFO):
        try:
            latin = b"Authorization: Bearer \xff\xfe-not-utf8\r\n\r\n"  # bytes as sent
            raw.send(head("GET", "/local/v1/models")[:-2] + latin)
            status, headers, body = await raw.response()
        finally:
            await raw.close()
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="meshbridge"'
    assert json.loads(body)["error"]["type"] == "authentication_error"
    assert not [r for r in caplog.records if r.exc_info]
    assert requests(service, "local") == 0


# -- 8. a refusal never reads the rest of the body -------------------------------------


async def refused_while_sending(raw: Raw) -> tuple[bytes, int]:
    """Send an endless chunked body on ``raw`` until the server closes the
    connection: what it answered, and how many body bytes we got to send."""
    sent = 0

    async def send() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            while sent < ENDLESS_LIMIT:
                raw.send(b"10000\r\n" + CHUNK + b"\r\n")
                await raw.writer.drain()
                sent += len(CHUNK)

    sender = asyncio.create_task(send())
    answer = bytearray()
    try:
        async with asyncio.timeout(5):  # aiohttp's lingering read alone would take 10 s
            with contextlib.suppress(ConnectionError):
                while chunk := await raw.reader.read(65536):
                    answer += chunk
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    return bytes(answer), sent


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), (SCOPED, 403), (TOKEN, 413)], ids=["401", "403", "413"]
)
async def test_a_refused_request_closes_the_connection_without_reading_an_endless_body(
    serve: ServiceFactory, token: str | None, status: int
) -> None:
    service = await serve(config())  # max_body_bytes = 2000
    gate = [f"Authorization: Bearer {token}"] if token else []
    raw = await Raw.open(service.url)
    try:
        raw.send(head("POST", "/local/v1/chat/completions", *gate, "Transfer-Encoding: chunked"))
        answer, sent = await refused_while_sending(raw)
    finally:
        await raw.close()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nConnection: close\r\n" in answer
    assert sent < 64 * 1024 * 1024  # what socket buffers take, not 10 s of reading
    assert requests(service, "local") == 0


async def test_an_honest_client_still_uploading_reads_its_refusal_not_a_reset(
    serve: ServiceFactory,
) -> None:
    """httpx (the SDKs' transport) reads no answer before its body is sent:
    the refusal drops what comes (up to max_body_bytes) before it closes."""
    service = await serve(config(max_body_bytes=16 * 1024 * 1024))
    body = b"x" * (8 * 1024 * 1024)
    async with httpx.AsyncClient() as client:
        for headers in ({}, {"Authorization": f"Bearer {SCOPED}"}):
            response = await client.post(
                f"{service.url}/local/v1/chat/completions", content=body, headers=headers
            )
            assert response.status_code in (401, 403)
            assert response.headers["Connection"] == "close"
    assert requests(service, "local") == 0


# -- 9. the head deadline after a refused request ---------------------------------------


async def test_a_head_trickled_after_a_refused_post_is_not_held_until_idle_timeout(
    serve: ServiceFactory,
) -> None:
    service = await serve(config(header_timeout=0.3, idle_timeout=30))
    raw = await Raw.open(service.url)
    try:
        raw.send(head("POST", "/local/v1/chat/completions", "Content-Length: 20"))
        status, headers, _ = await raw.response()  # refused before the body came
        assert (status, headers["Connection"]) == (401, "close")
        raw.send(b'{"model": "m", "x": 1}')

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in b"GET /healthz HTTP/1.1\r\nHost: meshbridge\r\nX-Slow: " + b"a" * 200:
                    raw.send(bytes([byte]))
                    await asyncio.sleep(0.02)  # the pace of the attack

        sender = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(3):  # idle_timeout is 30 s
                with contextlib.suppress(ConnectionError):
                    rest = await raw.reader.read()
        finally:
            sender.cancel()
    finally:
        await raw.close()
    assert rest == b""  # closed, nothing answered to the trickled head


# -- 10. the gateway forwards the caller's headers and adds none of its own -------------


async def test_the_gateway_forwards_the_callers_headers_and_adds_none_of_aiohttps(
    serve: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await serve(config())
    service.mesh.register("echo", echo_app())
    raw = await Raw.open(service.url)
    try:
        raw.send(
            head(
                "POST",
                "/echo/v1/x",
                f"Authorization: Bearer {TOKEN}",
                "X-Caller: 1",
                "Content-Length: 2",
            )
            + b"{}"
        )
        status, headers, body = await raw.response()
        raw.send(
            head(
                "GET",
                "/echo/v1/x",
                f"Authorization: Bearer {TOKEN}",
                "Accept-Encoding: deflate",
                "User-Agent: curl/8",
                "Accept: text/plain",
            )
        )
        _, deflated_headers, deflated = await raw.response()
    finally:
        await raw.close()
    assert status == 200
    assert "Content-Encoding" not in headers  # the caller never said it accepts one
    forwarded_plain = sorted(tuple(pair) for pair in json.loads(body)["headers"])
    assert forwarded_plain == [("Content-Length", "2"), ("Host", "echo"), ("X-Caller", "1")]
    assert deflated_headers["Content-Encoding"] == "deflate"  # asked for: passed through
    forwarded = dict(json.loads(zlib.decompress(deflated))["headers"])
    assert forwarded["User-Agent"] == "curl/8"
    assert forwarded["Accept"] == "text/plain"


async def record_headers(request: web.Request) -> web.Response:
    request.app[SEEN].append(dict(request.headers))
    return web.json_response({"object": "list", "data": []})


SEEN: web.AppKey[list[dict[str, str]]] = web.AppKey("seen", list)


async def test_no_kind_sends_aiohttps_user_agent_upstream_for_a_caller_that_sent_none(
    serve: ServiceFactory, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream_app = web.Application()
    upstream_app[SEEN] = []
    upstream_app.router.add_get("/{tail:.*}", record_headers)
    upstream = await aiohttp_server(upstream_app)
    url = str(upstream.make_url("")).rstrip("/")
    monkeypatch.setenv("UPSTREAM_KEY", "sk-configured")
    kinds = {
        "up-openai": f'kind = "openai"\nupstream = "{url}"\napi_key_env = "UPSTREAM_KEY"',
        "up-anthropic": f'kind = "anthropic"\nupstream = "{url}"\napi_key_env = "UPSTREAM_KEY"',
        "up-remote": f'kind = "remote"\nurl = "{url}"',
    }
    tables = "".join(f"[providers.{name}]\n{table}\n" for name, table in kinds.items())
    service = await serve(config() + tables)
    raw = await Raw.open(service.url)
    try:
        for name in kinds:
            raw.send(head("GET", f"/{name}/v1/models", f"Authorization: Bearer {TOKEN}"))
            assert (await raw.response())[0] == 200, name
    finally:
        await raw.close()
    seen = upstream_app[SEEN]
    assert len(seen) == 3
    assert [h.get("User-Agent") for h in seen] == [None, None, None]
