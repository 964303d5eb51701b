"""`meshbridge serve --workers N`: several processes on one port, one supervisor.

Real `python -m meshbridge` processes on 127.0.0.1, with XDG_RUNTIME_DIR
pointing at a private directory of the test; each request that must be free
to reach either worker goes on a new connection (the kernel picks the worker
per connection).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from meshbridge.service._worker_metrics import merge

from .conftest import Run
from .test_cli import scrape, text, wait_for
from .test_process import AUTH, CONFIG, GRACE, STREAM

# serve processes with wall-clock bounds: one xdist worker runs them one after another
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serve-processes")]

QUICK = {**STREAM, "stream": False}
K = 20  # requests counted in the metrics test


async def serving(run: Run, config: Path, *extra: str) -> tuple[
    asyncio.subprocess.Process, Path, str, list[int], Path
]:  # fmt: skip
    """Start two workers of ``config``: the supervisor, its log, the URL,
    the workers' pids and the directory of their metrics sockets."""
    process, log = await run("serve", str(config), "--workers", "2", *extra)
    match = await wait_for(
        log,
        r"serving 2 workers on (http://127\.0\.0\.1:\d+) .*workers (\d+), (\d+).* in (\S+?)[,)]",
    )
    return process, log, match[1], [int(match[2]), int(match[3])], Path(match[4])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "meshbridge.toml"
    path.write_text(CONFIG)
    return path


