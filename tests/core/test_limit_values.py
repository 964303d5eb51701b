"""Limit, Price and TokenUsage: values checked when made, each error naming its field."""

from __future__ import annotations

import re

import pytest

from meshbridge import CallIdentity, Limit, Price, TokenUsage


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Agents", "concurrent": 1}, "Limit.name: invalid limit name 'Agents'"),
        ({"name": "a", "match": {"team": "x"}, "concurrent": 1},
         "Limit.match: expected keys among source, api_key_id, client, provider, target, "
         "got 'team'"),
        ({"name": "a", "match": {"source": "none"}, "concurrent": 1},
         "Limit.match['source']: 'none' is reserved"),
        ({"name": "a", "match": {"provider": "Open_AI"}, "concurrent": 1},
         "Limit.match['provider']: invalid provider name 'Open_AI'"),
        ({"name": "a", "match": {"api_key_id": 5}, "concurrent": 1},
         "Limit.match['api_key_id']: expected a string or '*', got 5"),
        ({"name": "a", "match": ["source"], "concurrent": 1}, "Limit.match: expected a mapping"),
        ({"name": "a"}, "Limit 'a': expected at least one of requests_per_minute"),
        ({"name": "a", "concurrent": 0}, "Limit.concurrent: expected an integer in 1.."),
        ({"name": "a", "tokens_per_day": 2.5}, "Limit.tokens_per_day: expected an integer"),
        ({"name": "a", "requests_per_minute": True}, "Limit.requests_per_minute: expected"),
        ({"name": "a", "spend_per_month": 0}, "Limit.spend_per_month: expected a number > 0"),
        ({"name": "a", "spend_per_day": float("nan")}, "Limit.spend_per_day: expected a number"),
    ],
)  # fmt: skip
def test_a_bad_limit_is_refused_naming_its_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        Limit(**kwargs)  # type: ignore[arg-type]


def test_a_limit_is_a_frozen_hashable_value_whose_match_cannot_change() -> None:
    match = {"source": "agents", "api_key_id": "*"}
    limit = Limit("agents", match, requests_per_minute=600, spend_per_month=50)
    match["source"] = "batch"
    assert dict(limit.match) == {"api_key_id": "*", "source": "agents"}
    assert limit.spend_per_month == 50.0
    assert isinstance(limit.spend_per_month, float)
    assert limit.kinds == ("requests_per_minute", "spend_per_month")
    assert limit.per_caller == ("api_key_id",)
    assert limit == Limit("agents", {"api_key_id": "*", "source": "agents"},
                          requests_per_minute=600, spend_per_month=50.0)  # fmt: skip
    assert len({limit, Limit("agents", dict(limit.match), requests_per_minute=600,
                             spend_per_month=50.0)}) == 1  # fmt: skip
    with pytest.raises(TypeError):
        limit.match["source"] = "batch"  # type: ignore[index]


def test_a_star_matches_every_call_that_has_a_value_there() -> None:
    limit = Limit("per-key", {"api_key_id": "*", "provider": "openai"}, concurrent=1)
    assert limit.matches(CallIdentity(api_key_id="k1", provider="openai"))
    assert not limit.matches(CallIdentity(provider="openai"))
    assert not limit.matches(CallIdentity(api_key_id="k1", provider="anthropic"))
    assert Limit("all", concurrent=1).matches(CallIdentity())


def test_prices_and_usage_are_checked_and_cost_what_the_provider_bills() -> None:
    price = Price(input=2.5, output=10.0, cached_input=1.25)
    usage = TokenUsage(input=1_000_000, output=100_000, cached_input=400_000)
    assert price.cost(usage) == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 0.1 * 10.0)
    assert Price(1.0, 2.0).cached_input == 1.0  # no cache price: the input price
    assert TokenUsage.from_counts(input=60, output=7, cache_read=30, cache_write=10) == (
        TokenUsage(input=100, output=7, cached_input=30)
    )
    with pytest.raises(ValueError, match=r"^Price.output: expected a number per million tokens"):
        Price(1.0, -1.0)
    with pytest.raises(ValueError, match=r"^TokenUsage.cached_input: expected at most input"):
        TokenUsage(input=5, cached_input=6)
