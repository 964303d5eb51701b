"""One worker of ``meshbridge serve --workers N``: the supervisor's config
generation served on the shared port (the rules are ``_workers.py``'s).

A worker reads its first message on the control socket (``_control.py``),
the config bytes to start with; it then answers, reloads into the bytes the
supervisor sends, asks it about peer nonces, and stops when it is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from aiohttp import web

from meshbridge import ConfigError

from ._config import load_config
from ._control import Channel, SupervisorNonces
from ._nonces import SharedNonces
from ._service import Service, serve_until_signalled
from ._worker_metrics import merged_families, metrics_handler, socket_path, worker_registry_app

__all__ = ["WorkerSpec", "address", "run_worker"]

log = logging.getLogger("meshbridge")


def address(host: str, port: int) -> str:
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
        admin = address(*self.admin) if self.admin else "-"
        return [f"--worker={self.index},{self.count},{self.control},{admin},{self.directory}"]

    @classmethod
    def parse(cls, value: str) -> WorkerSpec:
        index, count, control, admin, directory = value.split(",", 4)
        host, _, port = admin.rpartition(":")
        address = (host.strip("[]"), int(port)) if admin != "-" else None
        return cls(int(index), int(count), Path(directory), int(control), address)


async def run_worker(config_path: Path, host: str, port: int, spec: WorkerSpec) -> int:
    """Serve the supervisor's generation of ``config_path`` as worker
    ``spec.index``, until SIGTERM or the end of the control socket."""
    channel = await Channel.open(socket.socket(fileno=spec.control))
    try:
        return await _work(channel, config_path, host, port, spec)
    finally:
        await channel.aclose()


async def _work(channel: Channel, config_path: Path, host: str, port: int,
                spec: WorkerSpec) -> int:  # fmt: skip
    first = await channel.receive()
    if first is None or first[0] != "config":
        log.error("worker %d: no config from the supervisor", spec.index)
        return 1
    try:
        config = load_config(config_path, content=first[2])
    except ConfigError as exc:
        log.error("worker %d: the supervisor's config is rejected:\n%s", spec.index, exc)
        return 1
    service = Service(config, host=host, port=port, reuse_port=True, admin=spec.admin)
    service.gateway.worker = spec.index
    nonces = SupervisorNonces(channel)
    shared = service.gateway.peers.nonces
    service.gateway.peers.nonces = nonces
    if isinstance(shared, SharedNonces):  # [store] url: replicas share them
        service.share_nonces(shared.store)  # and the supervisor stands in for it
    registry = service.mesh.registry
    service.gateway.metrics = metrics_handler(registry, spec.index, spec.count, spec.directory)
    service.gateway.worker_families = partial(
        merged_families, registry, spec.index, spec.count, spec.directory
    )
    private = web.AppRunner(worker_registry_app(registry), handle_signals=False, access_log=None)
    stopped = asyncio.Event()
    reloads = _Reloads(service)

    async def listen() -> None:
        while (message := await channel.receive()) is not None:
            word, args, payload = message
            if word == "nonce":
                nonces.answered(args)
            elif word == "reload":
                reloads.ask(payload)
        log.info("worker %d: the supervisor is gone, stopping", spec.index)
        nonces.gone()
        stopped.set()

    try:
        await service.start()
    except OSError as exc:
        log.error("worker %d: cannot listen on %s: %s", spec.index, address(host, port), exc)
        return 1
    listening = asyncio.create_task(listen())
    try:
        await private.setup()
        await web.UnixSite(private, str(socket_path(spec.directory, spec.index))).start()
        channel.send("ready")
        log.info("worker %d (pid %d) is serving", spec.index, os.getpid())
        await serve_until_signalled(
            service, stopped, pid_file=False, on_hup=lambda: channel.send("hup")
        )
    finally:
        listening.cancel()
        await asyncio.gather(listening, *reloads.running, return_exceptions=True)
        await private.cleanup()
        await service.aclose()
    return 0


class _Reloads:
    """A worker's reloads, one at a time; those asked meanwhile come down to
    the latest (a burst of SIGHUPs is one more reload, not a queue of them)."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._next: bytes | None = None
        self.running: set[asyncio.Task[None]] = set()

    def ask(self, content: bytes) -> None:
        self._next = content
        if not self.running:
            task = asyncio.create_task(self._run())
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run(self) -> None:
        while self._next is not None:
            content, self._next = self._next, None
            await self._service.reloader.reload(content)
