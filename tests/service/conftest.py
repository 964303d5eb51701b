"""Fixtures of the service tests: services and processes that stop on teardown."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from meshbridge.service import Service, load_config

from ..redis_server import RedisServer

ServiceFactory = Callable[..., Coroutine[Any, Any, Service]]  # (text, **Service kwargs)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Start a Service for a config text on a free port (keyword arguments go
    to Service); stopped on teardown."""
    services: list[Service] = []

    async def start(text: str, **kwargs: Any) -> Service:
        path = tmp_path / f"config-{len(services)}.toml"
        path.write_text(text)
        service = Service(load_config(path), port=0, **kwargs)
        await service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        await service.aclose()


def untraced_env() -> dict[str, str]:
    """The environment without coverage's subprocess measurement: these
    processes run under wall-clock bounds (grace periods), which the
    measurement's overhead would stretch."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}


class Run(Protocol):
    async def __call__(self, *args: str) -> tuple[asyncio.subprocess.Process, Path]: ...


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_RUNTIME_DIR, for the processes and for this one."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


@pytest.fixture
async def run(tmp_path: Path, runtime_dir: Path) -> AsyncIterator[Run]:
    """Start ``python -m meshbridge ARGS``, output to a file; killed on teardown."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> tuple[asyncio.subprocess.Process, Path]:
        log = tmp_path / f"process-{len(processes)}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshbridge", *args, stdout=out, stderr=out, cwd=tmp_path,
                env=untraced_env(),
            )  # fmt: skip
        processes.append(process)
        return process, log

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (tests keep apart by key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may kill and start again."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
