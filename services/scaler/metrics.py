"""The scaler's Prometheus figures: scaling actions by kind and source.

Every scaling decision is published on `dilu.events.scaling.<function>` whoever made it
(`manual` for `dilu scale`/`ScaleOut`/`ScaleIn`, `scheduler`, `scaler`), and the scaler
sees each one, so it counts them all here: `ScalingMetrics.record(decision)`. The co-scaling
policy, once it acts, publishes its decisions the same way and is counted without calling
anything; what it may count besides (policy evaluations, say) belongs beside these.

Decisions the scaler replays from the `DILU_SCALING` stream when it starts are history:
they set the last-action timestamps (Grafana draws annotations from them) but do not add to
the counters, so a restart does not look like a burst of scaling.
"""

from __future__ import annotations

from dilu.events.v1 import events_pb2
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

SCALING_KINDS = {value: name.removeprefix("SCALING_KIND_").lower().replace("_", "-")
                 for name, value in events_pb2.ScalingKind.items()}
_LABELS = ["function", "kind", "source"]


class ScalingMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.actions = Counter(
            "dilu_scaling_actions", "Scaling decisions published since this scaler started, by "
            "function, kind (vertical-up/-down, horizontal-out/-in) and source", _LABELS,
            registry=registry)
        self.last_action = Gauge(
            "dilu_scaling_last_action_timestamp_seconds",
            "When the latest scaling decision of this function, kind and source was made "
            "(Unix time; replayed history included)", _LABELS, registry=registry)
        self._latest: dict[tuple[str, str, str], float] = {}
        self.qos_reports = Counter(
            "dilu_scaler_qos_reports", "QoS reports the scaler received, by function",
            ["function"], registry=registry)

    def record(self, decision: events_pb2.ScalingDecision, *, replayed: bool = False) -> None:
        """Count one decision seen on the bus (`replayed`: from the stream's history)."""
        labels = (decision.function, SCALING_KINDS.get(decision.kind, "unspecified"),
                  decision.source or "unknown")
        at = decision.at.seconds + decision.at.nanos / 1e9
        # Replay and live delivery may interleave at start; the gauge only moves forward.
        if at > self._latest.get(labels, 0.0):
            self._latest[labels] = at
            self.last_action.labels(*labels).set(at)
        if not replayed:
            self.actions.labels(*labels).inc()

    def record_qos(self, report: events_pb2.QosReport) -> None:
        self.qos_reports.labels(report.function).inc()


class ReplayCursor:
    """Tells replayed decisions from live ones: the stream held `history` messages when
    the scaler subscribed, and an ordered consumer delivers those first, in order."""

    def __init__(self, history: int) -> None:
        self._left = history

    def next_is_replayed(self) -> bool:
        if self._left > 0:
            self._left -= 1
            return True
        return False
