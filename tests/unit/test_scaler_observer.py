from __future__ import annotations

import pytest
from dilu.events.v1 import events_pb2

from services.scaler.observer import QosObserver


def report(instance: str, rps: float, p99: float) -> events_pb2.QosReport:
    return events_pb2.QosReport(function="f", instance_id=instance, rps=rps, p99_ms=p99, slo_ms=100)


def test_function_qos_sums_fresh_instances_and_takes_the_worst_tail():
    observer = QosObserver(window_s=3)
    observer.on_qos(report("a", 10, 40), now=0)
    observer.on_qos(report("b", 5, 90), now=1)
    observer.on_qos(report("a", 12, 30), now=2)
    (summary,) = observer.functions(now=2.5)
    assert summary.reporting_instances == 2
    assert summary.rps == pytest.approx(17)
    assert summary.p99_ms == pytest.approx(90)
    assert summary.reports == 3


def test_silent_instances_drop_out_of_the_summary():
    observer = QosObserver(window_s=3)
    observer.on_qos(report("a", 10, 40), now=0)
    observer.on_qos(report("b", 5, 90), now=4)
    (summary,) = observer.functions(now=5)
    assert summary.reporting_instances == 1 and summary.rps == pytest.approx(5)


def test_decisions_are_newest_first_filtered_and_bounded():
    observer = QosObserver(decisions_kept=3)
    for n in range(5):
        observer.on_decision(events_pb2.ScalingDecision(function="f" if n % 2 else "g",
                                                        replicas_after=n))
    assert [d.replicas_after for d in observer.decisions("", 10)] == [4, 3, 2]
    assert [d.replicas_after for d in observer.decisions("f", 10)] == [3]
    assert len(observer.decisions("", 1)) == 1
