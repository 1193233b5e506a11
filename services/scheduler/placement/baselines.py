"""The policies Dilu is measured against, each as its paper describes it, behind the same
interface and the same gang and anti-affinity rules (`choose`) so that only the admission
rule and the score differ."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from services.scheduler.placement.choose import choose
from services.scheduler.placement.types import Assignment, InstanceShape, PlacementBounds
from services.scheduler.placement.view import ClusterView


class Exclusive:
    """A whole GPU for each GPU an instance asks for: the serverless platforms of today.
    Any memory the instance needs beyond the GPU's is refused."""

    name = "exclusive"

    def __init__(self, bounds: PlacementBounds | None = None) -> None:
        self.bounds = bounds or PlacementBounds()

    def place(self, shape: InstanceShape, view: ClusterView) -> Assignment | None:
        # Alone on its GPU it fits unless the node's own bounds are below its share.
        admits = view.admits(shape, self.bounds) & (view.instances == 0)
        return choose(view, shape, admits, -np.arange(view.size, dtype=float))


class InflessLimits:
    """INFless allocating by limits: an instance reserves its SM limit, limits never add
    up past one GPU, and the fullest GPU by SM that still admits wins (best fit)."""

    name = "infless-l"

    def __init__(self, bounds: PlacementBounds | None = None) -> None:
        self.bounds = replace(bounds or PlacementBounds(), max_requested=1.0, max_limited=1.0)

    def place(self, shape: InstanceShape, view: ClusterView) -> Assignment | None:
        return choose(view, shape, view.admits(shape, self.bounds), view.limited + shape.sm_limit)


class InflessRequests:
    """INFless allocating by requests: requests never add up past one GPU and limits are
    not bounded at all, so it packs tightest but may starve bursts. Best fit by SM."""

    name = "infless-r"

    def __init__(self, bounds: PlacementBounds | None = None) -> None:
        self.bounds = replace(bounds or PlacementBounds(), max_requested=1.0, max_limited=float("inf"))

    def place(self, shape: InstanceShape, view: ClusterView) -> Assignment | None:
        return choose(view, shape, view.admits(shape, self.bounds), view.requested + shape.sm_request)


class PaperDilu:
    """The Dilu paper's placement: the bounds (requests ≤ 100 %, limits ≤ 150 %, memory
    never over-subscribed) and a weighted best fit, α·SM + β·memory after placing."""

    name = "dilu-paper"
    alpha = 0.6
    beta = 0.4

    def __init__(self, bounds: PlacementBounds | None = None) -> None:
        self.bounds = bounds or PlacementBounds()

    def place(self, shape: InstanceShape, view: ClusterView) -> Assignment | None:
        score = (self.alpha * (view.requested + shape.sm_request)
                 + self.beta * (view.memory_used + shape.memory_mib) / view.memory_total)
        return choose(view, shape, view.admits(shape, self.bounds), score)
