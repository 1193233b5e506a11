"""The baseline systems: one decision of each computed by hand, the RCKM rule driven on
events against the same rule ticked every 5 ms, and arbitration without lending."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from services.perf import load_model
from services.perf.traces import load_trace
from services.simulator.serving import policy as hooks
from services.simulator.serving.baselines.dilu_paper import DiluPaper, LazyScaling
from services.simulator.serving.baselines.hasgpu import (
    HasGpuPolicy,
    HasPlanner,
    KalmanPredictor,
    _Cluster,
    has_config,
)
from services.simulator.serving.baselines.knative import ExclusiveKpa, StaticKpa, fixed_share
from services.simulator.serving.baselines.kpa import (
    KpaDecider,
    KpaPolicy,
    KpaSettings,
    KpaTarget,
    concurrency_at_capacity,
)
from services.simulator.serving.baselines.rckm import Claim, RckmGpu
from services.simulator.serving.engine import Simulation
from services.simulator.serving.profile import BATCHES, SHARES, StandInProfile
from services.simulator.serving.scenario import Scenario, ServedFunction, parse_scenario
from services.simulator.serving.windows import QosWindow

FACTORS = (0.5, 0.8, 1.0, 0.9, 0.7, 0.6)  # per max batch 1..32: batch 4 is best


def handmade(model: str, slo_ms: float, curve: str = "linear") -> StandInProfile:
    """capacity(share, batch) = 100/s × (share or share²) × FACTORS[batch]."""
    def scale(s: float) -> float:
        return s if curve == "linear" else s * s
    return StandInProfile(model, slo_ms, 2.0, SHARES, BATCHES,
                          tuple(tuple(100 * scale(s) * f for f in FACTORS) for s in SHARES))


def function(**fields: object) -> ServedFunction:
    spec = {"name": "f", "model": "resnet152", "slo_ms": 100, "trace": "bursty", "scale": 2,
            **fields}
    return parse_scenario({"name": "s", "duration_s": 10, "seed": 1,
                           "cluster": {"nodes": 1, "gpus_per_node": 1},
                           "functions": [spec]}, "s").functions[0]


def window(concurrency: float = 0.0, arrivals: int = 0) -> QosWindow:
    return QosWindow(0.0, 1.0, arrivals, arrivals, arrivals, 0.0, 0.0, 0, 0.0, 0.0, 1.0,
                     concurrency)


def instance(id_: str, gpu: str, quota: float, concurrency: float = 0.0,
             state: str = "ready") -> hooks.InstanceView:
    return hooks.InstanceView(id_, "f", "node", (gpu,), state, quota, quota, quota, 4,
                              window(concurrency))


def view(now_s: float, instances: Sequence[hooks.InstanceView],
         gpus: Mapping[str, tuple[float, tuple[str, ...]]], replicas_max: int = 8,
         arrivals: int = 0) -> hooks.ClusterView:
    fn = hooks.FunctionView("f", "resnet152", 100, 1, replicas_max, window(arrivals=arrivals), 0,
                            tuple(instances))
    return hooks.ClusterView(now_s, 1.0, 1.5, {"f": fn}, {
        uuid: hooks.GpuView(uuid, "node", 40960, limited, limited, 0, holders, 0.0)
        for uuid, (limited, holders) in gpus.items()})


# ---- Knative's KPA: exclusive-kpa and static-kpa ------------------------------------------


def test_the_kpa_panics_holds_its_peak_and_then_scales_down_at_most_by_half() -> None:
    """Target 1. Ten samples of 1 then six of 5: stable average 40/16 = 2.5 wants 3, the
    panic window's 5 wants 5, and 5 / 2 ready ≥ 200 % panics: 5. Six samples of 0.5 later
    (stable 43/22 → 2, panic 1, not over the threshold) the panic holds 5 until a stable
    window has passed since the last crossing (t = 32 → after 92). At t = 94, after 60
    samples of 0.1, the stable count 1 is held to half the 5 ready: 2."""
    decider = KpaDecider(1.0, KpaSettings(), ready=1, now_s=0)
    assert not decider.panicking  # created over one pod
    for sample in [1.0] * 10 + [5.0] * 6:
        decider.record(sample)
    assert decider.decide(ready=2, now_s=32) == 5 and decider.panicking
    for sample in [0.5] * 6:
        decider.record(sample)
    assert decider.decide(ready=5, now_s=44) == 5
    assert decider.decide(ready=5, now_s=92) == 5  # 32 + 60 is not before 92
    for sample in [0.1] * 60:
        decider.record(sample)
    assert decider.decide(ready=5, now_s=94) == 2 and not decider.panicking
    assert KpaDecider(1.0, KpaSettings(), ready=2, now_s=0).panicking  # over two pods: panics


def test_exclusive_kpa_targets_70_percent_of_the_concurrency_little_s_law_gives() -> None:
    """One resnet152 instance on a whole GPU with max batch 1 is an M/D/1 queue: D =
    19.41 ms, and at 30 req/s (ρ = 0.58) a request stays D + ρD / (2(1 - ρ)) = 26.3 ms on
    average, so 0.79 requests are in flight; the KPA's target is 70 % of it."""
    d = load_model("resnet152").full_gpu_cost_s(1)
    rate = 30.0
    flat = StandInProfile("resnet152", 1000, 2.0, SHARES, BATCHES,
                          tuple(tuple(rate for _ in BATCHES) for _ in SHARES))
    capacity, concurrency = concurrency_at_capacity(flat, 1.0, 1)
    rho = rate * d
    assert capacity == rate
    assert concurrency == pytest.approx(rate * (d + rho * d / (2 * (1 - rho))), rel=0.05)
    system = ExclusiveKpa()
    sizing = system.sizing(function(slo_ms=1000), flat)
    assert (sizing.request, sizing.limit) == (1.0, 1.0)
    target = system._targets["f"]
    assert target.target == pytest.approx(0.7 * target.concurrency)


