"""From a function's spec (or an instance's quota) to what placement works on."""

from __future__ import annotations

from dilu.v1 import types_pb2

from services.scheduler.placement import InstanceShape, WorkloadKind

S = types_pb2
KINDS = {
    S.FUNCTION_KIND_INFERENCE: WorkloadKind.INFERENCE,
    S.FUNCTION_KIND_LLM_INFERENCE: WorkloadKind.LLM_INFERENCE,
    S.FUNCTION_KIND_TRAINING: WorkloadKind.TRAINING,
}


def shape_of(spec: types_pb2.FunctionSpec) -> InstanceShape:
    """What a new instance of the function asks for on each GPU."""
    # max_shards stays 1: a worker runs its model on one GPU, so nothing is split here.
    res = spec.resources
    return InstanceShape(
        function=spec.name, kind=KINDS[spec.kind], sm_request=res.sm_request,
        sm_limit=res.sm_limit, memory_mib=res.memory_mib, gpus=max(1, res.gpus_per_instance))


def held_shape(spec: types_pb2.FunctionSpec, instance: types_pb2.Instance) -> InstanceShape:
    """What a placed instance holds on each GPU: its own quota, which may have changed
    since it was placed; the spec's figures where the quota has none."""
    asked = shape_of(spec)
    quota = instance.quota
    return InstanceShape(
        function=asked.function, kind=asked.kind,
        sm_request=quota.sm_request or asked.sm_request,
        sm_limit=quota.sm_limit or asked.sm_limit,
        memory_mib=quota.memory_limit_mib or asked.memory_mib,
        gpus=len(instance.gpu_uuids) or asked.gpus)


def quota_shape(held: InstanceShape, quota: types_pb2.Quota) -> InstanceShape:
    """`held` with the request, limit and memory of an applied quota."""
    return InstanceShape(function=held.function, kind=held.kind, sm_request=quota.sm_request,
                         sm_limit=quota.sm_limit,
                         memory_mib=quota.memory_limit_mib or held.memory_mib, gpus=held.gpus)
