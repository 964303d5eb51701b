"""`meshbridge serve` against hostile callers: raw HTTP on 127.0.0.1.

Paths are sent as they are written here (raw sockets, or yarl's
``encoded=True``), never normalised by a client on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from meshbridge import ConfigError
from meshbridge.service import Service, load_config
from tests.helpers import settle

from .conftest import ServiceFactory

ROOT = Path(__file__).resolve().parents[2]

TOKEN = "token-for-the-api-client"
SCOPED = "token-for-the-scoped-client"
PROVIDERS = """
[providers.a]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
[providers.a61]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
[providers.local]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
"""
CLIENTS = f"""
[server.clients.app]
token = "{TOKEN}"
[server.clients.narrow]
token = "{SCOPED}"
providers = ["a"]
"""


def config(**server: object) -> str:
    settings = {"listen": "127.0.0.1:0", "max_body_bytes": 2000, **server}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return f"[server]\n{lines}\n{CLIENTS}{PROVIDERS}"


def requests(service: Service, provider: str) -> float:
    """meshbridge_requests_total of ``provider``, summed over the other labels."""
    return sum(
        s.value
        for family in service.mesh.registry.collect()
        for s in family.samples
        if s.name == "meshbridge_requests_total" and s.labels["provider"] == provider
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "meshbridge.access"]


class Raw:
    """One TCP connection to the service, bytes in and out as written."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base_url: str) -> Raw:
        url = URL(base_url)
        assert url.host is not None
        assert url.port is not None
        return cls(*await asyncio.open_connection(url.host, url.port))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, CIMultiDict[str], bytes]:
        """The next response (the head's Content-Length says how much body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(": ")
            headers.add(name, value)
        length = int(headers.get("Content-Length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return int(status_line.split()[1]), headers, body

    async def rest(self) -> bytes:
        """Everything until the server closes (bounded, so a hang fails)."""
        return await asyncio.wait_for(self.reader.read(), 5)

    async def no_answer(self) -> bytes:
        """What came before the server closed: a connection it closed with our
        bytes still unread is reset (Linux sends RST), which is no answer either."""
        try:
            return await self.rest()
        except ConnectionResetError:
            return b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def head(method: str, path: str, *extra: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: meshbridge", *extra, "", ""]).encode()


# -- 1. one canonical provider name, the rest forwarded as it came ---------------


async def test_a_percent_encoded_provider_name_reaches_the_provider_it_decodes_to(
    serve: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await serve(config())
    with caplog.at_level(logging.INFO, logger="meshbridge.access"):
        async with aiohttp.ClientSession(headers=bearer(TOKEN)) as session:
            for path in ("/%61/v1/models", "/lo%63al/v1/models"):
                url = URL(f"{service.url}{path}", encoded=True)
                async with session.get(url) as response:
                    assert response.status == 200, path
    assert (requests(service, "a"), requests(service, "a61"), requests(service, "local")) == (
        1,
        0,
        1,
    )
    assert [line["provider"] for line in access_lines(caplog)] == ["a", "local"]


@pytest.mark.parametrize(
    "path",
    [
        "/a/v1%2fmodels",
        "/a/v1%2Fmodels",
        "/a%2f..%2fa61/v1/models",
        "/a/v1%5cmodels",
        "/a/v1%5Cmodels",
        "/a/v1\\models",
        "/a/../a61/v1/models",
        "/a/%2e%2e/a61/v1/models",
        "/a/%2E%2e/a61/v1/models",
        "/a/./v1/models",
        "/a/v1/models/%2e",
        "/a/v1/mod%00els",
        "/a/v1/%ff",
    ],
)
async def test_encoded_separators_dot_segments_and_controls_are_a_400_never_forwarded(
    serve: ServiceFactory, path: str
) -> None:
    service = await serve(config())
    raw = await Raw.open(service.url)
    try:
        raw.send(head("GET", path, f"Authorization: Bearer {TOKEN}"))
        status, _headers, body = await raw.response()
    finally:
        await raw.close()
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert path.encode() not in body
    assert sum(requests(service, p) for p in ("a", "a61", "local")) == 0


async def test_the_rest_of_the_path_goes_upstream_decoded_once_by_the_provider(
    serve: ServiceFactory,
) -> None:
    service = await serve(config())
    url = URL(f"{service.url}/local/v1/a%2520b?q=%2F", encoded=True)
    async with aiohttp.ClientSession(headers=bearer(TOKEN)) as session, session.get(url) as r:
        assert r.status == 404  # the fake provider's own 404 names the path it was given
        message = (await r.json())["error"]["message"]
    assert "/v1/a%20b" in message


# -- 2. clients scoped to providers ----------------------------------------------


async def test_a_scoped_client_gets_403_for_every_other_provider_without_reaching_it(
    serve: ServiceFactory,
) -> None:
    service = await serve(config())
    async with aiohttp.ClientSession(headers=bearer(SCOPED)) as session:
        for path in ("/a61/v1/models", "/%61%36%31/v1/models", "/local/v1/models", "/nowhere/x"):
            async with session.get(URL(f"{service.url}{path}", encoded=True)) as response:
                assert response.status == 403, path
                error = (await response.json())["error"]
                assert error["type"] == "permission_error"
                assert "providers" not in error  # no list of what exists
        async with session.get(f"{service.url}/a/v1/models") as response:
            assert response.status == 200
    assert (requests(service, "a"), requests(service, "a61"), requests(service, "local")) == (
        1,
        0,
        0,
    )


def test_client_scopes_name_existing_providers_every_error_at_once(tmp_path: Path) -> None:
    path = tmp_path / "scopes.toml"
    path.write_text(
        f"""
