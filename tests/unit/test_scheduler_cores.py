"""Replica planning, routing and node liveness: the scheduler's small pure cores."""

from __future__ import annotations

from dilu.v1 import types_pb2

from services.common.timestamps import now_timestamp
from services.scheduler.nodes import NodeTracker
from services.scheduler.replicas import plan_replicas
from services.scheduler.routing import LeastOutstanding

S = types_pb2


def inst(iid: str, state: int, created_s: float = 0.0) -> types_pb2.Instance:
    return types_pb2.Instance(id=iid, state=state, created_at=now_timestamp(created_s))


def test_plan_starts_what_is_missing_and_ignores_dead_instances():
    plan = plan_replicas(3, [inst("a", S.INSTANCE_STATE_READY), inst("b", S.INSTANCE_STATE_FAILED),
                             inst("c", S.INSTANCE_STATE_LOST)])
    assert (plan.start, plan.stop) == (2, ())


def test_scale_in_gives_up_pending_then_starting_then_the_newest_ready():
    instances = [
        inst("old-ready", S.INSTANCE_STATE_READY, 1),
        inst("new-ready", S.INSTANCE_STATE_READY, 5),
        inst("starting", S.INSTANCE_STATE_STARTING, 2),
        inst("pending", S.INSTANCE_STATE_PENDING, 0),
    ]
    assert plan_replicas(3, instances).stop == ("pending",)
    assert plan_replicas(1, instances).stop == ("pending", "starting", "new-ready")


def test_least_outstanding_prefers_idle_instances_and_rotates_ties():
    router = LeastOutstanding()
    router.begin("a")
    assert router.pick(["a", "b"]) == "b"
    router.end("a")
    picks = [router.pick(["a", "b"]) for _ in range(4)]
    assert picks == ["a", "b", "a", "b"]
    assert router.pick([]) is None


def test_outstanding_counts_never_go_negative():
    router = LeastOutstanding()
    router.end("x")
    assert router.outstanding("x") == 0


def node(node_id: str) -> types_pb2.Node:
    return types_pb2.Node(id=node_id)


def test_a_node_is_lost_when_its_revision_stops_changing_and_back_when_it_changes():
    tracker = NodeTracker(timeout_s=2)
    tracker.observe(node("n1"), revision=1, now=0)
    assert tracker.sweep(now=1.5) == ([], [])
    tracker.observe(node("n1"), revision=1, now=1.9)  # same revision: no news
    assert tracker.sweep(now=2.5) == ([], ["n1"])
    assert tracker.ready() == []
    assert tracker.sweep(now=3.0) == ([], [])  # reported once
    tracker.observe(node("n1"), revision=7, now=3.1)
    assert tracker.sweep(now=3.2) == (["n1"], [])
    assert tracker.state("n1") == types_pb2.NODE_STATE_READY


def test_registry_entries_found_at_start_get_no_placements_until_they_change():
    tracker = NodeTracker(timeout_s=2)
    tracker.observe(node("dead"), revision=4, now=0, trusted=False)
    tracker.observe(node("alive"), revision=9, now=0, trusted=False)
    assert tracker.ready() == []
    assert tracker.state("dead") == types_pb2.NODE_STATE_UNCONFIRMED
    tracker.observe(node("alive"), revision=10, now=0.5)
    assert tracker.ready() == ["alive"]
    assert tracker.sweep(now=2.5) == ([], ["dead"])


def test_pardon_after_a_blind_spell_keeps_nodes_up():
    tracker = NodeTracker(timeout_s=2)
    tracker.observe(node("n1"), revision=1, now=0)
    tracker.pardon(now=10)
    assert tracker.sweep(now=11) == ([], [])
    assert tracker.sweep(now=12.5) == ([], ["n1"])
