"""The cluster's committed allocations, per GPU. Pure bookkeeping shared by the scheduler
and the simulator, so both apply exactly the same arithmetic."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from functools import partial

import numpy as np

from services.common.bounds import REQUESTS_ONLY, PlacementBounds
from services.scheduler.placement.types import (
    SLO_BOUND,
    Assignment,
    GpuSlot,
    InstanceShape,
    WorkloadKind,
)
from services.scheduler.placement.view import ClusterView, Ints


class Ledger:
    """GPUs by UUID with what is placed on them; instances by id.

    Totals per GPU live in numpy columns (see `ClusterView`). Commits and releases update
    them in place; a change of the GPUs themselves only marks them stale, and they are
    rebuilt on the next read, so declaring a thousand nodes costs one rebuild.

    Each node's GPUs carry the bounds the node announces (its agent admits against them);
    the policies place within them.
    """

    def __init__(self) -> None:
        self._declared: dict[str, dict[str, int]] = {}  # node -> uuid -> memory MiB
        self._bounds: dict[str, PlacementBounds] = {}
        self._node_of_gpu: dict[str, str] = {}
        self._instances: dict[str, tuple[InstanceShape, Assignment]] = {}
        self._on_gpu: dict[str, list[str]] = {}  # uuid -> instance ids, in commit order
        self._replicas: dict[str, Counter[str]] = {}  # function -> uuid -> instances
        self._stale = True
        self._index: dict[str, int] = {}
        self._node_runs: dict[str, tuple[int, int]] = {}  # node -> its GPUs' index range
        self._view: ClusterView | None = None

    # ---- the GPUs -------------------------------------------------------------------

    def set_node(self, node: str, gpus: Iterable[tuple[str, int]],
                 bounds: PlacementBounds = REQUESTS_ONLY) -> list[str]:
        """Declare a node's GPUs as (uuid, memory MiB) and the bounds its agent admits
        against, replacing what it had before (the default bounds hold requests to one
        GPU and leave limits to the policies).

        What is placed on GPUs that remain is kept, even beyond bounds that tightened
        (the node's agent admitted it; nothing more goes there); returns the ids of the
        instances that were on GPUs the node no longer has (they are released).
        """
        if self._bounds.get(node) != bounds:
            self._bounds[node] = bounds
            self._stale = True
        declared = dict(gpus)
        before = self._declared.get(node, {})
        gone = [u for u in before if u not in declared]
        # A GPU that another node declared before now answers to a different agent, so
        # what was placed on it through the old one is gone too.
        moved = [u for u in declared if self._node_of_gpu.get(u, node) != node]
        evicted = sorted({i for u in gone + moved for i in self._on_gpu.get(u, ())})
        for instance_id in evicted:
            self.release(instance_id)
        if declared != before:
            for uuid in gone:
                self._node_of_gpu.pop(uuid, None)
                self._on_gpu.pop(uuid, None)
            for uuid in declared:
                old_node = self._node_of_gpu.get(uuid)
                if old_node is not None and old_node != node:
                    self._declared[old_node].pop(uuid, None)  # a GPU moved between nodes
                self._node_of_gpu[uuid] = node
                self._on_gpu.setdefault(uuid, [])
            self._declared[node] = declared
            self._stale = True
        return evicted

    def remove_node(self, node: str) -> list[str]:
        """Forget a node's GPUs; returns the ids of the instances that were on them."""
        if node not in self._declared:
            return []
        evicted = sorted({i for u in self._declared[node] for i in self._on_gpu.get(u, ())})
        for instance_id in evicted:
            self.release(instance_id)
        for uuid in self._declared.pop(node):
            self._node_of_gpu.pop(uuid, None)
            self._on_gpu.pop(uuid, None)
        self._bounds.pop(node, None)
        self._stale = True
        return evicted

    def view(self, nodes: Iterable[str] | None = None) -> ClusterView:
        """The GPUs as columns, eligible only on `nodes` when given. The view is live:
        valid until the next change to the ledger."""
        view = self._columns()
        if nodes is None:
            return view
        wanted = set(nodes)
        mask = np.array([name in wanted for name in view.node_names], dtype=bool)
        eligible = mask[view.node_of] if view.size else np.zeros(0, dtype=bool)
        return replace(view, eligible=eligible)

    def gpus(self, nodes: Iterable[str] | None = None) -> list[GpuSlot]:
        """GPUs in a stable order (node, then uuid), optionally only those of `nodes`."""
        view = self._columns()
        if nodes is None:
            return [self._slot(view, i) for i in range(view.size)]
        runs = sorted(self._node_runs[n] for n in set(nodes) if n in self._node_runs)
        return [self._slot(view, i) for start, end in runs for i in range(start, end)]

    def gpu(self, uuid: str) -> GpuSlot | None:
        view = self._columns()
        i = self._index.get(uuid)
        return None if i is None else self._slot(view, i)

    def bounds_of(self, node: str) -> PlacementBounds:
        """The bounds a declared node's GPUs are held to."""
        return self._bounds.get(node, REQUESTS_ONLY)

    def holds(self, instance_id: str) -> bool:
        return instance_id in self._instances

    def instances_on(self, uuid: str) -> list[str]:
        return sorted(self._on_gpu.get(uuid, ()))

    # ---- instances ------------------------------------------------------------------

    def commit(self, instance_id: str, shape: InstanceShape, assignment: Assignment) -> None:
        """Record a placement. Unknown GPUs are an error: commit only what a policy chose
        or what was committed before a restart on GPUs a heartbeat declared.

        Committing a known id again is a no-op when it says the same thing, and a
        `ValueError` when the shape or the GPUs differ: a changed quota is a `resize`, a
        move is a `release` and a new `commit`.
        """
        shape = assignment.per_gpu or shape
        known = self._instances.get(instance_id)
        if known is not None:
            if known != (shape, assignment):
                raise ValueError(f"{instance_id} is already committed as {known[0]} on "
                                 f"{known[1].gpu_uuids}; resize or release it first")
            return
        missing = [u for u in assignment.gpu_uuids if u not in self._node_of_gpu]
        if missing:
            raise KeyError(f"unknown GPUs {missing}")
        self._instances[instance_id] = (shape, assignment)
        replicas = self._replicas.setdefault(shape.function, Counter())
        for uuid in assignment.gpu_uuids:
            self._on_gpu[uuid].append(instance_id)
            replicas[uuid] += 1
            self._refresh(uuid)

    def resize(self, instance_id: str, shape: InstanceShape) -> InstanceShape:
        """Record a new request, limit or memory for a placed instance, on the GPUs it
        already holds; returns what it held before.

        `shape` is what each of its GPUs holds from now on (for a split instance, one
        stage). Only the three quantities may change: another function, kind or number of
        GPUs is a different placement (`ValueError`); an unknown id is a `KeyError`.

        The ledger records, it does not judge: whether a GPU has room for the new size
        (the placement bounds) is for whoever admits the change — the node agent, which
        owns its GPUs' budget — so a resize that passes the bounds is recorded as it is,
        and the policies then see the GPU as full.
        """
        placed = self._instances.get(instance_id)
        if placed is None:
            raise KeyError(f"{instance_id} is not placed")
        before, assignment = placed
        if (shape.function, shape.kind, shape.gpus) != (before.function, before.kind, before.gpus):
            raise ValueError(f"{instance_id}: a resize keeps function, kind and GPU count "
                             f"({before.function}, {before.kind.value}, {before.gpus})")
        self._instances[instance_id] = (shape, assignment)
        for uuid in assignment.gpu_uuids:
            if uuid in self._on_gpu:
                self._refresh(uuid)
        return before

    def shape_of(self, instance_id: str) -> InstanceShape | None:
        """What each GPU of a placed instance holds, or None when it is not placed."""
        placed = self._instances.get(instance_id)
        return placed[0] if placed else None

    def release(self, instance_id: str) -> None:
        placed = self._instances.pop(instance_id, None)
        if placed is None:
            return
        shape, assignment = placed
        replicas = self._replicas[shape.function]
        for uuid in assignment.gpu_uuids:
            on_gpu = self._on_gpu.get(uuid)
            if on_gpu is None:
                continue  # the GPU itself is gone
            on_gpu.remove(instance_id)
            replicas[uuid] -= 1
            if not replicas[uuid]:
                del replicas[uuid]
            self._refresh(uuid)
        if not replicas:
            del self._replicas[shape.function]

    # ---- columns --------------------------------------------------------------------

    def _refresh(self, uuid: str) -> None:
        """Recompute one GPU's totals from what is on it, so float error never
        accumulates over many commits and releases."""
        if self._stale or self._view is None:
            return  # the next read rebuilds every column
        i = self._index[uuid]
        shapes = [self._instances[iid][0] for iid in self._on_gpu[uuid]]
        view = self._view
        view.requested[i] = sum(s.sm_request for s in shapes)
        view.limited[i] = sum(s.sm_limit for s in shapes)
        view.slo_limited[i] = sum(s.sm_limit for s in shapes if s.kind in SLO_BOUND)
        view.memory_used[i] = sum(s.memory_mib for s in shapes)
        view.instances[i] = len(shapes)
        view.training[i] = sum(s.kind is WorkloadKind.TRAINING for s in shapes)

    def _columns(self) -> ClusterView:
        if not self._stale and self._view is not None:
            return self._view
        nodes = sorted(n for n, gpus in self._declared.items() if gpus)
        uuids: list[str] = []
        node_of: list[int] = []
        starts: list[int] = []
        memory: list[int] = []
        max_requested: list[float] = []
        max_limited: list[float] = []
        for n, node in enumerate(nodes):
            starts.append(len(uuids))
            bounds = self.bounds_of(node)
            for uuid, total in sorted(self._declared[node].items()):
                uuids.append(uuid)
                node_of.append(n)
                memory.append(total)
                max_requested.append(bounds.max_requested)
                max_limited.append(bounds.max_limited)
        size = len(uuids)
        self._index = {u: i for i, u in enumerate(uuids)}
        self._view = ClusterView(
            uuids=tuple(uuids), index=self._index, node_names=tuple(nodes),
            node_of=np.array(node_of, dtype=np.int64),
            node_starts=np.array(starts, dtype=np.int64),
            # Idle nodes alike in GPU memory and in bounds are interchangeable.
            node_kind=_kinds([(tuple(sorted(self._declared[n].values())), self.bounds_of(n))
                              for n in nodes]),
            memory_total=np.array(memory, dtype=np.float64),
            memory_used=np.zeros(size), requested=np.zeros(size), limited=np.zeros(size),
            slo_limited=np.zeros(size), instances=np.zeros(size, dtype=np.int64),
            training=np.zeros(size, dtype=np.int64),
            max_requested=np.array(max_requested, dtype=np.float64),
            max_limited=np.array(max_limited, dtype=np.float64),
            eligible=np.ones(size, dtype=bool),
            replicas=partial(self._replicas_of, index=self._index),
        )
        self._node_runs = {node: (starts[n], starts[n + 1] if n + 1 < len(starts) else size)
                           for n, node in enumerate(nodes)}
        self._stale = False
        for uuid in uuids:
            self._refresh(uuid)
        return self._view

    def _replicas_of(self, function: str, index: dict[str, int]) -> Ints:
        counts = np.zeros(len(index), dtype=np.int64)
        for uuid, n in self._replicas.get(function, {}).items():
            counts[index[uuid]] = n  # GPUs leave only after their instances
        return counts

    def _slot(self, view: ClusterView, i: int) -> GpuSlot:
        uuid = view.uuids[i]
        return GpuSlot(
            node=view.node_names[view.node_of[i]], uuid=uuid,
            memory_total_mib=int(view.memory_total[i]),
            sm_requested=float(view.requested[i]), sm_limited=float(view.limited[i]),
            memory_allocated_mib=int(view.memory_used[i]),
            functions=tuple(self._instances[iid][0].function for iid in self._on_gpu[uuid]),
        )


def _kinds(signatures: list[tuple[tuple[int, ...], PlacementBounds]]) -> Ints:
    """Number each distinct signature in order of first appearance."""
    numbers: dict[tuple[tuple[int, ...], PlacementBounds], int] = {}
    return np.array([numbers.setdefault(sig, len(numbers)) for sig in signatures], dtype=np.int64)