[server.clients.one]
token = "{TOKEN}"
providers = ["a", "ghost", "phantom"]
[server.clients.two]
token = "{SCOPED}"
providers = []
[server.clients.three]
token = "token-for-client-three"
providers = "a"
{PROVIDERS}"""
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    where = dict(caught.value.errors)
    assert set(where) == {
        "server.clients.one.providers",
        "server.clients.two.providers",
        "server.clients.three.providers",
    }
    assert "'ghost', 'phantom'" in where["server.clients.one.providers"]
    assert "a, a61, local" in where["server.clients.one.providers"]


# -- 3. Expect: 100-continue after the gate ----------------------------------------


@pytest.mark.parametrize(
    ("token", "path", "status"),
    [
        (None, "/local/v1/chat/completions", 401),
        (SCOPED, "/local/v1/chat/completions", 403),
        (TOKEN, "/local/v1/chat/completions", 413),
    ],
)
async def test_expect_100_continue_is_refused_before_any_body_byte_is_read(
    serve: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
    token: str | None,
    path: str,
    status: int,
) -> None:
    service = await serve(config())
    gate = [f"Authorization: Bearer {token}"] if token else []
    expect = ["Content-Length: 104857600", "Expect: 100-continue"]
    raw = await Raw.open(service.url)
    with caplog.at_level(logging.INFO, logger="meshbridge.access"):
        try:
            raw.send(head("POST", path, *gate, *expect))
            answer = await raw.rest()  # the server closes: it will not read the body
        finally:
            await raw.close()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"100 Continue" not in answer
    (line,) = access_lines(caplog)
    assert (line["status"], line["bytes_in"]) == (status, 0)
    assert requests(service, "local") == 0


async def test_expect_100_continue_is_granted_once_the_gate_and_the_size_pass(
    serve: ServiceFactory,
) -> None:
    service = await serve(config())
    body = json.dumps({"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]})
    raw = await Raw.open(service.url)
    try:
        raw.send(
            head(
                "POST",
                "/local/v1/chat/completions",
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                "Expect: 100-continue",
            )
        )
        continued = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
        raw.send(body.encode())
        status, _, reply = await raw.response()
    finally:
        await raw.close()
    assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status == 200
    assert json.loads(reply)["object"] == "chat.completion"


# -- 4. timeouts and the connection cap ---------------------------------------------


async def test_a_head_not_complete_within_header_timeout_is_closed(
    serve: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await serve(config(header_timeout=0.3))
    silent, stalled, trickling = [await Raw.open(service.url) for _ in range(3)]
    with caplog.at_level(logging.INFO, logger="meshbridge.access"):
        try:
            stalled.send(b"GET /local/v1/models HTTP/1.1\r\nHost: meshbridge\r\nX-Slow: ")

            async def trickle() -> None:
                for byte in b"GET /local/v1/models HTTP/1.1\r\nHost: meshbridge\r\nX-Slow: abc":
                    if trickling.reader.at_eof() or trickling.writer.is_closing():
                        return
                    trickling.send(bytes([byte]))
                    await asyncio.sleep(0.02)  # the pace of the attack, not a synchronisation

            sender = asyncio.create_task(trickle())
            answers = await asyncio.gather(
                *(raw.no_answer() for raw in (silent, stalled, trickling))
            )
            sender.cancel()
        finally:
            for raw in (silent, stalled, trickling):
                await raw.close()
    assert list(answers) == [b"", b"", b""]  # closed, without an answer to learn from
    timeouts = [line for line in access_lines(caplog) if line["status"] == 408]
    assert len(timeouts) == 2  # the two that had started a head
    assert all(line["outcome"] == "timeout" and line["path"] is None for line in timeouts)


@pytest.mark.integration  # a real process
def test_a_slowloris_on_a_real_serve_process_is_dropped_while_others_are_served() -> None:
    """`python -m benchmarks slowloris`, small: it starts `meshbridge serve`
    and exits 1 if a connection outlives header_timeout (+1 s) or a normal
    request fails."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "slowloris", "--connections", "40",
         "--header-timeout", "0.5", "--requests", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "dropped by the server: 40 of 40" in done.stdout
    assert "failures 0 / 0" in done.stdout


