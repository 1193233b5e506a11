"""Node-scoped subjects, and the vertical decisions the scheduler records from its agents'
quota events."""

from __future__ import annotations

from dilu.events.v1 import events_pb2
from dilu.v1 import types_pb2

from services.common import subjects
from services.scheduler.decisions import vertical_decision


def test_every_subject_an_agent_publishes_names_its_node():
    assert subjects.qos("n1", "bert") == "dilu.qos.n1.bert"
    assert subjects.instance_events("n1", "bert") == "dilu.events.instance.n1.bert"
    for subject in (subjects.qos("n1", "bert"), subjects.instance_events("n1", "bert"),
                    subjects.telemetry("n1", "GPU-1")):
        assert subjects.node_of(subject) == "n1"
    assert subjects.node_of(subjects.scaling_events("bert")) is None
    assert subjects.node_of("dilu.qos.n1") is None  # no function: not a QoS subject


def _event(before: tuple[float, float, int], after: tuple[float, float, int]) -> events_pb2.InstanceEvent:
    return events_pb2.InstanceEvent(
        function="bert", instance_id="bert-1", node="n1",
        kind=events_pb2.INSTANCE_EVENT_KIND_QUOTA_CHANGED, quota_version=2,
        quota_before=types_pb2.Quota(sm_request=before[0], sm_limit=before[1], memory_limit_mib=before[2]),
        quota=types_pb2.Quota(sm_request=after[0], sm_limit=after[1], memory_limit_mib=after[2]),
        reason="p99 near the SLO", source="scaler")


def test_a_quota_event_becomes_the_vertical_decision_it_records():
    decision = vertical_decision(_event((0.3, 0.5, 4096), (0.45, 0.7, 6144)))
    assert decision.kind == events_pb2.SCALING_KIND_VERTICAL_UP
    assert (decision.function, decision.instance_id, decision.node) == ("bert", "bert-1", "n1")
    assert (decision.reason, decision.source) == ("p99 near the SLO", "scaler")
    assert decision.quota_before.sm_request == 0.3 and decision.quota_after.sm_request == 0.45
    # The request unchanged: the limit decides, then the memory.
    assert vertical_decision(_event((0.3, 0.5, 4096), (0.3, 0.4, 8192))).kind == \
        events_pb2.SCALING_KIND_VERTICAL_DOWN
    assert vertical_decision(_event((0.3, 0.5, 4096), (0.3, 0.5, 8192))).kind == \
        events_pb2.SCALING_KIND_VERTICAL_UP
