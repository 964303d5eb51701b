"""Traffic policies and routes in config files: the operator's contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshbridge import CircuitBreaker, ConfigError, Fault, Mesh, Policy
from meshbridge.service import Service, load_config

FULL = """
[providers.primary]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
[providers.primary.policy]
timeout = 120.0
first_byte_timeout = 20.0
idle_timeout = 30.0
retries = 2
retry_on = [429, 502, 503, 504, 529, "connect-failure", "first-byte-timeout"]
retry_backoff = [0.1, 2.0]
retry_budget = 0.2
retry_floor = 3.0
replay_limit = 65536
fallback = ["backup"]
max_in_flight = 200
fallback_on_overload = true
circuit_breaker = { failures = 5, interval = 10.0, open_for = 30.0, max_open_for = 300.0, half_open = 3, on = [429, 500, 502, 503, 504, 529, "connect-failure", "first-byte-timeout", "timeout"] }
fault = { delay = 0.5, delay_ratio = 0.1, abort = 503, abort_ratio = 0.05 }

[providers.backup]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0
[providers.canary]
kind = "fake"
tokens_per_second = 0
time_to_first_token = 0

[routes.chat]
split = { primary = 90, canary = 10 }
sticky = "api_key_id"
"""  # noqa: E501


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshbridge.toml"
    path.write_text(text)
    return path


def test_every_policy_key_reads_into_the_same_policy_as_python(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.providers["primary"].policy == Policy(
        timeout=120.0,
        first_byte_timeout=20.0,
        idle_timeout=30.0,
        retries=2,
        fallback=("backup",),
        max_in_flight=200,
        fallback_on_overload=True,
        circuit_breaker=CircuitBreaker(failures=5, interval=10.0, open_for=30.0, half_open=3),
        fault=Fault(delay=0.5, delay_ratio=0.1, abort=503, abort_ratio=0.05),
    )
    assert config.providers["backup"].policy is None  # no policy table: as before policies
    assert dict(config.routes["chat"].split) == {"canary": 10, "primary": 90}
    assert config.routes["chat"].sticky == "api_key_id"


def test_a_policy_table_with_defaults_only_turns_nothing_on(tmp_path: Path) -> None:
    text = '[providers.a]\nkind = "fake"\n[providers.a.policy]\n'
    assert load_config(write(tmp_path, text)).providers["a"].policy == Policy()
    assert Policy().retries == 0
    assert Policy().circuit_breaker is None


def test_every_mistake_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    text = """
[providers.primary]
kind = "fake"
[providers.primary.policy]
retries = -1
retry_on = [429, "sometimes"]
retry_backoff = [2.0, 0.1]
fallback = ["ghost"]
circuit_breaker = { failures = 0, colour = 1 }
fault = { abort_ratio = 2 }
[routes.primary]
split = { primary = 1 }
[routes.chat]
split = { nobody = 1 }
sticky = "cookie"
"""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert [where for where, _ in caught.value.errors] == [
        "providers.primary.policy.retries",
        "providers.primary.policy.retry_on",
        "providers.primary.policy.retry_backoff",
        "providers.primary.policy.circuit_breaker.failures",
        "providers.primary.policy.circuit_breaker.colour",
        "providers.primary.policy.fault.abort_ratio",
        "routes.chat.sticky",
        "providers.primary.policy.fallback[0]",
        "routes.primary",
        "routes.chat.split.nobody",
    ]
    assert "no provider named 'ghost'" in str(caught.value)


async def test_a_route_from_a_config_splits_real_requests(tmp_path: Path) -> None:
    no_faults = "\n".join(line for line in FULL.splitlines() if not line.startswith("fault"))
    mesh = Mesh.from_config(write(tmp_path, no_faults.replace('sticky = "api_key_id"', "")))
    async with mesh, mesh.session() as session:
        for _ in range(20):
            body = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}
            async with session.post("http://chat/v1/chat/completions", json=body) as r:
                assert r.status == 200
    served = {
        provider: mesh.registry.get_sample_value(
            "meshbridge_route_requests_total", {"route": "chat", "provider": provider}
        )
        or 0
        for provider in ("primary", "canary")
    }
    assert sum(served.values()) == 20


async def test_a_reload_swaps_policies_and_routes_in_one_step(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    service = Service(load_config(path), port=0)
    await service.start()
    try:
        assert set(service.mesh.routes) == {"chat"}
        path.write_text(
            FULL.replace("[routes.chat]", "[routes.talk]").replace("retries = 2", "retries = 1")
        )
        assert await service.reloader.reload()
        assert set(service.mesh.routes) == {"talk"}
        assert service.mesh.policies["primary"].retries == 1
        path.write_text(FULL.replace('fallback = ["backup"]', 'fallback = ["gone"]'))
        assert not await service.reloader.reload()  # refused whole: nothing changed
        assert set(service.mesh.routes) == {"talk"}
        assert service.mesh.policies["primary"].fallback == ("backup",)
    finally:
        await service.aclose()
