"""The adaptive batching policy and the arrival-rate estimate, on a fake clock."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.node_agent.worker.batching import (
    MAX_WAIT_OF_SLO,
    SLO_BUDGET,
    ArrivalRate,
    BatchState,
    batch_size,
    batch_wait_s,
)

# A 100 ms SLO, a 20 ms full batch of 8, 2 of 8 queued, the oldest 5 ms old, 100 arrivals/s.
BASE = BatchState(queued=2, oldest_age_s=0.005, max_batch=8, slo_s=0.1, full_batch_s=0.02,
                  arrival_rps=100.0)


def test_constants_are_the_documented_fractions_of_the_slo() -> None:
    assert SLO_BUDGET == 0.8
    assert MAX_WAIT_OF_SLO == 0.25


def test_waits_for_a_batch_that_can_still_fill_in_time() -> None:
    # Filling 6 more at 1000/s takes 6 ms: well inside every bound.
    assert batch_wait_s(replace(BASE, arrival_rps=1000.0)) == pytest.approx(0.006)


def test_no_wait_when_the_batch_is_full() -> None:
    assert batch_wait_s(replace(BASE, queued=8)) == 0.0
    assert batch_wait_s(replace(BASE, queued=12)) == 0.0


def test_no_wait_when_nothing_is_queued() -> None:
    assert batch_wait_s(replace(BASE, queued=0)) == 0.0


@pytest.mark.parametrize("rate", [0.0, -5.0])
def test_no_wait_without_arrivals(rate: float) -> None:
    assert batch_wait_s(replace(BASE, arrival_rps=rate)) == 0.0


@pytest.mark.parametrize("slo", [0.0, -1.0])
def test_no_wait_without_an_slo(slo: float) -> None:
    assert batch_wait_s(replace(BASE, slo_s=slo)) == 0.0


def test_no_wait_when_waiting_would_push_the_oldest_past_the_budget() -> None:
    # 0.8 × 100 ms - 20 ms = 60 ms: an oldest request of 60 ms (or more) must run now.
    assert batch_wait_s(replace(BASE, oldest_age_s=0.06)) == pytest.approx(0.0, abs=1e-12)
    assert batch_wait_s(replace(BASE, oldest_age_s=0.0601)) == 0.0
    assert batch_wait_s(replace(BASE, oldest_age_s=0.5)) == 0.0
    # Or a full batch that alone would overrun the budget.
    assert batch_wait_s(replace(BASE, oldest_age_s=0.0, full_batch_s=0.09)) == 0.0


def test_wait_is_bounded_by_the_latest_start_for_the_oldest() -> None:
    # Budget 80 ms - 20 ms run - 50 ms age = 10 ms, less than the 60 ms to fill and 25 ms cap.
    assert batch_wait_s(replace(BASE, oldest_age_s=0.05)) == pytest.approx(0.01)


def test_wait_is_bounded_by_a_quarter_of_the_slo() -> None:
    # A 1 s SLO, nothing old, a tiny batch time: filling 6 at 10/s would take 600 ms.
    state = BatchState(queued=2, oldest_age_s=0.0, max_batch=8, slo_s=1.0, full_batch_s=0.001,
                       arrival_rps=10.0)
    assert batch_wait_s(state) == pytest.approx(0.25)


def test_wait_is_bounded_by_the_time_to_fill_at_the_arrival_rate() -> None:
    state = BatchState(queued=7, oldest_age_s=0.0, max_batch=8, slo_s=1.0, full_batch_s=0.001,
                       arrival_rps=50.0)
    assert batch_wait_s(state) == pytest.approx(0.02)


batch_states = st.builds(
    BatchState,
    queued=st.integers(min_value=-2, max_value=80),
    oldest_age_s=st.floats(min_value=0.0, max_value=5.0),
    max_batch=st.integers(min_value=1, max_value=64),
    slo_s=st.floats(min_value=0.0, max_value=5.0),
    full_batch_s=st.floats(min_value=0.0, max_value=5.0),
    arrival_rps=st.floats(min_value=0.0, max_value=1e5))


@settings(max_examples=500, deadline=None)
@given(batch_states)
def test_a_positive_wait_never_costs_the_oldest_request_its_slo_budget(state: BatchState) -> None:
    wait = batch_wait_s(state)
    assert wait >= 0.0
    if wait > 0:
        assert 0 < state.queued < state.max_batch
        assert state.oldest_age_s + wait + state.full_batch_s <= SLO_BUDGET * state.slo_s + 1e-12
        assert wait <= MAX_WAIT_OF_SLO * state.slo_s + 1e-12
        assert wait <= (state.max_batch - state.queued) / state.arrival_rps * (1 + 1e-12)


@settings(max_examples=300, deadline=None)
@given(batch_states)
def test_the_wait_is_the_tightest_of_its_three_bounds(state: BatchState) -> None:
    wait = batch_wait_s(state)
    if 0 < state.queued < state.max_batch and state.slo_s > 0 and state.arrival_rps > 0:
        bounds = [(state.max_batch - state.queued) / state.arrival_rps,
                  SLO_BUDGET * state.slo_s - state.full_batch_s - state.oldest_age_s,
                  MAX_WAIT_OF_SLO * state.slo_s]
        assert wait == pytest.approx(max(0.0, min(bounds)), abs=1e-12)
    else:
        assert wait == 0.0


def _feed(rate: ArrivalRate, start_s: float, end_s: float, interval_s: float, count: int = 1) -> float:
    """Arrivals of `count` every `interval_s` in (start_s, end_s]; returns the last time."""
    now = start_s
    steps = round((end_s - start_s) / interval_s)
    for step in range(1, steps + 1):
        now = start_s + step * interval_s
        rate.record(now, count)
    return now


def test_arrival_rate_starts_at_zero() -> None:
    assert ArrivalRate(now_s=10.0).rate(10.0) == 0.0
    assert ArrivalRate(now_s=10.0).rate(20.0) == 0.0


def test_arrival_rate_converges_to_a_steady_rate() -> None:
    rate = ArrivalRate(now_s=0.0)
    last = _feed(rate, 0.0, 5.0, 0.01)  # 100 events/s for 5 s
    assert rate.rate(last) == pytest.approx(100.0, rel=0.1)


def test_arrival_rate_counts_batched_arrivals_the_same() -> None:
    rate = ArrivalRate(now_s=0.0)
    last = _feed(rate, 0.0, 5.0, 0.1, count=10)  # 10 every 100 ms = 100/s
    assert rate.rate(last) == pytest.approx(100.0, rel=0.1)


def test_arrival_rate_follows_a_change_of_rate() -> None:
    rate = ArrivalRate(now_s=0.0)
    last = _feed(rate, 0.0, 5.0, 0.01)
    last = _feed(rate, last, last + 5.0, 0.002)  # 500/s
    assert rate.rate(last) == pytest.approx(500.0, rel=0.1)


def test_arrival_rate_decays_when_arrivals_stop() -> None:
    rate = ArrivalRate(now_s=0.0, halflife_s=1.0)
    last = _feed(rate, 0.0, 5.0, 0.01)
    steady = rate.rate(last)
    assert rate.rate(last + 1.0) == pytest.approx(steady / 2)
    assert rate.rate(last + 3.0) == pytest.approx(steady / 8)
    assert rate.rate(last + 20.0) < 0.001 * steady
    # Reading does not change the estimate.
    assert rate.rate(last) == steady


def test_a_shorter_halflife_converges_and_decays_faster() -> None:
    slow, fast = ArrivalRate(0.0, halflife_s=2.0), ArrivalRate(0.0, halflife_s=0.25)
    _feed(slow, 0.0, 1.0, 0.01)
    last = _feed(fast, 0.0, 1.0, 0.01)
    assert fast.rate(last) > slow.rate(last)
    assert fast.rate(last) == pytest.approx(100.0, rel=0.1)
    assert fast.rate(last + 1.0) < slow.rate(last + 1.0)


def test_arrivals_at_the_same_instant_do_not_blow_up_the_rate() -> None:
    rate = ArrivalRate(now_s=0.0)
    for _ in range(100):
        rate.record(1.0)
    assert 0.0 < rate.rate(1.0) < 1000.0


def _linear_estimate(per_sample_s: float):  # type: ignore[no-untyped-def]
    return lambda size: per_sample_s * size


def test_batch_size_takes_the_largest_batch_the_oldest_request_can_afford() -> None:
    # Budget 0.8 × 100 ms − 20 ms age = 60 ms; 10 ms per sample → 6 samples fit.
    assert batch_size(queued=20, max_batch=16, slo_s=0.1, oldest_age_s=0.02,
                      estimate_s=_linear_estimate(0.010)) == 6


def test_batch_size_never_exceeds_the_queue_or_the_max_batch() -> None:
    assert batch_size(3, 16, 1.0, 0.0, _linear_estimate(0.001)) == 3
    assert batch_size(40, 16, 1.0, 0.0, _linear_estimate(0.001)) == 16
    assert batch_size(40, 16, 0.0, 0.0, _linear_estimate(1.0)) == 16  # no SLO: throughput


def test_a_request_already_past_saving_gets_a_full_batch_to_drain_the_queue() -> None:
    assert batch_size(queued=20, max_batch=8, slo_s=0.1, oldest_age_s=0.09,
                      estimate_s=_linear_estimate(0.010)) == 8


@given(queued=st.integers(1, 64), max_batch=st.integers(1, 32), slo_ms=st.floats(1, 1000),
       age_ms=st.floats(0, 1000), per_sample_ms=st.floats(0.01, 50))
@settings(max_examples=200, deadline=None)
def test_batch_size_keeps_the_oldest_within_budget_whenever_one_sample_would(
        queued: int, max_batch: int, slo_ms: float, age_ms: float, per_sample_ms: float) -> None:
    estimate = _linear_estimate(per_sample_ms / 1000)
    size = batch_size(queued, max_batch, slo_ms / 1000, age_ms / 1000, estimate)
    assert 1 <= size <= min(queued, max_batch)
    budget = slo_ms / 1000 * SLO_BUDGET - age_ms / 1000
    if estimate(1) <= budget:
        assert estimate(size) <= budget + 1e-12
