"""Fixtures of the service tests: services that stop on teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from meshbridge.service import Service, load_config

ServiceFactory = Callable[[str], Coroutine[Any, Any, Service]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Start a Service for a config text on a free port; stopped on teardown."""
    services: list[Service] = []

    async def start(text: str) -> Service:
        path = tmp_path / f"config-{len(services)}.toml"
        path.write_text(text)
        service = Service(load_config(path), port=0)
        await service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        await service.aclose()
