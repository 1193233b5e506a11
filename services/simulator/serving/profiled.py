"""The profiler's method run against the simulator's single-instance model, in virtual time.

`SimulatedInstance` implements the live profiler's `ProbedInstance`
(`services.profiler.live.session`) with the model the stand-in profile uses
(`profile.py`): one `InferenceInstance` alone at a share — the worker's batching decisions,
the gate's pacing — with the proxy overhead in every latency, or one `TrainingInstance`.
So the live protocol (lone requests, capacity trials on the rate ladder, the searches and
the sizing rules) runs here exactly as it runs on the live stack, request for request, only
in virtual time: a profile that takes two minutes live takes well under a second here.

`profiled_sizing` turns a function of a scenario into its `Sizing` by the profiler's rules
(`bench/coscaling.py --sizing profiler`); `clock()` is the instance time a live run would
have spent, which `bench/profiler.py` reports beside the live figures.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from services.node_agent.worker.requirements import MIB
from services.perf import load_model
from services.profiler.live.protocol import DEFAULT_PROTOCOL, Protocol
from services.profiler.live.session import InferenceProfile, profile_inference
from services.profiler.search import DEFAULT_GRID, Grid
from services.simulator.serving.instances import READY, InferenceInstance, TrainingInstance
from services.simulator.serving.scenario import Quota, TrainingJob

NS = 1_000_000_000
# Between two requests of the live profiler's session something always takes this long
# (an RPC to the agent, a trial's start): the simulated instance counts it too.
STEP_OVERHEAD_S = 0.005


class _Events:
    """The instance's event queue and the requests it answered (client times, ns)."""

    def __init__(self, slo_s: float) -> None:
        self.slo_s = slo_s
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.answers: list[tuple[int, int]] = []  # (client ns, answered ns)

    def schedule(self, at_ns: int, action: Callable[..., None], *args: Any, first: bool = False) -> None:
        heapq.heappush(self._heap, (at_ns, next(self._seq), action, args))

    def add_busy(self, gpus: tuple[str, ...], work_ns: int) -> None:
        pass

    def answered(self, instance: Any, now_ns: int, batch: list[int]) -> None:
        self.answers.extend((client, now_ns) for client in batch)

    def run_until(self, t_ns: int) -> int:
        """Run every event due at or before `t_ns`; the time of the last one run."""
        last = 0
        while self._heap and self._heap[0][0] <= t_ns:
            when, _, action, args = heapq.heappop(self._heap)
            action(when, *args)
            last = when
        return last

    def run_all(self) -> int:
        return self.run_until(1 << 62)

    @property
    def idle(self) -> bool:
        return not self._heap


class SimulatedInstance:
    """One sim instance alone on a GPU, measured by the live protocol in virtual time."""

    def __init__(self, model: str, slo_ms: float, overhead_ms: float, *, slowdown: float = 1.0,
                 training_batch: int = 16, host_ms: float = 0.0) -> None:
        self.model = model
        self.perf = load_model(model)
        self.slo_s = slo_ms / 1000
        self.overhead_ns = round(overhead_ms * 1e6)
        self.slowdown = slowdown
        self.training_batch = training_batch
        self.host_ms = host_ms
        self.share = 1.0
        self.max_batch = 1
        self._now_s = 0.0

    def clock(self) -> float:
        return self._now_s

    async def configure(self, share: float, max_batch: int) -> int:
        self.share, self.max_batch = share, max_batch
        self._now_s += STEP_OVERHEAD_S
        return self.perf.memory_mib(max_batch) * MIB

    def _instance(self, events: _Events) -> InferenceInstance:
        # A fresh instance: the worker after an idle gap (full bucket, no arrival history).
        instance = InferenceInstance(events, events, "profiled", "node", ("gpu",),  # type: ignore[arg-type]
                                     self.share, self.share, 0, self.max_batch, self.perf, 0,
                                     slowdown=self.slowdown)
        instance.state = READY
        return instance

    async def lone(self, batch: int, idle_s: float) -> list[float]:
        events = _Events(self.slo_s)
        instance = self._instance(events)
        start = NS  # after an idle second: the bucket is full
        for _ in range(batch):
            instance.arrive(start, start)
        end = events.run_all()
        self._now_s += idle_s + (end - start) / NS + STEP_OVERHEAD_S
        return [(answered - client + self.overhead_ns) / NS for client, answered in events.answers]

    async def trial(self, arrivals_s: Sequence[float], counted_from: int, slo_s: float,
                    allowed: int) -> tuple[list[float], float, bool]:
        events = _Events(self.slo_s)
        instance = self._instance(events)
        start = NS
        times = [start + round(t * NS) for t in arrivals_s]
        counted_client = set(times[counted_from:])
        limit_ns = round(slo_s * NS) - self.overhead_ns
        misses, now = 0, start
        stopped = False
        for at in times:
            now = max(now, events.run_until(at))
            misses = sum(1 for client, answered in events.answers
                         if client in counted_client and answered - client > limit_ns)
            if misses > allowed:
                stopped = True
                now = max(now, at)
                break
            instance.arrive(at, at)
            now = at
        if not stopped:
            now = max(now, events.run_all())
        latencies = [(answered - client + self.overhead_ns) / NS
                     for client, answered in events.answers if client in counted_client]
        duration = (now - start) / NS
        self._now_s += duration + STEP_OVERHEAD_S
        return latencies, duration, stopped

    async def training_rate(self, protocol: Protocol) -> float:
        events = _Events(0.0)
        job = TrainingJob("profiled", self.model, 1, Quota(self.share, self.share, 0),
                          self.host_ms, self.training_batch, self.slowdown)
        instance = TrainingInstance(events, job, "profiled", "node", ("gpu",), self.perf, 0)
        instance.begin(0)
        warm = protocol.training_warmup_steps
        while instance.iterations < warm:
            events.run_until(events._heap[0][0])
        began_ns, began = instance.step_started_ns, instance.iterations
        while True:
            events.run_until(events._heap[0][0])
            steps = instance.iterations - began
            span = (instance.step_started_ns - began_ns) / NS
            if steps >= protocol.training_steps and span >= protocol.training_min_s:
                break
        self._now_s += instance.step_started_ns / NS + STEP_OVERHEAD_S
        return steps / span


def profile_function(model: str, slo_ms: float, overhead_ms: float, *, slowdown: float = 1.0,
                     design_rate_rps: float | None = None, grid: Grid = DEFAULT_GRID,
                     protocol: Protocol = DEFAULT_PROTOCOL, target: float = 0.99) -> InferenceProfile:
    """The profiler's inference profile of a function, measured on the single-instance
    model (virtual time: `profile.seconds` is what a live run would take, probes and
    trials alike)."""
    instance = SimulatedInstance(model, slo_ms, overhead_ms, slowdown=slowdown)
    return asyncio.run(profile_inference(instance, slo_ms / 1000, target=target, grid=grid,
                                         protocol=protocol, design_rate_rps=design_rate_rps))


def sizing_memory_mib(model: str, max_batch: int) -> int:
    """The memory quota for the profiler's sizing: its measured footprint rounded up to
    256 MiB (the same rounding as `systems.memory_for`, without its 1 GiB context
    allowance: the sim worker's footprint is what it checks against)."""
    return math.ceil(load_model(model).memory_mib(max_batch) / 256) * 256
