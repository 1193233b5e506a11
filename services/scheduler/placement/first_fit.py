"""First fit by SM request and memory: the honest baseline every smarter policy beats."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from services.scheduler.placement.types import Assignment, GpuSlot, InstanceShape, PlacementBounds


class FirstFit:
    """Take the first GPU (nodes and GPUs in stable order) that admits the instance; a
    multi-GPU instance takes the first node with enough admitting GPUs, all or nothing."""

    name = "first-fit"

    def __init__(self, bounds: PlacementBounds | None = None) -> None:
        self.bounds = bounds or PlacementBounds()

    def place(self, shape: InstanceShape, gpus: Sequence[GpuSlot]) -> Assignment | None:
        for node, node_gpus in groupby(gpus, key=lambda g: g.node):
            fitting = [g.uuid for g in node_gpus if self.bounds.admits(g, shape)]
            if len(fitting) >= shape.gpus:
                return Assignment(node=node, gpu_uuids=tuple(fitting[: shape.gpus]))
        return None