def test_static_kpa_picks_the_share_with_the_least_reserved_gpu_at_the_mean_rate() -> None:
    """capacity = 100/s × share² × factor: at batch 4, 1/4/9/16/25/36/49/64/81/100 req/s
    for 10 %…100 %. bursty × 2 offers 11.37 req/s on average; at the KPA's 70 % an
    instance carries 0.7, 2.8, 6.3, 11.2, 17.5 … req/s, so 10 % needs 17 instances (1.7
    GPUs), 20 % 5 (1.0), 30 % 2 (0.6), 40 % 2 (0.8), 50 % 1 (0.5), 60 % 1 (0.6): 50 %."""
    fn = function()
    rates = load_trace("bursty")
    assert sum(rates) / len(rates) * 2 == pytest.approx(11.37, abs=0.01)
    profile = handmade("resnet152", 100, curve="square")
    assert fixed_share(fn, profile) == 0.5
    sizing = StaticKpa().sizing(fn, profile)
    assert (sizing.request, sizing.limit, sizing.max_batch) == (0.5, 0.5, 4)


def test_the_kpa_policy_scales_to_the_decided_count() -> None:
    """Two ready instances with 1.5 and 2.5 requests in flight against a target of 1:
    at the 2 s tick the KPA wants 4 (panicking: 4 / 2 ≥ 200 %) and asks for 2 more."""
    target = KpaTarget(1.0, 4, 10.0, 1 / 0.7, 1.0)
    policy = KpaPolicy({"f": target}, {"f": 2})
    instances = [instance("a", "g0", 1.0, 1.5), instance("b", "g1", 1.0, 2.5)]
    gpus = {"g0": (1.0, ("a",)), "g1": (1.0, ("b",))}
    assert policy.decide(view(1.0, instances, gpus)) == []  # a scrape, not a tick
    assert policy.decide(view(2.0, instances, gpus)) == [hooks.ScaleOut("f", 2, reason="kpa")]
    assert policy.desired["f"] == 4


# ---- HAS-GPU ------------------------------------------------------------------------------


