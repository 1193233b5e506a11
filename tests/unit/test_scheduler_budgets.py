"""The scheduler core against agents that own their GPUs' budgets: it places within the
bounds each node announces, adopts every quota the agents report (events, heartbeats,
after a restart), replaces an instance at the quota it last had and re-places a start
that an agent refused for room."""

from __future__ import annotations

import copy
import math

import pytest
from dilu.v1 import types_pb2

from services.common.bounds import REQUESTS_ONLY, PlacementBounds
from services.scheduler.core import SchedulerCore, SetQuota, StartInstance
from services.scheduler.placement import make_placement
from tests.unit.scheduler_world import FakeAgent, World, inference_spec

S = types_pb2
READY, PENDING, FAILED = S.INSTANCE_STATE_READY, S.INSTANCE_STATE_PENDING, S.INSTANCE_STATE_FAILED


def quota(request: float, limit: float, memory_mib: int = 4096) -> types_pb2.Quota:
    return types_pb2.Quota(sm_request=request, sm_limit=limit, memory_limit_mib=memory_mib)


def allocation(world: World, uuid: str) -> tuple[float, float, int]:
    slot = world.core.ledger.gpu(uuid)
    assert slot is not None
    return (round(slot.sm_requested, 9), round(slot.sm_limited, 9), slot.memory_allocated_mib)


def books(agent: FakeAgent, uuid: str) -> tuple[float, float, int]:
    used = agent.budget.used(uuid)
    return (round(used.sm_request, 9), round(used.sm_limit, 9), used.memory_mib)


# ---- bounds ------------------------------------------------------------------------------


def test_a_node_announcing_tighter_bounds_gets_no_placement_beyond_them():
    tight = FakeAgent("n1", gpus=2, bounds=PlacementBounds(0.5, 0.8))
    world = World(tight, policy="complementary")
    world.deploy(inference_spec("svc", request=0.3, limit=0.4, min_replicas=3, max_replicas=3))

    assert sorted(i.state for i in world.instances("svc")) == [
        PENDING, S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_STARTING]
    assert [allocation(world, tight.gpu(g))[0] for g in range(2)] == [0.3, 0.3]
    assert not [c for c in world.made if isinstance(c, StartInstance)
                and c.instance_id not in tight.running]  # none was refused: none was tried


@pytest.mark.parametrize(("policy", "node_bounds", "fits"), [
    ("first-fit", PlacementBounds(1.0, 1.5), 2),   # 1.2 of limits fits 1.5
    ("first-fit", PlacementBounds(1.0, 1.0), 1),   # the node is stricter than the policy
    ("infless-l", PlacementBounds(1.0, 1.5), 1),   # the policy (limits ≤ 1) is stricter
])
def test_the_stricter_of_the_policy_and_the_node_bounds_holds(policy: str,
                                                             node_bounds: PlacementBounds,
                                                             fits: int):
    agent = FakeAgent("n1", gpus=1, bounds=node_bounds)
    world = World(agent, policy=policy)
    world.deploy(inference_spec("svc", request=0.2, limit=0.6, min_replicas=2, max_replicas=2))
    assert len(agent.running) == fits


def test_a_node_that_announces_no_bounds_is_held_to_the_agent_defaults():
    agent = FakeAgent("n1", gpus=1, announces=False)
    world = World(agent)
    world.core = SchedulerCore(make_placement("first-fit", REQUESTS_ONLY), world.settings,
                               new_id=world.new_id)  # as the live scheduler builds it
    world.heartbeat()
    world.deploy(inference_spec("svc", request=0.1, limit=0.7, min_replicas=3, max_replicas=3))
    assert len(agent.running) == 2  # 3 × 0.7 > 1.5


def test_bounds_that_tighten_keep_what_runs_and_place_nothing_more():
    agent = FakeAgent("n1", gpus=1)
    world = World(agent)
    world.deploy(inference_spec("svc", request=0.4, limit=0.4, min_replicas=1, max_replicas=3))
    agent.bounds = PlacementBounds(0.5, 0.5)  # the agent restarted with tighter settings
    world.pass_()
    world.scale("svc", +1)
    assert [i.state for i in world.instances("svc")].count(PENDING) == 1
    assert world.core.ledger.holds("svc-1")


# ---- adopting quotas ---------------------------------------------------------------------


def test_a_raise_is_adopted_from_its_event_into_the_record_and_the_ledger():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("svc"))
    world.ready_all()

    world.raise_quota("svc-1", quota(0.6, 0.9, 8192))

    record = world.core.state.instances["svc-1"]
    assert (record.quota.sm_request, record.quota.sm_limit, record.quota.memory_limit_mib) == (
        0.6, 0.9, 8192)
    assert allocation(world, "n1-g0") == (0.6, 0.9, 8192)
    shown = world.instances("svc")[0].quota
    assert (shown.sm_request, shown.sm_limit) == (0.6, 0.9)


def test_an_event_marks_the_record_changed_for_the_store():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("svc"))
    world.ready_all()
    agent = world.agents["n1"]
    report = agent.resize("svc-1", quota(0.5, 0.5))
    event = copy.deepcopy(report)
    event.state = S.INSTANCE_STATE_UNSPECIFIED
    outcome = world.core.instance_reported("n1", event, world.now)
    assert outcome.instances == {"svc-1"}
    assert world.states("svc") == {"svc-1": READY}  # a quota change is no transition


def test_a_heartbeat_written_before_a_raise_does_not_undo_it():
    agent = FakeAgent("n1", gpus=1)
    world = World(agent)
    world.deploy(inference_spec("svc"))
    world.ready_all()
    stale = agent.node()  # the entry the registry read returns, written before the raise
    world.raise_quota("svc-1", quota(0.7, 0.7))

    agent.revision += 1
    world.run(world.core.observe_nodes({"n1": (agent.revision, stale)}, world.now))

    assert allocation(world, "n1-g0")[0] == 0.7
    assert world.core.state.instances["svc-1"].quota.sm_request == 0.7


