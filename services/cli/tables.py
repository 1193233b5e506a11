"""What `dilu status` prints: plain-text tables, or JSON with the API's field names."""

from __future__ import annotations

import time
from collections.abc import Sequence

from dilu.v1 import scheduler_pb2, types_pb2
from google.protobuf import json_format

from services.common.bounds import announced
from services.common.tables import render


def _short(enum_name: str, prefix: str) -> str:
    return enum_name.removeprefix(prefix).lower().replace("_", "-")


def _clip(text: str, head: int = 26, tail: int = 50) -> str:
    """One line, its middle cut when long: a worker's error starts with what happened and
    ends with why (the instances table has the full text)."""
    line = " ".join(text.split())
    return line if len(line) <= head + tail + 1 else line[:head] + "…" + line[-tail:]


def _retry(status: types_pb2.FunctionStatus, now_s: float) -> str:
    if not status.HasField("next_retry_at"):
        return "-"
    wait_s = status.next_retry_at.ToNanoseconds() / 1e9 - now_s
    return f"in {wait_s:.0f} s" if wait_s >= 0.5 else "now"


def status_report(functions: Sequence[types_pb2.Function],
                  nodes: Sequence[types_pb2.NodeView], now_s: float | None = None,
                  profiling: Sequence[types_pb2.Function] = ()) -> str:
    """Functions (with their back-off state), instances (with their live quotas, as their
    agents applied them) and GPUs (what is committed against the bounds their node
    announces) as three tables, and the profiler's hidden instances, when there are any,
    as a fourth ("profiling"). `now_s` (default: this machine's clock) turns the next
    retry into a countdown."""
    now_s = time.time() if now_s is None else now_s
    gpu_index = {g.uuid: f"{view.node.id}/gpu{g.index}" for view in nodes for g in view.node.gpus}
    function_rows = [
        (f.spec.name, _short(types_pb2.FunctionKind.Name(f.spec.kind), "FUNCTION_KIND_"),
         f.spec.model, f"{f.status.ready_replicas}/{f.status.desired_replicas}",
         f"{f.spec.slo.latency_ms:g} ms" if f.spec.slo.latency_ms else "-",
         _short(types_pb2.FunctionState.Name(f.status.state), "FUNCTION_STATE_")
         if f.status.state else "-",
         f"{f.status.consecutive_failures}", _retry(f.status, now_s),
         _clip(f.status.last_error) or "-")
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
        bounds = announced(view.node)
        for gpu in view.node.gpus:
            a = allocations.get(gpu.uuid, types_pb2.GpuAllocation())
            gpu_rows.append((
                gpu_index[gpu.uuid], _short(types_pb2.NodeState.Name(view.state), "NODE_STATE_"),
                gpu.model, f"{a.sm_requested:.2f}/{bounds.max_requested:g}",
                f"{a.sm_limited:.2f}/{bounds.max_limited:g}",
                f"{a.memory_allocated_mib}/{gpu.memory_total_mib}", len(a.instance_ids)))
    tables = [
        "FUNCTIONS\n" + render(("NAME", "KIND", "MODEL", "READY", "SLO", "STATE", "FAILURES",
                                "NEXT RETRY", "LAST ERROR"), function_rows),
        "INSTANCES\n" + render(("ID", "STATE", "GPU", "REQ/LIMIT", "SHARE", "MEM MiB", "MESSAGE"),
                               instance_rows),
        "GPUS\n" + render(("GPU", "NODE", "MODEL", "SM REQ/MAX", "SM LIMIT/MAX", "MEM MiB",
                           "INSTANCES"), gpu_rows),
    ]
    profiling_rows = [
        (i.id, "profiling", f.spec.model,
         _short(types_pb2.InstanceState.Name(i.state), "INSTANCE_STATE_"),
         ",".join(gpu_index.get(u, u[:12]) for u in i.gpu_uuids) or "-",
         f"{i.quota.effective_share:.2f}", i.message)
        for f in profiling for i in f.status.instances
    ]
    if profiling_rows:
        tables.append("PROFILING (the profiler's hidden instances)\n" + render(
            ("ID", "KIND", "MODEL", "STATE", "GPU", "SHARE", "MESSAGE"), profiling_rows))
    return "\n\n".join(tables)


def status_json(functions: Sequence[types_pb2.Function]) -> str:
    """The functions as JSON with the field names of the API and of spec files
    (snake_case), not protobuf's camelCase JSON names."""
    return json_format.MessageToJson(scheduler_pb2.ListFunctionsResponse(functions=functions),
                                     preserving_proto_field_name=True)
