"""Node arbitration as a pure object (hunger, gangs, draining), the arbiter's skipped
periods, and the simulator's event-driven arbitration against the agent's ticked one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from pytest import approx

from services.node_agent.arbiter import Claim, GpuArbiter
from services.node_agent.arbitration import Member, NodeArbitration
from services.simulator.serving import policy as hooks
from services.simulator.serving.engine import Simulation
from services.simulator.serving.profile import StandInProfile
from services.simulator.serving.scenario import Scenario, parse_scenario
from services.simulator.serving.systems import Static

# ---- NodeArbitration: what the agent's loop used to do inline ---------------------------


def test_an_instance_that_waited_stays_hungry_for_the_hold() -> None:
    node = NodeArbitration(["g0"], hunger_hold=200)  # time in ms here
    members = [Member("inf", ("g0",), True, 0.2, 0.6), Member("train", ("g0",), False, 0.2, 0.8)]
    assert node.shares(0, members) == {"inf": 0.2, "train": 0.8}
    node.waited("inf", 10)
    assert node.shares(10, members)["inf"] == approx(0.6)  # lent up to its limit, first
    assert node.shares(200, members)["inf"] == approx(0.6)  # 190 ms later: still hungry
    assert node.shares(210, members)["inf"] == 0.2  # the hold is over


def test_a_gang_runs_at_its_most_constrained_gpu() -> None:
    node = NodeArbitration(["g0", "g1"], hunger_hold=0.2)
    members = [Member("gang", ("g0", "g1"), False, 0.3, 0.9),
               Member("inf", ("g1",), True, 0.3, 0.7)]
    node.waited("inf", 0.0)
    shares = node.shares(0.0, members)
    # On g1 the hungry inference takes 0.4 of the spare, leaving training 0.3 + 0.0;
    # g0 alone would give it 0.9. The gang gets the smaller.
    assert shares == {"gang": approx(0.3), "inf": approx(0.7)}


def test_a_draining_instance_keeps_its_share_but_is_lent_nothing() -> None:
    node = NodeArbitration(["g0"], hunger_hold=0.2)
    node.waited("old", 0.0)
    draining = [Member("old", ("g0",), True, 0.3, 0.9, draining=True)]
    assert node.shares(0.0, draining) == {"old": 0.3}
    assert node.shares(0.0, [Member("old", ("g0",), True, 0.3, 0.9)]) == {"old": approx(0.9)}


def test_an_instance_that_leaves_forgets_its_hunger() -> None:
    node = NodeArbitration(["g0"], hunger_hold=10.0)
    node.waited("a", 0.0)
    node.shares(0.0, [])
    assert node.hungry_until("a") is None


@st.composite
def claim_sets(draw: st.DrawFn) -> list[Claim]:
    claims = [Claim("train", False, draw(st.sampled_from([0.1, 0.3])), 0.9, False)]
    for k in range(draw(st.integers(min_value=1, max_value=3))):
        request = draw(st.sampled_from([0.1, 0.2, 0.3]))
        claims.append(Claim(f"i{k}", True, request, draw(st.sampled_from([request, 0.5, 1.0])),
                            draw(st.booleans())))
    return claims


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(claim_sets(), st.integers(min_value=0, max_value=120)), min_size=1,
                max_size=6))
def test_skipping_periods_is_the_same_as_running_them(spans: list[tuple[list[Claim], int]]) -> None:
    ticked, skipping = GpuArbiter(), GpuArbiter()
    for claims, periods in spans:
        for _ in range(periods + 1):
            ticked.shares(claims)
        skipping.shares(claims)
        skipping.skip(periods)
        assert skipping.training_factor == ticked.training_factor
        assert skipping.shares(claims) == ticked.shares(claims)


# ---- event-driven against ticked, in the simulator ---------------------------------------

SCENARIO = {
    "name": "pressure", "duration_s": 12, "seed": 3,
    "cluster": {"nodes": 1, "gpus_per_node": 3},
    "functions": [
        {"name": "bursty", "model": "resnet152", "slo_ms": 80, "trace": "bursty", "scale": 2,
         "trace_span_s": 12, "replicas": {"min": 1, "max": 3, "initial": 2},
         "quota": {"request": 0.3, "limit": 0.8, "memory_mib": 4096}, "max_batch": 8},
        {"name": "steady", "model": "bert-base", "slo_ms": 60, "trace": "periodic", "scale": 1,
         "shift_s": 400, "replicas": {"min": 1, "max": 2, "initial": 1},
         "quota": {"request": 0.2, "limit": 0.5, "memory_mib": 3072}, "max_batch": 4},
    ],
    "training": [
        {"name": "gang", "model": "bert-base", "gpus": 2,
         "quota": {"request": 0.3, "limit": 0.7, "memory_mib": 12288}, "host_ms": "saturate"},
    ],
    "deploy": ["gang", "bursty", "bursty", "steady"],
}


class _Scripted:
    """Scale and resize at fixed moments, so membership and quota changes are exercised."""

    interval_s = 1.0

    def __init__(self) -> None:
        self.ticks = 0

    def decide(self, view: hooks.ClusterView) -> Sequence[hooks.Action]:
        self.ticks += 1
        bursty = view.functions["bursty"].instances
        if self.ticks == 3:
            return [hooks.SetQuota(bursty[0].id, 0.2, 0.6, "scripted")]
        if self.ticks == 5:
            return [hooks.ScaleIn("bursty", bursty[-1].id, "scripted")]
        if self.ticks == 7:
            return [hooks.ScaleOut("bursty", 1, reason="scripted")]
        return []


class _ScriptedStatic(Static):
    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> _Scripted:
        return _Scripted()


def test_event_driven_arbitration_gives_the_ticked_shares_at_the_same_moments() -> None:
    scenario = parse_scenario(SCENARIO, "test")
    events = Simulation(scenario, _ScriptedStatic(), {}, record_shares=True).run()
    ticked = Simulation(scenario, _ScriptedStatic(), {}, ticked=True, record_shares=True).run()
    assert len(events.counters.share_changes) > 200
    assert events.counters.share_changes == ticked.counters.share_changes
    # The throttle really moved (pressure and restore), and quota changes and scaling ran.
    gang = [s for _, i, s in events.counters.share_changes if i.startswith("gang")]
    assert len(gang) > 100 and min(gang) < 0.31 and max(gang) > 0.69
    assert events.counters.vertical_actions == 1 and events.counters.horizontal_actions == 2
    for name in ("bursty", "steady"):
        assert events.functions[name].latencies_ms == ticked.functions[name].latencies_ms
    events_evaluations = sum(d.evaluations for d in events.nodes.values())
    ticked_evaluations = sum(d.evaluations for d in ticked.nodes.values())
    assert events_evaluations < ticked_evaluations / 2
