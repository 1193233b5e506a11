"""The GPU-time token bucket and the gate's rules (burst, refill, launch size), driven by a
simulated device on an integer-ns fake clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.node_agent.pages import control_for
from services.node_agent.token_bucket import (
    INFLIGHT_POLL_NS,
    PAUSED_POLL_NS,
    PPM,
    BucketParams,
    TokenBucket,
    default_burst_ns,
    launch_ns,
    retry_ns,
)
from services.node_agent.worker.gate import bucket_params

PERIOD_NS = 10_000_000  # the default token period, 10 ms
MS = 1_000_000
SECOND_NS = 1_000_000_000


def params_for(share: float, paused: bool = False) -> BucketParams:
    """The control page's defaults: burst = one period at the share, cap = half a period."""
    return bucket_params(control_for(share, share, share, 0, paused=paused))


@dataclass
class Device:
    """A serial device: ask, sleep as the gate says, run the launch for its cost, complete."""

    params_at: Callable[[int], BucketParams]
    now_ns: int = 0
    runs: list[tuple[int, int]] = field(default_factory=list)
    bucket: TokenBucket = field(default_factory=TokenBucket)

    def run_until(self, end_ns: int, cost_ns: int | None = None) -> None:
        """Launch back to back; `cost_ns` None cuts launches by the launch-size rule."""
        while self.now_ns < end_ns:
            params = self.params_at(self.now_ns)
            cost = cost_ns or launch_ns(10**12, params.burst_ns)
            wait = self.bucket.admit(self.now_ns, cost, params)
            if wait:
                self.now_ns += retry_ns(wait, params.period_ns)
                continue
            self.runs.append((self.now_ns, self.now_ns + cost))
            self.now_ns += cost
            self.bucket.complete(cost, cost, params)

    def busy_fraction(self, start_ns: int, end_ns: int) -> float:
        busy = sum(max(0, min(stop, end_ns) - max(begin, start_ns)) for begin, stop in self.runs)
        return busy / (end_ns - start_ns)


def test_the_rules() -> None:
    assert default_burst_ns(0.3) == 3 * MS  # one period at the share
    assert default_burst_ns(0.0) == 1
    assert launch_ns(25 * MS, 3 * MS) == 3 * MS and launch_ns(2 * MS, 3 * MS) == 2 * MS
    assert retry_ns(25 * MS, PERIOD_NS) == PERIOD_NS and retry_ns(MS, PERIOD_NS) == MS


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("cost", [50_000, None, 23_456_789], ids=["tiny", "burst", "above-burst"])
def test_busy_fraction_over_one_second_matches_the_share(share: float, cost: int | None) -> None:
    device = Device(lambda _now: params_for(share))
    # The first second spends the full bucket too; big launches need a long window to
    # average over.
    end = (11 if cost and cost > MS else 3) * SECOND_NS
    device.run_until(end, cost)
    assert device.busy_fraction(SECOND_NS, end) == pytest.approx(share, rel=0.02)


def test_launches_of_one_burst_run_one_per_period() -> None:
    device = Device(lambda _now: params_for(0.3))
    device.run_until(100 * MS)
    starts = [begin for begin, _ in device.runs]
    assert starts == [k * PERIOD_NS for k in range(10)]
    assert all(stop - begin == 3 * MS for begin, stop in device.runs)


@pytest.mark.parametrize("cost", [MS, 3_333_333, None])
def test_lower_share_holds_within_one_period(cost: int | None) -> None:
    change_ns = 500 * MS
    device = Device(lambda now: params_for(1.0 if now < change_ns else 0.25))
    device.run_until(change_ns, cost)
    assert device.busy_fraction(0, change_ns) == pytest.approx(1.0, abs=0.01)
    end_ns = change_ns + SECOND_NS
    device.run_until(end_ns, cost)
    assert device.busy_fraction(change_ns + PERIOD_NS, end_ns) == pytest.approx(0.25, rel=0.05)


def test_higher_share_takes_effect_within_one_period() -> None:
    change_ns = 300 * MS
    device = Device(lambda now: params_for(0.25 if now < change_ns else 0.75))
    device.run_until(change_ns + 500 * MS)
    assert device.busy_fraction(change_ns + PERIOD_NS, change_ns + 500 * MS) == pytest.approx(
        0.75, rel=0.05)


def _instant_launches(bucket: TokenBucket, cost: int, now: int, params: BucketParams) -> int:
    """Launches admitted back to back at one instant (each completes at once)."""
    admitted = 0
    while bucket.admit(now, cost, params) == 0:
        bucket.complete(cost, cost, params)
        admitted += 1
        assert admitted < 10_000
    return admitted


def test_credit_after_a_long_idle_is_capped_by_the_burst() -> None:
    params = params_for(0.5)  # burst 5 ms
    bucket = TokenBucket()
    assert _instant_launches(bucket, MS, 0, params) == 5  # starts full
    idle_end = 60 * SECOND_NS
    assert _instant_launches(bucket, MS, idle_end, params) == 5  # not 30 s of credit
    assert bucket.admit(idle_end, MS, params) == 2 * MS  # 1 ms of credit at 0.5


