"""`SchedulerCore` driven without processes: what it decides for each input."""

from __future__ import annotations

import itertools

import pytest
from dilu.v1 import types_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.scheduler.core import (
    HOLDING,
    LIVE,
    TERMINAL,
    Refusal,
    SchedulerCore,
    SchedulerSettings,
    SetQuota,
    StartInstance,
    StopInstance,
    retry_delay_s,
)
from services.scheduler.placement import make_placement
from tests.unit.scheduler_world import FakeAgent, World, inference_spec

S = types_pb2
READY, STARTING, PENDING = S.INSTANCE_STATE_READY, S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_PENDING
FAILED, LOST, DRAINING, STOPPED = (S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_LOST,
                                   S.INSTANCE_STATE_DRAINING, S.INSTANCE_STATE_STOPPED)


def test_deploy_places_starts_and_serves_once_the_agent_says_ready():
    world = World(FakeAgent("n1", gpus=2))
    outcome = world.deploy(inference_spec("svc", min_replicas=2))

    starts = outcome.starts()
    assert [(c.node, c.instance_id) for c in starts] == [("n1", "svc-1"), ("n1", "svc-2")]
    assert all(c.quota.sm_request == 0.3 and c.quota.memory_limit_mib == 4096 for c in starts)
    assert outcome.functions == {"svc"} and outcome.instances == {"svc-1", "svc-2"}
    assert set(world.states("svc").values()) == {STARTING}
    assert sum(g.sm_requested for g in world.core.ledger.gpus()) == pytest.approx(0.6)
    with pytest.raises(Unavailable, match="instances: starting, starting"):
        world.core.route("svc")

    world.ready_all()

    assert world.status("svc").ready_replicas == 2
    assert world.status("svc").state == S.FUNCTION_STATE_OK
    routed = {world.core.route("svc")[0] for _ in range(2)}
    assert routed == {"svc-1", "svc-2"}  # ties rotate


def test_a_duplicate_name_is_refused_naming_the_field():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("svc"))
    with pytest.raises(InvalidArgument) as refused:
        world.core.deploy(inference_spec("svc"), world.now)
    assert refused.value.field == "function.name"


def test_an_instance_waits_pending_until_a_node_with_room_registers():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("big", request=0.6, limit=0.6, min_replicas=2))
    pending = [i for i in world.instances("big") if i.state == PENDING]
    assert len(pending) == 1 and "sm_request 0.6" in pending[0].message

    world.agents["n2"] = FakeAgent("n2", gpus=1)
    world.pass_()

    assert {i.node for i in world.instances("big")} == {"n1", "n2"}


def test_a_lost_node_loses_its_instances_and_they_are_replaced_elsewhere():
    world = World(FakeAgent("n1", gpus=1), FakeAgent("n2", gpus=1))
    world.deploy(inference_spec("mover"))
    world.ready_all()
    assert world.instances("mover")[0].node == "n1"

    world.agents["n1"].alive = False  # its entry stops changing
    for _ in range(11):
        world.pass_()

    states = world.states("mover")
    assert states["mover-1"] == LOST
    replacement = [i for i in world.live("mover")]
    assert [(i.id, i.node) for i in replacement] == [("mover-2", "n2")]
    assert world.core.ledger.instances_on("n1-g0") == []
    # A lost node says nothing about the function: no back-off.
    assert world.status("mover").state == S.FUNCTION_STATE_OK


