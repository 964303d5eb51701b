"""The limiter's rules, on an injected clock, with the in-process store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from meshbridge import (
    CallIdentity,
    CallRecord,
    Estimate,
    InProcessStore,
    Limit,
    LimitCounter,
    Limiter,
    Price,
    Refusal,
    Ticket,
    TokenUsage,
)

AGENTS = CallIdentity(source="agents", api_key_id="k1", provider="openai", target="openai")
BATCH = CallIdentity(source="batch", api_key_id="k2", provider="openai", target="openai")
GPT = {"gpt-4o": Price(input=2.5, output=10.0, cached_input=1.25)}


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, start: datetime = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FlakyStore(InProcessStore):
    """The in-process store, unreachable while ``down`` is set (an outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("connection refused")

    async def admit(
        self, now: float, call: str, charges: Sequence[tuple[LimitCounter, float]]
    ) -> tuple[bool, list[float]]:
        self._check()
        return await super().admit(now, call, charges)

    async def settle(
        self, now: float, call: str, charges: Sequence[tuple[LimitCounter, float]]
    ) -> list[float]:
        self._check()
        return await super().settle(now, call, charges)

    async def read(self, now: float, counters: Sequence[LimitCounter]) -> list[float]:
        self._check()
        return await super().read(now, counters)


Make = Callable[..., Limiter]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def make(clock: Clock, registry: CollectorRegistry) -> AsyncIterator[Make]:
    """A limiter on the test's clock and registry; closed on teardown."""
    made: list[Limiter] = []

    def build(limits: Iterable[Limit], **kwargs: Any) -> Limiter:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("registry", registry if not made else None)
        limiter = Limiter(limits, kwargs.pop("prices", GPT), **kwargs)
        made.append(limiter)
        return limiter

    yield build
    for limiter in made:
        await limiter.aclose()


async def admitted(
    limiter: Limiter, identity: CallIdentity, estimate: Estimate | None = None
) -> Ticket:
    ticket = await limiter.admit(identity, estimate)
    assert isinstance(ticket, Ticket), ticket
    return ticket


async def refused(
    limiter: Limiter, identity: CallIdentity, estimate: Estimate | None = None
) -> Refusal:
    refusal = await limiter.admit(identity, estimate)
    assert isinstance(refusal, Refusal), refusal
    return refusal


async def used(limiter: Limiter, limit: str, kind: str, **caller: str) -> float:
    for row in await limiter.usage():
        if (row.limit, row.kind, dict(row.caller)) == (limit, kind, caller):
            return row.used
    return 0.0


async def test_a_call_no_limit_matches_costs_a_lookup_and_is_never_counted(make: Make) -> None:
    limiter = make([Limit("agents", {"source": "agents"}, requests_per_minute=1)])
    assert limiter.applies(AGENTS)
    assert not limiter.applies(BATCH)
    for _ in range(5):
        ticket = await admitted(limiter, BATCH)
        assert ticket.held == ()
        await limiter.settle(ticket, None)
    assert await used(limiter, "agents", "requests_per_minute") == 0


async def test_requests_per_minute_is_an_exact_window_with_a_true_retry_after(
    make: Make, clock: Clock
) -> None:
    limiter = make([Limit("agents", {"source": "agents"}, requests_per_minute=3)])
    for _ in range(3):
        await admitted(limiter, AGENTS)
        clock.advance(10)
    refusal = await refused(limiter, AGENTS)
    assert (refusal.limit, refusal.kind, refusal.reason, refusal.status) == (
        "agents", "requests_per_minute", "rate-limited", 429,
    )  # fmt: skip
    assert refusal.retry_after == pytest.approx(30.0)  # the first call leaves at 60 s
    clock.advance(29.9)
    await refused(limiter, AGENTS)
    clock.advance(0.1)
    await admitted(limiter, AGENTS)


async def test_a_refused_call_consumes_nothing(make: Make, clock: Clock) -> None:
    limiter = make(
        [
            Limit("tokens", {"api_key_id": "*"}, tokens_per_day=10_000, requests_per_day=50),
            Limit("slots", {"source": "agents"}, concurrent=1),
        ]
    )
    first = await admitted(limiter, AGENTS, Estimate(100, 900))
    for _ in range(3):
        await refused(limiter, AGENTS, Estimate(100, 900))
    assert await used(limiter, "tokens", "tokens_per_day", api_key_id="k1") == 1000
    assert await used(limiter, "tokens", "requests_per_day", api_key_id="k1") == 1
    await limiter.settle(first, TokenUsage(40, 60))
    assert await used(limiter, "tokens", "tokens_per_day", api_key_id="k1") == 100


async def test_token_reservations_bound_the_overshoot_and_settle_to_what_was_reported(
    make: Make, clock: Clock
) -> None:
    limiter = make([Limit("tpm", {"source": "agents"}, tokens_per_minute=6000)])
    estimate = Estimate(input=500, output=2000)
    running = [await admitted(limiter, AGENTS, estimate) for _ in range(3)]  # 7500 reserved
    refusal = await refused(limiter, AGENTS, estimate)
    # 1500 over; the bucket refills 100 a second: above 0 after 15 s
    assert refusal.retry_after == pytest.approx(15.0)
    for ticket in running:
        await limiter.settle(ticket, TokenUsage(input=500, output=300))
    assert await used(limiter, "tpm", "tokens_per_minute") == pytest.approx(2400)
    await admitted(limiter, AGENTS, estimate)


async def test_a_call_that_never_reports_usage_is_debited_its_reservation(make: Make) -> None:
    limiter = make([Limit("day", {"source": "agents"}, tokens_per_day=100_000)])
    silent = await admitted(limiter, AGENTS, Estimate(1000, 4096))
    unreached = await admitted(limiter, AGENTS, Estimate(1000, 4096))
    await limiter.settle(silent, None)
    await limiter.settle(unreached, TokenUsage())  # never reached a provider
    assert await used(limiter, "day", "tokens_per_day") == 5096
    await limiter.settle(silent, TokenUsage(1, 1))  # a second settlement does nothing
    assert await used(limiter, "day", "tokens_per_day") == 5096


async def test_a_reservation_never_exceeds_the_limit(make: Make) -> None:
    limiter = make([Limit("small", {"source": "agents"}, tokens_per_day=1000)])
    await admitted(limiter, AGENTS, Estimate(0, 10_000_000))
    assert await used(limiter, "small", "tokens_per_day") == 1000


async def test_concurrency_slots_come_back_when_calls_end(make: Make) -> None:
    limiter = make([Limit("slots", {"source": "agents"}, concurrent=2)])
    a, b = await admitted(limiter, AGENTS), await admitted(limiter, AGENTS)
    refusal = await refused(limiter, AGENTS)
    assert (refusal.kind, refusal.retry_after) == ("concurrent", 1.0)
    await limiter.settle(a, TokenUsage())
    c = await admitted(limiter, AGENTS)
    await limiter.settle(b, None)
    await limiter.settle(c, None)
    assert await used(limiter, "slots", "concurrent") == 0


async def test_running_calls_keep_their_slots_and_dropped_ones_lose_them(
    make: Make, clock: Clock
) -> None:
    limiter = make([Limit("slots", {"source": "agents"}, concurrent=2)], lease_seconds=30)
    running = await admitted(limiter, AGENTS)
    dropped = await admitted(limiter, AGENTS)
    del dropped  # never settled: a bug, or a worker that died
    for _ in range(4):
        clock.advance(20)
        await limiter.maintain()  # what the background task does every 10 s
    assert await used(limiter, "slots", "concurrent") == 1
    await limiter.settle(running, None)


async def test_day_budgets_follow_midnight_in_the_configured_zone(make: Make, clock: Clock) -> None:
    paris = ZoneInfo("Europe/Paris")
    clock.now = datetime(2025, 3, 29, 23, 30, tzinfo=paris).timestamp()
    limiter = make([Limit("daily", {"source": "agents"}, requests_per_day=1)], time_zone=paris)
    await admitted(limiter, AGENTS)
    refusal = await refused(limiter, AGENTS)
    assert refusal.reason == "budget-exhausted"
    assert refusal.retry_after == pytest.approx(30 * 60)  # midnight in Paris
    clock.advance(30 * 60)
    await admitted(limiter, AGENTS)  # 2025-03-30: clocks go forward, a 23-hour day
    refusal = await refused(limiter, AGENTS)
    assert refusal.retry_after == pytest.approx(23 * 3600)
    (row,) = await limiter.usage()
    assert (row.period, row.used) == ("2025-03-30", 1)
    assert row.resets == datetime(2025, 3, 31, tzinfo=paris).timestamp()


async def test_month_spend_is_priced_by_the_model_that_answered(make: Make, clock: Clock) -> None:
    prices = {**GPT, "*": Price(input=1.0, output=1.0)}
    limiter = make([Limit("spend", {"api_key_id": "*"}, spend_per_month=1.0)], prices=prices)
    usage = TokenUsage(input=100_000, output=20_000, cached_input=40_000)
    ticket = await admitted(limiter, AGENTS, Estimate(100_000, 20_000, "gpt-4o"))
    # reserved: 0.1 M input at 2.50 + 0.02 M output at 10.00
    assert await used(limiter, "spend", "spend_per_month", api_key_id="k1") == pytest.approx(0.45)
    await limiter.settle(ticket, usage, "gpt-4o-2024-08-06")  # the undated name's price
    # 60k full-rate input at 2.50, 40k cached at 1.25, 20k output at 10.00
    spent = 0.15 + 0.05 + 0.2
    assert await used(limiter, "spend", "spend_per_month", api_key_id="k1") == pytest.approx(spent)
    other = await admitted(limiter, AGENTS)
    await limiter.settle(other, usage, "some-local-model")  # "*": 1.00 for every token
    spent += 0.12
    assert await used(limiter, "spend", "spend_per_month", api_key_id="k1") == pytest.approx(spent)
    assert limiter.price("unpriced") == prices["*"]


async def test_a_model_without_a_price_costs_the_highest_prices(make: Make) -> None:
    prices = {"cheap": Price(0.1, 0.2), "dear": Price(5.0, 15.0, 2.5)}
    limiter = make([Limit("spend", spend_per_day=10.0)], prices=prices)
    assert limiter.price("unknown") == Price(5.0, 15.0, 2.5)
    assert limiter.price(None) == Price(5.0, 15.0, 2.5)


async def test_a_month_budget_spent_refuses_until_the_first_of_the_next_month(
    make: Make, clock: Clock
) -> None:
    clock.now = datetime(2025, 6, 30, 22, 0, tzinfo=UTC).timestamp()
    limiter = make([Limit("spend", {"api_key_id": "*"}, spend_per_month=0.01)])
    ticket = await admitted(limiter, AGENTS, Estimate(10, 10, "gpt-4o"))
    await limiter.settle(ticket, TokenUsage(1000, 1000), "gpt-4o")  # 0.0125: over
    refusal = await refused(limiter, AGENTS)
    assert refusal.reason == "budget-exhausted"
    assert refusal.retry_after == pytest.approx(7200)
    await admitted(limiter, BATCH)  # another key has its own budget
    clock.advance(7200)
    await admitted(limiter, AGENTS)


async def test_each_value_of_a_star_key_has_its_own_counters(make: Make) -> None:
    limiter = make([Limit("per-key", {"api_key_id": "*"}, requests_per_minute=1)])
    odd = CallIdentity(source="agents", api_key_id="team/a=b c")  # every character is safe
    await admitted(limiter, AGENTS)
    await admitted(limiter, odd)
    await refused(limiter, AGENTS)
    await admitted(limiter, CallIdentity(source="agents"))  # no key id: not this limit's
    rows = {row.caller["api_key_id"]: row.used for row in await limiter.usage()}
    assert rows == {"k1": 1, "team/a=b c": 1}


async def test_the_refusal_names_the_limit_that_frees_up_last(make: Make, clock: Clock) -> None:
    limiter = make(
        [
            Limit("rpm", {"source": "agents"}, requests_per_minute=1),
            Limit("daily", {"api_key_id": "k1"}, requests_per_day=1),
        ]
    )
    await admitted(limiter, AGENTS)
    refusal = await refused(limiter, AGENTS)
    assert (refusal.limit, refusal.reason) == ("daily", "budget-exhausted")
    assert refusal.retry_after == pytest.approx(12 * 3600)
    assert refusal.message == (
        "limit 'daily' allows requests_per_day = 1: budget-exhausted, retry after 43200 s"
    )


async def test_metrics_count_refusals_and_show_what_shared_limits_have_left(
    make: Make, registry: CollectorRegistry
) -> None:
    limiter = make(
        [
            Limit("agents", {"source": "agents"}, requests_per_minute=2, tokens_per_minute=1000),
            Limit("per-key", {"api_key_id": "*"}, requests_per_minute=1),
        ]
    )
    await admitted(limiter, AGENTS, Estimate(100, 200))
    for _ in range(2):
        await refused(limiter, AGENTS)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("meshbridge_limited_total", limit="per-key", source="agents",
                  reason="rate-limited") == 2  # fmt: skip
    assert sample("meshbridge_limit_remaining", limit="agents", kind="requests_per_minute") == 1
    assert sample("meshbridge_limit_remaining", limit="agents", kind="tokens_per_minute") == 700
    assert sample("meshbridge_limit_remaining", limit="per-key", kind="requests_per_minute") is None
    assert sample("meshbridge_store_up") == 1


async def test_an_unreachable_store_fails_open_then_recovers_without_a_restart(
    make: Make, clock: Clock, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore()
    limiter = make([Limit("day", {"source": "agents"}, tokens_per_day=10_000,
                          requests_per_minute=100)], store=store, retry_interval=2.0)  # fmt: skip
    store.down = True
    with caplog.at_level(logging.WARNING, "meshbridge"):
        during = [await admitted(limiter, AGENTS, Estimate(100, 100)) for _ in range(3)]
    assert not any(ticket.recorded for ticket in during)
    assert registry.get_sample_value("meshbridge_store_errors_total", {"operation": "admit"}) == 1
    assert registry.get_sample_value("meshbridge_store_up") == 0
    assert [r.message for r in caplog.records].count(
        "the limit store failed (admit: connection refused): calls are admitted without "
        "limits until it answers again"
    ) == 1  # once per outage, not per call
    store.down = False
    await admitted(limiter, AGENTS)  # within retry_interval: the store is not asked yet
    assert await used(limiter, "day", "tokens_per_day") == 0
    clock.advance(2.0)
    await admitted(limiter, AGENTS, Estimate(100, 100))
    assert registry.get_sample_value("meshbridge_store_up") == 1
    for ticket in during:  # the store is back: what they used is debited now
        await limiter.settle(ticket, TokenUsage(10, 20))
    assert await used(limiter, "day", "tokens_per_day") == 200 + 90


async def test_an_unreachable_store_fails_closed_with_503_when_asked(
    make: Make, clock: Clock, registry: CollectorRegistry
) -> None:
    store = FlakyStore()
    limiter = make([Limit("agents", {"source": "agents"}, concurrent=5)], store=store,
                   on_store_failure="closed")  # fmt: skip
    store.down = True
    refusal = await refused(limiter, AGENTS)
    assert (refusal.status, refusal.reason, refusal.limit) == (503, "store-unavailable", "agents")
    assert refusal.retry_after == pytest.approx(1.0)
    assert (
        registry.get_sample_value(
            "meshbridge_limited_total",
            {"limit": "agents", "source": "agents", "reason": "store-unavailable"},
        )
        == 1
    )
    store.down = False
    clock.advance(1.0)
    await admitted(limiter, AGENTS)


async def test_settlement_never_raises_into_the_caller(
    make: Make, registry: CollectorRegistry
) -> None:
    store = FlakyStore()
    limiter = make([Limit("day", {"source": "agents"}, tokens_per_day=10_000)], store=store)
    ticket = await admitted(limiter, AGENTS, Estimate(10, 10))
    store.down = True
    await limiter.settle(ticket, TokenUsage(5, 5))
    assert registry.get_sample_value("meshbridge_store_errors_total", {"operation": "settle"}) == 1


async def test_settle_nowait_runs_in_a_task_that_aclose_waits_for(clock: Clock) -> None:
    limiter = Limiter([Limit("day", {"source": "agents"}, tokens_per_day=10_000)], clock=clock)
    ticket = await admitted(limiter, AGENTS, Estimate(100, 100))
    limiter.settle_nowait(ticket, TokenUsage(1, 2))
    store = limiter.store
    await limiter.aclose()
    assert ticket.settled
    (row,) = await store.read(clock(), [ticket.held[0].counter])
    assert row == 3


async def test_replaying_a_ledger_seeds_the_budgets_of_the_current_periods(
    make: Make, clock: Clock
) -> None:
    limiter = make([Limit("per-key", {"api_key_id": "*"}, tokens_per_day=10_000,
                          tokens_per_month=50_000, spend_per_month=5.0)])  # fmt: skip

    def record(started: datetime, tokens: int) -> CallRecord:
        return CallRecord(
            id="x", started=started.timestamp(), duration=1.0, ttfb=0.1, ttft=None,
            source="agents", api_key_id="k1", client=None, peer=None, target="openai",
            provider="openai", attempts=1, fallback=False, reason=None, method="POST",
            path="/v1/chat/completions", status=200, outcome="completed",
            response_model="gpt-4o", input_tokens=tokens, output_tokens=tokens,
        )  # fmt: skip

    records = [
        record(datetime(2025, 6, 15, 9, tzinfo=UTC), 1000),  # today
        record(datetime(2025, 6, 2, 9, tzinfo=UTC), 3000),  # this month
        record(datetime(2025, 5, 31, 23, tzinfo=UTC), 7000),  # last month: not counted
    ]
    assert await limiter.replay(records) == 2
    assert await used(limiter, "per-key", "tokens_per_day", api_key_id="k1") == 2000
    assert await used(limiter, "per-key", "tokens_per_month", api_key_id="k1") == 8000
    spend = 4000 * 2.5 / 1e6 + 4000 * 10.0 / 1e6
    assert await used(limiter, "per-key", "spend_per_month", api_key_id="k1") == pytest.approx(
        spend
    )


def test_bad_limiter_arguments_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match="each name once"):
        Limiter([Limit("a", concurrent=1), Limit("a", concurrent=2)])
    with pytest.raises(ValueError, match="limits spend: it needs prices"):
        Limiter([Limit("a", spend_per_day=1.0)])
    with pytest.raises(ValueError, match="on_store_failure: expected 'open' or 'closed'"):
        Limiter([], on_store_failure="maybe")
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        Limiter([], time_zone="Mars/Olympus")
    with pytest.raises(ValueError, match="lease_seconds: expected seconds > 0"):
        Limiter([], lease_seconds=0)


async def test_a_new_limiter_takes_over_the_store_and_its_counters(clock: Clock) -> None:
    """What a config reload does: the counters are named by limit and kind."""
    old = Limiter([Limit("agents", {"source": "agents"}, requests_per_minute=2)], clock=clock)
    await admitted(old, AGENTS)
    await old.aclose(close_store=False)
    new = Limiter(
        [Limit("agents", {"source": "agents"}, requests_per_minute=2, concurrent=5)],
        store=old.store,
        clock=clock,
    )
    await admitted(new, AGENTS)
    await refused(new, AGENTS)
    await new.aclose()