def test_a_waiting_launch_is_never_given_credit_beyond_the_burst() -> None:
    # The rule this one replaced let a launch bigger than the burst accrue credit up to its
    # own cost during idle time, so it ran at full speed after every gap at any share.
    params = params_for(0.1)  # burst 1 ms
    bucket = TokenBucket()
    assert bucket.admit(0, MS, params) == 0
    bucket.complete(MS, MS, params)
    # After a minute idle a 10 ms launch still goes alone on a full bucket (1 ms of credit)
    # and owes the other 9 ms: the next launch waits 90 ms of wall time.
    assert bucket.admit(60 * SECOND_NS, 10 * MS, params) == 0
    bucket.complete(10 * MS, 10 * MS, params)
    assert bucket.admit(60 * SECOND_NS + 10 * MS, MS, params) == 90 * MS


def test_a_launch_bigger_than_the_burst_goes_alone_on_a_full_bucket() -> None:
    params = params_for(0.25)  # burst 2.5 ms
    bucket = TokenBucket()
    assert bucket.admit(SECOND_NS, 10 * MS, params) == 0
    bucket.complete(10 * MS, 10 * MS, params)
    assert bucket.admit(SECOND_NS, 10 * MS, params) == 40 * MS  # 10 ms / 0.25
    assert bucket.admit(SECOND_NS + 40 * MS, 10 * MS, params) == 0


def test_work_in_flight_over_the_cap_waits_for_a_completion() -> None:
    params = BucketParams(share_ppm=PPM, burst_ns=50 * MS, inflight_cap_ns=10 * MS)
    bucket = TokenBucket()
    assert bucket.admit(0, 6 * MS, params) == 0
    assert bucket.admit(1_000, 6 * MS, params) == INFLIGHT_POLL_NS  # 12 ms > 10 ms cap
    assert bucket.admit(1_000, 4 * MS, params) == 0  # exactly at the cap is fine
    assert bucket.admit(2_000, 1, params) == INFLIGHT_POLL_NS
    bucket.complete(6 * MS, 6 * MS, params)
    assert bucket.admit(3_000, 6 * MS, params) == 0
    bucket.complete(4 * MS, 4 * MS, params)
    bucket.complete(6 * MS, 6 * MS, params)
    assert bucket.inflight_ns == 0
    assert bucket.admit(4_000, 30 * MS, params) == 0  # bigger than the cap, alone


@pytest.mark.parametrize("params", [
    BucketParams(share_ppm=500_000, burst_ns=5 * MS, inflight_cap_ns=PERIOD_NS, paused=True),
    BucketParams(share_ppm=0, burst_ns=5 * MS, inflight_cap_ns=PERIOD_NS)],
    ids=["paused", "share-zero"])
def test_paused_or_zero_share_admits_nothing(params: BucketParams) -> None:
    bucket = TokenBucket()
    assert bucket.admit(0, 1, params) == PAUSED_POLL_NS
    assert bucket.admit(100 * SECOND_NS, 1, params) == PAUSED_POLL_NS
    assert (bucket.tat_ns, bucket.inflight_ns) == (0, 0)


def test_completion_charges_the_actual_cost() -> None:
    params = params_for(0.5)
    bucket = TokenBucket()
    assert bucket.admit(SECOND_NS, 2 * MS, params) == 0
    assert bucket.tat_ns == SECOND_NS + 4 * MS and bucket.inflight_ns == 2 * MS
    bucket.complete(2 * MS, 5 * MS, params)  # ran 3 ms longer than estimated: 6 ms of wall time
    assert bucket.tat_ns == SECOND_NS + 10 * MS and bucket.inflight_ns == 0
    bucket.complete(0, 0, params)
    assert bucket.admit(SECOND_NS, 2 * MS, params) == 4 * MS  # tat 10 ms ahead, tolerance 10 ms


def test_completion_cheaper_than_estimated_refunds_the_difference() -> None:
    params = params_for(0.5)
    bucket = TokenBucket()
    assert bucket.admit(SECOND_NS, 4 * MS, params) == 0
    bucket.complete(4 * MS, MS, params)  # 3 ms cheaper: 6 ms of wall time back
    assert bucket.tat_ns == SECOND_NS + 2 * MS


@settings(max_examples=200, deadline=None)
@given(share_ppm=st.integers(min_value=1, max_value=PPM - 1),
       burst=st.integers(min_value=0, max_value=50 * MS),
       cost=st.integers(min_value=1, max_value=100 * MS),
       debt=st.integers(min_value=0, max_value=100 * MS),
       start=st.integers(min_value=0, max_value=10**15))
def test_waiting_the_returned_time_admits_the_launch(share_ppm: int, burst: int, cost: int,
                                                     debt: int, start: int) -> None:
    params = BucketParams(share_ppm=share_ppm, burst_ns=burst, inflight_cap_ns=10**12)
    bucket = TokenBucket(start + debt)
    wait = bucket.admit(start, cost, params)
    if wait:
        assert bucket.admit(start + wait - 1, cost, params) > 0  # not a nanosecond early
        assert bucket.admit(start + wait, cost, params) == 0
