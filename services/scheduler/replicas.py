"""Replica planning: a pure function from desired count and current instances to actions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dilu.v1 import types_pb2

# Instances that count toward the replica count.
LIVE_STATES = frozenset({
    types_pb2.INSTANCE_STATE_PENDING,
    types_pb2.INSTANCE_STATE_STARTING,
    types_pb2.INSTANCE_STATE_READY,
})

# When scaling in, give up first what serves least: unplaced, then starting, then ready.
_STOP_ORDER = {
    types_pb2.INSTANCE_STATE_PENDING: 0,
    types_pb2.INSTANCE_STATE_STARTING: 1,
    types_pb2.INSTANCE_STATE_READY: 2,
}


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    start: int
    stop: tuple[str, ...]


def plan_replicas(desired: int, instances: Sequence[types_pb2.Instance]) -> ReplicaPlan:
    """How many instances to start and which to stop so that `desired` are live."""
    live = [i for i in instances if i.state in LIVE_STATES]
    if len(live) <= desired:
        return ReplicaPlan(start=desired - len(live), stop=())
    # Newest first within a state: the oldest instances are the warmest.
    ordered = sorted(
        live, key=lambda i: (_STOP_ORDER[i.state], -i.created_at.ToNanoseconds(), i.id)
    )
    return ReplicaPlan(start=0, stop=tuple(i.id for i in ordered[: len(live) - desired]))
