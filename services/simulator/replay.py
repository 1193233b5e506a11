"""Replay a trace through one placement policy in virtual time and measure the cluster.

The policy object is the scheduler's own; the `Ledger` is the scheduler's own. Only time
and the agents are simulated: a start event asks the policy and commits its answer, a
delete releases. An instance the policy cannot place is counted and dropped (the trace
gives no retry time); its delete is then ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from services.common.bounds import REQUESTS_ONLY
from services.scheduler.placement import Ledger, Placement, PlacementBounds
from services.scheduler.placement.fragmentation import ShapeMix, fragmented, usable
from services.simulator.trace import GIB, Event, starts


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The simulated cluster; the default is the paper's (1000 nodes × 4 GPUs × 40 GB).

    `bounds`: what every simulated node agent admits on its GPUs, as a real agent
    announces it. By default they bound requests only, so that each policy is measured
    by its own published rule (the Dilu policies' 1.5 on limits, INFless-R's none), as
    the paper compares them.
    """

    nodes: int = 1000
    gpus_per_node: int = 4
    gpu_memory_mib: int = 40 * GIB
    bounds: PlacementBounds = REQUESTS_ONLY

    def ledger(self) -> Ledger:
        book = Ledger()
        for n in range(self.nodes):
            book.set_node(f"node-{n:04d}", [(f"node-{n:04d}-gpu{g}", self.gpu_memory_mib)
                                            for g in range(self.gpus_per_node)], self.bounds)
        return book


@dataclass(slots=True)
class Result:
    policy: str
    times_s: list[float] = field(default_factory=list)       # after each event
    active_gpus: list[int] = field(default_factory=list)
    sm_fragmentation: list[float] = field(default_factory=list)      # 1 - used/total, active GPUs
    memory_fragmentation: list[float] = field(default_factory=list)
    fgd_sm_fragmentation: list[float] = field(default_factory=list)  # sampled, see `replay`
    fgd_memory_fragmentation: list[float] = field(default_factory=list)
    placed: int = 0
    unplaced: int = 0
    decision_s: list[float] = field(default_factory=list)
    max_requested: float = 0.0     # the most any GPU ever held, in requests
    max_limited: float = 0.0
    max_memory_ratio: float = 0.0  # memory committed / memory of the GPU
    max_instances: int = 0         # the most instances any GPU ever held at once

    @property
    def peak_active_gpus(self) -> int:
        return max(self.active_gpus, default=0)

    @property
    def mean_active_gpus(self) -> float:
        """Averaged over time (each count weighed by how long it held), not over events."""
        if len(self.times_s) < 2 or self.times_s[-1] == self.times_s[0]:
            return float(self.peak_active_gpus)
        held = np.diff(np.asarray(self.times_s))
        return float(np.dot(self.active_gpus[:-1], held) / held.sum())

    def mean(self, series: list[float]) -> float:
        return float(np.mean(series)) if series else 0.0

    def decision_us(self, quantile: float) -> float:
        return float(np.quantile(self.decision_s, quantile)) * 1e6 if self.decision_s else 0.0


def replay(events: list[Event], policy: Placement, cluster: ClusterSpec | None = None,
           fgd_every: int = 10, fgd_bounds: PlacementBounds | None = None) -> Result:
    """Run `events` through `policy`. The FGD-style fragmentation is measured every
    `fgd_every` events against the trace's own mix of shapes and under Dilu's bounds
    (the same yardstick for every policy)."""
    book = (cluster or ClusterSpec()).ledger()
    mix = ShapeMix.from_shapes(starts(events))
    bounds = fgd_bounds or PlacementBounds()
    result = Result(policy=policy.name)
    for n, event in enumerate(events):
        if event.start:
            _start(book, policy, event, result)
        else:
            book.release(event.instance)
        view = book.view()
        active = view.instances > 0
        result.times_s.append(event.time_s)
        result.active_gpus.append(int(active.sum()))
        if not active.any():
            continue
        result.sm_fragmentation.append(1.0 - view.requested[active].sum() / active.sum())
        result.memory_fragmentation.append(
            1.0 - view.memory_used[active].sum() / view.memory_total[active].sum())
        if n % fgd_every == 0:
            usable_by = usable(view, mix, bounds, np.flatnonzero(active))
            result.fgd_sm_fragmentation.append(
                fragmented(1.0 - view.requested[active], usable_by, mix).sum() / active.sum())
            memory_free = view.memory_total[active] - view.memory_used[active]
            result.fgd_memory_fragmentation.append(
                fragmented(memory_free, usable_by, mix).sum() / view.memory_total[active].sum())
    return result


def _start(book: Ledger, policy: Placement, event: Event, result: Result) -> None:
    view = book.view()
    began = time.perf_counter()
    assignment = policy.place(event.shape, view)
    result.decision_s.append(time.perf_counter() - began)
    if assignment is None:
        result.unplaced += 1
        return
    book.commit(event.instance, event.shape, assignment)
    result.placed += 1
    for uuid in assignment.gpu_uuids:
        gpu = book.gpu(uuid)
        assert gpu is not None
        result.max_requested = max(result.max_requested, gpu.sm_requested)
        result.max_limited = max(result.max_limited, gpu.sm_limited)
        result.max_memory_ratio = max(result.max_memory_ratio,
                                      gpu.memory_allocated_mib / gpu.memory_total_mib)
        result.max_instances = max(result.max_instances, len(gpu.functions))
