"""First fit by SM request and memory: the honest baseline every smarter policy beats."""

from __future__ import annotations

import numpy as np

from services.scheduler.placement.choose import choose
from services.scheduler.placement.types import Assignment, InstanceShape, PlacementBounds
from services.scheduler.placement.view import ClusterView


class FirstFit:
    """Take the first GPU (nodes and GPUs in stable order) that admits the instance; a
    multi-GPU instance takes the first node with enough admitting GPUs, all or nothing."""

    name = "first-fit"

    def __init__(self, bounds: PlacementBounds | None = None) -> None:
        self.bounds = bounds or PlacementBounds()

    def place(self, shape: InstanceShape, view: ClusterView) -> Assignment | None:
        return choose(view, shape, view.admits(shape, self.bounds), -np.arange(view.size, dtype=float))
