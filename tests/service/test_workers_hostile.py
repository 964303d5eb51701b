"""`meshbridge serve --workers N` against hostile callers and careless
operators: one server is one server (one nonce cache, one port, one config
generation), whatever is sent to it and however it is signalled.

Real `python -m meshbridge` processes on 127.0.0.1 (the fixtures and helpers
of ``test_workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Exemplar

from meshbridge import ConfigError, Mesh
from meshbridge.providers import PEER_HEADER, sign_identity
from meshbridge.service import load_config
from meshbridge.service._worker_metrics import _Families, merge

from .conftest import Run
from .test_cli import scrape, text, wait_for
from .test_process import AUTH, CONFIG, STREAM
from .test_workers import serving, stop

pytestmark = pytest.mark.integration

SECRET = "a-peer-secret-of-at-least-32-bytes!"
PEERS = '[server.peers.edge]\nsecret_env = "MB_WORKERS_PEER_SECRET"\n'


async def on_one_connection(url: str, path: str, headers: dict[str, str]) -> tuple[int, int, str]:
    """``/healthz`` then ``path`` on one kept-alive connection: the worker
    that answered both, the status of ``path`` and its body."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{url}/healthz") as response:
            worker = (await response.json())["worker"]
        async with session.get(f"{url}{path}", headers=headers) as response:
            return worker, response.status, await response.text()


async def on_each_worker(url: str, path: str, headers: dict[str, str]) -> dict[int, list[int]]:
    """Statuses of ``path`` on new connections until each worker answered
    at least once (never both not tried: a 1-in-2**59 draw)."""
    seen: dict[int, list[int]] = {}
    for _ in range(60):
        worker, status, _ = await on_one_connection(url, path, headers)
        seen.setdefault(worker, []).append(status)
        if len(seen) == 2:
            break
    return seen


# -- 1. a signed peer header is accepted once per server --------------------------------


