"""Reloading a config into a running service: atomic, and never half-applied."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshbridge import ProviderNotFound
from meshbridge.service import Service, load_config

BODY = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


def config(reply_tokens: int, *, extra: str = "", fail_every: int = 0) -> str:
    return f"""
[server]
grace_period = 5.0
[providers.local]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
reply_tokens = {reply_tokens}
fail_every = {fail_every}
{extra}
"""


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[Service, Path]]:
    path = tmp_path / "meshbridge.toml"
    path.write_text(config(5))
    service = Service(load_config(path), port=0)
    await service.start()
    yield service, path
    await service.aclose()


def reloads(service: Service, result: str) -> float:
    value = service.mesh.registry.get_sample_value(
        "meshbridge_config_reloads_total", {"result": result}
    )
    return value or 0.0


async def tokens_streamed(service: Service, provider: str = "local") -> int:
    async with (
        service.mesh.session(source="agents") as session,
        session.post(f"http://{provider}/v1/chat/completions", json=BODY) as response,
    ):
        lines = [line async for line in response.content]
    return sum(b'"delta": {"content":' in line or b'"delta":{"content":' in line for line in lines)


async def test_a_reload_swaps_the_table(started: tuple[Service, Path]) -> None:
    service, path = started
    path.write_text(config(3, extra='[providers.second]\nkind = "fake"\n'))
    assert await service.reloader.reload()
    assert service.mesh.providers == ("local", "second")
    assert await tokens_streamed(service) == 3
    assert reloads(service, "success") == 1

    path.write_text(config(3))
    assert await service.reloader.reload()
    with pytest.raises(ProviderNotFound):
        await tokens_streamed(service, "second")


async def test_streams_running_during_a_reload_finish_on_the_old_provider(
    started: tuple[Service, Path],
) -> None:
    service, path = started
    async with (
        service.mesh.session(source="agents") as session,
        session.post("http://local/v1/chat/completions", json=BODY) as response,
    ):
        first = await response.content.readline()
        path.write_text(config(2))
        assert await service.reloader.reload()
        assert await tokens_streamed(service) == 2  # new requests reach the new app
        rest = await response.read()
    assert first.startswith(b"data: ")
    assert rest.count(b'"content":') == 5  # the old app, 5 tokens; plus the role chunk's ""
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_a_bad_config_leaves_the_table_untouched(
    started: tuple[Service, Path], caplog: pytest.LogCaptureFixture
) -> None:
    service, path = started
    path.write_text(config(2, extra='[providers.broken]\nkind = "nope"\n'))
    with caplog.at_level(logging.ERROR, logger="meshbridge"):
        assert not await service.reloader.reload()
    assert service.mesh.providers == ("local",)
    assert await tokens_streamed(service) == 5
    assert (reloads(service, "failure"), reloads(service, "success")) == (1, 0)
    assert "providers.broken.kind: expected one of" in caplog.text
    assert "the running table is unchanged" in caplog.text


async def test_unchanged_providers_keep_their_running_app(tmp_path: Path) -> None:
    path = tmp_path / "meshbridge.toml"
    path.write_text(config(5, fail_every=2))
    async with Service(load_config(path), port=0) as service, service.mesh.session() as session:
        async with session.post("http://local/v1/chat/completions", json=BODY) as response:
            assert response.status == 200
        path.write_text(config(5, fail_every=2, extra='[providers.more]\nkind = "fake"\n'))
        assert await service.reloader.reload()
        # the same app counts on: its second generation fails, as configured
        async with session.post("http://local/v1/chat/completions", json=BODY) as response:
            assert response.status == 500
