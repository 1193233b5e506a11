"""The serving simulator's instance and a real sim worker, given the same arrivals, form
the same batches at the same nanoseconds and finish them at the same nanoseconds.

The worker side is production code end to end — `InferenceWorker` (its batching loop),
`SimInference` (the sim runtime), `SimDevice` and `QuotaGate` reading a real control page
— on an asyncio loop that runs on virtual time (`tests/virtual_time.py`), so sleeps last
exactly what they ask for. The simulator side is `InferenceInstance` with the closed-form
pacing. Arrival sequences are random, with bursts and idle gaps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dilu.v1 import types_pb2, worker_pb2

from services.node_agent.pages import (
    ControlPageReader,
    ControlPageWriter,
    StatsWriter,
    control_for,
    create_stats_page,
)
from services.node_agent.worker.engines import SimInference, SimTraining, sim_training_step_gpu_s
from services.node_agent.worker.gate import QuotaGate
from services.node_agent.worker.serving import InferenceWorker
from services.perf import load_model
from services.simulator.serving.instances import InferenceInstance, TrainingInstance
from services.simulator.serving.scenario import Quota, TrainingJob
from tests.virtual_time import LoopClock, VirtualTimeLoop, run_virtual

MS = 1_000_000
Batch = tuple[int, int, int]  # start ns, end ns, size


def arrivals(seed: int, count: int) -> list[int]:
    """Bursts at random rates separated by idle gaps (some shorter than a period)."""
    rng = random.Random(seed)
    times: list[int] = []
    now = rng.uniform(0.001, 0.05)
    while len(times) < count:
        burst_end = now + rng.uniform(0.05, 1.5)
        rate = rng.choice([5, 20, 60, 150, 400])
        while now < burst_end:
            times.append(round(now * 1e9) + rng.randrange(1000))  # distinct ns
            now += rng.expovariate(rate)
        now += rng.choice([0.003, 0.02, 0.15, 0.6, 2.0]) * rng.random()
    return sorted(set(times))


def worker_side(tmp_path: Path, model: str, slo_ms: float, max_batch: int, share: float,
                times: list[int]) -> tuple[list[Batch], list[int], list[int]]:
    """(batches, latency per request in ns, ends of the gate's sleeps) of a real worker."""
    ControlPageWriter(tmp_path / "w.ctl", control_for(share, share, share, 8 << 30)).close()
    create_stats_page(tmp_path / "w.stats")

    async def main() -> tuple[list[Batch], list[int], list[int]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        stats = StatsWriter(tmp_path / "w.stats")
        wait_ends: list[int] = []
        adding = stats.add

        def add(name: str, value: int) -> None:
            if name == "throttled_ns":
                wait_ends.append(loop.now_ns)
            adding(name, value)

        stats.add = add  # type: ignore[method-assign]
        clock = LoopClock(loop)
        gate = QuotaGate(ControlPageReader(tmp_path / "w.ctl"), stats, clock=clock)
        spec = types_pb2.FunctionSpec(name="f", model=model, max_batch=max_batch,
                                      slo=types_pb2.Slo(latency_ms=slo_ms))
        engine = SimInference(spec, gate)
        batches: list[Batch] = []
        run = engine.run

        async def recorded(samples: list[Any]) -> list[bytes]:
            start = loop.now_ns
            out = await run(samples)
            batches.append((start, loop.now_ns, len(samples)))
            return out

        engine.run = recorded  # type: ignore[method-assign]
        worker = InferenceWorker(engine, gate, stats, slo_ms, max_batch, clock=clock)
        batcher = asyncio.create_task(worker.run())
        answers: list[asyncio.Task[worker_pb2.InferResponse]] = []
        sent: list[int] = []
        for at in times:
            loop.call_at(at / 1e9, lambda at=at: (sent.append(at), answers.append(
                asyncio.create_task(worker.Infer(worker_pb2.InferRequest(), None)))))  # type: ignore[arg-type]
        while len(answers) < len(times):
            await asyncio.sleep(0.5)
        replies = await asyncio.gather(*answers)
        batcher.cancel()
        await asyncio.gather(batcher, return_exceptions=True)
        latencies = [round(r.latency_ms * MS) for r in replies]
        return batches, latencies, wait_ends

    return run_virtual(main())  # type: ignore[no-any-return]


class _Recorder:
    """What the simulator's instance needs around it, recording batches and latencies."""

    def __init__(self, slo_ms: float) -> None:
        self.slo_s = slo_ms / 1000
        self.heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = itertools.count()
        self.latencies: dict[int, int] = {}
        self.batches: list[Batch] = []
        self.wait_ends: list[int] = []

    def schedule(self, at_ns: int, action: Callable[..., None], *args: Any, first: bool = False) -> None:
        heapq.heappush(self.heap, (at_ns, next(self.seq), action, args))

    def add_busy(self, gpus: tuple[str, ...], work_ns: int) -> None:
        pass

    def answered(self, instance: InferenceInstance, now_ns: int, batch: list[int]) -> None:
        for client in batch:
            self.latencies[client] = now_ns - client


def simulator_side(model: str, slo_ms: float, max_batch: int, share: float,
                   times: list[int]) -> tuple[list[Batch], list[int], list[int]]:
    sim = _Recorder(slo_ms)
    instance = InferenceInstance(sim, sim, "i", "n", ("g",), share, share, 8192, max_batch,  # type: ignore[arg-type]
                                 load_model(model), 0)
    instance.state = "ready"
    start, finish = instance._start, instance._finished

    def started(now_ns: int) -> None:
        start(now_ns)
        sim.batches.append((now_ns, -1, len(instance.batch)))

    def finished(now_ns: int, version: int) -> None:
        if version == instance.version and instance.run is not None:
            sim.wait_ends.extend(instance.run.wait_ends())
            begin, _, size = sim.batches[-1]
            sim.batches[-1] = (begin, now_ns, size)
        finish(now_ns, version)

    instance._start = started  # type: ignore[method-assign]
    instance._finished = finished  # type: ignore[method-assign]
    for at in times:
        while sim.heap and sim.heap[0][0] <= at:
            when, _, action, args = heapq.heappop(sim.heap)
            action(when, *args)
        instance.arrive(at, at)
    while sim.heap:
        when, _, action, args = heapq.heappop(sim.heap)
        action(when, *args)
    return sim.batches, [sim.latencies[t] for t in times], sim.wait_ends


@pytest.mark.parametrize(("model", "slo_ms", "max_batch", "share", "seed"), [
    ("bert-base", 50, 8, 0.5, 1),
    ("bert-base", 50, 8, 0.2, 2),
    ("resnet152", 100, 16, 0.3, 3),
    ("resnet152", 100, 16, 1.0, 4),
    ("roberta-large", 60, 4, 0.45, 5),
    ("gpt2-large", 200, 32, 0.7, 6),
])
def test_the_simulator_batches_like_a_real_sim_worker(tmp_path: Path, model: str, slo_ms: float,
                                                       max_batch: int, share: float, seed: int) -> None:
    times = arrivals(seed, count=400)
    live_batches, live_latencies, live_waits = worker_side(tmp_path, model, slo_ms, max_batch,
                                                          share, times)
    sim_batches, sim_latencies, sim_waits = simulator_side(model, slo_ms, max_batch, share, times)
    assert len({size for _, _, size in sim_batches}) > 1  # the batcher really batched
    assert sim_batches == live_batches
    assert sim_latencies == live_latencies
    # The moments the gate's sleeps end (the arbiter's hunger signal) agree too.
    assert sim_waits == live_waits


@pytest.mark.parametrize(("share", "host_ms"), [(0.3, 0.0), (0.3, 200.0), (0.8, 200.0), (1.0, 50.0)])
def test_training_steps_take_the_same_time_in_a_sim_worker_and_the_simulator(
        tmp_path: Path, share: float, host_ms: float) -> None:
    """A step is max(GPU part at the share, host part) in both."""
    ControlPageWriter(tmp_path / "t.ctl", control_for(share, share, share, 64 << 30)).close()
    create_stats_page(tmp_path / "t.stats")
    spec = types_pb2.FunctionSpec(name="t", model="bert-base", kind=types_pb2.FUNCTION_KIND_TRAINING,
                                  runtime_options={"host_ms": f"{host_ms:g}", "batch": "8"})

    async def steps() -> list[int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        gate = QuotaGate(ControlPageReader(tmp_path / "t.ctl"), StatsWriter(tmp_path / "t.stats"),
                         clock=LoopClock(loop))
        engine = SimTraining(spec, gate)
        ends = []
        for _ in range(6):
            await engine.step()
            ends.append(loop.now_ns)
        return ends

    live = run_virtual(steps())
    job = TrainingJob("t", "bert-base", 1, Quota(share, share, 1024), host_ms, batch=8)
    sim = _Recorder(0)
    instance = TrainingInstance(sim, job, "t", "n", ("g",), load_model("bert-base"), 0)  # type: ignore[arg-type]
    simulated = []
    instance.begin(0)
    while len(simulated) < 6:
        when, _, action, args = heapq.heappop(sim.heap)
        action(when, *args)
        if instance.iterations > len(simulated):
            simulated.append(when)
    assert simulated == live
    gpu_ns = round(sim_training_step_gpu_s(load_model("bert-base"), 8) * 1e9)
    steady = live[-1] - live[-2]
    assert steady == pytest.approx(max(gpu_ns / share, host_ms * MS), rel=0.01)
