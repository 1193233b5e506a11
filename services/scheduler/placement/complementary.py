"""Dilu's default placement: resourcing-complementary and fragmentation-aware.

Within the bounds (requests ≤ 100 %, limits ≤ the over-subscription bound, memory never
over-subscribed) each admitting GPU is scored by, in order of weight:
1. not opening a GPU that holds nothing, since active GPUs are what the cluster pays for;
2. the growth of expected fragmentation (`fragmentation_delta`) against the mix of shapes
   that actually arrive, so that memory-rich room stays for training and large models and
   SM-rich room for inference, and whole nodes stay whole for gangs;
3. SLO-bound instances whose limits would together exceed one GPU, since only training
   yields to them at run time: inference is packed beside training rather than beside
   more inference;
4. a weighted best fit, as the paper's score, to break the remaining ties.

A large model that may be split (`InstanceShape.max_shards`) is split into pipeline stages
(fewest first) when the stages fit beside training on GPUs of one node: the memory that
training leaves (5–15 GB on a 40 GB GPU) is too small for any whole large model and of
the size of a stage, and training yields SM time to the SLO-bound stages at run time. It
is also split onto GPUs in use when whole it would open a GPU, and anywhere when it has
no room whole (while the cluster is roomy) or is larger than any GPU. Without splitting,
large models and training never share a GPU (together they need more than its memory),
which bounds every policy that keeps models whole. Splitting to save GPUs stops while
fewer than `split_reserve` (30 %) of the GPUs are idle: then room is scarce, and stages in
training's spare memory would take the room that small instances need (measured in
`bench/placement.py`'s full-cluster run).

Nodes with nothing placed are all alike, so only one of each kind is scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from services.scheduler.placement.choose import choose, replica_tier
from services.scheduler.placement.fragmentation import MixLearner, fragmentation_delta
from services.scheduler.placement.types import SLO_BOUND, Assignment, InstanceShape, PlacementBounds
from services.scheduler.placement.view import ClusterView


class Complementary:
    """The weights order the criteria above; `mix` is the learned arrival mix (one per
    cluster: the policy learns from every shape it places)."""

    name = "complementary"

    def __init__(self, bounds: PlacementBounds | None = None, *, open_cost: float = 1.0,
                 fragmentation_weight: float = 0.5, contention_weight: float = 0.2,
                 fit_weight: float = 0.05, split_reserve: float = 0.3,
                 mix: MixLearner | None = None) -> None:
        self.split_reserve = split_reserve
        self.bounds = bounds or PlacementBounds()
        self.open_cost = open_cost
        self.fragmentation_weight = fragmentation_weight
        self.contention_weight = contention_weight
        self.fit_weight = fit_weight
        self.mix = mix or MixLearner()

    def place(self, shape: InstanceShape, view: ClusterView) -> Assignment | None:
        """The first of the ways to place `shape` (see `_ways`) that puts it farthest from
        its replicas."""
        best: tuple[int, Assignment] | None = None
        for assignment in self._ways(shape, view):
            tier = replica_tier(view, shape.function, assignment)
            if best is None or tier < best[0]:
                best = (tier, assignment)
            if tier == 0:
                break
        if best is not None:
            # Learn from placements, not attempts: the scheduler retries a pending
            # instance every second, and one stuck instance must not become the mix.
            self.mix.observe(shape)
        return None if best is None else best[1]

    def _ways(self, shape: InstanceShape, view: ClusterView) -> Iterator[Assignment]:
        """Assignments in order of preference: in stages beside training, whole without
        opening a GPU, in stages on GPUs in use, whole, in stages anywhere (the first and
        third only while the cluster is roomy, the last only then or when no GPU could
        hold the model whole). Each is computed only when the ones before it did not
        settle the choice."""
        stages = [shape.sharded(k) for k in range(2, shape.max_shards + 1)]
        in_use = view.instances > 0
        idle = view.eligible & ~in_use
        roomy = idle.sum() >= self.split_reserve * max(1, view.eligible.sum())
        if roomy:
            yield from self._split(stages, view, view.training > 0)
        whole = self._place(shape, view, view.admits(shape, self.bounds) & _one_idle_node_each(view))
        opens = whole is not None and _opens(view, whole)
        if whole is not None and not opens:
            yield whole
        if roomy:
            yield from self._split(stages, view, in_use)
        too_big = not (view.eligible & (view.memory_total >= shape.memory_mib)).any()
        if whole is not None and opens:
            yield whole
        elif whole is None and (roomy or too_big):
            yield from self._split(stages, view, np.ones(view.size, dtype=bool))

    def _split(self, stages: list[InstanceShape], view: ClusterView,
               where: np.ndarray) -> Iterator[Assignment]:
        for stage in stages:  # fewest stages first: each one adds a hop and overhead
            split = self._place(stage, view, view.admits(stage, self.bounds) & where)
            if split is not None:
                yield replace(split, per_gpu=stage)
                return

    def _place(self, shape: InstanceShape, view: ClusterView, admits: np.ndarray) -> Assignment | None:
        candidates = np.flatnonzero(admits)
        if candidates.size < shape.gpus:
            return None
        score = np.zeros(view.size)
        score[candidates] = self._score(shape, view, candidates)
        return choose(view, shape, admits, score)

    def _score(self, shape: InstanceShape, view: ClusterView, candidates: np.ndarray) -> np.ndarray:
        opens = view.instances[candidates] == 0
        growth = fragmentation_delta(view, self.mix.mix(), self.bounds, shape, candidates)
        if shape.kind in SLO_BOUND:
            contention = np.maximum(0.0, view.slo_limited[candidates] + shape.sm_limit - 1.0)
        else:
            contention = np.zeros(candidates.size)
        fit = (0.6 * (view.requested[candidates] + shape.sm_request)
               + 0.4 * (view.memory_used[candidates] + shape.memory_mib)
               / np.maximum(view.memory_total[candidates], 1.0))
        return (-self.open_cost * opens - self.fragmentation_weight * growth
                - self.contention_weight * contention + self.fit_weight * fit)


def _one_idle_node_each(view: ClusterView) -> np.ndarray:
    """GPUs of nodes in use, and of the first idle node of each kind (same GPU memory
    sizes) among those that may be chosen: idle nodes of one kind score the same."""
    if view.size == 0:
        return np.zeros(0, dtype=bool)
    idle = (view.per_node(view.instances) == 0) & (view.per_node(view.eligible.astype(np.int64)) > 0)
    keep = ~idle
    idle_nodes = np.flatnonzero(idle)
    if idle_nodes.size:
        _, first = np.unique(view.node_kind[idle_nodes], return_index=True)
        keep[idle_nodes[first]] = True
    return keep[view.node_of]


def _opens(view: ClusterView, assignment: Assignment) -> bool:
    return any(view.instances[view.index[u]] == 0 for u in assignment.gpu_uuids)
