"""The admin page's rates over the last minute: a ring of counter snapshots,
on times the test chooses (the snapshots carry the mesh clock's time)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from meshbridge import ProviderState, TrafficState
from meshbridge.service._admin_rates import Rate, Rates


def state(at: float, **counts: tuple[int, int]) -> TrafficState:
    providers = {
        name: ProviderState(name, requests=requests, errors=errors)
        for name, (requests, errors) in counts.items()
    }
    return TrafficState(at, MappingProxyType(providers), MappingProxyType({}))


def test_with_nothing_sampled_before_now_there_is_no_rate_not_a_zero() -> None:
    rates = Rates(window=60.0, step=5.0)
    now = state(100.0, llm=(10, 1))
    assert rates.over(now) == {"llm": None}
    rates.sample(now)
    assert rates.over(now) == {"llm": None}  # no time between them


def test_a_rate_is_the_difference_over_the_seconds_between_snapshots() -> None:
    rates = Rates(window=60.0, step=5.0)
    rates.sample(state(100.0, llm=(10, 0), idle=(0, 0)))
    now = state(110.0, llm=(30, 5), idle=(0, 0))
    assert rates.over(now) == {"llm": Rate(2.0, 0.25, 10.0), "idle": Rate(0.0, None, 10.0)}


def test_the_ring_keeps_one_snapshot_per_step_and_looks_back_one_window_at_most() -> None:
    rates = Rates(window=60.0, step=5.0)
    for second in range(200):  # sampled every second: one kept per 5 s
        rates.sample(state(float(second), llm=(second * 3, second)))
    assert len(rates) == 14  # window / step + 2, whatever was offered
    rate = rates.over(state(200.0, llm=(600, 200)))["llm"]
    assert rate is not None
    assert rate.seconds == 60.0  # the oldest snapshot within the window: t = 140
    assert rate.per_second == pytest.approx(3.0)
    assert rate.error_ratio == pytest.approx(1 / 3)


def test_a_counter_that_went_down_gives_no_rate_until_the_ring_moves_past_it() -> None:
    rates = Rates(window=10.0, step=5.0)
    rates.sample(state(0.0, llm=(50, 0), other=(5, 0)))
    restarted = state(5.0, llm=(2, 0), other=(6, 0))
    assert rates.over(restarted) == {"llm": None, "other": Rate(0.2, 0.0, 5.0)}
    rates.sample(restarted)
    later = rates.over(state(12.0, llm=(9, 7), other=(6, 0)))
    assert later["llm"] == Rate(1.0, 1.0, 7.0)  # from the snapshot at 5 s