def test_has_gpu_predicts_with_its_kalman_filter_and_headroom() -> None:
    """From x = 0, P = 1 a measurement of 10 gives P⁻ = 2, K = 1/6, x = 1.667, P = 1.667,
    + √P = 2.958: below 10 + 5, so 15. The next 10: P⁻ = 2.667, K = 0.2105, x = 15 -
    0.2105 × 5 = 13.947, P = 2.105, + 1.451 = 15.398."""
    kalman = KalmanPredictor()
    assert kalman.update(10.0) == pytest.approx(15.0)
    assert kalman.update(10.0) == pytest.approx(15.398, abs=1e-3)


def test_has_gpu_grows_an_instance_in_10_percent_steps_then_adds_one_on_a_used_gpu() -> None:
    """capacity = 100/s × quota² (batch 4). One instance at 50 % (25 req/s) on a GPU whose
    training reserves 30 %; a predicted 60 req/s passes 0.9 × 25, short by 37.5. Vertical:
    60 % gains 11, 70 % gains 24 (< 37.5) and the GPU has no more room, so 70 % and 13.5
    are left. Horizontal: the least occupied used GPU under 95 % (training at 60 %) has
    room for 40 %, 16 req/s: one new instance there covers the rest."""
    profile = handmade("resnet152", 100, curve="square")
    config = has_config(function(), profile)
    assert (config.max_batch, config.smallest, config.efficient) == (4, 0.1, 1.0)
    planner = HasPlanner()
    policy = HasGpuPolicy({"f": config}, planner)
    pod = instance("f-0", "g0", 0.5)
    cluster = view(2.0, [pod], {"g0": (0.8, ("train", "f-0")), "g1": (0.6, ("train2",)),
                                "g2": (0.0, ())})
    actions = policy.autoscale(cluster.functions["f"], 60.0, 2.0, _Cluster(cluster, {"f": 1024}))
    assert actions == [hooks.SetQuota("f-0", 0.7, 0.7, "has-gpu: vertical up"),
                       hooks.ScaleOut("f", 1, reason="has-gpu: out")]
    assert planner.plans == {"f": ["g1"]}


def test_has_gpu_shrinks_quotas_before_removing_instances() -> None:
    """Two instances at 100 % and 50 % (100 + 25 req/s); a predicted 20 is below 0.3 ×
    125, so 0.9 × 125 - 20 = 92.5 req/s go, smallest quota first: 50 % shrinks to 10 %
    (gives up 24), then 100 % to 50 % (gives up 75 ≥ 68.5). Ten seconds of cooldown
    follow."""
    profile = handmade("resnet152", 100, curve="square")
    policy = HasGpuPolicy({"f": has_config(function(), profile)}, HasPlanner())
    pods = [instance("f-0", "g0", 1.0), instance("f-1", "g1", 0.5)]
    cluster = view(2.0, pods, {"g0": (1.0, ("f-0",)), "g1": (0.5, ("f-1",))})
    actions = policy.autoscale(cluster.functions["f"], 20.0, 2.0, _Cluster(cluster, {"f": 1024}))
    assert actions == [hooks.SetQuota("f-1", 0.1, 0.1, "has-gpu: vertical down"),
                       hooks.SetQuota("f-0", 0.5, 0.5, "has-gpu: vertical down")]
    cluster = view(8.0, pods, {"g0": (1.0, ("f-0",)), "g1": (0.5, ("f-1",))})
    assert policy.autoscale(cluster.functions["f"], 20.0, 8.0, _Cluster(cluster, {"f": 1024})) == []


# ---- dilu-paper: the RCKM rule and lazy scaling --------------------------------------------


def run_ticks(rule: RckmGpu, busy: bool, ticks: int) -> None:
    for _ in range(ticks):
        rule.tick(["inf"], ["inf"] if busy else [])