async def test_a_body_gap_longer_than_body_timeout_is_cut_with_408(
    serve: ServiceFactory,
) -> None:
    service = await serve(config(body_timeout=0.3))
    raw = await Raw.open(service.url)
    try:
        raw.send(
            head(
                "POST",
                "/local/v1/chat/completions",
                f"Authorization: Bearer {TOKEN}",
                "Content-Length: 100",
            )
            + b'{"model": '
        )
        answer = await raw.rest()
    finally:
        await raw.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert requests(service, "local") == 0


async def test_a_kept_alive_connection_idle_past_idle_timeout_is_closed(
    serve: ServiceFactory,
) -> None:
    service = await serve(config(idle_timeout=0.3))
    raw = await Raw.open(service.url)
    try:
        raw.send(head("GET", "/healthz"))
        status, headers, _ = await raw.response()
        assert (status, headers.get("Connection")) == (200, None)  # kept alive
        rest = await raw.rest()
    finally:
        await raw.close()
    assert rest == b""


async def test_connections_beyond_max_connections_get_503_while_the_others_keep_working(
    serve: ServiceFactory,
) -> None:
    service = await serve(config(max_connections=2))
    first, second = await Raw.open(service.url), await Raw.open(service.url)
    try:
        for raw in (first, second):  # both accepted and served
            raw.send(head("GET", "/healthz"))
            assert (await raw.response())[0] == 200
        third = await Raw.open(service.url)
        refused = await third.rest()
        await third.close()
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert b"Connection: close" in refused
        first.send(head("GET", "/local/v1/models", f"Authorization: Bearer {TOKEN}"))
        assert (await first.response())[0] == 200
    finally:
        await first.close()

    async def served_again() -> bytes:
        fourth = await Raw.open(service.url)
        try:
            fourth.send(head("GET", "/healthz", "Connection: close"))
            return await fourth.rest()
        finally:
            await fourth.close()

    for _ in range(100):  # the server sees the first one go a moment later
        answer = await served_again()
        if not answer.startswith(b"HTTP/1.1 503 "):
            break
    assert answer.startswith(b"HTTP/1.1 200 ")
    second.send(head("GET", "/healthz"))
    assert (await second.response())[0] == 200
    await second.close()


# -- 9. leaks and noise -------------------------------------------------------------


