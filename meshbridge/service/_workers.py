"""``meshbridge serve --workers N``: N processes on one port, and the
supervisor that keeps them.

Rules of the supervisor:

1. It binds the listening address (and ``admin_listen``) first, with
   ``SO_REUSEPORT`` and without listening, so the port is ours (port 0 picks
   one) and each worker then listens on that same address with
   ``SO_REUSEPORT``: the kernel spreads new connections over the workers
   that listen, and a connection never reaches the supervisor. Before that
   it binds each address plainly, without ``SO_REUSEPORT``, so an address in
   use (by anything, another ``serve --workers`` of this user included) is an
   error before any worker starts.
2. Each worker is ``python -m meshbridge serve CONFIG`` with its own mesh,
   started with one end of a socket pair, its control socket
   (``_control.py``): it stops (as on SIGTERM) when the supervisor's end
   closes, so a supervisor killed outright leaves no worker behind.
3. The supervisor owns the config generation: it reads the file at start and
   on SIGHUP, and hands those very bytes to every worker (at its start, and
   as a reload), so all workers serve one generation: a restarted worker
   gets the supervisor's, never a file edited since. A worker that gets
   SIGHUP (``meshbridge reload --pid WORKER``) asks the supervisor, which
   reloads them all. Workers start with SIGHUP blocked until their handler
   is in place, so a reload never kills one.
4. A worker that exits while the server is not stopping is started again,
   at once if it ran a while, after a growing pause (up to 10 s) if it keeps
   dying at start. Its requests in flight are lost with it; the others' are not.
5. SIGTERM or SIGINT is relayed as SIGTERM, every worker drains (its
   requests in flight get ``grace_period`` of the current generation, once),
   and the supervisor exits when they have. A worker still there 5 s past
   that is killed.
6. The supervisor writes the pid file, so ``meshbridge reload CONFIG``
   signals it; it remembers the nonces of signed peer requests for all its
   workers (``_nonces.py``), so a signature is accepted once per server.

A worker's side is ``_worker.py``; ``/metrics`` on any worker reports the whole
server: see ``_worker_metrics.py``.
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
from collections.abc import Iterator
from pathlib import Path

from meshbridge import ConfigError

from ._config import Config, load_config
from ._control import Channel, Message
from ._nonces import LocalNonces, NoncesFull
from ._pidfile import PidFileError, pid_file_for, remove_pid_file, running_serve, write_pid_file
from ._toml import read_bytes
from ._worker import WorkerSpec, address

__all__ = ["supervise"]

log = logging.getLogger("meshbridge")

_KILL_AFTER = 5.0  # seconds past the grace period before a draining worker is killed
_STEADY = 5.0  # a worker that ran this long restarts at once
_MAX_PAUSE = 10.0


def _reserve(host: str, port: int) -> socket.socket:
    """A bound, not listening, ``SO_REUSEPORT`` socket holding the address,
    once a plain bind showed that nothing else holds it (rule 1).

    Raises:
        OSError: the address is in use, or not ours to bind.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    if port:
        with socket.socket(family, kind, proto) as probe:  # SO_REUSEPORT would share it
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def _sighup_blocked() -> Iterator[None]:
    """SIGHUP blocked in this thread, so a child started meanwhile inherits it
    blocked (rule 3): the worker unblocks it once its handler is in place."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- the supervisor -----------------------------------------------------------------


class _Worker:
    """A worker process as the supervisor holds it."""

    def __init__(self, process: asyncio.subprocess.Process, channel: Channel) -> None:
        self.process, self.channel = process, channel
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.talk: asyncio.Task[None] | None = None


class _Supervisor:
    def __init__(self, config: Config, content: bytes, host: str, port: int, count: int) -> None:
        self.config, self.content = config, content  # the generation (rule 3)
        self.host, self.port, self.count = host, port, count
        self.admin: tuple[str, int] | None = None
        self.directory = Path(tempfile.mkdtemp(prefix="meshbridge-workers-"))  # mode 0700
        self.workers: dict[int, _Worker] = {}
        self.nonces = LocalNonces()
        self.stopping = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._reload_pending = False
        self._reloads: set[asyncio.Task[None]] = set()

    @property
    def processes(self) -> list[asyncio.subprocess.Process]:
        return [worker.process for worker in self.workers.values()]

    async def spawn(self, index: int) -> _Worker:
        ours, theirs = socket.socketpair()
        spec = WorkerSpec(index, self.count, self.directory, theirs.fileno(), self.admin)
        try:
            with _sighup_blocked():
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "meshbridge", "serve", str(self.config.path),
                    "--listen", address(self.host, self.port), *spec.args(),
                    pass_fds=(theirs.fileno(),),
                )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = self.workers[index] = _Worker(process, await Channel.open(ours))
        worker.channel.send("config", payload=self.content)
        worker.talk = asyncio.create_task(self.talk(worker))
        return worker

    async def talk(self, worker: _Worker) -> None:
        """Answer a worker's messages until its channel ends."""
        try:
            while (message := await worker.channel.receive()) is not None:
                self.answer(worker, message)
        except ValueError:
            log.error("worker (pid %d) sent a malformed control message", worker.process.pid)

    def answer(self, worker: _Worker, message: Message) -> None:
        word, args, _ = message
        if word == "ready" and not worker.ready.done():
            worker.ready.set_result(None)
        elif word == "hup":
            self.request_reload()
        elif word == "nonce" and len(args) == 4:
            ask, key_id, nonce, _expires = args
            try:
                said = "first" if self.nonces.first_use_now(key_id, nonce) else "replayed"
            except NoncesFull:
                said = "full"
            worker.channel.send("nonce", ask, said)

    async def started(self, worker: _Worker) -> bool:
        """Whether the worker came to listen (False: it exited first)."""
        exited = asyncio.ensure_future(worker.process.wait())
        await asyncio.wait((worker.ready, exited), return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exited
        return worker.ready.done()

    async def keep(self, index: int, worker: _Worker) -> None:
        """Wait for the worker to exit, and start it again unless stopping."""
        loop = asyncio.get_running_loop()
        pause = 0.5
        while True:
            began = loop.time()
            try:
                status = await worker.process.wait()
            finally:
                await self.forget(worker)
            if self.stopping.is_set():
                return
            ran = loop.time() - began
            pause = 0.5 if ran >= _STEADY else min(pause * 2, _MAX_PAUSE)
            wait = 0.0 if ran >= _STEADY else pause
            again = f" in {wait:g}s" if wait else ""
            log.warning("worker %d (pid %d) exited with status %s: starting it again%s",
                        index, worker.process.pid, status, again)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            worker = await self.spawn(index)
            if self.stopping.is_set():  # began while it was being started: it drains too
                worker.process.send_signal(signal.SIGTERM)
            elif await self.started(worker):
                log.info("worker %d started again (pid %d)", index, worker.process.pid)

    async def forget(self, worker: _Worker) -> None:
        if worker.talk is not None:
            worker.talk.cancel()
            await asyncio.gather(worker.talk, return_exceptions=True)
        await worker.channel.aclose()

    def request_reload(self) -> None:
        """Reload soon: requests that come before it starts are one reload."""
        if self._reload_pending:
            return
        self._reload_pending = True
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        """Read the file and hand it to every worker (rule 3); a valid one
        becomes the generation that restarted workers get."""
        async with self._reloading:
            self._reload_pending = False  # a request from now on reads the file again
            path = self.config.path
            try:
                content = read_bytes(path)
            except ConfigError as exc:
                log.error("config reload rejected, the running table is unchanged:\n%s", exc)
                return
            try:
                config = load_config(path, content=content)
            except ConfigError:
                log.warning("config reload: %s has errors, the workers will reject it", path)
            else:
                self.config, self.content = config, content
            for worker in self.workers.values():
                worker.channel.send("reload", payload=content)  # they count its result

    def relay(self, signum: signal.Signals) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def drain(self, keepers: list[asyncio.Task[None]]) -> None:
        self.stopping.set()
        self.relay(signal.SIGTERM)
        grace = self.config.server.grace_period  # the current generation's (rule 5)
        try:
            async with asyncio.timeout(grace + _KILL_AFTER):
                await asyncio.gather(*(p.wait() for p in self.processes), *keepers)
        except TimeoutError:
            log.error("workers still running %gs after the grace period: killing them",
                      _KILL_AFTER)  # fmt: skip
            self.relay(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self.processes))

    async def aclose(self) -> None:
        await asyncio.gather(*self._reloads, return_exceptions=True)
        for worker in self.workers.values():
            await self.forget(worker)
        shutil.rmtree(self.directory, ignore_errors=True)


