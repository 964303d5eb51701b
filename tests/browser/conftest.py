"""Fixtures of the browser tests: one ``meshbridge serve`` process with fake
providers and an admin listener per module, one Chromium per module, a fresh
browser context (no cookies) per test. Everything stops on teardown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from .chromium import ARTIFACTS, require_chromium

ADMIN_TOKEN = "the-admin-token-of-the-browser-tests"
CI_TOKEN = "token-of-the-ci-client-0001"
BATCH_TOKEN = "token-of-the-batch-client-0001"
REFRESH = 0.5  # [server] admin_refresh of the served config, in seconds
_START_TIMEOUT = 30.0


def config_text(folder: Path, *, flaky_outage: bool = False, broken: bool = False) -> str:
    """The served config: `local` and `flaky` (fake providers), a route, a
    limit, the ledger; ``flaky_outage``: `flaky` answers 503 to everything;
    ``broken``: a config the reload rejects."""
    outage = "outage_after = 0\noutage_for = 3600\noutage_status = 503\n" if flaky_outage else ""
    return f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "MB_BROWSER_ADMIN_TOKEN"
admin_refresh = {REFRESH}
grace_period = 0.5

[server.clients.ci]
token = "{CI_TOKEN}"
source = "agents"
api_key_id = "team-a"

[server.clients.batch]
token = "{BATCH_TOKEN}"
source = "batch"
api_key_id = "team-b"

[ledger]
url = "sqlite:///{folder}/ledger.sqlite3"
flush_interval = 0.1

[providers.local]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
models = ["fake-small", "fake-large"]

[providers.flaky]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
models = ["fake-small"]
{outage}
[providers.flaky.policy]
max_in_flight = 8
circuit_breaker = {{ failures = 2, interval = 30.0, open_for = 3.0, half_open = 1 }}

[routes.chat]
split = {{ local = 3, flaky = 1 }}

[limits.batch]
match = {{ source = "batch" }}
requests_per_minute = 1000
{"[providers.oops]" if broken else ""}
"""


def http(url: str, *, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    """One request (a POST of ``body`` as JSON, else a GET): its status and
    body (decoded from JSON when it is JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, _body(reply.headers.get_content_type(), reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _body(error.headers.get_content_type(), error.read())


def _body(content_type: str, data: bytes) -> Any:
    return json.loads(data) if content_type == "application/json" else data.decode()


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)


@dataclass
class AdminServer:
    """A running ``meshbridge serve`` with its admin listener."""

    process: subprocess.Popen[bytes]
    folder: Path
    url: str  # the public listener
    admin: str  # the admin listener

    @property
    def page(self) -> str:
        return f"{self.admin}/admin/"

    def api(self, path: str) -> Any:
        status, body = http(f"{self.admin}/admin/api/{path}", token=ADMIN_TOKEN)
        assert status == 200, (path, status, body)
        return body

    def chat(self, provider: str, model: str = "fake-small", token: str = CI_TOKEN) -> int:
        """One chat completion through the public listener; its status."""
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        return http(f"{self.url}/{provider}/v1/chat/completions", token=token, body=body)[0]

    def reload(self, **variant: bool) -> dict[str, Any]:
        """Serve the config ``variant`` (SIGHUP); the config API once it ran."""
        before = self.api("config")["reloads"]
        (self.folder / "meshbridge.toml").write_text(config_text(self.folder, **variant))
        self.process.send_signal(signal.SIGHUP)
        wait_until("the reload", lambda: self.api("config")["reloads"] != before)
        config: dict[str, Any] = self.api("config")
        return config

    def recorded(self, count: int) -> list[dict[str, Any]]:
        """The ledger's newest calls, once it holds at least ``count``."""
        wait_until(f"{count} calls in the ledger", lambda: len(self.calls()) >= count)
        return self.calls()

    def calls(self, query: str = "") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api(f"calls?limit=1000{query}")["calls"]
        return found


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServer]:
    folder = tmp_path_factory.mktemp("admin")
    config = folder / "meshbridge.toml"
    config.write_text(config_text(folder))
    log = folder / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["MB_BROWSER_ADMIN_TOKEN"] = ADMIN_TOKEN
    env["XDG_RUNTIME_DIR"] = str(folder)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "meshbridge", "serve", str(config)],
            stdout=out, stderr=out, cwd=folder, env=env,
        )  # fmt: skip
    try:
        pattern = re.compile(r"on (http://127\.0\.0\.1:\d+) .*admin on (http://[\d.:]+)")
        found: list[re.Match[str]] = []

        def started() -> bool:
            assert process.poll() is None, log.read_text()
            found[:] = [m for m in [pattern.search(log.read_text())] if m]
            return bool(found)

        wait_until("meshbridge serve to start", started, _START_TIMEOUT)
        yield AdminServer(process, folder, found[0][1], found[0][2])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh context: no cookies, no cache."""
    fresh = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield fresh
    finally:
        fresh.close()


def sign_in(page: Page, server: AdminServer) -> None:
    """Open the admin page and sign in with the admin token."""
    page.goto(server.page)
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#live-providers")


def screenshot(page: Page, name: str) -> Path:
    """The page as it is now, as a test artefact (tests/artifacts/, gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"admin-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