def test_rckm_cuts_training_by_the_burst_ratio_and_recovers_every_fifth_burst() -> None:
    """Training (request 0.4, limit 0.8) starts at 10 % of its request. A burst of 10
    ticks is the shortest (ratio 1); one of 20 has ratio 2 ≥ 1.6: 0.1 / 2 = 0.05. Three
    more of 10 (ratio 1): the 5th burst multiplies by 1.3: 0.065. A burst of 5 ticks is too
    short to be the shortest (ratio 0.5: no change on the 6th). While inference is busy it
    takes the rest: 1 - 0.065 × 0.4. After 100 idle ticks nothing changes; after the
    101st training has its limit back and the budget is whole again."""
    rule = RckmGpu()
    claims = [Claim("inf", True, 0.2, 0.6), Claim("train", False, 0.4, 0.8)]
    for length, budget in [(10, 0.1), (20, 0.05), (10, 0.05), (10, 0.05), (10, 0.065),
                           (5, 0.065)]:
        run_ticks(rule, True, length)
        run_ticks(rule, False, 1)
        assert rule.budget == pytest.approx(budget)
    assert rule.tracks["inf"].shortest == 10
    run_ticks(rule, True, 1)
    shares = rule.shares(claims)
    assert shares == pytest.approx({"train": 0.026, "inf": 0.974})
    run_ticks(rule, False, 100)  # the burst ended (1 tick: ratio 0.1), then 99 more idle
    assert not rule.idle and rule.shares(claims)["train"] == pytest.approx(0.026)
    run_ticks(rule, False, 1)
    assert rule.idle and rule.budget == 1.0
    assert rule.shares(claims) == pytest.approx({"train": 0.8, "inf": 0.6})


def test_rckm_skipping_ticks_is_the_same_as_ticking_them() -> None:
    ticked, skipped = RckmGpu(), RckmGpu()
    for busy, ticks in [(True, 12), (False, 30), (True, 25), (False, 150), (True, 3)]:
        run_ticks(ticked, busy, ticks)
        run_ticks(skipped, busy, 1)
        skipped.skip(ticks - 1)
        assert (skipped.budget, skipped.idle, skipped.tracks) == (ticked.budget, ticked.idle,
                                                                  ticked.tracks)


def test_lazy_scaling_waits_for_20_of_40_seconds_over_capacity() -> None:
    """Capacity 10 req/s per instance, 2 instances: 19 seconds above 20 req/s do nothing,
    the 20th scales out and clears the history; 30 seconds below 10 (with 3 instances,
    (3 - 1) × 10 = 20 → below 20) scale in."""
    lazy = LazyScaling({"f": 10.0})
    history = lazy.history["f"]
    for rate in [25.0] * 19 + [5.0] * 10:
        history.append(rate)
        assert lazy.step("f", 2, 1, 8) is None
    history.append(21.0)
    assert lazy.step("f", 2, 1, 8) == hooks.ScaleOut("f", 1, reason="lazy: out")
    assert not history
    for _ in range(29):
        history.append(19.0)
        assert lazy.step("f", 3, 1, 8) is None
    history.append(19.0)
    assert lazy.step("f", 3, 1, 8) == hooks.ScaleIn("f", reason="lazy: in")


# ---- in the simulator ------------------------------------------------------------------------

SCENARIO = {
    "name": "rckm", "duration_s": 8, "seed": 5,
    "cluster": {"nodes": 1, "gpus_per_node": 2},
    "functions": [
        {"name": "bursty", "model": "resnet152", "slo_ms": 80, "trace": "bursty", "scale": 2,
         "trace_span_s": 8, "replicas": {"min": 1, "max": 3, "initial": 2},
         "quota": {"request": 0.3, "limit": 0.5, "memory_mib": 4096}, "max_batch": 8},
        {"name": "steady", "model": "bert-base", "slo_ms": 60, "trace": "periodic", "scale": 4,
         "shift_s": 400, "replicas": {"min": 1, "max": 2, "initial": 1},
         "quota": {"request": 0.2, "limit": 0.3, "memory_mib": 3072}, "max_batch": 4},
    ],
    "training": [
        {"name": "gang", "model": "bert-base", "gpus": 2,
         "quota": {"request": 0.3, "limit": 0.6, "memory_mib": 12288}, "host_ms": "saturate"},
    ],
    "deploy": ["gang", "bursty", "bursty", "steady"],
}


