"""``meshbridge serve --workers N``: N processes on one port, and the
supervisor that keeps them.

Rules of the supervisor:

1. It binds the listening address (and ``admin_listen``) first, with
   ``SO_REUSEPORT`` and without listening, so the port is ours (port 0 picks
   one) and a port taken by anything else is an error before any worker
   starts. Each worker then listens on that same address with
   ``SO_REUSEPORT``: the kernel spreads new connections over the workers
   that listen, and a connection never reaches the supervisor.
2. Each worker is ``python -m meshbridge serve CONFIG`` with its own mesh,
   started with one end of a socket pair: it writes a byte there once it
   listens, and stops (as on SIGTERM) when the supervisor's end closes, so a
   supervisor killed outright leaves no worker behind.
3. A worker that exits while the server is not stopping is started again,
   at once if it ran a while, after a growing pause (up to 10 s) if it keeps
   dying at start. Its requests in flight are lost with it; the others' are not.
4. SIGHUP is relayed to every worker (each reloads the config and logs the
   result); SIGTERM or SIGINT is relayed as SIGTERM, every worker drains
   (its requests in flight get ``grace_period``, once), and the supervisor
   exits when they have. A worker still there 5 s past that is killed.
5. The supervisor writes the pid file, so ``meshbridge reload CONFIG``
   signals it and it relays.

``/metrics`` on any worker reports the whole server: see ``_worker_metrics.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from meshbridge import ConfigError

from ._config import Config, load_config
from ._pidfile import PidFileError, pid_file_for, remove_pid_file, write_pid_file
from ._service import Service, serve_until_signalled
from ._worker_metrics import metrics_handler, socket_path, worker_registry_app

__all__ = ["WorkerSpec", "run_worker", "supervise"]

log = logging.getLogger("meshbridge")

_KILL_AFTER = 5.0  # seconds past the grace period before a draining worker is killed
_STEADY = 5.0  # a worker that ran this long restarts at once
_MAX_PAUSE = 10.0


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker is told on its command line (``serve --worker ...``)."""

    index: int
    count: int
    directory: Path  # where the workers' private metrics sockets are
    control: int  # its end of the socket pair with the supervisor
    admin: tuple[str, int] | None

    def args(self) -> list[str]:
        admin = _address(*self.admin) if self.admin else "-"
        return [f"--worker={self.index},{self.count},{self.control},{admin},{self.directory}"]

    @classmethod
    def parse(cls, value: str) -> WorkerSpec:
        index, count, control, admin, directory = value.split(",", 4)
        host, _, port = admin.rpartition(":")
        address = (host.strip("[]"), int(port)) if admin != "-" else None
        return cls(int(index), int(count), Path(directory), int(control), address)


def _reserve(host: str, port: int) -> socket.socket:
    """A bound, not listening, ``SO_REUSEPORT`` socket holding the address."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


# -- the worker ---------------------------------------------------------------------


async def run_worker(config: Config, host: str, port: int, spec: WorkerSpec) -> int:
    """Serve ``config`` as worker ``spec.index``, until SIGTERM or the
    supervisor's end of the control socket closes."""
    loop = asyncio.get_running_loop()
    control = socket.socket(fileno=spec.control)
    control.setblocking(False)
    service = Service(config, host=host, port=port, reuse_port=True, admin=spec.admin)
    service.gateway.worker = spec.index
    registry = service.mesh.registry
    service.gateway.metrics = metrics_handler(registry, spec.index, spec.count, spec.directory)
    private = web.AppRunner(worker_registry_app(registry), handle_signals=False, access_log=None)
    stopped = asyncio.Event()

    def supervisor_gone() -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            if not control.recv(1):
                log.info("worker %d: the supervisor is gone, stopping", spec.index)
                loop.remove_reader(control)
                stopped.set()

    try:
        await service.start()
    except OSError as exc:
        log.error("worker %d: cannot listen on %s: %s", spec.index, _address(host, port), exc)
        control.close()
        return 1
    try:
        await private.setup()
        await web.UnixSite(private, str(socket_path(spec.directory, spec.index))).start()
        loop.add_reader(control, supervisor_gone)
        await loop.sock_sendall(control, b"r")
        log.info("worker %d (pid %d) is serving", spec.index, os.getpid())
        await serve_until_signalled(service, stopped, pid_file=False)
    finally:
        loop.remove_reader(control)
        control.close()
        await private.cleanup()
        await service.aclose()
    return 0


# -- the supervisor -----------------------------------------------------------------


