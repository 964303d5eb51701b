"""[limits.NAME], [prices."MODEL"] and [store] in config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshbridge import ConfigError, InProcessStore, Limit, Price
from meshbridge.service import RedisStore, StoreConfig, load_config

ISSUE_EXAMPLE = """
[providers.openai]
kind = "fake"

[limits.agents]                 # any name; every limit whose match fits a call applies
match = { source = "agents" }   # keys: source, api_key_id, client, provider, target
requests_per_minute = 600
tokens_per_minute = 200000      # input + output, debited with what the provider reported
concurrent = 50

[limits.per-key]
match = { api_key_id = "*" }    # one budget per key id
tokens_per_day = 2000000
spend_per_month = 50.0          # in the currency of [prices]

[prices."gpt-4o"]               # per million tokens
input = 2.50
cached_input = 1.25
output = 10.00
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshbridge.toml"
    path.write_text(text)
    return path


async def test_the_issues_example_is_read_into_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_EXAMPLE)).limits
    assert config.limits == (
        Limit("agents", {"source": "agents"}, requests_per_minute=600, tokens_per_minute=200_000,
              concurrent=50),
        Limit("per-key", {"api_key_id": "*"}, tokens_per_day=2_000_000, spend_per_month=50.0),
    )  # fmt: skip
    assert dict(config.prices) == {"gpt-4o": Price(input=2.5, output=10.0, cached_input=1.25)}
    assert config.store == StoreConfig()
    limiter = config.limiter()
    assert limiter is not None
    assert isinstance(limiter.store, InProcessStore)
    await limiter.aclose()


async def test_the_store_table_makes_a_redis_store_from_an_environment_variable(
    tmp_path: Path,
) -> None:
    text = (
        ISSUE_EXAMPLE
        + """
[store]
url_env = "MESHBRIDGE_TEST_REDIS"
on_store_failure = "closed"
time_zone = "America/New_York"
prefix = "team-a"
timeout = 0.25
lease_seconds = 10
"""
    )
    url = "redis://:s3cret@127.0.0.1:6390/2"
    config = load_config(write(tmp_path, text), {"MESHBRIDGE_TEST_REDIS": url}).limits
    assert config.store == StoreConfig(url, "team-a", "closed", "America/New_York", 0.25, 10.0)
    assert "s3cret" not in repr(config)
    limiter = config.limiter()
    assert limiter is not None
    assert isinstance(limiter.store, RedisStore)  # connects at its first use, not here
    assert limiter.store.prefix == "team-a"
    assert str(limiter.time_zone) == "America/New_York"
    await limiter.aclose()


def test_no_limits_no_limiter(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, '[providers.a]\nkind = "fake"\n')).limits.limiter() is None


def test_every_mistake_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server.clients.ci]
token = "a-token-for-the-tests"
[providers.openai]
kind = "fake"
[routes.chat]
split = { openai = 1 }
[limits.Agents]
match = { source = "Agents", provider = "anthropic", team = "x", client = "nobody" }
requests_per_minute = 0
tokens_per_minute = 2.5
burst = 3
[limits.ok]
match = { client = "ci", target = "chat", api_key_id = "" }
concurrent = 1
[limits.empty]
match = {}
[limits.nomatch]
concurrent = 3
[limits.spend]
match = {}
spend_per_month = 50.0
[limits.scalar]
x = 1
[store]
url = "http://user:pw@host"
on_store_failure = "maybe"
time_zone = "Mars/Olympus"
prefix = "bad prefix"
lease_seconds = 0
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    kinds = ("requests_per_minute, tokens_per_minute, concurrent, requests_per_day, "
             "tokens_per_day, tokens_per_month, spend_per_day, spend_per_month")  # fmt: skip
    keys = ("concurrent, match, requests_per_day, requests_per_minute, spend_per_day, "
            "spend_per_month, tokens_per_day, tokens_per_minute, tokens_per_month")  # fmt: skip
    assert list(caught.value.errors) == [
        ("limits.Agents", "invalid limit name 'Agents': expected lower-case letters, digits, "
         "'-' or '_', at most 63 characters (it is the limit label of meshbridge_limited_total)"),
        ("limits.Agents.match.source", "invalid source 'Agents': expected lower-case letters, "
         "digits, '-' or '_' (pattern [a-z0-9]+(?:[-_][a-z0-9]+)*, at most 63 characters)"),
        ("limits.Agents.match.provider", "no provider named 'anthropic' (the providers: openai)"),
        ("limits.Agents.match.team",
         "unknown key (expected one of: source, api_key_id, client, provider, target)"),
        ("limits.Agents.match.client",
         "no client named 'nobody' (the [server.clients.NAME] tables: ci)"),
        ("limits.Agents.requests_per_minute", "expected an integer >= 1, got 0"),
        ("limits.Agents.tokens_per_minute", "expected an integer >= 1, got a number (2.5)"),
        ("limits.Agents.burst", f"unknown key (expected one of: {keys})"),
        ("limits.ok.match.api_key_id", "expected a value, or '*' for each value apart"),
        ("limits.empty", f"expected at least one of: {kinds}"),
        ("limits.nomatch.match",
         'missing: expected a table such as { source = "agents" } ({} for every call)'),
        ("limits.spend.spend_per_month",
         'a spend limit needs prices: add [prices."MODEL"] tables'),
        ("limits.scalar.match",
         'missing: expected a table such as { source = "agents" } ({} for every call)'),
        ("limits.scalar", f"expected at least one of: {kinds}"),
        ("limits.scalar.x", f"unknown key (expected one of: {keys})"),
        ("store.url", "expected a redis://, rediss:// or unix:// URL, got 'http://***@host'"),
        ("store.prefix", "expected letters, digits, ':', '_', '.' or '-' (at most 64), "
         "got 'bad prefix'"),
        ("store.on_store_failure", "expected 'open' or 'closed', got 'maybe'"),
        ("store.time_zone", "unknown time zone 'Mars/Olympus': expected an IANA name such as "
         "'UTC' or 'Europe/Paris'"),
        ("store.lease_seconds", "expected a number >= 1, got 0"),
    ]  # fmt: skip