class _Scripted:
    """Scale in and out at fixed moments, so inference instances join and leave."""

    interval_s = 1.0

    def __init__(self) -> None:
        self.ticks = 0

    def decide(self, view: hooks.ClusterView) -> Sequence[hooks.Action]:
        self.ticks += 1
        bursty = view.functions["bursty"].instances
        if self.ticks == 2:
            return [hooks.ScaleIn("bursty", bursty[-1].id, "scripted")]
        if self.ticks == 4:
            return [hooks.ScaleOut("bursty", 1, reason="scripted")]
        return []


class _ScriptedDilu(DiluPaper):
    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> _Scripted:  # type: ignore[override]
        return _Scripted()


def test_rckm_on_events_gives_the_shares_of_rckm_ticked_every_5_ms() -> None:
    scenario = parse_scenario(SCENARIO, "test")
    events = Simulation(scenario, _ScriptedDilu(), {}, record_shares=True).run()
    ticked = Simulation(scenario, _ScriptedDilu(), {}, ticked=True, record_shares=True).run()
    assert len(events.counters.share_changes) > 300
    assert events.counters.share_changes == ticked.counters.share_changes
    for name in ("bursty", "steady"):
        assert events.functions[name].latencies_ms == ticked.functions[name].latencies_ms
    # Training's budget moved (cuts, recoveries) and the scaling ran.
    gang = {s for _, i, s in events.counters.share_changes if i.startswith("gang")}
    assert len(gang) > 5 and events.counters.horizontal_actions == 2
    assert (sum(d.evaluations for d in events.nodes.values())
            < sum(d.evaluations for d in ticked.nodes.values()) / 2)


def test_without_lending_every_instance_runs_at_its_limit() -> None:
    """static-kpa with the scenario's limits as its fixed shares: training runs at its limit
    (0.6), inference at its share, and nothing is lent however hungry an instance is
    (the bursty replica beside training would be lent up to 0.4 more by today's arbiter)."""
    raw = {**SCENARIO, "cluster": {"nodes": 1, "gpus_per_node": 3},
           "training": [{"name": "job", "model": "bert-base", "gpus": 1, "host_ms": "saturate",
                         "quota": {"request": 0.3, "limit": 0.6, "memory_mib": 12288}}],
           "deploy": ["job", "bursty", "bursty", "steady"]}
    raw["functions"] = [{**raw["functions"][0], "quota": {"request": 0.4, "limit": 0.4,
                                                           "memory_mib": 4096}},
                        {**raw["functions"][1], "quota": {"request": 0.3, "limit": 0.3,
                                                           "memory_mib": 3072}}]
    sim = Simulation(parse_scenario(raw, "test"), _FixedStatic(), {}, record_shares=True).run()
    expected = {"job": 0.6, "bursty": 0.4, "steady": 0.3}
    seen = {}
    for _, instance_id, share in sim.counters.share_changes:
        seen[instance_id] = share
        assert share == expected[instance_id.rsplit("-", 1)[0]]
    assert len(seen) == 4
    on_gpu0 = sim.core.ledger.instances_on("node-000-gpu0")
    assert {i.rsplit("-", 1)[0] for i in on_gpu0} == {"job", "bursty"}
    assert sim.functions["bursty"].requests > 50


class _FixedStatic(StaticKpa):
    """static-kpa with the scenario's limits as fixed shares and a KPA that never moves."""

    def share_of(self, function: ServedFunction, profile: StandInProfile | None) -> float:
        assert function.quota is not None
        return function.quota.limit

    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> KpaPolicy:
        return KpaPolicy({f.name: KpaTarget(1, 1, 1, 1, 100.0) for f in scenario.functions},
                         {f.name: f.replicas_initial for f in scenario.functions})
