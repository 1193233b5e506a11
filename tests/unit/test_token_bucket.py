"""The GPU-time token bucket, driven by a simulated device on an integer-ns fake clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.node_agent.token_bucket import BLOCKED, BucketParams, TokenBucket

PERIOD_NS = 10_000_000  # the default token period, 10 ms
SECOND_NS = 1_000_000_000


def params_for(share: float, paused: bool = False) -> BucketParams:
    """The defaults of the control page: burst = one period at the share, cap = one period."""
    return BucketParams(share=share, burst_ns=max(1, round(share * PERIOD_NS)), inflight_cap_ns=PERIOD_NS,
                        paused=paused)


@dataclass
class Device:
    """A serial device: ask, wait as told, admit, run the launch for its cost, complete."""

    params_at: Callable[[int], BucketParams]
    now_ns: int = 0
    runs: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.now_ns, self.params_at(self.now_ns).burst_ns)

    def run_until(self, end_ns: int, cost_ns: int) -> None:
        while self.now_ns < end_ns:
            wait = self.bucket.wait_ns(cost_ns, self.now_ns, self.params_at(self.now_ns))
            assert wait != BLOCKED  # nothing is in flight between launches here
            assert wait >= 0
            if wait > 0:
                self.now_ns += wait
                continue
            self.bucket.admit(cost_ns)
            self.runs.append((self.now_ns, self.now_ns + cost_ns))
            self.now_ns += cost_ns
            self.bucket.complete(cost_ns, cost_ns)

    def busy_fraction(self, start_ns: int, end_ns: int) -> float:
        busy = sum(max(0, min(stop, end_ns) - max(begin, start_ns)) for begin, stop in self.runs)
        return busy / (end_ns - start_ns)


def _costs(share: float) -> list[int]:
    burst = round(share * PERIOD_NS)
    return [50_000, burst // 3, 2 * burst + 123_457]  # smaller and larger than the burst


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("cost_kind", [0, 1, 2], ids=["tiny", "below-burst", "above-burst"])
def test_busy_fraction_over_one_second_matches_the_share(share: float, cost_kind: int) -> None:
    cost = _costs(share)[cost_kind]
    device = Device(lambda _now: params_for(share))
    device.run_until(SECOND_NS, cost)
    assert device.busy_fraction(0, SECOND_NS) == pytest.approx(share, rel=0.02)


@pytest.mark.parametrize("cost", [1_000_000, 3_333_333, 5_000_000])
def test_lower_share_holds_within_one_period(cost: int) -> None:
    change_ns = 500_000_000
    device = Device(lambda now: params_for(1.0 if now < change_ns else 0.25))
    device.run_until(change_ns, cost)
    assert device.busy_fraction(0, change_ns) == pytest.approx(1.0, abs=0.01)
    end_ns = change_ns + SECOND_NS
    device.run_until(end_ns, cost)
    assert device.busy_fraction(change_ns + PERIOD_NS, end_ns) == pytest.approx(0.25, rel=0.05)


def test_higher_share_takes_effect_within_one_period() -> None:
    change_ns = 300_000_000
    device = Device(lambda now: params_for(0.25 if now < change_ns else 0.75))
    device.run_until(change_ns + 500_000_000, 1_000_000)
    assert device.busy_fraction(change_ns + PERIOD_NS, change_ns + 500_000_000) == pytest.approx(
        0.75, rel=0.05)


def _instant_launches(bucket: TokenBucket, cost: int, now: int, params: BucketParams) -> int:
    """Launches admitted back to back at one instant (each completes at once)."""
    admitted = 0
    while bucket.wait_ns(cost, now, params) == 0:
        bucket.admit(cost)
        bucket.complete(cost, cost)
        admitted += 1
        assert admitted < 10_000
    return admitted


def test_credit_after_a_long_idle_is_capped_by_the_burst() -> None:
    params = params_for(0.5)  # burst 5 ms
    bucket = TokenBucket(0, params.burst_ns)
    assert _instant_launches(bucket, 1_000_000, 0, params) == 5  # starts full
    idle_end = 60 * SECOND_NS
    assert _instant_launches(bucket, 1_000_000, idle_end, params) == 5  # not 30 s of credit
    assert bucket.credit_ns == 0
    assert bucket.wait_ns(1_000_000, idle_end, params) == pytest.approx(2_000_000, abs=2)


def test_a_launch_bigger_than_the_burst_may_use_credit_up_to_its_cost() -> None:
    params = params_for(0.5)  # burst 5 ms
    cost = 20_000_000
    bucket = TokenBucket(0, params.burst_ns)
    assert bucket.wait_ns(cost, 0, params) == pytest.approx(30_000_000, abs=2)  # (20 - 5) ms at 0.5
    idle_end = 60 * SECOND_NS
    assert bucket.wait_ns(cost, idle_end, params) == 0
    assert bucket.credit_ns == cost  # capped at max(burst, cost), not 30 s of credit
    bucket.admit(cost)
    bucket.complete(cost, cost)
    assert bucket.wait_ns(cost, idle_end, params) == pytest.approx(40_000_000, abs=2)
    # A small launch afterwards sees the burst cap again.
    later = idle_end + 10 * SECOND_NS
    assert _instant_launches(bucket, 1_000_000, later, params) == 5


def test_work_in_flight_over_the_cap_blocks_until_a_completion() -> None:
    params = BucketParams(share=1.0, burst_ns=50_000_000, inflight_cap_ns=10_000_000)
    bucket = TokenBucket(0, params.burst_ns)
    assert bucket.wait_ns(6_000_000, 0, params) == 0
    bucket.admit(6_000_000)
    assert bucket.wait_ns(6_000_000, 1_000, params) == BLOCKED  # 12 ms > 10 ms cap, credit plenty
    assert bucket.wait_ns(4_000_000, 1_000, params) == 0  # exactly at the cap is fine
    bucket.admit(4_000_000)
    assert bucket.wait_ns(1, 2_000, params) == BLOCKED
    bucket.complete(6_000_000, 6_000_000)
    assert bucket.wait_ns(6_000_000, 3_000, params) == 0
    bucket.complete(4_000_000, 4_000_000)
    assert bucket.inflight_ns == 0


def test_a_launch_bigger_than_the_cap_runs_when_nothing_is_in_flight() -> None:
    params = BucketParams(share=1.0, burst_ns=50_000_000, inflight_cap_ns=10_000_000)
    bucket = TokenBucket(0, params.burst_ns)
    assert bucket.wait_ns(30_000_000, 0, params) == 0


@pytest.mark.parametrize("params", [
    BucketParams(share=0.5, burst_ns=5_000_000, inflight_cap_ns=PERIOD_NS, paused=True),
    BucketParams(share=0.0, burst_ns=5_000_000, inflight_cap_ns=PERIOD_NS),
    BucketParams(share=-0.1, burst_ns=5_000_000, inflight_cap_ns=PERIOD_NS)],
    ids=["paused", "share-zero", "share-negative"])
def test_paused_or_zero_share_admits_nothing(params: BucketParams) -> None:
    bucket = TokenBucket(0, 5_000_000)  # full of credit
    assert bucket.wait_ns(1, 0, params) == BLOCKED
    assert bucket.wait_ns(1, 100 * SECOND_NS, params) == BLOCKED


def test_no_credit_accrues_while_paused() -> None:
    running = params_for(0.5)
    bucket = TokenBucket(0, running.burst_ns)
    bucket.admit(running.burst_ns)
    bucket.complete(running.burst_ns, running.burst_ns)
    assert bucket.credit_ns == 0
    assert bucket.wait_ns(1_000_000, 10 * SECOND_NS, params_for(0.5, paused=True)) == BLOCKED
    # Resumed: the paused 10 s bought nothing; credit grows only from now on.
    assert bucket.wait_ns(1_000_000, 10 * SECOND_NS, running) == pytest.approx(2_000_000, abs=2)


def test_completion_charges_the_actual_cost() -> None:
    params = BucketParams(share=0.5, burst_ns=10_000_000, inflight_cap_ns=PERIOD_NS)
    bucket = TokenBucket(0, params.burst_ns)
    assert bucket.wait_ns(2_000_000, 0, params) == 0
    bucket.admit(2_000_000)
    assert bucket.credit_ns == 8_000_000
    assert bucket.inflight_ns == 2_000_000
    bucket.complete(2_000_000, 5_000_000)  # ran 3 ms longer than estimated
    assert bucket.credit_ns == 5_000_000
    assert bucket.inflight_ns == 0


def test_completion_cheaper_than_estimated_refunds_the_difference() -> None:
    bucket = TokenBucket(0, 10_000_000)
    bucket.admit(4_000_000)
    bucket.complete(4_000_000, 1_000_000)  # 3 ms cheaper than estimated
    assert bucket.credit_ns == 9_000_000


def test_overrun_debt_delays_the_next_launch() -> None:
    params = BucketParams(share=0.5, burst_ns=2_000_000, inflight_cap_ns=PERIOD_NS)
    bucket = TokenBucket(0, params.burst_ns)
    bucket.admit(2_000_000)
    bucket.complete(2_000_000, 12_000_000)  # 10 ms of debt
    assert bucket.credit_ns == -10_000_000
    # 11 ms of credit to earn at share 0.5.
    assert bucket.wait_ns(1_000_000, 0, params) == pytest.approx(22_000_000, abs=2)


def test_huge_cost_gives_a_finite_positive_wait_and_then_admits() -> None:
    cost = 10**15
    for share in (1e-6, 0.1, 0.7, 1.0):
        params = BucketParams(share=share, burst_ns=1_000_000, inflight_cap_ns=PERIOD_NS)
        bucket = TokenBucket(0, params.burst_ns)
        wait = bucket.wait_ns(cost, 0, params)
        assert isinstance(wait, int)
        assert wait == pytest.approx((cost - 1_000_000) / share, rel=1e-9)
        assert wait > 0
        assert bucket.wait_ns(cost, wait, params) == 0


def test_huge_idle_gap_fills_only_to_the_cap() -> None:
    params = params_for(0.5)
    bucket = TokenBucket(0, params.burst_ns)
    bucket.admit(params.burst_ns)
    bucket.complete(params.burst_ns, params.burst_ns)
    assert bucket.wait_ns(1_000_000, 10**18, params) == 0
    assert bucket.credit_ns == params.burst_ns
    assert bucket.wait_ns(1_000_000, 2 * 10**18, params) == 0
    assert bucket.credit_ns == params.burst_ns


def test_a_clock_going_backwards_neither_adds_nor_removes_credit() -> None:
    params = params_for(0.5)
    bucket = TokenBucket(SECOND_NS, params.burst_ns)
    bucket.admit(params.burst_ns)
    bucket.complete(params.burst_ns, params.burst_ns)
    wait = bucket.wait_ns(1_000_000, 0, params)  # one second earlier
    assert bucket.credit_ns == 0
    assert wait > 0


@settings(max_examples=200, deadline=None)
@given(share=st.floats(min_value=0.001, max_value=1.0),
       burst=st.integers(min_value=1, max_value=50_000_000),
       cost=st.integers(min_value=1, max_value=100_000_000),
       debt=st.integers(min_value=0, max_value=100_000_000),
       start=st.integers(min_value=0, max_value=10**15))
def test_waiting_the_returned_time_admits_the_launch(share: float, burst: int, cost: int, debt: int,
                                                     start: int) -> None:
    params = BucketParams(share=share, burst_ns=burst, inflight_cap_ns=PERIOD_NS)
    bucket = TokenBucket(start, burst)
    bucket.credit_ns -= debt
    wait = bucket.wait_ns(cost, start, params)
    assert wait >= 0
    if wait:
        # Not much longer than the credit shortfall needs.
        assert wait <= (cost - (burst - debt)) / share + 2
        assert bucket.wait_ns(cost, start + wait, params) == 0
