"""Fragmentation as the FGD scheduler measures it ("Beware of Fragmentation", ATC'23),
for GPUs shared by SM request, SM limit and memory.

Free capacity is fragmented for a kind of instance when that instance cannot use it: the
GPU does not admit one GPU's worth of it, or it needs k GPUs on one node and fewer than k
of the node's GPUs admit it. The expected fragmentation weighs each kind by how often it
arrives (`ShapeMix`). Used both by the `complementary` policy, which places where the
expected fragmentation grows least, and by the simulator, which reports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from services.scheduler.placement.types import InstanceShape, PlacementBounds
from services.scheduler.placement.view import EPS, Bools, ClusterView, Floats, Ints

# Shapes are grouped into classes on this grid so that the mix stays small (a few dozen
# classes) however many distinct shapes arrive. Rounding demand up keeps it conservative.
_SM_STEP = 0.05
_MEMORY_STEP_MIB = 2048


@dataclass(frozen=True, slots=True, eq=False)
class ShapeMix:
    """Kinds of instance by per-GPU demand, each with its share of arrivals (sums to 1)."""

    request: Floats
    limit: Floats
    memory: Floats
    gpus: Ints
    weight: Floats

    @property
    def size(self) -> int:
        return len(self.weight)

    @staticmethod
    def of(weights: dict[tuple[float, float, int, int], float]) -> ShapeMix:
        keys = sorted(weights)
        total = sum(weights.values()) or 1.0
        return ShapeMix(
            request=np.array([k[0] for k in keys], dtype=float),
            limit=np.array([k[1] for k in keys], dtype=float),
            memory=np.array([k[2] for k in keys], dtype=float),
            gpus=np.array([k[3] for k in keys], dtype=np.int64),
            weight=np.array([weights[k] / total for k in keys], dtype=float),
        )

    @staticmethod
    def from_shapes(shapes: Iterable[InstanceShape]) -> ShapeMix:
        counts: dict[tuple[float, float, int, int], float] = {}
        for shape in shapes:
            key = shape_class(shape)
            counts[key] = counts.get(key, 0.0) + 1.0
        return ShapeMix.of(counts)


def shape_class(shape: InstanceShape) -> tuple[float, float, int, int]:
    """The class of a shape: its per-GPU demand rounded up to the grid, and its GPUs."""
    def up(value: float, step: float) -> float:
        return round(np.ceil(value / step - 1e-6) * step, 6)
    return (up(shape.sm_request, _SM_STEP), up(shape.sm_limit, _SM_STEP),
            int(up(shape.memory_mib, _MEMORY_STEP_MIB)), shape.gpus)


class MixLearner:
    """The mix of arrivals, learned online with exponential forgetting (a half-life in
    arrivals), so that the policy follows the workload that actually comes."""

    def __init__(self, half_life: float = 500.0, max_classes: int = 24) -> None:
        self._decay = 0.5 ** (1.0 / half_life)
        self._max_classes = max_classes
        self._weights: dict[tuple[float, float, int, int], float] = {}
        self._mix: ShapeMix | None = None

    def observe(self, shape: InstanceShape) -> None:
        # A model that may be split can use room in any of its forms; count each form.
        forms = [shape, *(shape.sharded(k) for k in range(2, shape.max_shards + 1))]
        for k in self._weights:
            self._weights[k] *= self._decay
        for form in forms:
            key = shape_class(form)
            self._weights[key] = self._weights.get(key, 0.0) + 1.0 / len(forms)
        if len(self._weights) > 2 * self._max_classes:
            kept = sorted(self._weights.items(), key=lambda kv: -kv[1])[: self._max_classes]
            self._weights = dict(kept)
        self._mix = None

    def mix(self) -> ShapeMix:
        if self._mix is None:
            top = sorted(self._weights.items(), key=lambda kv: -kv[1])[: self._max_classes]
            self._mix = ShapeMix.of(dict(top))
        return self._mix


def fits(requested: Floats, limited: Floats, memory_used: Floats, memory_total: Floats,
         mix: ShapeMix, max_requested: Floats, max_limited: Floats) -> Bools:
    """[gpu, class]: does one GPU's worth of the class fit on the GPU in this state, under
    the GPU's bounds (`ClusterView.caps`)."""
    return (
        (requested[:, None] + mix.request[None, :] <= max_requested[:, None] + EPS)
        & (limited[:, None] + mix.limit[None, :] <= max_limited[:, None] + EPS)
        & (memory_used[:, None] + mix.memory[None, :] <= memory_total[:, None])
    )


