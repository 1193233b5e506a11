"""A column-wise view of the cluster that policies score in bulk.

Scoring thousands of GPUs one Python object at a time costs milliseconds per decision, so
the ledger keeps one array per quantity and policies work on whole columns with numpy.
Index `i` is one GPU everywhere; GPUs of one node are contiguous and in (node, uuid) order.
Policies only read it. It is live: the ledger updates the columns in place, so a view is
valid until the ledger next changes.

Each GPU carries the bounds its node announces (`max_requested`, `max_limited`: the node
agent admits against them). A policy adds its own rule (`Placement.bounds`) and the
stricter of the two holds: `caps(bounds)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from services.common.bounds import EPS
from services.scheduler.placement.types import InstanceShape, PlacementBounds

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Scalar = TypeVar("Scalar", bound=np.generic)

__all__ = ["EPS", "Bools", "ClusterView", "Floats", "Ints"]


@dataclass(frozen=True, slots=True, eq=False)
class ClusterView:
    uuids: Sequence[str]
    index: Mapping[str, int]       # uuid -> i
    node_names: Sequence[str]      # one per node, in order
    node_of: Ints                  # node number of each GPU
    node_starts: Ints              # index of each node's first GPU (for np.add.reduceat)
    node_kind: Ints                # per node: nodes with the same GPU memory sizes and bounds share it
    memory_total: Floats           # MiB
    memory_used: Floats            # MiB committed
    requested: Floats              # sum of SM requests, fraction of one GPU
    limited: Floats                # sum of SM limits
    slo_limited: Floats            # sum of SM limits of SLO-bound (inference) instances
    instances: Ints                # how many instances hold a part of the GPU
    training: Ints                 # how many of them are training
    max_requested: Floats          # the bounds the GPU's node announces
    max_limited: Floats
    eligible: Bools                # GPUs a policy may choose now (their node is up)
    replicas: Callable[[str], Ints]  # instances of a function on each GPU
    # caps() per policy bounds; the bound columns change only when the ledger builds a
    # new view, so each is computed once per view (and shared by its eligible copies).
    _caps: dict[PlacementBounds, tuple[Floats, Floats]] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return len(self.uuids)

    def caps(self, bounds: PlacementBounds) -> tuple[Floats, Floats]:
        """Per GPU, the bounds on requests and on limits: each the stricter of what its
        node announces and the policy's own `bounds`."""
        caps = self._caps.get(bounds)
        if caps is None:
            caps = (np.minimum(self.max_requested, bounds.max_requested),
                    np.minimum(self.max_limited, bounds.max_limited))
            self._caps[bounds] = caps
        return caps

    def admits(self, shape: InstanceShape, bounds: PlacementBounds) -> Bools:
        """GPUs on which one GPU's worth of `shape` fits within `bounds` and within the
        bounds of their node."""
        max_requested, max_limited = self.caps(bounds)
        return (
            self.eligible
            & (self.requested + shape.sm_request <= max_requested + EPS)
            & (self.limited + shape.sm_limit <= max_limited + EPS)
            & (self.memory_used + shape.memory_mib <= self.memory_total)
        )

    def per_node(self, values: npt.NDArray[Scalar]) -> npt.NDArray[Scalar]:
        """Sum a per-GPU column over each node."""
        if self.size == 0:
            return np.zeros(0, dtype=values.dtype)
        return np.add.reduceat(values, self.node_starts)

    def rows_of(self, gpus: Ints) -> tuple[Ints, Ints, Ints]:
        """Every GPU on the nodes of `gpus`: their indices in order, where each node's run
        begins among them, and for each of `gpus` the number of its node's run. Lets
        per-node sums cover only the nodes a decision touches."""
        if gpus.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        wanted = np.zeros(len(self.node_names), dtype=bool)
        wanted[self.node_of[gpus]] = True
        rows = np.flatnonzero(wanted[self.node_of])
        row_nodes = self.node_of[rows]
        starts = np.flatnonzero(np.r_[True, row_nodes[1:] != row_nodes[:-1]])
        run_of_node = np.zeros(len(self.node_names), dtype=np.int64)
        run_of_node[row_nodes[starts]] = np.arange(starts.size)
        return rows, starts, run_of_node[self.node_of[gpus]]
