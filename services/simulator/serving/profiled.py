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
import hashlib
import heapq
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from services.node_agent.worker.requirements import MIB
from services.perf import load_model
from services.perf.traces import load_trace
from services.profiler.live.protocol import DEFAULT_PROTOCOL, Protocol
from services.profiler.live.session import InferenceProfile, profile_inference
from services.profiler.search import DEFAULT_GRID, Grid
from services.simulator.serving.engine import Sizing
from services.simulator.serving.instances import READY, InferenceInstance, TrainingInstance
from services.simulator.serving.profile import cache_dir, fingerprint
from services.simulator.serving.scenario import Quota, ServedFunction, TrainingJob
from services.simulator.serving.systems import memory_for

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


# ---- sizing a scenario's functions by the profiler's rules -----------------------------

PROFILED_VERSION = 1


def profiler_sizing(function: ServedFunction, overhead_ms: float) -> Sizing:
    """A function's initial sizing by the profiler's rules, measured on the single-instance
    model: max batch = the search's best batch, limit = the lone-batch share (past the
    cliff), request = the smallest share carrying the design rate — the function's mean
    rate per initial replica, what its operator knows — memory as `systems.memory_for`
    (the stand-in sizing's rule, so the two differ in shares and batch only). Pinned quota
    and batch (the scenario's) win, as with every sizing."""
    if function.quota is not None and function.max_batch:
        quota = function.quota  # pinned whole: nothing to measure
        return Sizing(function.replicas_initial, quota.request, quota.limit, quota.memory_mib,
                      function.max_batch)
    rates = [r * function.scale for r in load_trace(function.trace)]
    mean = sum(rates) / len(rates) / function.replicas_initial
    measured = profile_function(function.model, function.slo_ms, overhead_ms,
                                slowdown=function.slowdown, design_rate_rps=max(mean, 0.01))
    max_batch = function.max_batch or measured.best_batch
    if function.quota is not None:
        quota = function.quota
        return Sizing(function.replicas_initial, quota.request, quota.limit, quota.memory_mib, max_batch)
    return Sizing(function.replicas_initial, measured.request, measured.limit,
                  memory_for(function.model, max_batch), max_batch)


def _sizing_key(function: ServedFunction, overhead_ms: float) -> str:
    raw = json.dumps([PROFILED_VERSION, function.model, function.slo_ms, function.slowdown,
                      function.trace, function.scale, function.replicas_initial,
                      asdict(function.quota) if function.quota else None, function.max_batch,
                      overhead_ms, sources_fingerprint()])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def sources_fingerprint() -> str:
    """The stand-in's fingerprint and the profiler's sources: a changed rule re-measures."""
    root = Path(__file__).resolve().parents[3]
    digest = hashlib.sha256(fingerprint().encode())
    for path in sorted((root / "services/profiler").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _measure_sizing(args: tuple[ServedFunction, float]) -> Sizing:
    function, overhead_ms = args
    path = cache_dir().parent / "profiled" / f"{_sizing_key(function, overhead_ms)}.json"
    try:
        return Sizing(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    sizing = profiler_sizing(function, overhead_ms)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(sizing)))
    temporary.replace(path)
    return sizing


def profiler_sizings(functions: Iterable[ServedFunction], overhead_ms: float,
                     workers: int = 1) -> dict[str, Sizing]:
    """`profiler_sizing` of every function, cached on disk beside the stand-in profiles
    (`$DILU_CACHE_DIR`), measured in up to `workers` processes."""
    functions = list(functions)
    jobs = [(f, overhead_ms) for f in functions]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            sizings = list(pool.map(_measure_sizing, jobs))
    else:
        sizings = [_measure_sizing(job) for job in jobs]
    return {f.name: sizing for f, sizing in zip(functions, sizings, strict=True)}