def test_scale_out_and_in_stay_within_bounds_and_drain_before_releasing():
    world = World(FakeAgent("n1", gpus=2))
    world.deploy(inference_spec("svc", request=0.2, limit=0.3, max_replicas=3))
    world.ready_all()
    world.now += 1

    out = world.scale("svc", +2)
    assert len(out.starts()) == 2 and out.scaling[0].replicas_after == 3
    with pytest.raises(FailedPrecondition, match=r"replicas\.max=3"):
        world.core.scale("svc", +1, world.now)
    world.ready_all()

    world.hold_calls = True
    inward = world.scale("svc", -1, instance_ids=("svc-2",))
    assert [(c.node, c.instance_id) for c in inward.stops()] == [("n1", "svc-2")]
    assert world.states("svc")["svc-2"] == DRAINING
    assert world.core.ledger.holds("svc-2")  # the share stays held while it drains
    world.hold_calls = False
    for call in world.held:
        world.core.call_done(call, world.agents["n1"].answer(call), world.now)
    assert world.states("svc")["svc-2"] == STOPPED
    assert not world.core.ledger.holds("svc-2")

    by_count = world.scale("svc", -1)
    assert [c.instance_id for c in by_count.stops()] == ["svc-3"]  # the newest ready goes first
    with pytest.raises(FailedPrecondition, match=r"replicas\.min=1"):
        world.core.scale("svc", -1, world.now)
    with pytest.raises(InvalidArgument, match="not a live instance"):
        world.core.scale("svc", -1, world.now, instance_ids=["svc-2"])


def test_an_unconfirmed_stop_is_repeated_after_the_drain_timeout_and_finished_by_heartbeats():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("svc", max_replicas=2))
    world.ready_all()
    world.hold_calls = True  # the StopInstance gets no answer
    world.scale("svc", +1)
    world.scale("svc", -1, instance_ids=("svc-1",))
    world.held.clear()

    world.pass_(5.0)
    assert not [c for c in world.held if isinstance(c, StopInstance)]  # not yet: it may drain
    world.pass_(11.0)
    assert [c.instance_id for c in world.held if isinstance(c, StopInstance)] == ["svc-1"]

    del world.agents["n1"].running["svc-1"]  # the agent finished it; its heartbeat says so
    world.pass_()
    assert world.states("svc")["svc-1"] == STOPPED


def test_a_start_refused_for_room_is_placed_on_another_node_at_once():
    world = World(FakeAgent("n1", gpus=1), FakeAgent("n2", gpus=1))
    world.agents["n1"].refuse = Refusal.NO_ROOM

    world.deploy(inference_spec("svc"))

    (instance,) = world.instances("svc")
    assert (instance.id, instance.node, instance.state) == ("svc-1", "n2", STARTING)
    assert [c.node for c in world.made if isinstance(c, StartInstance)] == ["n1", "n2"]
    assert world.core.ledger.instances_on("n1-g0") == []
    assert world.status("svc").state == S.FUNCTION_STATE_OK  # the agent's room, not the function


def test_a_refused_start_fails_the_instance_and_backs_the_function_off():
    world = World(FakeAgent("n1"))
    world.agents["n1"].refuse = Refusal.ERROR

    world.deploy(inference_spec("svc"))

    status = world.status("svc")
    assert world.states("svc") == {"svc-1": FAILED}
    assert status.state == S.FUNCTION_STATE_BACKING_OFF
    assert status.consecutive_failures == 1
    assert "refused by the test" in status.last_error
    assert status.next_retry_at.ToNanoseconds() / 1e9 == pytest.approx(world.now + 1.0)
    world.pass_(0.5)
    assert not world.live("svc")  # still backing off
    world.agents["n1"].refuse = None
    world.pass_(0.5)
    assert [i.id for i in world.live("svc")] == ["svc-2"]


def test_crash_loops_back_off_exponentially_and_degrade_after_five_failures_in_a_row():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("loop"))
    started_at: list[float] = []
    for _ in range(7):
        (live,) = world.live("loop")
        started_at.append(world.now)
        world.report(live.id, FAILED, "worker exited with status 1: CUDA out of memory")
        while not world.live("loop"):
            world.pass_(0.25)

    gaps = [b - a for a, b in itertools.pairwise(started_at)]
    assert gaps == pytest.approx([1, 2, 4, 8, 30, 30], abs=0.26)
    status = world.status("loop")
    assert status.state == S.FUNCTION_STATE_DEGRADED
    assert status.consecutive_failures == 7
    assert "CUDA out of memory" in status.last_error
    assert status.next_retry_at.ToNanoseconds() / 1e9 == pytest.approx(started_at[-1] + 30)


