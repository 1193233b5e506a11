"""Plain-text tables for `dilu status`."""

from __future__ import annotations

from collections.abc import Sequence

from dilu.v1 import types_pb2

from services.common.tables import render


def _short(enum_name: str, prefix: str) -> str:
    return enum_name.removeprefix(prefix).lower().replace("_", "-")


def status_report(functions: Sequence[types_pb2.Function],
                  nodes: Sequence[types_pb2.NodeView]) -> str:
    gpu_index = {g.uuid: f"{view.node.id}/gpu{g.index}" for view in nodes for g in view.node.gpus}
    function_rows = [
        (f.spec.name, _short(types_pb2.FunctionKind.Name(f.spec.kind), "FUNCTION_KIND_"),
         f.spec.model, f"{f.status.ready_replicas}/{f.status.desired_replicas}",
         f"{f.spec.slo.latency_ms:g} ms" if f.spec.slo.latency_ms else "-")
        for f in functions
    ]
    instance_rows = [
        (i.id, _short(types_pb2.InstanceState.Name(i.state), "INSTANCE_STATE_"),
         ",".join(gpu_index.get(u, u[:12]) for u in i.gpu_uuids) or "-",
         f"{i.quota.sm_request:.2f}/{i.quota.sm_limit:.2f}", f"{i.quota.effective_share:.2f}",
         f"{i.quota.memory_limit_mib}", i.message)
        for f in functions for i in f.status.instances
    ]
    gpu_rows = []
    for view in nodes:
        allocations = {a.gpu_uuid: a for a in view.allocations}
        for gpu in view.node.gpus:
            a = allocations.get(gpu.uuid, types_pb2.GpuAllocation())
            gpu_rows.append((
                gpu_index[gpu.uuid], _short(types_pb2.NodeState.Name(view.state), "NODE_STATE_"),
                gpu.model, f"{a.sm_requested:.2f}", f"{a.sm_limited:.2f}",
                f"{a.memory_allocated_mib}/{gpu.memory_total_mib}", len(a.instance_ids)))
    return "\n\n".join([
        "FUNCTIONS\n" + render(("NAME", "KIND", "MODEL", "READY", "SLO"), function_rows),
        "INSTANCES\n" + render(("ID", "STATE", "GPU", "REQ/LIMIT", "SHARE", "MEM MiB", "MESSAGE"),
                               instance_rows),
        "GPUS\n" + render(("GPU", "NODE", "MODEL", "SM REQ", "SM LIMIT", "MEM MiB", "INSTANCES"),
                          gpu_rows),
    ])
