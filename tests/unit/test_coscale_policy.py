"""The co-scaling policy's decisions on handmade contexts, with the numbers worked by hand,
and its rate forecast and sizing against the worked numbers of their docstrings."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest

from services.scaler.coscale import (
    Action,
    CoscaleSettings,
    GpuContext,
    ScaleIn,
    ScaleOut,
    SetInferenceQuota,
    SetTrainingQuota,
    TrainingContext,
    forecast,
)
from services.scaler.coscale.room import TrainingFloor, Want, divide
from services.scaler.coscale.sizing import curve, start_quota, wait_tail
from services.simulator.serving.profile import BATCHES, SHARES, StandInProfile
from tests.unit.coscale_world import Spec, World


@dataclass(frozen=True)
class LinearProfile:
    """One instance carries 100 req/s per whole GPU of share (above its lone-batch share
    0.2); a batch of one costs 10 ms of whole-GPU time, a batch of b 10/b ms per request."""

    per_share_rps: float = 100.0
    lone: float = 0.2
    batch_of_one_s: float = 0.01

    def capacity(self, share: float, max_batch: int) -> float:
        return self.per_share_rps * share if share >= self.lone - 1e-9 else 0.0

    def best_batch(self, share: float) -> int:
        return 4

    def lone_batch_share(self, batch: int = 1) -> float | None:
        return self.lone

    def gpu_s_per_request(self, batch: int) -> float:
        return self.batch_of_one_s / batch


PROFILE = LinearProfile()
SETTINGS = CoscaleSettings()


# ---- forecast -----------------------------------------------------------------------------


def test_the_level_is_the_mean_plus_one_standard_error_and_a_jump_is_taken_at_once() -> None:
    rates = [(float(t), r) for t, r in enumerate([20, 23, 18, 21, 19], start=1)]
    assert forecast.level(rates, 5.0, 5.0, 3.0) == pytest.approx(20.2 + math.sqrt(20.2 / 5))
    assert forecast.slope(rates, 5.0, 6.0, 3.0) == 0.0
    assert forecast.predict(rates, 5.0, 3.4, 5.0, 6.0, 3.0) == pytest.approx(22.21, abs=0.01)
    assert forecast.level([(1.0, 0.0), (2.0, 0.0)], 2.0, 5.0, 3.0) == 0.0
    jumped = [*rates[1:], (6.0, 45.0)]
    assert 25.2 + 3 * math.sqrt(25.2) < 45
    assert forecast.level(jumped, 6.0, 5.0, 3.0) == 45.0


def test_a_significant_rising_trend_is_extrapolated() -> None:
    rates = [(float(t), r) for t, r in enumerate([40, 44, 52, 58, 61, 67], start=1)]
    assert forecast.slope(rates, 6.0, 6.0, 3.0) == pytest.approx(5.486, abs=0.001)
    level = sum([44, 52, 58, 61, 67]) / 5 + math.sqrt(56.4 / 5)
    assert forecast.level(rates, 6.0, 5.0, 3.0) == pytest.approx(level)
    assert forecast.predict(rates, 6.0, 3.4, 5.0, 6.0, 3.0) == pytest.approx(78.41, abs=0.01)


# ---- sizing -------------------------------------------------------------------------------

# bert-base at SLO 50 ms with a 4 ms proxy: the stand-in profile's capacity grid as measured.
BERT = StandInProfile("bert-base", 50.0, 4.0, SHARES, BATCHES, (
    (0.0,) * 6, (0.0,) * 6, (0.186,) * 6, (0.395,) * 6, (0.991,) * 6,
    (6.816, 6.603, 6.851, 6.851, 6.851, 6.851), (9.741, 9.437, 10.499, 10.499, 10.499, 10.499),
    (13.22, 16.343, 17.569, 17.569, 17.569, 17.569), (18.219, 24.095, 24.095, 25.902, 25.902, 25.902),
    (21.002, 29.858, 30.978, 34.463, 34.463, 34.463)))


def test_one_instance_is_sized_in_one_step_from_the_profile() -> None:
    """The docstring's numbers: 20 req/s on one instance needs share 0.83 (17.6 at 0.8,
    25.9 at 0.9, linear between); the lone-batch share is 0.28."""
    c = curve(BERT)
    assert c.lone_share == 0.28
    assert c.share_for(20.0) == 0.83
    assert c.pool_share_for(20.0, 1, 0.01) == 0.83
    assert c.batch_at(0.83) == 8


def test_pooled_instances_carry_more_than_their_sum_when_a_request_may_wait() -> None:
    """Two whole-GPU instances of a tight SLO behind the least-outstanding router: a request
    waits only when both are busy (M/M/2), and a short wait still meets the SLO."""
    c = curve(replace(PROFILE, per_share_rps=5.0))  # 5 req/s per instance alone
    pooled = c.pool_capacity([1.0, 1.0], 0.01)
    assert pooled > 2 * c.capacity(1.0)
    service, slack = 0.01, 0.01 / 0.2 - 0.01
    assert wait_tail(2, pooled, service, slack) <= 0.01 + 1e-9
    assert wait_tail(2, pooled * 1.02, service, slack) > 0.01


def test_a_function_starts_at_the_share_its_mean_rate_needs_at_most_half_a_gpu() -> None:
    assert start_quota(PROFILE, 20.0, 0.25, 0.01) == (0.25, 0.25, 4)
    assert start_quota(PROFILE, 80.0, 0.25, 0.01) == (0.5, 0.5, 4)
    assert start_quota(PROFILE, 0.0, 0.25, 0.01)[0] == 0.2  # the lone-batch share


# ---- dividing a GPU -----------------------------------------------------------------------


def test_a_gpu_is_divided_as_the_room_docstring_works_it_out() -> None:
    floor = TrainingFloor(0.30, 0.90, 0.02, 0.30)
    one = divide(1.0, 1.5, {"a": Want(0.2, 0.6, 0.8)}, [], {"t": floor})
    assert one.inference["a"] == Want(0.2, 0.6, 0.8)   # alone beside training: low request
    assert one.training["t"] == pytest.approx((0.30, 0.70))
    two = divide(1.0, 1.5, {"a": Want(0.2, 0.6, 0.8), "b": Want(0.2, 0.6, 0.8)}, [], {"t": floor})
    assert two.short
    assert two.inference["a"].busy == two.inference["b"].busy == 0.49
    assert two.inference["a"].request == 0.49          # neighbours: the busy share is guaranteed
    assert two.training["t"][0] == 0.02


def test_incumbents_keep_what_they_had_before_a_newcomer_grows() -> None:
    shares = divide(1.0, 1.5, {"old": Want(0.3, 0.7, 0.7), "new": Want(0.3, 0.7, 0.7)}, [], {},
                    {"old": 0.7})
    assert shares.inference["old"].busy == 0.7
    assert shares.inference["new"].busy == pytest.approx(0.3)


# ---- decisions ----------------------------------------------------------------------------


def world(gpus: tuple[str, ...] = ("g0",), job: bool = True, replicas: tuple[int, int] = (1, 8),
          settings: CoscaleSettings = SETTINGS) -> World:
    w = World({g: GpuContext(g) for g in gpus},
              {"f": Spec("f", PROFILE, replicas_min=replicas[0], replicas_max=replicas[1])},
              settings=settings)
    if job:
        w.training["t-0"] = TrainingContext("t-0", "t", ("g0",), 0.4, 0.8, 0.8, 0.4, 0.8)
    return w


def settle(w: World, rate: float, seconds: int) -> list[list[Action]]:
    w.rates["f"] = rate
    return [w.step() for _ in range(seconds)]


def test_a_drift_with_headroom_is_one_vertical_raise_of_the_computed_size() -> None:
    """After 20 req/s, a window of 60: a jump (60 > 28 + 3·√28), sized at once. Busy share
    60 × 1.25 / 100 = 0.75; limit for 60 × 2 = 120 req/s: a whole GPU; request: the
    lone-batch share 0.2 (alone beside training). Training (deployed 0.4/0.8, floors
    0.2/0.4) keeps request 1 − 0.75 = 0.25 and limit 1.5 − 1.0 = 0.5, and yields first."""
    w = world()
    w.add("f", "g0", 0.2, 0.3)
    steps = settle(w, 20, 6)
    assert steps[0] and not any(steps[2:])
    assert w.instances["f-0"][1].request == 0.2
    actions = settle(w, 60, 1)[0]
    assert actions == [
        SetTrainingQuota("t-0", "t", 0.25, 0.5, actions[0].reason),  # type: ignore[union-attr]
        SetInferenceQuota("f-0", "f", 0.2, 1.0, actions[1].reason),  # type: ignore[union-attr]
    ]
    assert "60.0 req/s predicted over 1 instance(s): busy share 0.75" in actions[1].reason  # type: ignore[union-attr]
    assert not w.refused


def test_no_headroom_means_a_scale_out_sized_for_the_predicted_rate() -> None:
    """80 req/s: 100 req/s to carry, but training keeps its request floor 0.2, so the
    instance can have at most 0.8 (80 req/s). A second instance wanting 0.5 (2 × 50 = 100)
    covers it; there is an idle GPU for it. The first decision raises the instance (vertical
    first); the scale-out comes at the second, the need confirmed (one noisy window
    does not add an instance). Nothing more is asked for while it starts."""
    w = world(gpus=("g0", "g1"))
    w.add("f", "g0", 0.2, 0.3)
    settle(w, 20, 6)
    first, second = settle(w, 80, 2)
    assert any(isinstance(a, SetInferenceQuota) for a in first)
    assert not any(isinstance(a, ScaleOut) for a in first)
    outs = [a for a in second if isinstance(a, ScaleOut)]
    assert outs == [ScaleOut("f", 1, outs[0].reason)]
    assert "= 100.0 at 2 decisions in a row; 1 instance(s) carry at most 80.0" in outs[0].reason
    assert not any(isinstance(a, ScaleOut) for a in settle(w, 80, 1)[0])
    assert len(w.instances) == 2 and not w.refused


def test_nowhere_to_go_asks_for_no_instance() -> None:
    w = world()
    w.add("f", "g0", 0.2, 0.3)
    settle(w, 20, 6)
    assert not any(isinstance(a, ScaleOut) for step in settle(w, 80, 5) for a in step)


def test_sustained_over_provisioning_comes_down_after_the_hysteresis_not_before() -> None:
    """60 req/s, then 10: the rate the instance is sized for stays while a prediction of
    60 is within the last `scale_down_after_s` (15 s); then its busy share (here its
    request: no training on the GPU, so the request guarantees it) comes down in one step.
    Its limit, free while it idles, keeps what the last keep-alive's peak needs: it comes
    down the rest of the way once that peak is `keep_alive_s` old."""
    w = world(job=False)
    w.add("f", "g0", 0.2, 0.3)
    settle(w, 60, 10)
    high = w.instances["f-0"][1]
    assert (high.request, high.limit) == (0.85, 1.0)   # (60 + √60) × 1.25 / 100, a whole GPU
    after = settle(w, 10, 70)
    changes = [(10 + k + 1, a) for k, acts in enumerate(after) for a in acts
               if isinstance(a, SetInferenceQuota)]
    assert [t for t, _ in changes] == [10 + 15, 10 + 60]   # 15 s, then the keep-alive
    # the limit now carries the last minute's peak: 60 × 1.25 / 100
    assert changes[0][1].request < 0.3 and changes[0][1].limit == 0.75
    assert changes[1][1].limit < 0.3


def test_a_steady_load_converges_and_then_nothing_changes() -> None:
    w = world(gpus=("g0", "g1"))
    w.add("f", "g0", 0.2, 0.3)
    settle(w, 30, 20)
    assert not any(settle(w, 30, 60))
    assert not w.refused


def test_scale_in_is_lazy_and_picks_the_instance_alone_on_its_gpu() -> None:
    w = world(gpus=("g0", "g1"))
    w.add("f", "g0", 0.5, 0.5)
    w.add("f", "g1", 0.5, 0.5)
    steps = settle(w, 10, 30)
    ins = [(k + 1, a) for k, acts in enumerate(steps) for a in acts if isinstance(a, ScaleIn)]
    assert [a.instance_id for _, a in ins] == ["f-1"]
    assert ins[0][0] >= SETTINGS.scale_in_after_s


def test_replicas_never_go_below_the_minimum() -> None:
    w = world(gpus=("g0", "g1"), replicas=(2, 4))
    w.add("f", "g0", 0.5, 0.5)
    w.add("f", "g1", 0.5, 0.5)
    assert not any(isinstance(a, ScaleIn) for step in settle(w, 0, 80) for a in step)


def test_a_function_whose_minimum_is_zero_goes_to_zero_after_its_keep_alive() -> None:
    w = world(job=False, replicas=(0, 2), settings=replace(SETTINGS, keep_alive_s=20.0))
    w.add("f", "g0", 0.2, 0.3)
    settle(w, 5, 3)
    steps = settle(w, 0, 30)
    gone = [k + 4 for k, acts in enumerate(steps) if any(isinstance(a, ScaleIn) for a in acts)]
    assert gone == [3 + 20]
    assert not w.instances
    back = settle(w, 3, 1)[0]
    assert [a for a in back if isinstance(a, ScaleOut)] == [ScaleOut("f", 1, back[0].reason)]  # type: ignore[union-attr]


def test_an_instance_that_never_saw_a_request_is_kept_for_a_keep_alive_after_it_arrives() -> None:
    # A function at zero whose first instance the scheduler just started (scale from zero),
    # or one a restarted scaler sees first: no request is known, and it is not idle yet.
    w = world(job=False, replicas=(0, 2), settings=replace(SETTINGS, keep_alive_s=20.0))
    w.add("f", "g0", 0.2, 0.3)
    steps = settle(w, 0, 30)
    gone = [k + 1 for k, acts in enumerate(steps) if any(isinstance(a, ScaleIn) for a in acts)]
    assert gone == [1 + 20]  # first seen at the decision of t = 1


def test_training_never_goes_below_its_floor_and_gets_its_room_back() -> None:
    w = world()
    w.add("f", "g0", 0.2, 0.3)
    settle(w, 200, 5)
    job = w.training["t-0"]
    # its request at its floor (0.5 × 0.4), its limit what the instance's limit 1.0 leaves
    assert (job.request, job.limit) == (0.2, 0.5)
    settle(w, 0, 80)
    job = w.training["t-0"]
    assert (job.request, job.limit) == (0.4, 0.8)
    assert not w.refused


def test_lowering_comes_before_raising() -> None:
    """Two functions on one GPU: one shrinks while the other grows; the shrink comes first
    so that the raise finds its room, and nothing is refused."""
    w = World({"g0": GpuContext("g0")}, {"a": Spec("a", PROFILE), "b": Spec("b", PROFILE)})
    w.add("a", "g0", 0.2, 0.3)
    w.add("b", "g0", 0.2, 0.3)
    w.rates.update(a=60, b=5)
    for _ in range(20):
        w.step()
    w.rates.update(a=5, b=60)
    for _ in range(40):
        actions = w.step()
        kinds = [a.reason.split(" ")[0] for a in actions if isinstance(a, SetInferenceQuota)]
        assert kinds == sorted(kinds, key=lambda k: k != "lower")
    assert not w.refused


def test_instances_sharing_a_gpu_count_its_free_room_once_so_a_scale_in_is_not_undone() -> None:
    """Two instances on g0 (20 req/s per whole GPU of share), 20 req/s offered: 24.5
    predicted, 30.6 to carry. They want 0.54 each, g0 gives them 0.50 each (27.1
    together): a third instance, on g1, and the two come down to 0.37 each. Without the
    one on g1 they would share g0's free 0.26: 0.50 each, 27.1, too little for the
    scale-in's 39.2 (each one's `most`, 0.63, counted the free room twice: 39.7, and the
    scale-in was undone by a scale-out at once, ~10 instances in a hypothesis example).
    Without one of the pair the other two have a GPU each (76.6): that one goes, and then
    nothing changes."""
    linear = LinearProfile(per_share_rps=20.0, lone=0.1, batch_of_one_s=0.02)
    w = World({g: GpuContext(g, 1.0, 1.0) for g in ("g0", "g1")},
              {"f": Spec("f", linear, replicas_min=2, replicas_max=3, start_request=0.1,
                         start_limit=0.5, cold_start_s=1.0)},
              settings=replace(SETTINGS, keep_alive_s=30.0))
    w.add("f", "g0", 0.1, 0.5)
    w.add("f", "g0", 0.1, 0.5)
    steps = settle(w, 20, 150)
    horizontal = [a for step in steps for a in step if isinstance(a, (ScaleOut, ScaleIn))]
    assert horizontal == [ScaleOut("f", 1, horizontal[0].reason),
                          ScaleIn("f", "f-0", horizontal[1].reason)]
    assert "2 instance(s) carry at most 27.1" in horizontal[0].reason
    assert "= 39.2; the other 2 instance(s) carry 76.6" in horizontal[1].reason
    assert not any(settle(w, 20, 40)) and not w.refused
