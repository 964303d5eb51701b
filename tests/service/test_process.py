"""The process around `meshbridge serve`: shutdown, pid file, reload, listen.

Every test here runs real `python -m meshbridge` processes on 127.0.0.1,
with XDG_RUNTIME_DIR pointing at a private directory of the test.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from meshbridge.service import Service, load_config, pid_file_for

from .conftest import Run
from .test_cli import scrape, text, wait_for

# serve processes with wall-clock bounds: one xdist worker runs them one after another
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serve-processes")]

TOKEN = "a-token-for-the-process-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STREAM = {
    "model": "fake-small",
    "messages": [{"role": "user", "content": "Hi"}],
    "stream": True,
}
# Long enough that once (GRACE) and twice (2 x GRACE) stay apart when a loaded
# machine slows the process's start and exit by a second.
GRACE = 2.0
CONFIG = f"""
[server]
listen = "127.0.0.1:0"
grace_period = {GRACE}
[server.clients.ci]
token = "{TOKEN}"
[providers.endless]                # 1000 tokens at 2 per second: never done in time
kind = "fake"
tokens_per_second = 2
time_to_first_token = 0
reply_tokens = 1000
[providers.quick]                  # done half a grace period after it starts
kind = "fake"
tokens_per_second = 0
time_to_first_token = {GRACE / 2}
reply_tokens = 3
"""


async def finished(run: Run, *args: str) -> tuple[int, str]:
    """Run a command to its end: its exit status and output."""
    process, log = await run(*args)
    return await process.wait(), text(log)


async def serving(run: Run, config: Path) -> tuple[asyncio.subprocess.Process, Path, str]:
    process, log = await run("serve", str(config))
    url = (await wait_for(log, r"serving [\w, -]+ on (http://127\.0\.0\.1:\d+)"))[1]
    return process, log, url


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "meshbridge.toml"
    path.write_text(CONFIG)
    return path


# -- shutdown -----------------------------------------------------------------------


@pytest.mark.wallclock
async def test_sigterm_gives_in_flight_requests_the_grace_period_once(
    run: Run, config: Path
) -> None:
    process, _, url = await serving(run, config)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(headers=AUTH) as session:
        endless = await session.post(f"{url}/endless/v1/chat/completions", json=STREAM)
        quick = await session.post(f"{url}/quick/v1/chat/completions", json=STREAM)
        for response in (endless, quick):  # the role chunk: both are in flight
            assert (await response.content.readline()).startswith(b"data: ")
        signalled = loop.time()
        process.send_signal(signal.SIGTERM)
        rest = await quick.read()
        with pytest.raises(aiohttp.ClientPayloadError):
            await endless.read()  # cut when the grace period ends
        assert await process.wait() == 0
        took = loop.time() - signalled
    assert rest.endswith(b"data: [DONE]\n\n")  # finished within the grace period
    # the grace period once plus a process exit; aiohttp's shutdown_timeout waited twice
    assert GRACE <= took < GRACE * 1.8, took


# -- pid file -----------------------------------------------------------------------


async def test_the_default_pid_file_is_private_and_never_written_through_a_link(
    run: Run, config: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    pid_file = pid_file_for(load_config(config))
    assert pid_file.parent == runtime_dir / "meshbridge"
    pid_file.parent.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    pid_file.symlink_to(victim)  # planted where the pid file goes

    process, _, _ = await serving(run, config)
    assert victim.read_text() == "precious\n"
    assert not pid_file.is_symlink()
    assert pid_file.read_text() == f"{process.pid}\n"
    assert pid_file.parent.stat().st_mode & 0o777 == 0o700
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0
    assert not pid_file.exists()


async def test_the_pid_file_directory_is_created_private(
    run: Run, config: Path, runtime_dir: Path
) -> None:
    process, _, _ = await serving(run, config)
    directory = runtime_dir / "meshbridge"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in directory.iterdir()] == [pid_file_for(load_config(config)).name]
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0


async def test_no_pid_file_in_a_directory_others_can_write(
    run: Run, config: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config.write_text(CONFIG.replace("[server]\n", f'[server]\npid_file = "{shared}/s.pid"\n'))
    process, log, _ = await serving(run, config)
    assert re.search(r"cannot write the pid file \(.*can be written by other users", text(log))
    assert not (shared / "s.pid").exists()

    (shared / "s.pid").write_text(f"{process.pid}\n")  # as anyone could
    status, out = await finished(run, "reload", str(config))
    assert status == 1
    assert "can be written by other users" in out
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0


async def ended_by(process: asyncio.subprocess.Process) -> int:
    """The signal that ends ``process``: SIGTERM now, unless another came first."""
    process.send_signal(signal.SIGTERM)
    return -await process.wait()


async def test_reload_never_signals_a_process_that_is_not_this_configs_serve(
    run: Run, config: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "serve.pid"
    config.write_text(CONFIG.replace("[server]\n", f'[server]\npid_file = "{pid_file}"\n'))
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")  # SIGHUP would end it
    pid_file.write_text(f"{sleeper.pid}\n")  # a stale pid file, its pid reused

    status, out = await finished(run, "reload", str(config))
    assert status == 1
    assert f"not reloading: pid {sleeper.pid} is not `meshbridge serve {config}`" in out
    status, out = await finished(run, "reload", "--pid", str(sleeper.pid))
    assert status == 1
    assert f"pid {sleeper.pid} is not `meshbridge serve`" in out
    assert await ended_by(sleeper) == signal.SIGTERM


async def test_reload_with_pid_checks_that_the_pid_serves_that_config(
    run: Run, config: Path, tmp_path: Path
) -> None:
    process, log = await run("serve", "meshbridge.toml")  # relative to where it runs
    url = (await wait_for(log, r"serving [\w, -]+ on (http://127\.0\.0\.1:\d+)"))[1]
    other = tmp_path / "other.toml"
    other.write_text(CONFIG)
    status, out = await finished(run, "reload", str(other), "--pid", str(process.pid))
    assert status == 1
    assert f"pid {process.pid} is not `meshbridge serve {other}`" in out
    other.write_text("[providers.x]\n")
    status, out = await finished(run, "reload", str(other), "--pid", str(process.pid))
    assert status == 1
    assert "not reloading: the server would reject this config" in out

    status, out = await finished(run, "reload", str(config), "--pid", str(process.pid))
    assert status == 0, out
    await wait_for(log, "config reloaded from")
    status, out = await finished(run, "reload", str(config))  # through the pid file
    assert status == 0, out
    await wait_for(log, "(?s)config reloaded from.*config reloaded from")
    samples = await scrape(url)
    assert samples["meshbridge_config_reloads_total{result=success}"] == 2
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0


# -- reloads of files that escaped error handling -----------------------------------


async def test_a_sighup_reload_of_an_unreadable_file_is_logged_and_counted(
    run: Run, config: Path
) -> None:
    process, log, url = await serving(run, config)
    config.write_bytes(b'[providers.local]\nkind = "fa\xffke"\n')
    process.send_signal(signal.SIGHUP)
    await wait_for(log, r"config reload rejected.*\n.*not UTF-8 text: byte 0xff at line 2")
    config.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    process.send_signal(signal.SIGHUP)
    await wait_for(log, r"config reload rejected.*\n.*nested deeper than 32 .* \(line 1\)")
    samples = await scrape(url)
    assert samples["meshbridge_config_reloads_total{result=failure}"] == 2
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0
    assert "Traceback" not in text(log)
    assert "Task exception was never retrieved" not in text(log)


# -- listen ---------------------------------------------------------------------------


async def test_serve_names_the_address_it_tried(run: Run, config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out = await finished(run, "serve", str(config), "--listen", f"127.0.0.1:{port}")
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in out


async def test_reloading_back_to_the_address_in_use_is_no_change(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meshbridge")
    async with Service(load_config(config)) as service:  # listens on the config's 127.0.0.1:0
        config.write_text(CONFIG.replace("127.0.0.1:0", "127.0.0.1:1"))
        assert await service.reloader.reload()
        assert "server.listen" in caplog.text  # restart to apply it
        caplog.clear()
        config.write_text(CONFIG)
        assert await service.reloader.reload()
        assert "server.listen" not in caplog.text


async def test_a_reload_that_changes_admin_listen_says_a_restart_is_needed(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meshbridge")
    async with Service(load_config(config)) as service:
        config.write_text(CONFIG.replace("[server]\n", '[server]\nadmin_listen = "127.0.0.1:0"\n'))
        assert await service.reloader.reload()  # the providers reload; the listener cannot
        assert "server.admin_listen is 127.0.0.1:0 in" in caplog.text
        assert "the admin listener is not started (admin_listen was unset): restart" in caplog.text
        assert service.admin_url is None
        caplog.clear()
        config.write_text(CONFIG)
        assert await service.reloader.reload()
        assert "admin_listen" not in caplog.text


@pytest.mark.integration
async def test_a_second_serve_of_a_running_config_is_refused_and_leaves_its_pid_file(
    run: Run, config: Path
) -> None:
    process, log, _ = await serving(run, config)
    pid_file = pid_file_for(load_config(config))
    second, second_log = await run("serve", str(config))
    assert await asyncio.wait_for(second.wait(), 20) == 1
    assert f"already runs (pid {process.pid}, pid file {pid_file})" in text(second_log)
    assert pid_file.read_text() == f"{process.pid}\n"
    status, out = await finished(run, "reload", str(config))  # still reaches the first one
    assert status == 0, out
    await wait_for(log, "config reloaded from")
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0
    assert not pid_file.exists()


def test_the_pid_file_is_not_in_a_shared_temp_dir(
    config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert pid_file_for(load_config(config)).parent == tmp_path / "state" / "meshbridge"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pid_file_for(load_config(config)).parent == tmp_path / ".local/state/meshbridge"
