"""What the scaler sees on the bus: latest QoS per function and recent scaling decisions.

Pure bookkeeping with an explicit clock (GetStatus and ListDecisions read it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dilu.events.v1 import events_pb2
from dilu.v1 import scaler_pb2


@dataclass(slots=True)
class _FunctionWindow:
    reports: int = 0
    latest: dict[str, tuple[float, events_pb2.QosReport]] = field(default_factory=dict)


class QosObserver:
    def __init__(self, window_s: float = 3.0, decisions_kept: int = 1000) -> None:
        self._window_s = window_s
        self._functions: dict[str, _FunctionWindow] = {}
        self._decisions: deque[events_pb2.ScalingDecision] = deque(maxlen=decisions_kept)

    def on_qos(self, report: events_pb2.QosReport, now: float) -> None:
        window = self._functions.setdefault(report.function, _FunctionWindow())
        window.reports += 1
        window.latest[report.instance_id] = (now, report)

    def on_decision(self, decision: events_pb2.ScalingDecision) -> None:
        self._decisions.append(decision)

    def functions(self, now: float) -> list[scaler_pb2.FunctionQos]:
        summaries = []
        for name, window in sorted(self._functions.items()):
            fresh = [r for at, r in window.latest.values() if now - at <= self._window_s]
            summaries.append(scaler_pb2.FunctionQos(
                function=name, reporting_instances=len(fresh),
                rps=sum(r.rps for r in fresh),
                p99_ms=max((r.p99_ms for r in fresh), default=0.0),
                slo_ms=max((r.slo_ms for r in fresh), default=0.0),
                reports=window.reports))
        return summaries

    def decisions(self, function: str, limit: int,
                  source: str = "") -> list[events_pb2.ScalingDecision]:
        """Newest first; only `function`'s and `source`'s when given."""
        matching = [d for d in reversed(self._decisions)
                    if (not function or d.function == function)
                    and (not source or d.source == source)]
        return matching[:limit]