async def test_two_authorization_headers_are_a_400(serve: ServiceFactory) -> None:
    service = await serve(config())
    headers = CIMultiDict([("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer x")])
    for pair in (headers, CIMultiDict(reversed(list(headers.items())))):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{service.url}/local/v1/models", headers=pair) as response,
        ):
            assert response.status == 400
            assert "more than one Authorization" in (await response.json())["error"]["message"]
    assert requests(service, "local") == 0


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE-" + b"x" * 65536 + b" / HTTP/1.1\r\n\r\n",
        b"GET /local/v1/models HTTP/1.1\r\nHost: x\r\nX-Evil: <script>\x01</script>\r\n\r\n",
        b"GET /local/v1/models HTTP/1.1\r\nHost: x\r\nX-Long: " + b"y" * 65536 + b"\r\n\r\n",
        b"GET /\x7fcaller-bytes HTTP/1.1\r\n\r\n",
    ],
)
async def test_malformed_http_gets_a_fixed_short_400_one_log_line_and_an_access_line(
    serve: ServiceFactory, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    service = await serve(config())
    raw = await Raw.open(service.url)
    with caplog.at_level(logging.INFO):
        try:
            raw.send(request_bytes)
            status, headers, body = await raw.response()
        finally:
            await raw.close()
        assert await settle(lambda: bool(access_lines(caplog)))
    assert status == 400
    assert headers["Server"] == "meshbridge"
    assert json.loads(body) == {
        "error": {"type": "invalid_request_error", "message": "malformed HTTP request"}
    }
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere
    server_lines = [r for r in caplog.records if r.name in ("meshbridge", "aiohttp.server")]
    assert len(server_lines) == 1
    assert "malformed request from 127.0.0.1" in server_lines[0].getMessage()
    (line,) = access_lines(caplog)
    assert (line["status"], line["outcome"], line["path"]) == (400, "malformed", None)


async def test_no_response_says_which_python_or_aiohttp_serves_it(serve: ServiceFactory) -> None:
    service = await serve(config(max_connections=3))
    seen: list[str] = []
    async with aiohttp.ClientSession() as session:
        for path, headers in [
            ("/healthz", {}),
            ("/readyz", {}),
            ("/metrics", {}),
            ("/local/v1/models", bearer(TOKEN)),
            ("/local/v1/models", {}),
            ("/nowhere", {}),
            ("/local/v1/nothing", bearer(TOKEN)),
        ]:
            async with session.get(f"{service.url}{path}", headers=headers) as response:
                seen.extend(response.headers.getall("Server"))
        async with session.post(f"{service.url}/healthz") as response:
            seen.extend(response.headers.getall("Server"))
    raw = await Raw.open(service.url)
    try:
        raw.send(b"NOT HTTP\r\n\r\n")
        seen.extend((await raw.response())[1].getall("Server"))
    finally:
        await raw.close()
    assert seen == ["meshbridge"] * 9


async def test_an_admin_listener_takes_metrics_and_readiness_off_the_public_one(
    serve: ServiceFactory,
) -> None:
    service = await serve(config(admin_listen="127.0.0.1:0"))
    admin = service.admin_url
    assert admin is not None
    assert admin != service.url
    async with aiohttp.ClientSession() as session:

        async def status(url: str, **kwargs: Any) -> int:
            async with session.get(url, **kwargs) as response:
                await response.read()
                return response.status

        assert [await status(f"{service.url}{p}") for p in ("/metrics", "/readyz")] == [404, 404]
        assert await status(f"{service.url}/healthz") == 200
        assert await status(f"{service.url}/local/v1/models", headers=bearer(TOKEN)) == 200
        assert [await status(f"{admin}{p}") for p in ("/metrics", "/readyz", "/healthz")] == [
            200,
            200,
            200,
        ]
        assert await status(f"{admin}/local/v1/models", headers=bearer(TOKEN)) == 404
    assert requests(service, "local") == 1


def test_admin_listen_and_the_limits_are_checked_with_every_error_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        config(
            listen="127.0.0.1:8080",
            admin_listen="127.0.0.1:8080",
            header_timeout=0,
            body_timeout=-1,
            idle_timeout="soon",
            max_connections=0,
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert {key for key, _ in caught.value.errors} == {
        "server.admin_listen",
        "server.header_timeout",
        "server.body_timeout",
        "server.idle_timeout",
        "server.max_connections",
    }


def test_a_client_token_with_surrounding_whitespace_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PADDED_TOKEN", "token-from-the-env\n")  # as `echo ... >` leaves it
    path = tmp_path / "padded.toml"
    path.write_text(
        '[server.clients.one]\ntoken = " token-with-a-space"\n'
        '[server.clients.two]\ntoken_env = "PADDED_TOKEN"\n' + PROVIDERS
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert list(caught.value.errors) == [
        ("server.clients.one.token", "expected a token without leading or trailing whitespace"),
        ("server.clients.two.token_env", "expected a token without leading or trailing whitespace"),
    ]


def test_an_upstream_url_with_credentials_is_refused_without_repeating_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(
        '[providers.up]\nkind = "openai"\n'
        'upstream = "https://someone:hunter2-secret@api.example.com"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    ((key, message),) = caught.value.errors
    assert key == "providers.up.upstream"
    assert "hunter2" not in str(caught.value)
    assert "someone" not in message
    assert "api.example.com" in message
