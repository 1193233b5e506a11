"""HAS-GPU's placement (see `hasgpu.py`): a new instance goes to the GPU its controller
chose for it, else to the least occupied used GPU under an occupancy threshold (50 % for a
function's first instance, 95 % after), else to a GPU that holds nothing, else to the least
occupied GPU with room. Request = limit, so a GPU's occupancy is Σ limits, never above one
GPU; an instance placed to be given more quota than it starts with counts with that quota
from the start (`HasPlanner.pending`), as HAS-GPU creates a pod with its chosen quota."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from services.scheduler.placement import (
    Assignment,
    ClusterView,
    InstanceShape,
    PlacementBounds,
    WorkloadKind,
)
from services.scheduler.placement.choose import choose

STEP = 0.1                  # DeltaIq: quotas move in 10 % steps of a GPU
EPS = 1e-9
FIRST_MAX_OCCUPANCY = 0.5   # a function's first instance: used GPUs under 50 %
MAX_OCCUPANCY = 0.95        # HGOThredshold: the used GPUs a new instance may join


def floor_step(value: float) -> float:
    """`value` down to a whole number of 10 % steps (rounded: quotas are compared with the
    profile's grid, where a hair above a grid share is a different capacity)."""
    return round(math.floor(round(value / STEP, 6)) * STEP, 2)


@dataclass
class HasPlanner:
    """What the controller and the placement share: per function, the GPUs the controller
    chose for the instances it just asked for (in order), and per GPU the quota that
    instances placed there will be given beyond the one they start at (the controller sets
    it at its next tick), so that GPU counts as occupied by it from the start."""

    plans: dict[str, list[str]] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    efficient: dict[str, float] = field(default_factory=dict)
    max_occupancy: float = FIRST_MAX_OCCUPANCY

    def placed(self, uuid: str, function: str, start_quota: float, occupancy: float,
               alone: bool) -> None:
        """An instance starting at `start_quota` went to `uuid`, where `occupancy` was
        held (and counted as pending) before it."""
        if alone:
            target = self.efficient.get(function, start_quota)
        else:
            target = start_quota + floor_step(1.0 - occupancy - start_quota)
        self.pending[uuid] = self.pending.get(uuid, 0.0) + max(0.0, target - start_quota)


class HasGpuPlacement:
    """Where HAS-GPU puts an instance: on the GPU its controller chose, else on the least
    occupied used GPU under the occupancy threshold, else a GPU that holds nothing, else the
    least occupied GPU with room. Request = limit: limits never add up past one GPU."""

    name = "has-gpu"

    def __init__(self, bounds: PlacementBounds | None, planner: HasPlanner) -> None:
        self.bounds = replace(bounds or PlacementBounds(), max_requested=1.0, max_limited=1.0)
        self.planner = planner

    def place(self, shape: InstanceShape, view: ClusterView) -> Assignment | None:
        planner = self.planner
        occupancy = view.limited.copy()
        for uuid, extra in planner.pending.items():
            occupancy[view.index[uuid]] += extra
        admits = view.admits(shape, self.bounds) & (occupancy + shape.sm_limit <= 1.0 + EPS)
        used = view.instances > 0
        assignment: Assignment | None = None
        plan = planner.plans.get(shape.function)
        if plan and shape.gpus == 1:
            i = view.index.get(plan.pop(0))
            if i is not None and admits[i]:
                assignment = Assignment(view.node_names[view.node_of[i]], (view.uuids[i],))
        if assignment is None:
            preferred = used & (occupancy < planner.max_occupancy - EPS)
            score = np.where(preferred, 4.0 - occupancy, np.where(used, 1.0 - occupancy, 2.0))
            assignment = choose(view, shape, admits, score)
        if assignment is not None and shape.kind is not WorkloadKind.TRAINING:
            i = view.index[assignment.gpu_uuids[0]]
            planner.placed(assignment.gpu_uuids[0], shape.function, shape.sm_limit,
                           float(occupancy[i]), alone=not used[i])
        return assignment
