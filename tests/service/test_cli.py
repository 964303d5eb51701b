"""The `meshbridge` command: check, routes, serve, reload, demo."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshbridge.service import main

GOOD = """
[server]
listen = "127.0.0.1:0"
pid_file = "{pid_file}"
[server.clients.ci]
token = "a-token-for-the-tests"
source = "api"
[providers.local]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
[providers.openai]
kind = "openai"
upstream = "https://api.openai.com"
api_key_env = "MESHBRIDGE_TEST_KEY"
require_api_key_id = true
"""


@pytest.fixture
def good_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MESHBRIDGE_TEST_KEY", "sk-secret-value")
    path = tmp_path / "good.toml"
    path.write_text(GOOD.format(pid_file=tmp_path / "serve.pid"))
    return path


def test_check_a_clean_config(good_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(good_config)]) == 0
    assert capsys.readouterr().out == f"{good_config}: ok, 2 providers: local, openai\n"


def test_check_prints_every_error_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[server]\nlisten = "x"\n[providers.A]\nkind = "fake"\n[providers.b]\nkind = "?"\n'
    )
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: server.listen: expected HOST:PORT (such as '127.0.0.1:8080'), got 'x'",
        f"{path}: providers.A: invalid provider name 'A': expected lower-case letters and "
        "digits, words joined by single '-' (pattern ^[a-z0-9]+(-[a-z0-9]+)*$, at most 63 "
        "characters), because the name is the URL host callers use",
        f"{path}: providers.b.kind: expected one of: anthropic, fake, openai, remote; got '?'",
        "3 errors",
    ]


def test_routes_prints_the_table_without_secrets(
    good_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", str(good_config)]) == 0
    out = capsys.readouterr().out
    header, local, openai = out.splitlines()
    assert header.split() == ["NAME", "KIND", "UPSTREAM", "OPTIONS"]
    assert local.split()[:4] == ["local", "fake", "(in", "process)"]
    assert openai.split()[:3] == ["openai", "openai", "https://api.openai.com"]
    assert "api_key=$MESHBRIDGE_TEST_KEY" in openai
    assert "require_api_key_id=true" in openai
    assert "sk-secret-value" not in out


def test_reload_refuses_a_bad_config_and_needs_a_server(
    tmp_path: Path, good_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[providers.x]\n")
    assert main(["reload", str(bad)]) == 1
    assert "not reloading" in capsys.readouterr().out
    assert main(["reload", str(good_config)]) == 1  # nothing serves it
    assert "no running `meshbridge serve" in capsys.readouterr().out


class Spawn(Protocol):
    async def __call__(self, *args: str) -> tuple[asyncio.subprocess.Process, Path]: ...


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Run ``python -m meshbridge ARGS`` with output to a file; killed on teardown."""
    processes: list[asyncio.subprocess.Process] = []

    async def run(*args: str) -> tuple[asyncio.subprocess.Process, Path]:
        log = tmp_path / f"process-{len(processes)}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshbridge", *args, stdout=out, stderr=out
            )
        processes.append(process)
        return process, log

    yield run
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


def text(path: Path) -> str:
    return path.read_text()


def write(path: Path, content: str) -> None:
    path.write_text(content)


async def wait_for(log: Path, pattern: str, *, rounds: int = 1000) -> re.Match[str]:
    """The first match of ``pattern`` in a process's output, waiting for it."""
    for _ in range(rounds):
        match = re.search(pattern, text(log))
        if match:
            return match
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pattern!r} never appeared in:\n{text(log)}")


async def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page, keyed by name and labels."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


@pytest.mark.integration  # a real process
async def test_serve_reloads_on_request_and_stops_on_sigterm(
    spawn: Spawn,
    good_config: Path,
    tmp_path: Path,
) -> None:
    process, log = await spawn("serve", str(good_config))
    url = (await wait_for(log, r"serving local, openai on (http://127\.0\.0\.1:\d+)"))[1]
    pid_file = tmp_path / "serve.pid"
    assert text(pid_file).strip() == str(process.pid)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/local/v1/models", headers={"Authorization": "Bearer a-token-for-the-tests"}
        ) as response,
    ):
        assert response.status == 200
    await wait_for(log, r'"path":"/local/v1/models".*"status":200')

    reload = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshbridge", "reload", str(good_config),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert (await reload.communicate())[0].startswith(b"sent SIGHUP")
    await wait_for(log, "config reloaded from")
    write(good_config, "[providers.nope]\n")  # a bad config, signalled by pid
    os.kill(process.pid, signal.SIGHUP)
    await wait_for(log, r"config reload rejected.*\n.*providers\.nope\.kind")
    samples = await scrape(url)
    assert samples["meshbridge_config_reloads_total{result=success}"] == 1
    assert samples["meshbridge_config_reloads_total{result=failure}"] == 1

    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0
    assert not pid_file.exists()


