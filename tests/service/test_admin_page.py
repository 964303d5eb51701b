"""The admin page and its JSON (/admin/, /admin/api/config, /admin/api/live)
on a real `serve` (in process): where they are served, who may see them,
what they show. The browser tests (tests/browser/) drive the same page in
Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshbridge.providers import PEER_HEADER
from meshbridge.service import Service
from meshbridge.service._admin_state import redacted
from meshbridge.service._ledger_query import OUTCOMES

from .conftest import ServiceFactory

CI, ADMIN = "token-of-the-ci-client", "the-admin-token-0001"
SECRET = "upstream-password-0001"
CONFIG = """
[server]
listen = "127.0.0.1:0"
{where}
admin_token_env = "MB_TEST_ADMIN_TOKEN"
[server.clients.ci]
token = "{ci}"
source = "agents"
api_key_id = "team-a"
[ledger]
url = "sqlite:///{dir}/ledger.sqlite3"
flush_interval = 0.05
[providers.llm]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
{outage}
[providers.llm.policy]
max_in_flight = 3
circuit_breaker = {{ failures = 2, interval = 30.0, open_for = 60.0 }}
[providers.far]
kind = "openai"
upstream = "http://127.0.0.1:9/v1"
api_key_env = "MB_TEST_UPSTREAM_KEY"
[routes.chat]
split = {{ llm = 2, far = 1 }}
[limits.agents]
match = {{ source = "agents" }}
requests_per_minute = 50
"""
APART = 'admin_listen = "127.0.0.1:0"'
PUBLIC = "admin_api_public = true"
OUTAGE = "outage_after = 0\noutage_for = 3600\noutage_status = 503"
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MB_TEST_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("MB_TEST_UPSTREAM_KEY", SECRET)


def config(tmp_path: Path, where: str = APART, outage: str = "") -> str:
    return CONFIG.format(where=where, ci=CI, dir=tmp_path, outage=outage)


async def get(url: str, token: str | None = ADMIN, **headers: str) -> tuple[int, str]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as reply:
        return reply.status, await reply.text()


async def api(service: Service, path: str) -> Any:
    status, text = await get(f"{service.admin_url}/admin/api/{path}")
    assert status == 200, text
    return json.loads(text)


async def chat(service: Service, count: int) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CI}"}) as session:
        for _ in range(count):
            async with session.post(f"{service.url}/llm/v1/chat/completions", json=CHAT) as r:
                statuses.append(r.status)
    return statuses


async def test_the_page_and_its_json_are_served_on_the_admin_listener_only(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    service = await serve(config(tmp_path))
    assert service.admin_url is not None
    for path in ("/admin/", "/admin/live", "/admin/api/config", "/admin/api/live"):
        assert (await get(service.admin_url + path))[0] == 200, path
        assert (await get(service.url + path))[0] == 404, path
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for method in ("POST", "PUT", "DELETE", "PATCH"):  # read-only: nothing else answers
            for path in ("/admin/", "/admin/live", "/admin/api/config", "/admin/api/live"):
                async with session.request(method, service.admin_url + path) as r:
                    assert r.status in (404, 405), (method, path, r.status)
    public = await serve(config(tmp_path / "public", where=PUBLIC))
    for path in ("/admin/", "/admin/api/live"):
        assert (await get(public.url + path))[0] == 200, path


async def test_without_an_admin_token_the_page_asks_for_it_and_the_json_answers_401(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    service = await serve(config(tmp_path))
    page, live = f"{service.admin_url}/admin/", f"{service.admin_url}/admin/api/live"
    for token, headers in ((None, {}), (CI, {}), ("x" * 20, {}), (ADMIN, {PEER_HEADER: "x"})):
        status, text = await get(page, token, **headers)
        assert status == 401
        assert 'id="sign-in"' in text
        assert 'id="live"' not in text
        status, text = await get(live, token, **headers)
        assert status == 401
        assert json.loads(text)["error"]["type"] == "authentication_error"
    assert (await get(page, None, Authorization=f"Basic {ADMIN}"))[0] == 401


async def test_signing_in_gives_a_session_that_opens_the_page_but_never_the_json(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    service = await serve(config(tmp_path))
    base = f"{service.admin_url}/admin"
    jar = aiohttp.CookieJar(unsafe=True)  # the cookies of 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(f"{base}/sign-in", data={"token": "wrong-token-0001"}) as r:
            assert r.status == 401
            assert "That is not an admin token." in await r.text()
        assert len(jar) == 0
        cross = {"Sec-Fetch-Site": "cross-site"}
        async with browser.post(f"{base}/sign-in", data={"token": ADMIN}, headers=cross) as r:
            assert r.status == 403
        elsewhere = {"Origin": "http://evil.example"}
        async with browser.post(f"{base}/sign-in", data={"token": ADMIN}, headers=elsewhere) as r:
            assert r.status == 403
        assert len(jar) == 0
        signed_in = browser.post(f"{base}/sign-in", data={"token": ADMIN}, allow_redirects=False)
        async with signed_in as r:
            assert (r.status, r.headers["Location"]) == (303, "./")
            cookie = r.cookies["meshbridge_admin"]
        assert ADMIN not in cookie.value
        assert (cookie["httponly"], cookie["samesite"], cookie["path"]) == (
            True,
            "Strict",
            "/admin/",
        )
        async with browser.get(f"{base}/") as r:
            assert r.status == 200
            assert 'id="live"' in await r.text()
        async with browser.get(f"{base}/api/live") as r:
            assert r.status == 401  # scripts use the token; a session is the page's
        async with browser.post(f"{base}/sign-out", allow_redirects=False) as r:
            assert r.status == 303
        async with browser.get(f"{base}/") as r:
            assert r.status == 401


def test_a_url_shown_loses_its_credentials_and_its_query() -> None:
    assert redacted("https://user:pw@llm.example:8443/v1?key=k#top") == (
        "https://***@llm.example:8443/v1?***#top"
    )
    assert redacted("redis://:pw@10.0.0.1:6379/0") == "redis://***@10.0.0.1:6379/0"
    assert redacted("http://llm.example/v1") == "http://llm.example/v1"
    assert redacted("a plain value, user@host") == "a plain value, user@host"


async def test_the_config_hides_secrets_and_tells_of_reloads(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    service = await serve(config(tmp_path))
    shown = await api(service, "config")
    far = next(p for p in shown["providers"] if p["name"] == "far")
    assert far["kind"] == "openai"
    assert far["upstream"] == "http://127.0.0.1:9/v1"
    assert far["options"]["api_key"] == "$MB_TEST_UPSTREAM_KEY"  # its name, never its value
    llm = next(p for p in shown["providers"] if p["name"] == "llm")
    assert llm["policy"]["max_in_flight"] == 3
    assert llm["policy_summary"] == "max in flight 3 · breaker 2 in 30s, open 60s, 3 probes"
    assert shown["routes"] == [{"name": "chat", "split": {"far": 1, "llm": 2}, "sticky": None}]
    assert (shown["generation"], shown["last_failed_reload"]) == (0, None)
    page = (await get(f"{service.admin_url}/admin/"))[1]
    for text in (json.dumps(shown), page):
        assert SECRET not in text
    path = Path(shown["path"])
    path.write_text(config(tmp_path) + '[providers.oops]\nkind = "fake"\ntokens = "many"\n')
    assert not await service.reloader.reload()
    failed = (await api(service, "config"))["last_failed_reload"]
    assert failed["current"] is True
    assert "providers.oops.tokens" in failed["error"]
    page = (await get(f"{service.admin_url}/admin/"))[1]
    assert re.search(
        r'id="failed-reload".*The last reload failed.*providers\.oops\.tokens', page, re.S
    )
    path.write_text(config(tmp_path))
    assert await service.reloader.reload()
    after = await api(service, "config")
    assert (after["generation"], after["reloads"]) == (1, {"success": 1, "failure": 1})
    assert after["last_failed_reload"]["current"] is False


async def test_the_live_state_shows_an_open_breaker_its_admissions_and_the_limits(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    service = await serve(config(tmp_path, outage=OUTAGE))
    assert await chat(service, 3) == [503, 503, 503]  # the third is the mesh's refusal
    live = await api(service, "live")
    llm = next(p for p in live["providers"] if p["name"] == "llm")
    assert (llm["circuit"], llm["circuit_opened"], llm["requests"], llm["errors"]) == (
        "open",
        1,
        2,
        2,
    )
    assert 0 < llm["next_probe_seconds"] <= 60
    assert (llm["rejected"], llm["admitted"], llm["max_in_flight"], llm["in_flight"]) == (
        1,
        0,
        3,
        0,
    )
    (use,) = live["limits"]
    assert (use["limit"], use["kind"], use["used"], use["allowed"]) == (
        "agents",
        "requests_per_minute",
        3,
        50,
    )
    assert use["remaining"] == 47
    assert live["workers"] is None  # one process
    assert live["config"] == {"generation": 0, "reloads": {"success": 0, "failure": 0}}
    fragment = (await get(f"{service.admin_url}/admin/live"))[1]
    assert re.search(r'data-circuit="open">\s*<span class="badge open">open</span>', fragment)


async def test_the_recent_calls_filter_on_outcome_and_a_bad_filter_is_a_400(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    service = await serve(config(tmp_path, outage="fail_every = 2"))  # the second raises
    assert await chat(service, 2) == [200, 500]
    assert service.ledger is not None
    await service.ledger.flush()
    completed = (await api(service, "calls?outcome=completed"))["calls"]
    assert [(c["status"], c["outcome"]) for c in completed] == [(200, "completed")]
    every = (await api(service, "calls"))["calls"]
    parts = [(await api(service, f"calls?outcome={o}"))["calls"] for o in OUTCOMES]
    assert sorted(c["id"] for part in parts for c in part) == sorted(c["id"] for c in every)
    for outcome, part in zip(OUTCOMES, parts, strict=True):
        assert {c["outcome"] for c in part} <= {outcome}
    status, text = await get(f"{service.admin_url}/admin/api/calls?outcome=exploded")
    assert status == 400
    assert "outcome: expected one of completed, error, cancelled" in text
    status, page = await get(f"{service.admin_url}/admin/?outcome=exploded")
    assert status == 400
    assert 'id="calls-error"' in page


async def test_with_the_ledger_off_the_page_says_so_and_shows_the_rest(
    serve: ServiceFactory, tmp_path: Path
) -> None:
    text = config(tmp_path).replace('url = "sqlite', 'enabled = false\n# url = "sqlite')
    service = await serve(text)
    status, page = await get(f"{service.admin_url}/admin/")
    assert status == 200
    assert re.search(
        r'id="calls-error">the usage ledger is off \(\[ledger\] enabled = false\)', page
    )
    assert 'data-provider="llm"' in page
