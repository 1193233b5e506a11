"""The cluster's committed allocations, per GPU. Pure bookkeeping shared by the scheduler
and the simulator, so both apply exactly the same arithmetic."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from services.scheduler.placement.types import Assignment, GpuSlot, InstanceShape


class Ledger:
    """GPUs by UUID with what is placed on them; instances by id."""

    def __init__(self) -> None:
        self._gpus: dict[str, GpuSlot] = {}
        self._instances: dict[str, tuple[InstanceShape, Assignment]] = {}

    def set_node(self, node: str, gpus: Iterable[tuple[str, int]]) -> list[str]:
        """Declare a node's GPUs as (uuid, memory MiB), replacing what it had before.

        What is placed on GPUs that remain is kept; returns the ids of the instances that
        were on GPUs the node no longer has (they are released).
        """
        declared = dict(gpus)
        gone = [u for u, g in self._gpus.items() if g.node == node and u not in declared]
        evicted = sorted({i for i, (_, a) in self._instances.items()
                          if any(u in a.gpu_uuids for u in gone)})
        for instance_id in evicted:
            self.release(instance_id)
        for uuid in gone:
            del self._gpus[uuid]
        for uuid, memory_total in declared.items():
            current = self._gpus.get(uuid)
            if current is None:
                self._gpus[uuid] = GpuSlot(node=node, uuid=uuid, memory_total_mib=memory_total)
            elif current.memory_total_mib != memory_total or current.node != node:
                self._gpus[uuid] = replace(current, node=node, memory_total_mib=memory_total)
        return evicted

    def remove_node(self, node: str) -> list[str]:
        """Forget a node's GPUs; returns the ids of the instances that were on them."""
        evicted = [iid for iid, (_, a) in self._instances.items() if a.node == node]
        for iid in evicted:
            self.release(iid)
        for uuid in [u for u, g in self._gpus.items() if g.node == node]:
            del self._gpus[uuid]
        return evicted

    def gpus(self, nodes: Iterable[str] | None = None) -> list[GpuSlot]:
        """GPUs in a stable order (node, then uuid), optionally only those of `nodes`."""
        wanted = None if nodes is None else set(nodes)
        return sorted(
            (g for g in self._gpus.values() if wanted is None or g.node in wanted),
            key=lambda g: (g.node, g.uuid),
        )

    def gpu(self, uuid: str) -> GpuSlot | None:
        return self._gpus.get(uuid)

    def holds(self, instance_id: str) -> bool:
        return instance_id in self._instances

    def instances_on(self, uuid: str) -> list[str]:
        return sorted(i for i, (_, a) in self._instances.items() if uuid in a.gpu_uuids)

    def commit(self, instance_id: str, shape: InstanceShape, assignment: Assignment) -> None:
        """Record a placement. Unknown GPUs are an error: commit only what a policy chose
        or what was committed before a restart on GPUs a heartbeat declared."""
        if instance_id in self._instances:
            return
        missing = [u for u in assignment.gpu_uuids if u not in self._gpus]
        if missing:
            raise KeyError(f"unknown GPUs {missing}")
        for uuid in assignment.gpu_uuids:
            gpu = self._gpus[uuid]
            self._gpus[uuid] = replace(
                gpu,
                sm_requested=gpu.sm_requested + shape.sm_request,
                sm_limited=gpu.sm_limited + shape.sm_limit,
                memory_allocated_mib=gpu.memory_allocated_mib + shape.memory_mib,
                functions=(*gpu.functions, shape.function),
            )
        self._instances[instance_id] = (shape, assignment)

    def release(self, instance_id: str) -> None:
        placed = self._instances.pop(instance_id, None)
        if placed is None:
            return
        shape, assignment = placed
        for uuid in assignment.gpu_uuids:
            gpu = self._gpus.get(uuid)
            if gpu is None:
                continue
            functions = list(gpu.functions)
            functions.remove(shape.function)
            remaining = [s for i, (s, a) in self._instances.items() if uuid in a.gpu_uuids]
            # Recompute sums from what remains so float error never accumulates.
            self._gpus[uuid] = replace(
                gpu,
                sm_requested=sum(s.sm_request for s in remaining),
                sm_limited=sum(s.sm_limit for s in remaining),
                memory_allocated_mib=sum(s.memory_mib for s in remaining),
                functions=tuple(functions),
            )