@pytest.mark.integration  # a real process
async def test_demo_with_an_admin_listener_prints_the_admin_page_and_a_token_that_opens_it(
    spawn: Spawn,
) -> None:
    process, log = await spawn(
        "demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--duration", "3"
    )
    found = await wait_for(log, r"admin page: (http://127\.0\.0\.1:\d+)/admin/ \(token: (\S+)\)")
    admin, token = found[1], found[2]
    assert re.search(rf"metrics: {admin}/metrics", text(log))  # the admin listener's
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin}/admin/api/live") as r:
            assert r.status == 401
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{admin}/admin/api/config", headers=headers) as r:
            assert r.status == 200
            names = [p["name"] for p in (await r.json())["providers"]]
    assert names == ["local", "local-anthropic", "flaky"]
    assert await process.wait() == 0
    assert "config reloaded" in text(log)
    assert "restart" not in text(log)  # its reloads keep the admin listener as it is


@pytest.mark.integration  # a real process
@pytest.mark.wallclock  # the outage and the circuit's recovery must fit in its 10 s
async def test_demo_feeds_every_metric_family(
    spawn: Spawn,
) -> None:
    process, log = await spawn("demo", "--listen", "127.0.0.1:0", "--duration", "10")
    url = (await wait_for(log, r"metrics: (http://127\.0\.0\.1:\d+)/metrics"))[1]
    wanted: dict[str, Callable[[str], bool]] = {
        "requests completed": lambda k: "outcome=completed" in k,
        "requests cancelled": lambda k: "outcome=cancelled" in k,
        "requests failed": lambda k: "outcome=error" in k and "code=500" in k,
        "handler errors": lambda k: k.startswith("meshbridge_handler_errors_total"),
        "tokens": lambda k: k.startswith("meshbridge_tokens_total"),
        "time to first token": lambda k: k.startswith(
            "meshbridge_time_to_first_token_seconds_count"
        ),
        "reloads": lambda k: k == "meshbridge_config_reloads_total{result=success}",
        "all sources": lambda k: "source=batch" in k,
    }
    missing = set(wanted)
    for _ in range(400):
        samples = await scrape(url)
        missing = {
            w for w in missing if not any(v > 0 and wanted[w](k) for k, v in samples.items())
        }
        if not missing:
            break
        await asyncio.sleep(0.02)
    assert not missing
    assert await process.wait() == 0
    out = text(log)
    assert re.search(r"^provider\s+source\s+via\s+requests\s+errors", out, re.MULTILINE)
    # every provider gets both wire formats; streams show a time to first token
    # (the column after p50 and p95), so no row of streamed calls shows "-"
    for provider in ("local", "local-anthropic"):
        for wire in ("openai", "anthropic"):
            for source in ("agents", "api", "batch"):
                row = rf"^{provider}\s+{source}\s+mesh/{wire}(\s+\d+){{5}}\s+\d+\s"
                assert re.search(row, out, re.MULTILINE), (provider, wire, source)
    assert re.search(r"^local\s+api\s+http/openai\s+\d+", out, re.MULTILINE)
    # the outage of `flaky` opens its circuit, the fallback carries the route's
    # callers, and the circuit closes again once the outage is over
    assert re.search(r"^route chat: (9\d|100)\.\d% of \d+ calls succeeded", out, re.MULTILINE)
    resilience = re.search(r"^provider flaky: circuit opened (\d+)x, closed (\d+)x;", out, re.M)
    assert resilience is not None
    assert int(resilience[1]) >= 1
    assert int(resilience[2]) >= 1
    assert re.search(r"[1-9]\d* moved to a fallback", out)