async def supervise(config_path: Path, listen: tuple[str, int] | None, count: int) -> int:
    """Run ``count`` workers of ``config_path`` on one port (see the module's
    rules) until SIGTERM/SIGINT; the exit status of ``serve``."""
    try:
        content = read_bytes(config_path)
        config = load_config(config_path, content=content)
    except ConfigError as exc:
        for line in exc.lines():
            print(line)
        return 1
    other = running_serve(pid_file_for(config), config.path)
    if other is not None:
        log.error("`meshbridge serve %s` already runs (pid %d, pid file %s): not starting "
                  "another", config.path, other, pid_file_for(config))  # fmt: skip
        return 1
    host, port = listen if listen else (config.server.host, config.server.port)
    held: list[socket.socket] = []
    tried = address(host, port)
    try:
        held.append(_reserve(host, port))
        port = held[0].getsockname()[1]
        admin = None
        if config.server.admin is not None:
            tried = address(*config.server.admin)
            held.append(_reserve(*config.server.admin))
            admin = (config.server.admin[0], held[1].getsockname()[1])
    except OSError as exc:
        log.error("cannot listen on %s: %s", tried, exc)
        for sock in held:
            sock.close()
        return 1
    supervisor = _Supervisor(config, content, host, port, count)  # its directory, after the binds
    supervisor.admin = admin
    try:
        return await _run(supervisor)
    finally:
        for sock in held:
            sock.close()
        await supervisor.aclose()


async def _run(supervisor: _Supervisor) -> int:
    loop = asyncio.get_running_loop()
    keepers: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, supervisor.request_reload)
    pid_file = pid_file_for(supervisor.config)
    log.info("starting %d workers of %s (pid %d)", supervisor.count, supervisor.config.path,
             os.getpid())  # fmt: skip
    try:
        spawned = [await supervisor.spawn(index) for index in range(supervisor.count)]
        up = await asyncio.gather(*(supervisor.started(worker) for worker in spawned))
        for index, worker in enumerate(spawned):
            keepers.append(loop.create_task(supervisor.keep(index, worker)))
        if not all(up):
            log.error("worker %d exited at start: stopping", up.index(False))
            await supervisor.drain(keepers)
            return 1
        try:
            write_pid_file(pid_file)
        except PidFileError as exc:
            log.warning("cannot write the pid file (%s): `meshbridge reload` needs --pid %d",
                        exc, os.getpid())  # fmt: skip
        pids = ", ".join(str(p.pid) for p in supervisor.processes)
        admin = f", admin on http://{address(*supervisor.admin)}" if supervisor.admin else ""
        log.info("serving %d workers on http://%s (pid %d, workers %s, pid file %s, "
                 "worker metrics in %s%s)", supervisor.count,
                 address(supervisor.host, supervisor.port), os.getpid(), pids, pid_file,
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
