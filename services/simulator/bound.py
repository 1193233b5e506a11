"""A lower bound on active GPUs for any placement that keeps every instance whole.

At any moment, instance parts (one per GPU of an instance) that need more than half of a
GPU's memory cannot share a GPU with each other, and all parts together need at least
their total memory and their total SM requests in GPUs. The largest of these three over
the trace is a peak no policy can go below without splitting instances; the simulator
prints it so that a result can be read against it.
"""

from __future__ import annotations

import math

from services.simulator.replay import ClusterSpec
from services.simulator.trace import Event


def unsplit_peak_bound(events: list[Event], cluster: ClusterSpec, max_requested: float = 1.0) -> int:
    half = cluster.gpu_memory_mib / 2
    alive: set[str] = set()
    big = memory = requested = 0.0
    peak = 0
    for event in events:
        shape = event.shape
        if event.start:
            alive.add(event.instance)
            sign = 1
        elif event.instance in alive:
            alive.remove(event.instance)
            sign = -1
        else:
            continue
        big += sign * shape.gpus * (shape.memory_mib > half)
        memory += sign * shape.gpus * shape.memory_mib
        requested += sign * shape.gpus * shape.sm_request
        # Round the sums before ceiling them: float sums of two-decimal shares drift.
        now = max(int(big), math.ceil(round(memory / cluster.gpu_memory_mib, 6)),
                  math.ceil(round(requested / max_requested, 6)))
        peak = max(peak, now)
    return peak