def test_failed_instances_are_kept_as_a_bounded_history_of_the_newest():
    quick = SchedulerSettings(backoff_initial_s=0.1, backoff_max_s=0.1)
    world = World(FakeAgent("n1"), settings=quick)
    world.deploy(inference_spec("loop"))
    for _ in range(8):
        world.report(world.live("loop")[0].id, FAILED, "crashed")
        world.pass_(0.1)

    failed = [i.id for i in world.instances("loop") if i.state == FAILED]
    assert failed == [f"loop-{n}" for n in range(4, 9)]


def test_an_instance_that_stays_ready_for_a_minute_clears_the_failures():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("flaky"))
    for _ in range(5):
        world.report(world.live("flaky")[0].id, FAILED, "crashed")
        while not world.live("flaky"):
            world.pass_(1.0)
    assert world.status("flaky").state == S.FUNCTION_STATE_DEGRADED
    world.ready_all()

    world.pass_(59.0)
    assert world.status("flaky").state == S.FUNCTION_STATE_DEGRADED
    world.pass_(1.0)

    status = world.status("flaky")
    assert (status.state, status.consecutive_failures, status.last_error) == (
        S.FUNCTION_STATE_OK, 0, "")
    assert not status.HasField("next_retry_at")


def test_terminal_instances_are_forgotten_after_the_retention():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("svc"))
    world.report("svc-1", FAILED, "crashed")
    world.pass_(1.0)
    assert world.states("svc")["svc-1"] == FAILED
    world.pass_(29.5)
    assert "svc-1" not in world.states("svc")


def test_a_redeployed_function_starts_clean():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("again", min_replicas=2))
    world.ready_all()
    world.report("again-1", FAILED, "crashed")
    world.hold_calls = True  # the old instance's stop stays unconfirmed for a while
    world.delete("again")
    assert world.core.state.instances["again-2"].state == DRAINING

    world.hold_calls = False
    world.deploy(inference_spec("again"))

    status = world.status("again")
    assert [i.id for i in status.instances] == ["again-3"]
    assert (status.state, status.consecutive_failures) == (S.FUNCTION_STATE_OK, 0)
    del world.agents["n1"].running["again-2"]
    world.pass_()
    assert [i.id for i in world.instances("again")] == ["again-3"]
    assert "again-2" not in world.core.state.instances  # its stopped record went at once


def test_delete_stops_placed_instances_and_forgets_unplaced_ones():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("gone", request=0.6, limit=0.6, min_replicas=2))
    change = world.core.delete("gone", world.now)
    assert change.record is None
    outcome = world.run(world.core.apply(change, world.now))
    assert [c.instance_id for c in outcome.stops()] == ["gone-1"]
    assert "gone-2" not in world.core.state.instances
    with pytest.raises(NotFound):
        world.core.function("gone")


def test_an_instance_the_agent_forgot_fails_without_counting_against_the_function():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("amnesia"))
    world.ready_all()
    world.agents["n1"].running.clear()  # an agent restarted without its workers

    world.pass_(1.0)
    assert world.states("amnesia")["amnesia-1"] == READY  # one heartbeat may be stale
    world.pass_(1.0)
    world.pass_(1.0)

    assert world.states("amnesia")["amnesia-1"] == FAILED
    assert [i.id for i in world.live("amnesia")] == ["amnesia-2"]
    assert world.status("amnesia").state == S.FUNCTION_STATE_OK