class _Supervisor:
    def __init__(self, config: Config, config_path: Path, host: str, port: int, count: int):
        self.config, self.config_path = config, config_path
        self.host, self.port, self.count = host, port, count
        self.admin: tuple[str, int] | None = None
        self.directory = Path(tempfile.mkdtemp(prefix="meshbridge-workers-"))  # mode 0700
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()

    async def spawn(self, index: int) -> tuple[asyncio.subprocess.Process, socket.socket]:
        ours, theirs = socket.socketpair()
        spec = WorkerSpec(index, self.count, self.directory, theirs.fileno(), self.admin)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshbridge", "serve", str(self.config_path),
                "--listen", _address(self.host, self.port), *spec.args(),
                pass_fds=(theirs.fileno(),),
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.processes[index] = process
        return process, ours

    async def started(self, process: asyncio.subprocess.Process, control: socket.socket) -> bool:
        """Whether the worker came to listen (False: it exited first)."""
        loop = asyncio.get_running_loop()
        control.setblocking(False)
        ready = asyncio.ensure_future(loop.sock_recv(control, 1))
        exited = asyncio.ensure_future(process.wait())
        await asyncio.wait((ready, exited), return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
            return False
        exited.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exited
        return bool(ready.result())

    async def keep(self, index: int, process: asyncio.subprocess.Process,
                   control: socket.socket) -> None:  # fmt: skip
        """Wait for the worker to exit, and start it again unless stopping."""
        loop = asyncio.get_running_loop()
        pause = 0.5
        while True:
            began = loop.time()
            try:
                status = await process.wait()
            finally:
                control.close()
            if self.stopping.is_set():
                return
            ran = loop.time() - began
            pause = 0.5 if ran >= _STEADY else min(pause * 2, _MAX_PAUSE)
            wait = 0.0 if ran >= _STEADY else pause
            log.warning("worker %d (pid %d) exited with status %s: starting it again%s",
                        index, process.pid, status, f" in {wait:g}s" if wait else "")  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            process, control = await self.spawn(index)
            if self.stopping.is_set():  # began while it was being started: it drains too
                process.send_signal(signal.SIGTERM)
            elif await self.started(process, control):
                log.info("worker %d started again (pid %d)", index, process.pid)

    def relay(self, signum: signal.Signals) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def drain(self, keepers: list[asyncio.Task[None]]) -> None:
        self.stopping.set()
        self.relay(signal.SIGTERM)
        grace = self.config.server.grace_period
        try:
            async with asyncio.timeout(grace + _KILL_AFTER):
                await asyncio.gather(*(p.wait() for p in self.processes.values()), *keepers)
        except TimeoutError:
            log.error("workers still running %gs after the grace period: killing them",
                      _KILL_AFTER)  # fmt: skip
            self.relay(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self.processes.values()))


async def supervise(config_path: Path, listen: tuple[str, int] | None, count: int) -> int:
    """Run ``count`` workers of ``config_path`` on one port (see the module's
    rules) until SIGTERM/SIGINT; the exit status of ``serve``."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line)
        return 1
    host, port = listen if listen else (config.server.host, config.server.port)
    held: list[socket.socket] = []
    tried = _address(host, port)
    try:
        held.append(_reserve(host, port))
        port = held[0].getsockname()[1]
        supervisor = _Supervisor(config, config_path, host, port, count)
        if config.server.admin is not None:
            tried = _address(*config.server.admin)
            held.append(_reserve(*config.server.admin))
            supervisor.admin = (config.server.admin[0], held[1].getsockname()[1])
    except OSError as exc:
        log.error("cannot listen on %s: %s", tried, exc)
        for sock in held:
            sock.close()
        return 1
    try:
        return await _run(supervisor)
    finally:
        for sock in held:
            sock.close()
        shutil.rmtree(supervisor.directory, ignore_errors=True)


async def _run(supervisor: _Supervisor) -> int:
    loop = asyncio.get_running_loop()
    keepers: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, supervisor.relay, signal.SIGHUP)
    pid_file = pid_file_for(supervisor.config)
    try:
        spawned = [await supervisor.spawn(index) for index in range(supervisor.count)]
        up = await asyncio.gather(*(supervisor.started(*pair) for pair in spawned))
        for index, (process, control) in enumerate(spawned):
            keepers.append(loop.create_task(supervisor.keep(index, process, control)))
        if not all(up):
            log.error("worker %d exited at start: stopping", up.index(False))
            await supervisor.drain(keepers)
            return 1
        try:
            write_pid_file(pid_file)
        except PidFileError as exc:
            log.warning("cannot write the pid file (%s): `meshbridge reload` needs --pid %d",
                        exc, os.getpid())  # fmt: skip
        pids = ", ".join(str(p.pid) for p in supervisor.processes.values())
        admin = f", admin on http://{_address(*supervisor.admin)}" if supervisor.admin else ""
        log.info("serving %d workers on http://%s (pid %d, workers %s, pid file %s, "
                 "worker metrics in %s%s)", supervisor.count,
                 _address(supervisor.host, supervisor.port), os.getpid(), pids, pid_file,
                 supervisor.directory, admin)  # fmt: skip
        await stop.wait()
        grace = supervisor.config.server.grace_period
        log.info("stopping %d workers, in-flight requests get %gs", supervisor.count, grace)
        await supervisor.drain(keepers)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        remove_pid_file(pid_file)
        for task in keepers:
            task.cancel()
        if keepers:
            await asyncio.gather(*keepers, return_exceptions=True)
        supervisor.relay(signal.SIGKILL)  # only if something above failed midway
    log.info("stopped")
    return 0