async def worker_of(url: str) -> int:
    """The worker that answers ``/healthz`` on a new connection."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{url}/healthz") as response,
    ):
        body = await response.json()
    assert isinstance(body["worker"], int)
    return body["worker"]


async def both_answer(url: str) -> set[int]:
    seen: set[int] = set()
    for _ in range(60):  # both never answering would take a 1-in-2**59 draw
        seen.add(await worker_of(url))
        if seen == {0, 1}:
            break
    return seen


async def own_requests(directory: Path, worker: int) -> float:
    """The requests worker ``worker`` counts in its own registry."""
    connector = aiohttp.UnixConnector(path=str(directory / f"worker-{worker}.sock"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://worker/metrics") as response,
    ):
        text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
        total += sum(s.value for s in family.samples if s.name == "meshbridge_requests_total")
    return total


async def stop(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0


# -- one port, two workers, one /metrics ----------------------------------------------


async def test_two_workers_answer_on_one_port_and_metrics_sum_their_counters_exactly(
    run: Run, config: Path
) -> None:
    process, _, url, _, directory = await serving(run, config)
    assert await both_answer(url) == {0, 1}
    connector = aiohttp.TCPConnector(force_close=True)  # each request may meet either worker
    async with aiohttp.ClientSession(headers=AUTH, connector=connector) as session:

        async def ask() -> int:
            async with session.post(f"{url}/quick/v1/chat/completions", json=QUICK) as response:
                await response.read()
                return response.status

        assert await asyncio.gather(*(ask() for _ in range(K))) == [200] * K
    own = [await own_requests(directory, worker) for worker in (0, 1)]
    assert sum(own) == K
    assert min(own) > 0  # both served some: the sum below is a sum
    samples = await scrape(url)
    requests = {k: v for k, v in samples.items() if k.startswith("meshbridge_requests_total{")}
    assert sum(requests.values()) == K
    assert samples[
        "meshbridge_request_duration_seconds_count{method=POST,provider=quick,source=api}"
    ] == K  # fmt: skip
    assert samples["meshbridge_workers_up{worker=0}"] == 1
    assert samples["meshbridge_workers_up{worker=1}"] == 1
    assert "meshbridge_requests_in_flight{provider=quick,source=api,worker=1}" in samples
    assert not [k for k in samples if "_created" in k]
    await stop(process)
    assert not directory.exists()


async def test_the_admin_listener_of_any_worker_reports_the_whole_server(
    run: Run, config: Path
) -> None:
    config.write_text(CONFIG.replace("[server]\n", '[server]\nadmin_listen = "127.0.0.1:0"\n'))
    process, log, url, _, _ = await serving(run, config)
    admin = (await wait_for(log, r"admin on (http://127\.0\.0\.1:\d+)"))[1]
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(f"{url}/quick/v1/chat/completions", json=QUICK) as response:
            assert response.status == 200
        async with session.get(f"{url}/metrics") as response:
            assert response.status == 404  # on the admin listener only
    assert await both_answer(admin) == {0, 1}
    for _ in range(4):  # whichever worker answers
        samples = await scrape(admin)
        requests = [v for k, v in samples.items() if k.startswith("meshbridge_requests_total{")]
        assert sum(requests) == 1
    await stop(process)


# -- the supervisor ----------------------------------------------------------------------


async def test_a_worker_that_dies_is_started_again(run: Run, config: Path) -> None:
    process, log, url, pids, _ = await serving(run, config)
    os.kill(pids[0], signal.SIGKILL)
    match = await wait_for(log, r"worker 0 started again \(pid (\d+)\)")
    assert int(match[1]) not in pids
    assert await both_answer(url) == {0, 1}
    samples = await scrape(url)
    assert samples["meshbridge_workers_up{worker=0}"] == 1
    await stop(process)


async def test_reload_through_the_pid_file_reloads_every_worker(run: Run, config: Path) -> None:
    process, log, url, _, _ = await serving(run, config)
    reload, out = await run("reload", str(config))  # the supervisor's pid file, then SIGHUP
    assert await reload.wait() == 0, text(out)
    assert f"sent SIGHUP to pid {process.pid}" in text(out)
    await wait_for(log, "(?s)config reloaded from.*config reloaded from")
    samples = await scrape(url)
    assert samples["meshbridge_config_reloads_total{result=success}"] == 2  # one per worker
    await stop(process)


@pytest.mark.wallclock
async def test_sigterm_drains_every_worker_with_the_grace_period_once(
    run: Run, config: Path
) -> None:
    process, log, url, _, _ = await serving(run, config)
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(headers=AUTH, connector=connector) as session:
        endless: list[aiohttp.ClientResponse] = []
        quick: list[aiohttp.ClientResponse] = []
        busy: set[str] = set()
        while busy != {"0", "1"}:  # until both workers have requests in flight
            assert len(endless) < 12, busy
            for name, started in (("endless", endless), ("quick", quick)):
                response = await session.post(f"{url}/{name}/v1/chat/completions", json=STREAM)
                assert (await response.content.readline()).startswith(b"data: ")
                started.append(response)
            samples = await scrape(url)
            busy = {
                m[1]
                for k, v in samples.items()
                if (m := re.match(r"meshbridge_requests_in_flight\{.*worker=(\d)", k)) and v
            }
        signalled = loop.time()
        process.send_signal(signal.SIGTERM)

        async def cut(response: aiohttp.ClientResponse) -> float:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()  # cut when the grace period ends
            return loop.time() - signalled

        cuts = await asyncio.gather(*map(cut, endless))
        rests = [await response.read() for response in quick]
        assert await process.wait() == 0
    assert all(rest.endswith(b"data: [DONE]\n\n") for rest in rests)
    # Every worker's streams are cut one grace period after the signal: a
    # worker drained after another would cut its own a period later. (When
    # they are cut, not when the supervisor exits: a loaded machine delays
    # the exit, not the cut.)
    assert min(cuts) >= GRACE, cuts
    assert max(cuts) < GRACE * 1.8, cuts
    assert "Traceback" not in text(log)


async def test_serve_workers_names_the_address_it_tried(run: Run, config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process, log = await run(
            "serve", str(config), "--workers", "2", "--listen", f"127.0.0.1:{port}"
        )
        assert await process.wait() == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in text(log)
    assert "worker 0" not in text(log)


async def test_a_worker_count_out_of_range_is_a_usage_error(run: Run, config: Path) -> None:
    process, log = await run("serve", str(config), "--workers", "0")
    assert await process.wait() == 2
    assert "expected a number of workers from 1 to 64, got '0'" in text(log)


# -- merging ---------------------------------------------------------------------------

ONE = """# TYPE jobs counter
jobs_total{kind="a"} 3.0
jobs_created{kind="a"} 1.7e9
# TYPE wait_seconds histogram
wait_seconds_bucket{le="0.1"} 1.0
wait_seconds_bucket{le="+Inf"} 2.0
wait_seconds_count 2.0
wait_seconds_sum 0.25
# TYPE busy gauge
busy 1.0
# EOF
"""
TWO = """# TYPE jobs counter
jobs_total{kind="a"} 4.0
# TYPE wait_seconds histogram
wait_seconds_bucket{le="0.1"} 1.0
wait_seconds_bucket{le="+Inf"} 5.0
wait_seconds_count 5.0
wait_seconds_sum 0.25
# TYPE busy gauge
busy 0.0
# EOF
"""


def test_merging_sums_counters_and_histograms_and_labels_gauges_by_worker() -> None:
    families = {f.name: f for f in merge([(0, ONE), (1, TWO), (2, None)])}
    assert [(s.name, s.labels, s.value) for s in families["jobs"].samples] == [
        ("jobs_total", {"kind": "a"}, 7.0)
    ]
    assert [(s.name, s.labels, s.value) for s in families["wait_seconds"].samples] == [
        ("wait_seconds_bucket", {"le": "0.1"}, 2.0),
        ("wait_seconds_bucket", {"le": "+Inf"}, 7.0),
        ("wait_seconds_count", {}, 7.0),
        ("wait_seconds_sum", {}, 0.5),
    ]
    assert [(s.labels, s.value) for s in families["busy"].samples] == [
        ({"worker": "0"}, 1.0),
        ({"worker": "1"}, 0.0),
    ]
    assert [(s.labels, s.value) for s in families["meshbridge_workers_up"].samples] == [
        ({"worker": "0"}, 1.0),
        ({"worker": "1"}, 1.0),
        ({"worker": "2"}, 0.0),
    ]
