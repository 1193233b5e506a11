"""Turning per-GPU scores into an assignment: the part every policy shares, so policies
differ only in what they admit and how they score."""

from __future__ import annotations

import numpy as np

from services.scheduler.placement.types import Assignment, InstanceShape
from services.scheduler.placement.view import Bools, ClusterView, Floats

# Larger than any policy's score range: the anti-affinity tiers are strict preferences.
_TIER = 1e6


def choose(view: ClusterView, shape: InstanceShape, admits: Bools, score: Floats) -> Assignment | None:
    """The highest-scoring admitting GPU, or for a gang of k GPUs the node whose k best
    admitting GPUs score highest together (all on one node, all or nothing).

    Replicas of one function spread out: a GPU already holding one is chosen only when no
    other GPU admits, and a node holding one only when no other node does. Ties go to the
    lower index, so decisions are deterministic.
    """
    candidates = np.flatnonzero(admits)
    if candidates.size < shape.gpus:
        return None
    scores = score[candidates] - _TIER * _replica_tier(view, shape.function)[candidates]
    if shape.gpus == 1:
        best = int(candidates[int(np.argmax(scores))])
        return Assignment(view.node_names[view.node_of[best]], (view.uuids[best],))
    return _gang(view, shape.gpus, candidates, scores)


def _gang(view: ClusterView, k: int, candidates: np.ndarray, scores: Floats) -> Assignment | None:
    nodes = view.node_of[candidates]
    order = np.lexsort((-scores, nodes))  # by node, best score first within a node
    nodes, candidates, scores = nodes[order], candidates[order], scores[order]
    _, starts, counts = np.unique(nodes, return_index=True, return_counts=True)
    whole = counts >= k
    if not whole.any():
        return None
    starts = starts[whole]
    # Each node's k best, summed on their own: a running sum over all nodes would let
    # rounding break ties between nodes that score the same.
    totals = scores[starts[:, None] + np.arange(k)].sum(axis=1)
    first = int(starts[int(np.argmax(totals))])
    picked = candidates[first:first + k]
    return Assignment(view.node_names[view.node_of[picked[0]]],
                      tuple(view.uuids[i] for i in picked))


def replica_tier(view: ClusterView, function: str, assignment: Assignment) -> int:
    """How close an assignment puts an instance to its replicas: 0 (other nodes), 1 (a
    node with one) or 2 (a GPU with one)."""
    tiers = _replica_tier(view, function)
    return int(max(tiers[view.index[u]] for u in assignment.gpu_uuids))


def _replica_tier(view: ClusterView, function: str) -> np.ndarray:
    on_gpu = view.replicas(function)
    if not on_gpu.any():
        return np.zeros(view.size)
    on_node = view.per_node(on_gpu)[view.node_of]
    return np.where(on_gpu > 0, 2.0, np.where(on_node > 0, 1.0, 0.0))
