"""RPC intents that change a function, checked against the records: each returns the
`FunctionChange` to make durable and apply, or raises naming what is wrong. Nothing here
changes anything."""

from __future__ import annotations

from collections.abc import Iterable

from dilu.events.v1 import events_pb2
from dilu.v1 import types_pb2

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.timestamps import now_timestamp
from services.scheduler.core.calls import FunctionChange
from services.scheduler.core.records import LIVE, ClusterState, seconds

S = types_pb2


def deploy(state: ClusterState, spec: types_pb2.FunctionSpec, now: float) -> FunctionChange:
    """A new function from a validated spec, with `replicas.min` replicas."""
    if spec.name in state.functions:
        raise InvalidArgument("function.name",
                              f"a function named {spec.name!r} is already deployed; "
                              "delete it first or choose another name")
    # Strictly after every record left under this name by an earlier deployment, so none
    # of them counts as this one's (`ClusterState.belongs`).
    created = max([now, *(seconds(i.created_at) + 1e-6 for i in state.all_of(spec.name))])
    function = types_pb2.Function(spec=spec)
    function.status.desired_replicas = spec.replicas.min
    function.status.created_at.CopyFrom(now_timestamp(created))
    function.status.state = S.FUNCTION_STATE_OK
    return FunctionChange(spec.name, function)


def delete(state: ClusterState, name: str) -> FunctionChange:
    if name not in state.functions:
        raise NotFound(f"no function named {name!r}")
    return FunctionChange(name, None, reason="function deleted")


def scale(state: ClusterState, name: str, delta: int, now: float, *, reason: str = "",
          source: str = "", instance_ids: Iterable[str] = ()) -> FunctionChange:
    """Change the replica count by `delta` within the function's bounds, or remove exactly
    `instance_ids` (then `delta` is their number, negated)."""
    function = state.functions.get(name)
    if function is None:
        raise NotFound(f"no function named {name!r}")
    chosen = sorted(set(instance_ids))
    for instance_id in chosen:
        instance = state.instances.get(instance_id)
        if (instance is None or instance.function != name or instance.state not in LIVE
                or not state.belongs(instance)):
            raise InvalidArgument("instance_ids", f"{instance_id!r} is not a live instance of {name}")
    if chosen:
        delta = -len(chosen)
    before = function.status.desired_replicas
    after = before + delta
    bounds = function.spec.replicas
    if after > bounds.max:
        raise FailedPrecondition(f"{name} would have {after} replicas, above replicas.max={bounds.max}")
    if after < bounds.min:
        raise FailedPrecondition(f"{name} would have {after} replicas, below replicas.min={bounds.min}")
    updated = types_pb2.Function()
    updated.CopyFrom(function)
    updated.status.desired_replicas = after
    decision = events_pb2.ScalingDecision(
        function=name, at=now_timestamp(now),
        kind=(events_pb2.SCALING_KIND_HORIZONTAL_OUT if delta > 0
              else events_pb2.SCALING_KIND_HORIZONTAL_IN),
        replicas_before=before, replicas_after=after, reason=reason, source=source)
    return FunctionChange(name, updated, stop=tuple(chosen), reason=reason or "scaled in",
                          scaling=decision)
