"""One conformance suite for every limit store: the in-process one and Redis.

Each test drives a store through the ``LimitStore`` operations on an
injected time line (``now`` is an argument of every operation), so the same
assertions hold, to the millisecond, for both stores. The Redis cases run
against a real redis-server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from meshbridge import InProcessStore, LimitCounter, LimitStore
from meshbridge.service import RedisStore

from ..redis_server import RedisServer

T0 = 1_750_000_000.0  # a Sunday, 2025-06-15 15:06:40 UTC

WINDOW = LimitCounter("l/requests_per_minute", "window", 3, 60.0)
BUCKET = LimitCounter("l/tokens_per_minute", "bucket", 600, 60.0)
LEASE = LimitCounter("l/concurrent", "lease", 2, 30.0)
TOTAL = LimitCounter("l/tokens_per_day/2025-06-15", "total", 1000, 3600.0)


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    made: LimitStore
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisStore(server.url, prefix=f"test-{uuid.uuid4().hex}")
    else:
        made = InProcessStore()
    yield made
    await made.aclose()


async def test_a_window_admits_its_limit_then_says_when_its_oldest_entry_leaves(
    store: LimitStore,
) -> None:
    for i in range(3):
        assert await store.admit(T0 + i, f"c{i}", [(WINDOW, 1)]) == (True, [i + 1.0])
    admitted, waits = await store.admit(T0 + 10, "c3", [(WINDOW, 1)])
    assert not admitted
    assert waits == [pytest.approx(50.0)]  # the entry of T0 leaves at T0 + 60
    assert await store.read(T0 + 59.999, [WINDOW]) == [3.0]
    assert await store.read(T0 + 60, [WINDOW]) == [2.0]  # (now - 60, now]: T0 is out
    assert await store.admit(T0 + 60, "c4", [(WINDOW, 1)]) == (True, [3.0])


async def test_a_refusal_names_the_entry_that_must_leave_when_more_are_in_than_allowed(
    store: LimitStore,
) -> None:
    """A window may hold more than its limit (a lower limit configured later):
    the wait is for the entry whose exit brings it below the limit."""
    wide = WINDOW._replace(limit=5)
    for i in range(5):
        assert (await store.admit(T0 + i, f"c{i}", [(wide, 1)]))[0]
    admitted, waits = await store.admit(T0 + 5, "late", [(WINDOW, 1)])
    assert not admitted
    assert waits == [pytest.approx(T0 + 2 + 60 - (T0 + 5))]  # 5 in, 3 allowed: the third


async def test_admission_is_all_or_nothing(store: LimitStore) -> None:
    full = LEASE._replace(key="l/other", limit=1)
    assert (await store.admit(T0, "a", [(full, 1)]))[0]
    admitted, waits = await store.admit(T0, "b", [(WINDOW, 1), (BUCKET, 100), (full, 1)])
    assert not admitted
    assert waits == [-1.0, -1.0, 0.0]  # only the lease was at its limit; it says 0
    assert await store.read(T0, [WINDOW, BUCKET, full]) == [0.0, 0.0, 1.0]


async def test_a_bucket_goes_below_zero_then_refills_at_its_rate(store: LimitStore) -> None:
    assert await store.admit(T0, "a", [(BUCKET, 500)]) == (True, [500.0])
    # 100 left: admitted (its use is below the limit), the bucket goes to -300
    assert await store.admit(T0, "b", [(BUCKET, 400)]) == (True, [900.0])
    admitted, waits = await store.admit(T0 + 1, "c", [(BUCKET, 1)])
    assert not admitted
    # 600 a minute is 10 a second: at T0 + 1 the level is -290, back above 0 after 29 s
    assert waits == [pytest.approx(29.0)]
    assert (await store.admit(T0 + 30.1, "d", [(BUCKET, 1)]))[0]
    assert (await store.read(T0 + 100, [BUCKET]))[0] == pytest.approx(0.0)


async def test_settling_a_bucket_refunds_up_to_full_and_debits_beyond_the_reservation(
    store: LimitStore,
) -> None:
    assert (await store.admit(T0, "a", [(BUCKET, 500)]))[0]
    assert await store.settle(T0, "a", [(BUCKET, -450)]) == [pytest.approx(50.0)]
    assert await store.settle(T0, "a", [(BUCKET, -1000)]) == [0.0]  # never above full
    assert await store.settle(T0, "a", [(BUCKET, 700)]) == [pytest.approx(700.0)]
    assert (await store.read(T0 + 6, [BUCKET]))[0] == pytest.approx(640.0)


async def test_leases_end_when_settled_or_expire_unless_renewed(store: LimitStore) -> None:
    assert await store.admit(T0, "a", [(LEASE, 1)]) == (True, [1.0])
    assert await store.admit(T0, "b", [(LEASE, 1)]) == (True, [2.0])
    assert await store.admit(T0, "c", [(LEASE, 1)]) == (False, [0.0])
    assert await store.settle(T0 + 1, "a", [(LEASE, 0)]) == [1.0]
    assert (await store.admit(T0 + 1, "c", [(LEASE, 1)]))[0]
    await store.renew(T0 + 20, [(LEASE, "c")])  # c until T0 + 50; b (a dead worker's) until T0 + 30
    assert await store.read(T0 + 29.9, [LEASE]) == [2.0]
    assert await store.read(T0 + 30, [LEASE]) == [1.0]
    assert await store.read(T0 + 50, [LEASE]) == [0.0]


async def test_renewing_a_lease_that_ended_does_not_bring_it_back(store: LimitStore) -> None:
    assert (await store.admit(T0, "a", [(LEASE, 1)]))[0]
    await store.settle(T0, "a", [(LEASE, 0)])
    await store.renew(T0 + 1, [(LEASE, "a"), (LEASE, "never-admitted")])
    assert await store.read(T0 + 1, [LEASE]) == [0.0]


async def test_a_total_adds_reservations_and_settlements_and_never_goes_below_zero(
    store: LimitStore,
) -> None:
    assert await store.admit(T0, "a", [(TOTAL, 600)]) == (True, [600.0])
    assert await store.admit(T0, "b", [(TOTAL, 600)]) == (True, [1200.0])
    assert await store.admit(T0, "c", [(TOTAL, 1)]) == (False, [0.0])
    assert await store.settle(T0, "a", [(TOTAL, -550)]) == [650.0]
    assert await store.settle(T0, "b", [(TOTAL, 0.25)]) == [650.25]
    assert await store.settle(T0, "b", [(TOTAL, -5000)]) == [0.0]
    assert await store.read(T0, [TOTAL]) == [0.0]


async def test_keys_lists_the_counters_under_a_prefix(store: LimitStore) -> None:
    a = TOTAL._replace(key="per-key/tokens_per_day/api_key_id=a%2Fb/2025-06-15")
    b = TOTAL._replace(key="per-key/tokens_per_day/api_key_id=c/2025-06-15")
    other = TOTAL._replace(key="per-keys/tokens_per_day/api_key_id=d/2025-06-15")
    assert (await store.admit(T0, "x", [(a, 1), (b, 1), (other, 1)]))[0]
    assert await store.keys("per-key/tokens_per_day/") == [a.key, b.key]
    assert await store.keys("per-key/tokens_per_day/api_key_id=*") == []  # no glob


async def test_concurrent_admissions_never_take_more_than_the_limit(store: LimitStore) -> None:
    counter = LimitCounter("l/burst", "window", 100, 60.0)
    results = await asyncio.gather(
        *(store.admit(T0 + i / 1000, f"c{i}", [(counter, 1), (LEASE, 1)]) for i in range(300))
    )
    admitted = [i for i, (ok, _) in enumerate(results) if ok]
    assert len(admitted) == 2  # the lease limit is the tighter one: all or nothing
    assert await store.read(T0 + 1, [counter, LEASE]) == [2.0, 2.0]