async def test_a_signed_header_is_accepted_once_by_the_server_across_workers_and_restarts(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_WORKERS_PEER_SECRET", SECRET)
    config = tmp_path / "peers.toml"
    config.write_text(CONFIG.replace("[providers.endless]", PEERS + "[providers.endless]"))
    process, log, url, pids, _ = await serving(run, config)
    path = "/quick/v1/models"
    value = sign_identity(SECRET.encode(), "1", "GET", path, "agents", None,
                          now=time.time(), nonce=secrets.token_urlsafe(16))  # fmt: skip
    replayed = {PEER_HEADER: value}
    seen = await on_each_worker(url, path, replayed)
    statuses = [status for both in seen.values() for status in both]
    assert set(seen) == {0, 1}
    assert sorted(statuses) == [200] + [401] * (len(statuses) - 1)  # once, on one worker
    accepted = next(worker for worker, both in seen.items() if 200 in both)

    os.kill(pids[accepted], signal.SIGKILL)  # a restarted worker does not forget either
    await wait_for(log, rf"worker {accepted} started again")
    again = await on_each_worker(url, path, replayed)
    assert accepted in again
    assert {status for both in again.values() for status in both} == {401}
    samples = await scrape(url)
    refused = samples["meshbridge_peer_auth_failures_total{peer=edge,reason=replayed}"]
    assert refused >= len(again[1 - accepted])  # the restarted worker counts from zero
    await stop(process)


# -- 2. one port, one server -----------------------------------------------------------


async def test_a_second_server_on_a_port_in_use_is_refused_before_any_worker_starts(
    run: Run, tmp_path: Path
) -> None:
    first = tmp_path / "first.toml"
    first.write_text(CONFIG)
    process, _, url, _, _ = await serving(run, first)
    second = tmp_path / "second.toml"
    second.write_text(CONFIG.replace("[providers.quick]", "[providers.other]"))
    port = url.rsplit(":", 1)[1]
    other, other_log = await run("serve", str(second), "--workers", "2",
                                 "--listen", f"127.0.0.1:{port}")  # fmt: skip
    assert await asyncio.wait_for(other.wait(), 20) == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in text(other_log)
    assert "worker 0" not in text(other_log)
    for _ in range(8):  # new connections: every one reaches the first server
        async with (
            aiohttp.ClientSession(headers=AUTH) as session,
            session.get(f"{url}/readyz") as response,
        ):
            assert (await response.json())["providers"] == ["endless", "quick"]
    await stop(process)


@pytest.mark.parametrize("admin", ["localhost", "0.0.0.0", "127.0.0.1"])
def test_admin_listen_on_the_listen_port_under_another_name_is_refused(
    tmp_path: Path, admin: str
) -> None:
    path = tmp_path / "admin.toml"
    server = f'[server]\nlisten = "127.0.0.1:8123"\nadmin_listen = "{admin}:8123"\n'
    path.write_text(server + '[providers.local]\nkind = "fake"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    ((key, message),) = caught.value.errors
    assert key == "server.admin_listen"
    assert "expected another address than listen (127.0.0.1:8123)" in message
    path.write_text(
        server.replace(':8123"\n', ':8124"\n', 1) + '[providers.local]\nkind = "fake"\n'
    )
    assert load_config(path).server.admin == (admin, 8123)


# -- 3, 4, 5. the supervisor owns the config generation ---------------------------------


async def test_after_a_reload_the_supervisor_drains_with_the_new_grace_period(
    run: Run, tmp_path: Path
) -> None:
    config = tmp_path / "grace.toml"
    config.write_text(CONFIG.replace("grace_period = 1.0", "grace_period = 0.1"))
    process, log, url, _, _ = await serving(run, config)
    config.write_text(CONFIG.replace("grace_period = 1.0", "grace_period = 5.5"))  # > 0.1 + 5
    process.send_signal(signal.SIGHUP)
    await wait_for(log, "(?s)config reloaded from.*config reloaded from")
    async with aiohttp.ClientSession(headers=AUTH) as session:
        endless = await session.post(f"{url}/endless/v1/chat/completions", json=STREAM)
        assert (await endless.content.readline()).startswith(b"data: ")
        process.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientPayloadError):
            await endless.read()
    assert await process.wait() == 0
    assert "killing them" not in text(log)
    assert "grace period over: cancelling 1 request(s) in flight" in text(log)  # the worker's


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except OSError:
        return []


async def test_sighup_while_workers_start_reloads_and_never_stops_the_server(
    run: Run, tmp_path: Path
) -> None:
    config = tmp_path / "hup.toml"
    config.write_text(CONFIG)
    process, log = await run("serve", str(config), "--workers", "2")
    for _ in range(2000):  # once it spawns, the supervisor's own handlers are in place
        if children(process.pid) or process.returncode is not None:
            break
        await asyncio.sleep(0.005)
    sent = 0
    for _ in range(2000):  # until it serves: at most 10 s of SIGHUPs
        if "serving 2 workers" in text(log) or process.returncode is not None:
            break
        for pid in [process.pid, *children(process.pid)]:  # the workers too, as they start
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
                sent += 1
        await asyncio.sleep(0.005)
    url = (await wait_for(log, r"serving 2 workers on (http://127\.0\.0\.1:\d+)"))[1]
    assert sent > 10
    assert "exited" not in text(log)
    assert process.returncode is None
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as response:
        assert response.status == 200
    await stop(process)


async def test_a_restarted_worker_serves_the_supervisors_generation_not_the_edited_file(
    run: Run, tmp_path: Path
) -> None:
    config = tmp_path / "generation.toml"
    config.write_text(CONFIG)
    process, log, url, pids, _ = await serving(run, config)
    config.write_text(CONFIG.replace("[providers.quick]", "[providers.edited]"))  # not reloaded
    os.kill(pids[0], signal.SIGKILL)
    await wait_for(log, r"worker 0 started again")
    ready = await providers_by_worker(url)
    assert ready == {0: ["endless", "quick"], 1: ["endless", "quick"]}
    await stop(process)


async def providers_by_worker(url: str) -> dict[int, list[str]]:
    seen: dict[int, list[str]] = {}
    for _ in range(60):
        worker, status, body = await on_one_connection(url, "/readyz", {})
        assert status == 200
        seen[worker] = json.loads(body)["providers"]
        if len(seen) == 2:
            break
    return seen


async def test_reload_of_one_workers_pid_reloads_the_whole_server(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "one.toml"
    config.write_text(CONFIG)
    process, log, url, pids, _ = await serving(run, config)
    config.write_text(CONFIG.replace("[providers.quick]", "[providers.renamed]"))
    reload, out = await run("reload", str(config), "--pid", str(pids[1]))
    assert await reload.wait() == 0, text(out)
    await wait_for(log, "(?s)config reloaded from.*config reloaded from")
    assert await providers_by_worker(url) == {0: ["endless", "renamed"], 1: ["endless", "renamed"]}
    samples = await scrape(url)
    assert samples["meshbridge_config_reloads_total{result=success}"] == 2
    await stop(process)


# -- 6. exemplars survive the merge ----------------------------------------------------


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def traced_worker_text() -> str:
    """The OpenMetrics text of a real traced mesh after one request."""
    app = web.Application()
    app.router.add_get("/", ok)
    mesh = Mesh(tracer_provider=TracerProvider())
    mesh.register("app", app)
    async with mesh, mesh.session() as session, session.get("http://app/") as response:
        await response.read()
    exposed: bytes = generate_latest(mesh.registry)  # type: ignore[no-untyped-call]
    return exposed.decode()


def exemplars(exposed: str) -> dict[tuple[str, str], Exemplar]:
    """(sample name, le) -> exemplar, of the latency histograms."""
    return {
        (s.name, s.labels["le"]): s.exemplar
        for f in text_string_to_metric_families(exposed)  # type: ignore[no-untyped-call]
        for s in f.samples
        if s.exemplar is not None
    }


async def test_merged_worker_metrics_keep_each_buckets_latest_exemplar() -> None:
    older = exemplars(first := await traced_worker_text())
    newer = exemplars(second := await traced_worker_text())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(merge([(0, second), (1, first)])))
    merged = exemplars(generate_latest(registry).decode())  # type: ignore[no-untyped-call]
    assert merged
    assert set(merged) == set(older) | set(newer)
    for bucket, kept in merged.items():
        candidates = [e for e in (older.get(bucket), newer.get(bucket)) if e is not None]
        latest = max(candidates, key=lambda e: e.timestamp or 0)
        assert kept.labels == latest.labels, bucket


# -- 14. the careless operator ----------------------------------------------------------


async def test_a_failed_admin_listen_leaves_no_workers_directory_behind(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "admin.toml"
        config.write_text(
            CONFIG.replace("[server]\n", f'[server]\nadmin_listen = "127.0.0.1:{port}"\n')
        )
        process, log = await run("serve", str(config), "--workers", "2")
        assert await asyncio.wait_for(process.wait(), 20) == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in text(log)
    assert list(temp.iterdir()) == []