def test_a_restarted_core_recovers_placements_and_back_off_without_duplicates():
    world = World(FakeAgent("n1", gpus=2), FakeAgent("n2", gpus=1))
    world.deploy(inference_spec("keep", min_replicas=2))
    world.ready_all()
    world.agents["n1"].refuse = Refusal.ERROR
    world.deploy(inference_spec("flaky"))
    world.agents["n1"].refuse = None
    functions = [world.core.state.functions[n] for n in ("keep", "flaky")]
    instances = list(world.core.state.instances.values())
    world.agents["n2"].gpus = 0  # n2 came back without its GPU while the scheduler was down

    after = SchedulerCore(make_placement("first-fit"), world.settings, new_id=world.new_id)
    snapshot = {a.node_id: (a.revision, a.node()) for a in world.agents.values()}
    after.recover(functions, instances, snapshot, world.now)
    world.core = after

    keep = {i.id: (i.state, i.node) for i in world.instances("keep")}
    assert keep == {"keep-1": (READY, "n1"), "keep-2": (LOST, "n2")}  # replicas spread out
    assert after.ledger.holds("keep-1") and not after.ledger.holds("keep-2")
    assert world.status("flaky").state == S.FUNCTION_STATE_BACKING_OFF
    world.heartbeat()
    starts = world.tick().starts()
    # Only the lost replica is replaced: no duplicate of keep-1, and flaky still waits.
    assert [(c.instance_id, c.node) for c in starts] == [("keep-4", "n1")]
    world.pass_(1.0)
    assert [i.id for i in world.live("flaky")] == ["flaky-5"]


def test_recovery_marks_instances_whose_node_is_gone_as_lost():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("svc"))
    after = SchedulerCore(make_placement("first-fit"), world.settings)
    after.recover(list(world.core.state.functions.values()),
                  list(world.core.state.instances.values()), {}, world.now)
    instance = after.state.instances["svc-1"]
    assert instance.state == LOST and "gone after a scheduler restart" in instance.message


def test_invoking_a_training_function_is_a_failed_precondition():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("train", kind=S.FUNCTION_KIND_TRAINING))
    world.ready_all()
    with pytest.raises(FailedPrecondition, match="training"):
        world.core.route("train")
    with pytest.raises(NotFound):
        world.core.route("nope")


def test_an_applied_quota_is_recorded_in_the_instance_and_the_ledger():
    world = World(FakeAgent("n1", gpus=1))
    world.deploy(inference_spec("svc"))
    world.ready_all()
    wanted = types_pb2.Quota(sm_request=0.5, sm_limit=0.8, memory_limit_mib=6000)

    world.hold_calls = True
    outcome = world.run(world.core.set_quota("svc-1", wanted, world.now))
    (call,) = outcome.calls
    assert isinstance(call, SetQuota) and call.node == "n1"
    assert world.core.state.instances["svc-1"].quota.sm_request == 0.3  # not before it applies

    done = world.core.call_done(call, world.agents["n1"].answer(call), world.now)
    assert done.instances == {"svc-1"}
    assert world.core.state.instances["svc-1"].quota.sm_limit == 0.8
    slot = world.core.ledger.gpu("n1-g0")
    assert slot is not None
    assert (slot.sm_requested, slot.sm_limited, slot.memory_allocated_mib) == (0.5, 0.8, 6000)


def test_an_unreachable_agent_fails_the_start_and_the_replacement_avoids_its_node():
    world = World(FakeAgent("n1", gpus=1), FakeAgent("n2", gpus=1))
    world.agents["n1"].alive = False  # its entry still looks fresh: it died a moment ago

    world.deploy(inference_spec("svc"))
    assert world.states("svc") == {"svc-1": FAILED}
    world.pass_(1.0)

    assert [(i.id, i.node) for i in world.live("svc")] == [("svc-2", "n2")]