def usable(view: ClusterView, mix: ShapeMix, bounds: PlacementBounds, gpus: Ints) -> Bools:
    """[gpu, class] for each of `gpus`: could an instance of the class use this GPU,
    counting the node rule for classes that need several GPUs."""
    rows, starts, runs = view.rows_of(gpus)
    fit = _fits_on(view, rows, mix, bounds)
    enough = np.add.reduceat(fit.astype(np.int64), starts) >= mix.gpus[None, :]
    return fit[np.searchsorted(rows, gpus)] & enough[runs]


def _fits_on(view: ClusterView, rows: Ints, mix: ShapeMix, bounds: PlacementBounds) -> Bools:
    max_requested, max_limited = view.caps(bounds)
    return fits(view.requested[rows], view.limited[rows], view.memory_used[rows],
                view.memory_total[rows], mix, max_requested[rows],
                max_limited[rows]) & view.eligible[rows, None]


def fragmented(free: Floats, usable_by: Bools, mix: ShapeMix) -> Floats:
    """Per GPU: the expected part of `free` that the next arrival cannot use."""
    unusable = (~usable_by).astype(float) @ mix.weight
    return free * unusable


def free_capacity(requested: Floats, memory_used: Floats, memory_total: Floats) -> Floats:
    """Free capacity of GPUs, in GPUs: free SM request and free memory weighed equally,
    because either one left alone is of no use to the next instance."""
    return 0.5 * (1.0 - requested) + 0.5 * (1.0 - memory_used / np.maximum(memory_total, 1.0))


def fragmentation_delta(view: ClusterView, mix: ShapeMix, bounds: PlacementBounds,
                        shape: InstanceShape, candidates: Ints) -> Floats:
    """For each candidate GPU: how much the cluster's expected fragmentation grows if one
    GPU's worth of `shape` goes there, counting the effect on the node's other GPUs for
    classes that need several GPUs on one node."""
    rows, starts, runs = view.rows_of(candidates)
    fit = _fits_on(view, rows, mix, bounds)
    free = free_capacity(view.requested[rows], view.memory_used[rows], view.memory_total[rows])
    node_count = np.add.reduceat(fit.astype(np.int64), starts)    # [node, class]
    node_room = np.add.reduceat(fit * free[:, None], starts)       # free room each class fits in
    at = np.searchsorted(rows, candidates)
    requested = view.requested[candidates] + shape.sm_request
    memory_used = view.memory_used[candidates] + shape.memory_mib
    total = view.memory_total[candidates]
    fit_before = fit[at]
    max_requested, max_limited = view.caps(bounds)
    fit_after = fits(requested, view.limited[candidates] + shape.sm_limit, memory_used, total,
                     mix, max_requested[candidates], max_limited[candidates])
    free_before = free[at]
    free_after = free_capacity(requested, memory_used, total)
    count_before = node_count[runs]
    count_after = count_before - fit_before + fit_after
    room_before = node_room[runs]
    room_after = room_before - fit_before * free_before[:, None] + fit_after * free_after[:, None]
    usable_before = room_before * (count_before >= mix.gpus[None, :])
    usable_after = room_after * (count_after >= mix.gpus[None, :])
    # Fragmentation = free - usable, weighed by the mix (whose weights sum to 1).
    return -(free_before - free_after) - (usable_after - usable_before) @ mix.weight
