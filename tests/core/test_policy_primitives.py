"""The pure parts of traffic policies, on an injected clock and a seeded
random source: the policy values, the circuit breaker, the retry budget,
backoff, Retry-After and splits. No event loop, no sleeps."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import pytest

from meshbridge._breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Ticket
from meshbridge._policy import (
    BREAKER_ON_DEFAULT,
    RETRY_CONDITIONS,
    RETRY_ON_DEFAULT,
    CircuitBreaker,
    Fault,
    Policy,
    Route,
)
from meshbridge._retry import RetryBudget, backoff, parse_retry_after
from meshbridge._split import pick

# -- the breaker ------------------------------------------------------------------

# 3 failures within 10 s open it for 30 s; 2 probes when half-open
CONFIG = CircuitBreaker(failures=3, interval=10.0, open_for=30.0, half_open=2)


def breaker() -> tuple[Breaker, list[str]]:
    transitions: list[str] = []
    return Breaker(CONFIG, on_transition=transitions.append), transitions


def fail(b: Breaker, now: float) -> Ticket:
    """Admit a request at ``now`` and record it failed; return its ticket."""
    ticket = b.allow(now)
    assert ticket is not None
    ticket.done(now, failed=True)
    return ticket


def tripped_at(now: float) -> tuple[Breaker, list[str]]:
    b, transitions = breaker()
    for _ in range(CONFIG.failures):
        fail(b, now)
    assert b.state(now) == OPEN
    return b, transitions


def test_a_closed_breaker_admits_everything_and_opens_after_failures_within_the_interval() -> None:
    b, transitions = breaker()
    assert b.state(0.0) == CLOSED
    assert b.level(0.0) == 0.0
    assert b.retry_after(0.0) == 0.0
    fail(b, 0.0)
    fail(b, 4.0)
    assert b.state(9.9) == CLOSED
    assert transitions == []
    fail(b, 9.9)
    assert b.state(9.9) == OPEN
    assert b.allow(9.9) is None
    assert b.level(9.9) == 1.0
    assert transitions == [OPEN]


def test_failures_further_apart_than_the_interval_never_open_it() -> None:
    b, transitions = breaker()
    for now in (0.0, 5.0, 10.0):  # the first is exactly `interval` old at the third
        fail(b, now)
    assert b.state(10.0) == CLOSED
    fail(b, 14.9)  # 5.0, 10.0 and 14.9 are within 10 s: the window slides
    assert b.state(14.9) == OPEN
    assert transitions == [OPEN]


def test_successes_do_not_cancel_failures() -> None:
    b, _ = breaker()
    for now in (1.0, 2.0):
        fail(b, now)
        for _ in range(50):
            ticket = b.allow(now)
            assert ticket is not None
            ticket.done(now, failed=False)
    assert b.state(2.0) == CLOSED
    fail(b, 3.0)
    assert b.state(3.0) == OPEN


def test_an_open_breaker_refuses_and_counts_down_to_half_open() -> None:
    b, transitions = tripped_at(10.0)
    assert b.retry_after(10.0) == 30.0
    assert b.retry_after(25.0) == 15.0
    assert b.retry_after(39.5) == 0.5
    assert b.allow(39.5) is None
    assert b.state(39.999) == OPEN
    assert b.state(40.0) == HALF_OPEN
    assert b.retry_after(40.0) == 0.0
    assert b.level(40.0) == 0.5
    assert transitions == [OPEN, HALF_OPEN]


def test_half_open_admits_exactly_half_open_probes_and_their_successes_close_it() -> None:
    b, transitions = tripped_at(0.0)
    probes = [b.allow(30.0), b.allow(30.0)]
    assert probes[0] is not None
    assert probes[1] is not None
    assert b.allow(30.0) is None
    probes[0].done(31.0, failed=False)
    assert b.state(31.0) == HALF_OPEN
    assert b.allow(31.0) is None  # a probe that answered does not free a place
    probes[1].done(32.0, failed=False)
    assert b.state(32.0) == CLOSED
    assert transitions == [OPEN, HALF_OPEN, CLOSED]
    # closed again with no failures remembered: two more do not open it
    fail(b, 33.0)
    fail(b, 33.0)
    assert b.state(33.0) == CLOSED
    assert all(b.allow(33.0) is not None for _ in range(100))


def test_a_failed_probe_opens_it_again_for_twice_as_long_from_then() -> None:
    b, transitions = tripped_at(0.0)
    probe = b.allow(30.0)
    assert probe is not None
    probe.done(41.0, failed=True)
    assert b.state(41.0) == OPEN
    assert b.retry_after(41.0) == 60.0
    assert b.allow(100.9) is None
    assert b.state(101.0) == HALF_OPEN
    assert transitions == [OPEN, HALF_OPEN, OPEN, HALF_OPEN]


def test_a_flapping_provider_stays_open_longer_each_time_up_to_max_open_for() -> None:
    b = Breaker(CircuitBreaker(failures=1, open_for=10.0, max_open_for=35.0, half_open=1))
    fail(b, 0.0)
    now, waits = 0.0, []
    for _ in range(5):  # every probe fails: 10 s, then 20, 35 (capped), 35, 35
        waits.append(b.retry_after(now))
        now += waits[-1]
        fail(b, now)
    assert waits == [10.0, 20.0, 35.0, 35.0, 35.0]
    now += b.retry_after(now)
    probe = b.allow(now)
    assert probe is not None
    probe.done(now, failed=False)  # it recovers: closing forgets the reopenings
    assert b.state(now) == CLOSED
    fail(b, now)
    assert b.retry_after(now) == 10.0


def test_max_open_for_never_shortens_open_for() -> None:
    b = Breaker(CircuitBreaker(failures=1, open_for=600.0))  # max_open_for's default is 300
    fail(b, 0.0)
    assert b.retry_after(0.0) == 600.0


def test_a_ticket_takes_one_verdict_and_the_closed_one_is_shared() -> None:
    b, _ = tripped_at(0.0)
    probe = b.allow(30.0)
    assert probe is not None
    probe.done(30.0, failed=False)
    probe.done(30.0, failed=False)  # spent: the second success does not count
    assert b.state(30.0) == HALF_OPEN
    other = b.allow(30.0)
    assert other is not None
    other.done(30.0, failed=False)
    assert b.state(30.0) == CLOSED
    assert b.allow(31.0) is b.allow(32.0) is b.closed_ticket  # no ticket made per request


def test_a_cancelled_probe_gives_its_place_back() -> None:
    b, _ = tripped_at(0.0)
    first, second = b.allow(30.0), b.allow(30.0)
    assert first is not None
    assert second is not None
    assert b.allow(30.0) is None
    first.cancel(30.5)
    third = b.allow(30.5)
    assert third is not None
    assert b.allow(30.5) is None
    second.done(31.0, failed=False)
    third.done(31.0, failed=False)
    assert b.state(31.0) == CLOSED


def test_a_late_result_from_before_a_trip_changes_nothing() -> None:
    b, transitions = breaker()
    slow = b.allow(0.0)  # admitted while closed, answers only much later
    assert slow is not None
    for _ in range(3):
        fail(b, 1.0)
    slow.done(5.0, failed=False)  # while open
    first = b.allow(31.0)
    assert first is not None
    slow.done(31.0, failed=True)  # while half-open: does not re-open it
    assert b.state(31.0) == HALF_OPEN
    slow.done(31.0, failed=False)  # nor count as a probe's success
    first.done(31.0, failed=False)
    assert b.state(31.0) == HALF_OPEN
    slow.cancel(31.0)  # nor free a probe's place
    second = b.allow(31.0)
    assert second is not None
    assert b.allow(31.0) is None
    second.done(32.0, failed=False)
    assert b.state(32.0) == CLOSED
    for _ in range(5):  # nor count against the next closed period
        slow.done(33.0, failed=True)
        first.done(33.0, failed=True)
    assert b.state(33.0) == CLOSED
    assert transitions == [OPEN, HALF_OPEN, CLOSED]


def test_a_probe_from_an_earlier_half_open_period_does_not_count_in_the_next() -> None:
    b, _ = tripped_at(0.0)
    early, failing = b.allow(30.0), b.allow(30.0)
    assert early is not None
    assert failing is not None
    failing.done(31.0, failed=True)  # open again, for 60 s, until 91
    late = b.allow(91.0)
    assert late is not None
    early.done(92.0, failed=False)
    late.done(92.0, failed=False)
    assert b.state(92.0) == HALF_OPEN  # one success of this period, not two


def test_the_default_breaker_opens_after_five_failures() -> None:
    b = Breaker(CircuitBreaker())
    for _ in range(4):
        fail(b, 0.0)
    assert b.state(0.0) == CLOSED
    fail(b, 0.0)
    assert b.state(0.0) == OPEN
    assert b.retry_after(0.0) == 30.0


# -- the retry budget -------------------------------------------------------------


def spend_all(budget: RetryBudget, now: float) -> int:
    granted = 0
    while budget.try_spend(now):
        granted += 1
        assert granted < 100_000
    return granted


def test_a_burst_gets_the_ratio_of_its_requests_plus_one_second_of_floor() -> None:
    budget = RetryBudget(0.2, 3.0)
    for _ in range(100):
        budget.request(100.0)
    assert spend_all(budget, 100.0) == 20 + 3


def test_the_floor_accrues_per_second_and_the_window_forgets() -> None:
    budget = RetryBudget(0.2, 3.0)
    for _ in range(100):
        budget.request(100.0)
    assert spend_all(budget, 100.0) == 23
    # 4.5 s later: 20 + 3 x 5.5 s = 36.5 in all
    assert spend_all(budget, 104.5) == 36 - 23
    # the window is buckets 101..110: the burst's requests and first 23
    # retries are forgotten; the 13 of t=104.5 stay; 3 x 9 s of floor
    assert spend_all(budget, 110.0) == 27 - 13
    # buckets 105..114: the 13 are forgotten too
    assert spend_all(budget, 114.0) == 27 - 14
    # long idle: everything forgotten, the floor of a whole window
    assert spend_all(budget, 1000.0) == 27


def test_without_a_floor_the_ratio_alone_grants_retries() -> None:
    budget = RetryBudget(0.25, 0.0)
    budget.request(0.0)
    assert not budget.try_spend(0.0)
    for _ in range(3):
        budget.request(0.5)
    assert spend_all(budget, 0.5) == 1
    for _ in range(8):
        budget.request(0.9)
    assert spend_all(budget, 0.9) == 2


def test_a_provider_failing_everything_gets_at_most_the_budget_of_extra_attempts() -> None:
    """The issue's promise: attempts <= (1 + ratio) x requests + floor per
    second, here with 100 callers each wanting 2 retries for every request."""
    ratio, floor = 0.2, 3.0
    budget = RetryBudget(ratio, floor)
    requests = retries = 0
    start = now = 50.0
    while now < start + 60.0:
        for _ in range(100):
            budget.request(now)
            requests += 1
            retries += sum(budget.try_spend(now) for _ in range(2))
        elapsed = now - start
        assert retries <= ratio * requests + floor * (elapsed + 1.0) + 1e-9
        now += 0.25
    attempts = requests + retries
    assert attempts <= (1 + ratio) * requests + floor * (now - start + 1.0)
    # and the budget is spent, not withheld
    assert retries >= 0.99 * (ratio * requests + floor * (now - start))


def test_a_random_schedule_keeps_both_bounds_at_every_step() -> None:
    rng = random.Random(1234)
    ratio, floor = 0.3, 2.0
    budget = RetryBudget(ratio, floor)
    first = now = 7.25
    log: list[tuple[int, int, int]] = []  # (second, requests, retries)
    total_requests = total_retries = 0
    for _ in range(3000):
        now += rng.choice((0.0, 0.01, 0.1, 0.7, 3.0, 12.0)) * rng.random()
        n = rng.randrange(0, 8)
        for _ in range(n):
            budget.request(now)
        granted = sum(budget.try_spend(now) for _ in range(rng.randrange(0, 12)))
        second = math.floor(now)
        log = [entry for entry in log if entry[0] > second - 20]
        log.append((second, n, granted))
        total_requests += n
        total_retries += granted
        assert total_retries <= ratio * total_requests + floor * (now - first + 1.0) + 1e-9
        # the window ending now: bounded by its own requests if it just granted
        # a retry, else by its requests and those of the window before it
        retried = sum(x for s, _, x in log if second - 10 < s <= second)
        own = sum(r for s, r, _ in log if second - 10 < s <= second)
        before = sum(r for s, r, _ in log if second - 20 < s <= second)
        assert retried <= ratio * (own if granted else before) + floor * 10.0 + 1e-9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 3.0), "RetryBudget.ratio: expected a number >= 0, got -1"),
        ((0.2, math.nan), "RetryBudget.floor: expected a number >= 0, got nan"),
        ((0.2, 3.0, 0), "RetryBudget.window: expected a number > 0, got 0"),
    ],
)
def test_a_budget_with_bad_arguments_is_refused(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RetryBudget(*args)


# -- backoff ------------------------------------------------------------------------


def test_backoff_stays_under_its_ceiling_and_doubles_until_the_cap() -> None:
    rng = random.Random(99)
    base, cap = 0.1, 2.0
    means = []
    for attempt in range(8):
        ceiling = min(cap, base * 2**attempt)
        waits = [backoff(attempt, base, cap, rng) for _ in range(3000)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > 0.95 * ceiling
        mean = sum(waits) / len(waits)
        # the mean of 3000 uniforms: ceiling/2 with a sigma of ceiling/190
        assert abs(mean - ceiling / 2) < 3 * ceiling / math.sqrt(12 * 3000)
        means.append(mean)
    assert means[1] > 1.8 * means[0]
    assert means[4] > 1.8 * means[3]
    assert abs(means[7] - means[6]) < 0.1  # both capped at 2.0


def test_backoff_is_reproducible_with_a_seed_and_safe_for_huge_attempts() -> None:
    first = [backoff(a, 0.5, 10.0, random.Random(5)) for a in range(10)]
    again = [backoff(a, 0.5, 10.0, random.Random(5)) for a in range(10)]
    assert first == again
    assert 0.0 <= backoff(10_000, 0.5, 10.0, random.Random(5)) <= 10.0
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        backoff(-1, 0.5, 10.0, random.Random(5))


# -- Retry-After ----------------------------------------------------------------------

WALL = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 30.0),  # RFC 850, obsolete
        ("Wed Oct 21 07:28:00 2015", 30.0),  # asctime, obsolete
        ("Wed, 21 Oct 2015 07:27:30 GMT", 0.0),  # now
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past
        ("Tue, 20 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_in_both_forms(value: str, seconds: float) -> None:
    assert parse_retry_after(value, WALL) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "soon", "1e3", "nan", "inf", "0x10", "12 seconds", "1_000", "١٢",
     "Wed, 32 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 25:00:00 GMT", "2015-10-21T07:28:00Z"],
)  # fmt: skip
def test_a_malformed_retry_after_is_none(value: str) -> None:
    assert parse_retry_after(value, WALL) is None


# -- splits ---------------------------------------------------------------------------

SPLIT = {"primary": 90, "canary": 10}


def within_three_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 3 * math.sqrt(n * p * (1 - p))


def test_ten_thousand_picks_of_a_90_10_split_land_within_three_sigma() -> None:
    rng = random.Random(20240610)
    route = Route(SPLIT)
    counts = Counter(pick(route, rng) for _ in range(10_000))
    assert set(counts) == {"primary", "canary"}
    assert within_three_sigma(counts["canary"], 10_000, 0.1)


def test_picks_are_reproducible_with_a_seed() -> None:
    route = Route(SPLIT)
    first = [pick(route, random.Random(3)) for _ in range(50)]
    assert first == [pick(route, random.Random(3)) for _ in range(50)]


def test_a_provider_of_weight_zero_is_never_picked() -> None:
    route = Route({"a": 0, "b": 1, "c": 0})
    rng = random.Random(1)
    assert {pick(route, rng) for _ in range(1000)} == {"b"}
    assert {pick(route, rng, f"key-{i}") for i in range(1000)} == {"b"}


def test_a_sticky_key_never_moves_while_the_weights_hold() -> None:
    route, reordered = Route(SPLIT), Route(dict(reversed(SPLIT.items())))
    rng = random.Random(8)
    places = set()
    for i in range(20):
        key = f"key-{i}"
        landed = {pick(route, rng, key) for _ in range(1000)}
        landed |= {pick(reordered, random.Random(n), key) for n in range(10)}
        assert len(landed) == 1
        places |= landed
    assert places == {"primary", "canary"}


def test_sticky_keys_spread_by_weight() -> None:
    route = Route(SPLIT, sticky="api_key_id")
    counts = Counter(pick(route, random.Random(0), f"sk-{i:08d}") for i in range(10_000))
    assert within_three_sigma(counts["canary"], 10_000, 0.1)


def test_scaled_weights_move_no_key_and_a_changed_weight_moves_only_its_share() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    rng = random.Random(0)
    split, scaled, changed = (
        Route(SPLIT),
        Route({"primary": 180, "canary": 20}),
        Route({"primary": 80, "canary": 20}),
    )
    before = [pick(split, rng, k) for k in keys]
    assert before == [pick(scaled, rng, k) for k in keys]
    after = [pick(changed, rng, k) for k in keys]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert set(moved) == {("primary", "canary")}
    assert within_three_sigma(len(moved), 5000, 0.1)


# -- the policy values -------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    policy = Policy()
    assert policy.retry_on == RETRY_ON_DEFAULT
    assert {429, 502, 503, 504, 529, "connect-failure", "first-byte-timeout"} == RETRY_ON_DEFAULT
    assert {
        429, 500, 502, 503, 504, 529, "connect-failure", "first-byte-timeout", "timeout"
    } == BREAKER_ON_DEFAULT  # fmt: skip
    assert {"connect-failure", "first-byte-timeout"} == RETRY_CONDITIONS
    assert (policy.retry_backoff, policy.retry_budget, policy.retry_floor) == ((0.1, 2.0), 0.2, 3.0)
    assert policy.replay_limit == 65536
    assert (policy.timeout, policy.retries, policy.fallback, policy.max_in_flight) == (
        None, 0, (), None
    )  # fmt: skip
    assert CircuitBreaker().on == BREAKER_ON_DEFAULT
    assert (CircuitBreaker().max_open_for, Policy().fallback_on_overload) == (300.0, False)
    assert Fault() == Fault(delay=0.0, delay_ratio=0.0, abort=503, abort_ratio=0.0)


def test_collections_are_normalised_so_equal_policies_hash_equal() -> None:
    loose = Policy(
        timeout=5,
        retry_on=[429, "connect-failure", 429],  # type: ignore[arg-type]
        retry_backoff=[1, 2],  # type: ignore[arg-type]
        fallback=["b", "c"],  # type: ignore[arg-type]
        circuit_breaker=CircuitBreaker(on=[503]),  # type: ignore[arg-type]
    )
    strict = Policy(
        timeout=5.0,
        retry_on=frozenset({429, "connect-failure"}),
        retry_backoff=(1.0, 2.0),
        fallback=("b", "c"),
        circuit_breaker=CircuitBreaker(on=frozenset({503})),
    )
    assert loose == strict
    assert hash(loose) == hash(strict)
    assert isinstance(loose.retry_on, frozenset)
    assert loose.fallback == ("b", "c")
    assert type(loose.timeout) is float
    assert all(type(v) is float for v in loose.retry_backoff)
    with pytest.raises(FrozenInstanceError):
        loose.retries = 3  # type: ignore[misc]


def test_a_route_keeps_its_split_read_only_in_name_order() -> None:
    weights = {"primary": 90, "canary": 10}
    route = Route(weights, sticky="source")
    weights["primary"] = 0
    assert list(route.split) == ["canary", "primary"]
    assert route.split["primary"] == 90
    assert route.weights == (("canary", 10), ("primary", 90))
    assert route == Route({"canary": 10, "primary": 90}, "source")
    assert hash(route) == hash(Route({"canary": 10, "primary": 90}, "source"))
    assert route != Route({"canary": 10, "primary": 90})
    with pytest.raises(TypeError):
        route.split["canary"] = 50  # type: ignore[index]


NAME_RULE = "expected lower-case letters and digits, words joined by single '-'"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Policy(retries=-1), "Policy.retries: expected an integer >= 0, got -1"),
        (lambda: Policy(retries=True), "Policy.retries: expected an integer >= 0, got True"),
        (lambda: Policy(timeout=0),
         "Policy.timeout: expected a number of seconds > 0 or None, got 0"),
        (lambda: Policy(first_byte_timeout=math.inf),
         "Policy.first_byte_timeout: expected a number of seconds > 0 or None, got inf"),
        (lambda: Policy(idle_timeout="5"),  # type: ignore[arg-type]
         "Policy.idle_timeout: expected a number of seconds > 0 or None, got '5'"),
        (lambda: Policy(retry_on=[429, 700]),  # type: ignore[arg-type]
         "Policy.retry_on: expected HTTP statuses (100..599) and 'connect-failure' or "
         "'first-byte-timeout', got 700"),
        (lambda: Policy(retry_on=["connect-failure", "timeout"]),  # type: ignore[arg-type]
         "Policy.retry_on: expected HTTP statuses (100..599) and 'connect-failure' or "
         "'first-byte-timeout', got 'timeout'"),
        (lambda: Policy(retry_on="connect-failure"),  # type: ignore[arg-type]
         "Policy.retry_on: expected a collection of HTTP statuses (100..599) and "
         "'connect-failure' or 'first-byte-timeout', got 'connect-failure'"),
        (lambda: Policy(retry_backoff=(2.0, 1.0)),
         "Policy.retry_backoff: expected a pair (base, cap) of seconds with 0 <= base <= cap, "
         "got (2.0, 1.0)"),
        (lambda: Policy(retry_backoff=(0.1,)),  # type: ignore[arg-type]
         "Policy.retry_backoff: expected a pair (base, cap) of seconds with 0 <= base <= cap, "
         "got (0.1,)"),
        (lambda: Policy(retry_budget=-0.1),
         "Policy.retry_budget: expected a number >= 0, got -0.1"),
        (lambda: Policy(retry_floor=math.nan),
         "Policy.retry_floor: expected a number of retries per second >= 0, got nan"),
        (lambda: Policy(replay_limit=1.5),  # type: ignore[arg-type]
         "Policy.replay_limit: expected an integer >= 0, got 1.5"),
        (lambda: Policy(fallback=["Backup"]),  # type: ignore[arg-type]
         f"Policy.fallback[0]: invalid provider name 'Backup': {NAME_RULE}"),
        (lambda: Policy(fallback=["b", "b"]),  # type: ignore[arg-type]
         "Policy.fallback: expected each provider once, got ['b', 'b']"),
        (lambda: Policy(fallback="backup"),  # type: ignore[arg-type]
         "Policy.fallback: expected a sequence of provider names, got 'backup'"),
        (lambda: Policy(max_in_flight=0),
         "Policy.max_in_flight: expected an integer >= 1 or None, got 0"),
        (lambda: Policy(circuit_breaker={"failures": 5}),  # type: ignore[arg-type]
         "Policy.circuit_breaker: expected a CircuitBreaker or None, got {'failures': 5}"),
        (lambda: Policy(fault=CircuitBreaker()),  # type: ignore[arg-type]
         "Policy.fault: expected a Fault or None, got CircuitBreaker(failures=5"),
        (lambda: CircuitBreaker(failures=0),
         "CircuitBreaker.failures: expected an integer >= 1, got 0"),
        (lambda: CircuitBreaker(interval=0),
         "CircuitBreaker.interval: expected a number of seconds > 0, got 0"),
        (lambda: CircuitBreaker(open_for=-1.0),
         "CircuitBreaker.open_for: expected a number of seconds > 0, got -1.0"),
        (lambda: CircuitBreaker(half_open=0),
         "CircuitBreaker.half_open: expected an integer >= 1, got 0"),
        (lambda: CircuitBreaker(on=[99]),  # type: ignore[arg-type]
         "CircuitBreaker.on: expected HTTP statuses (100..599) and 'connect-failure', "
         "'first-byte-timeout' or 'timeout', got 99"),
        (lambda: CircuitBreaker(max_open_for=0),
         "CircuitBreaker.max_open_for: expected a number of seconds > 0, got 0"),
        (lambda: Policy(fallback_on_overload=1),  # type: ignore[arg-type]
         "Policy.fallback_on_overload: expected True or False, got 1"),
        (lambda: Fault(delay=-1), "Fault.delay: expected a number of seconds >= 0, got -1"),
        (lambda: Fault(delay_ratio=1.5), "Fault.delay_ratio: expected a number in [0, 1], got 1.5"),
        (lambda: Fault(abort=200), "Fault.abort: expected an integer in 400..599, got 200"),
        (lambda: Fault(abort_ratio=-0.01),
         "Fault.abort_ratio: expected a number in [0, 1], got -0.01"),
        (lambda: Route({}), "Route.split: expected at least one weight > 0, got {}"),
        (lambda: Route({"a": 0}), "Route.split: expected at least one weight > 0, got {'a': 0}"),
        (lambda: Route({"a": -1}), "Route.split['a']: expected an integer weight >= 0, got -1"),
        (lambda: Route({"a": 1.5}), "Route.split['a']: expected an integer weight >= 0, got 1.5"),  # type: ignore[dict-item]
        (lambda: Route({"A": 1}), f"Route.split: invalid provider name 'A': {NAME_RULE}"),
        (lambda: Route([("a", 1)]),  # type: ignore[arg-type]
         "Route.split: expected a mapping of provider name to weight, got [('a', 1)]"),
        (lambda: Route({"a": 1}, sticky="ip"),
         "Route.sticky: expected None, 'api_key_id' or 'source', got 'ip'"),
    ],
)  # fmt: skip
def test_a_bad_value_is_refused_with_the_field_and_what_was_expected(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        make()