def test_retry_delays_double_up_to_the_maximum_and_stay_there_once_degraded():
    default = SchedulerSettings()
    assert [retry_delay_s(n, default) for n in range(8)] == [0, 1, 2, 4, 8, 30, 30, 30]
    quick = SchedulerSettings(backoff_initial_s=0.2, backoff_max_s=1.0, degraded_after=10)
    assert [retry_delay_s(n, quick) for n in (1, 3, 4, 9, 10)] == [0.2, 0.8, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        SchedulerSettings(backoff_initial_s=5, backoff_max_s=1)


_OPS = st.lists(st.tuples(
    st.sampled_from(["deploy", "delete", "out", "in", "ready", "fail", "pass", "kill", "revive",
                     "refuse", "accept"]),
    st.sampled_from(["a", "b"]), st.sampled_from(["n1", "n2"]),
    st.sampled_from([0.2, 0.5, 0.7]), st.integers(0, 2), st.sampled_from([0.3, 1.0, 12.0])),
    max_size=40)


@settings(max_examples=120, deadline=None)
@given(_OPS)
def test_records_and_ledger_agree_whatever_happens(ops):
    world = World(FakeAgent("n1", gpus=2), FakeAgent("n2", gpus=1))
    for op, name, node, request, replicas, dt in ops:
        agent = world.agents[node]
        running = sorted(i for a in world.agents.values() for i in a.running
                         if i.startswith(f"{name}-"))
        try:
            if op == "deploy":
                world.deploy(inference_spec(name, request=request, limit=request,
                                            min_replicas=replicas, max_replicas=3))
            elif op == "delete":
                world.delete(name)
            elif op in ("out", "in"):
                world.scale(name, 1 if op == "out" else -1)
            elif op in ("ready", "fail") and running:
                world.report(running[replicas % len(running)],
                             READY if op == "ready" else FAILED, "x", "e:1")
            elif op == "pass":
                world.pass_(dt)
                for function in world.core.functions():
                    live = [i for i in function.status.instances if i.state in LIVE]
                    terminal = [i for i in function.status.instances if i.state in TERMINAL]
                    assert len(live) <= function.status.desired_replicas
                    assert len(terminal) <= world.settings.kept_terminal
            elif op in ("kill", "revive"):
                agent.alive = op == "revive"
            elif op in ("refuse", "accept"):
                agent.refuse = Refusal.ERROR if op == "refuse" else None
        except (InvalidArgument, NotFound, FailedPrecondition):
            pass
        _check_ledger(world)
    node_gpus = {n: {f"{n}-g{g}" for g in range(a.gpus)} for n, a in world.agents.items()}
    for call in world.made:
        if isinstance(call, StartInstance):
            assert set(call.gpu_uuids) <= node_gpus[call.node]


def _check_ledger(world: World) -> None:
    core = world.core
    for instance in core.state.instances.values():
        assert core.ledger.holds(instance.id) == (instance.state in HOLDING), instance
    for slot in core.ledger.gpus():
        holders = [i for i in core.state.instances.values()
                   if i.state in HOLDING and slot.uuid in i.gpu_uuids]
        assert slot.sm_requested == pytest.approx(sum(i.quota.sm_request for i in holders))
        assert sorted(core.ledger.instances_on(slot.uuid)) == sorted(i.id for i in holders)


def test_a_clock_stepped_back_across_a_restart_never_orphans_new_instances():
    world = World(FakeAgent("n1"))
    world.deploy(inference_spec("svc", max_replicas=2))
    after = SchedulerCore(make_placement("first-fit"), world.settings, new_id=world.new_id)
    world.now -= 60  # the machine's clock was stepped back while the scheduler was down
    snapshot = {a.node_id: (a.revision, a.node()) for a in world.agents.values()}
    after.recover(list(world.core.state.functions.values()),
                  list(world.core.state.instances.values()), snapshot, world.now)
    world.core = after
    world.heartbeat()

    world.scale("svc", +1)
    world.tick()

    assert [i.id for i in world.live("svc")] == ["svc-1", "svc-2"]
    assert not [c for c in world.made if isinstance(c, StopInstance)]
