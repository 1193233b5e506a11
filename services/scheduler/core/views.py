"""What the records look like from outside: a function with its instances, where an
invocation goes, and the nodes with what is committed on their GPUs."""

from __future__ import annotations

from collections.abc import Iterable

from dilu.v1 import types_pb2

from services.common.errors import FailedPrecondition, NotFound, Unavailable
from services.scheduler.core.records import ClusterState, state_name
from services.scheduler.nodes import NodeTracker
from services.scheduler.placement import Ledger
from services.scheduler.routing import LeastOutstanding

S = types_pb2


def function(state: ClusterState, name: str) -> types_pb2.Function:
    """A function with its current deployment's instances (a copy)."""
    stored = state.functions.get(name)
    if stored is None:
        raise NotFound(f"no function named {name!r}")
    view = types_pb2.Function()
    view.CopyFrom(stored)
    instances = state.instances_of(name)
    view.status.instances.extend(instances)
    view.status.ready_replicas = sum(1 for i in instances if i.state == S.INSTANCE_STATE_READY)
    return view


def route(state: ClusterState, router: LeastOutstanding, name: str,
          exclude: Iterable[str] = ()) -> tuple[str, str]:
    """The ready instance an invocation should go to, as (id, endpoint)."""
    stored = state.functions.get(name)
    if stored is None:
        raise NotFound(f"no function named {name!r}")
    if stored.spec.kind == S.FUNCTION_KIND_TRAINING:
        raise FailedPrecondition(f"function {name!r} is a training job: it serves no requests "
                                 "(invoke inference functions only)")
    skip = set(exclude)
    instances = state.instances_of(name)
    ready = {i.id: i.endpoint for i in instances
             if i.state == S.INSTANCE_STATE_READY and i.endpoint and i.id not in skip}
    chosen = router.pick(ready)
    if chosen is None:
        states = [state_name(i.state) for i in instances]
        raise Unavailable(f"function {name!r} has no ready instance "
                          f"(instances: {', '.join(states) or 'none'})")
    return chosen, ready[chosen]


def node_views(nodes: NodeTracker, ledger: Ledger) -> list[types_pb2.NodeView]:
    views = []
    for node in nodes.all():
        view = types_pb2.NodeView(node=node, state=nodes.state(node.id))
        for gpu in ledger.gpus([node.id]):
            view.allocations.add(
                gpu_uuid=gpu.uuid, sm_requested=gpu.sm_requested, sm_limited=gpu.sm_limited,
                memory_allocated_mib=gpu.memory_allocated_mib,
                instance_ids=ledger.instances_on(gpu.uuid))
        views.append(view)
    return views