def test_a_raise_whose_event_was_lost_is_adopted_from_the_next_heartbeat():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("svc"))
    world.ready_all()
    world.raise_quota("svc-1", quota(0.45, 0.8, 6000), publish=False)
    assert allocation(world, "n1-g0") == (0.3, 0.5, 4096)

    world.pass_()

    assert allocation(world, "n1-g0") == (0.45, 0.8, 6000)


def test_a_quota_the_core_asks_for_and_the_agent_refuses_changes_nothing():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("a", request=0.5, limit=0.5))
    world.deploy(inference_spec("b", request=0.4, limit=0.4))
    world.ready_all()

    outcome = world.run(world.core.set_quota("a-1", quota(0.7, 0.7), world.now))

    assert isinstance(outcome.calls[0], SetQuota)
    assert world.core.state.instances["a-1"].quota.sm_request == 0.5
    assert allocation(world, "n1-g0") == books(world.agents["n1"], "n1-g0") == (0.9, 0.9, 8192)


# ---- a start racing a raise --------------------------------------------------------------


def test_a_start_onto_room_a_raise_took_is_refused_and_placed_elsewhere():
    n1, n2 = FakeAgent("n1", gpus=1), FakeAgent("n2", gpus=1)
    world = World(n1, n2)
    world.deploy(inference_spec("a", request=0.3, limit=0.3))
    world.ready_all()
    # The raise lands on the agent; the scheduler has not heard of it yet.
    world.raise_quota("a-1", quota(0.9, 0.9), publish=False)

    world.deploy(inference_spec("b", request=0.3, limit=0.3))

    starts = [c for c in world.made if isinstance(c, StartInstance) and c.instance_id == "b-2"]
    assert [c.node for c in starts] == ["n1", "n2"]  # refused on n1, placed on n2 at once
    assert world.instances("b")[0].node == "n2"
    assert n1.budget.within_bounds("n1-g0") and n1.budget.instances_on("n1-g0") == ["a-1"]
    world.pass_()
    for agent in (n1, n2):
        assert allocation(world, agent.gpu(0)) == books(agent, agent.gpu(0))


# ---- replacements and restarts ------------------------------------------------------------


def test_a_replacement_starts_at_the_quota_its_predecessor_last_had():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("svc"))
    world.ready_all()
    world.raise_quota("svc-1", quota(0.55, 0.75, 5000))

    world.report("svc-1", FAILED, "worker exited with status -9")
    world.pass_(2.0)  # past the first back-off

    (replacement,) = world.live("svc")
    assert replacement.id != "svc-1"
    start = next(c for c in world.made if isinstance(c, StartInstance)
                 and c.instance_id == replacement.id)
    assert (start.quota.sm_request, start.quota.sm_limit, start.quota.memory_limit_mib) == (
        0.55, 0.75, 5000)
    assert allocation(world, "n1-g0") == (0.55, 0.75, 5000)


def test_an_instance_lost_with_its_node_is_replaced_at_its_quota_elsewhere():
    world = World(FakeAgent("n1", gpus=1), FakeAgent("n2", gpus=1))
    world.deploy(inference_spec("svc"))
    world.ready_all()
    world.raise_quota("svc-1", quota(0.8, 0.8))
    world.agents["n1"].alive = False
    for _ in range(11):
        world.pass_()
    (replacement,) = world.live("svc")
    assert replacement.node == "n2" and replacement.quota.sm_request == 0.8


def test_new_replicas_start_at_the_spec_quota_not_a_raised_one():
    world = World(FakeAgent("n1", gpus=2))
    world.deploy(inference_spec("svc"))
    world.ready_all()
    world.raise_quota("svc-1", quota(0.6, 0.6))
    world.scale("svc", +1)
    assert world.core.state.instances["svc-2"].quota.sm_request == 0.3


def test_a_restarted_core_rebuilds_its_books_from_the_agents_reports():
    agent = FakeAgent("n1", gpus=1)
    world = World(agent)
    world.deploy(inference_spec("a", request=0.3, limit=0.3))
    world.ready_all()
    world.raise_quota("a-1", quota(0.5, 0.5))
    stored = [copy.deepcopy(i) for i in world.core.state.instances.values()]
    functions = [copy.deepcopy(f) for f in world.core.state.functions.values()]
    # While the scheduler is down the agent raises again: the stored record is stale.
    agent.resize("a-1", quota(0.9, 0.9))

    world.core = SchedulerCore(make_placement("first-fit"), world.settings, new_id=world.new_id)
    snapshot = {agent.node_id: (agent.revision, agent.node())}
    world.core.recover(functions, stored, snapshot, world.now)
    assert allocation(world, "n1-g0") == (0.9, 0.9, 4096)
    world.heartbeat()
    world.deploy(inference_spec("b", request=0.2, limit=0.2))

    (b,) = world.instances("b")
    assert b.state == PENDING and "no ready node" in b.message
    assert not [c for c in world.made if isinstance(c, StartInstance) and c.instance_id == b.id]
    assert world.core.state.instances["a-1"].quota.sm_request == 0.9


def test_unbounded_limits_can_be_announced():
    agent = FakeAgent("n1", gpus=1, bounds=PlacementBounds(1.0, math.inf))
    world = World(agent, policy="infless-r")
    world.deploy(inference_spec("svc", request=0.1, limit=1.0, min_replicas=4, max_replicas=4))
    assert len(agent.running) == 4
