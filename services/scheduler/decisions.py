"""Vertical scaling decisions, as the scheduler records them from its agents' events.

A node agent applies quota changes (it owns its GPUs' budget) but may not publish scaling
decisions: only the scheduler and the scaler may (NATS permissions hold it). Each
QUOTA_CHANGED event an agent publishes carries the quota before and after, the version,
and the caller's reason and source; the scheduler turns it into the decision kept in
DILU_SCALING.
"""

from __future__ import annotations

from dilu.events.v1 import events_pb2


def vertical_decision(event: events_pb2.InstanceEvent) -> events_pb2.ScalingDecision:
    """The decision a QUOTA_CHANGED event records: up when the request grew (or, the request
    unchanged, the limit, then the memory limit), down otherwise."""
    before, after = event.quota_before, event.quota
    up = ((after.sm_request, after.sm_limit, after.memory_limit_mib)
          > (before.sm_request, before.sm_limit, before.memory_limit_mib))
    return events_pb2.ScalingDecision(
        function=event.function, at=event.at,
        kind=events_pb2.SCALING_KIND_VERTICAL_UP if up else events_pb2.SCALING_KIND_VERTICAL_DOWN,
        instance_id=event.instance_id, quota_before=before, quota_after=after,
        reason=event.reason, source=event.source, node=event.node)
