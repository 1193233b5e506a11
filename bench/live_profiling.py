"""The live part of `bench/profiler.py`: profiles measured on a real stack, beside the
exhaustive live sweep of the same grid under the same tie rule, and a verification run.

On a stack of its own (nats-server, scheduler, one node agent with two simulated A100s, the
profiler) with a sim runtime `slowdown` the bundled tables do not know:

1. the profiler profiles one inference and one training function (`ProfileFunction`,
   waited for); the bench times each call on its own clock;
2. the profiler is stopped and the bench sweeps each function exhaustively through the
   very same code path (`session.sweep_inference` / `sweep_training` on a `LiveInstance`:
   a hidden instance on a whole GPU, knobs through the agent, load through the scheduler),
   choosing by the same tie rule;
3. the inference function is deployed at the chosen request (request = limit: no lending)
   with the profile's batch and memory, and an open-loop Poisson stream at the design rate
   is sent through the scheduler; the part of requests answered within the SLO, measured
   end to end at the client, is the verified attainment.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from dilu.v1 import (
    node_agent_pb2_grpc,
    profiler_pb2,
    profiler_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)

from services.cli.stack import ManagedProcess, NatsServer, ServiceLauncher
from services.profiler.live.protocol import DEFAULT_PROTOCOL
from services.profiler.live.runner import LiveInstance
from services.profiler.live.session import sweep_inference, sweep_training
from services.profiler.profiler import hidden_spec
from services.profiler.search import DEFAULT_TRAINING_SHARES, Grid

S = types_pb2
P = profiler_pb2
SIM_GPU = "NVIDIA A100-SXM4-40GB"
GPU_MEMORY_MIB = 40960
TARGET_SHARE_OF_SWEEP = 0.25
TARGET_PROFILE_S = 120.0
TARGET_ATTAINMENT = 0.99


@dataclass(frozen=True, slots=True)
class LiveCase:
    """What the live bench measures."""

    model: str
    slo_ms: float
    training_model: str
    training_batch: int
    host_ms: float
    slowdown: float
    grid: Grid
    verify_requests: int = 3000

    def inference_spec(self) -> types_pb2.FunctionSpec:
        return S.FunctionSpec(name="bench-inference", kind=S.FUNCTION_KIND_INFERENCE,
                              runtime=S.RUNTIME_SIM, model=self.model,
                              slo=S.Slo(latency_ms=self.slo_ms),
                              runtime_options={"slowdown": f"{self.slowdown:g}"})

    def training_spec(self) -> types_pb2.FunctionSpec:
        return S.FunctionSpec(name="bench-training", kind=S.FUNCTION_KIND_TRAINING,
                              runtime=S.RUNTIME_SIM, model=self.training_model,
                              runtime_options={"slowdown": f"{self.slowdown:g}",
                                               "batch": str(self.training_batch),
                                               "host_ms": f"{self.host_ms:g}"})


class Stack:
    def __init__(self, root: Path, grid: Grid) -> None:
        self.nats = NatsServer(root / "nats").start()
        self.launcher = ServiceLauncher(root, self.nats.url)
        self.processes: list[ManagedProcess] = []
        self.scheduler = self._start("scheduler", "--reconcile-interval-s", "0.2")
        self._start("node-agent", "--node-id", "n1", "--sim-gpus", "2", "--gpu-backend", "sim",
                    "--runtime-dir", str(root / "run"), "--heartbeat-interval-s", "0.5")
        self.profiler = self._start(
            "profiler", "--scheduler", self.scheduler.address,
            "--shares", ",".join(f"{s:g}" for s in grid.shares),
            "--batches", ",".join(str(b) for b in grid.batches))
        self.channel = grpc.insecure_channel(self.scheduler.address)
        self.sched = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.prof = profiler_pb2_grpc.ProfilerServiceStub(grpc.insecure_channel(self.profiler.address))
        self._wait(lambda: self.sched.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=5).nodes,
                   "the node registers")

    def _start(self, service: str, *extra: str) -> ManagedProcess:
        process = self.launcher.start(service, *extra)
        self.processes.append(process)
        return process

    @staticmethod
    def _wait(check: Any, what: str, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.2)
        raise RuntimeError(f"not within {timeout_s:.0f} s: {what}")

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout_s=10)
        self.nats.stop()


def profile(stack: Stack, spec: types_pb2.FunctionSpec) -> tuple[profiler_pb2.Profile, float]:
    """The profiler's profile of `spec`, and the wall time of the call, seconds."""
    began = time.monotonic()
    answer = stack.prof.ProfileFunction(P.ProfileFunctionRequest(function=spec, wait=True),
                                        timeout=1800).profile
    return answer, time.monotonic() - began


async def sweep(stack: Stack, spec: types_pb2.FunctionSpec, case: LiveCase) -> tuple[Any, float]:
    """The exhaustive live sweep of `spec` on a hidden instance the bench starts itself
    (the profiler is stopped first: it would remove a hidden instance not its own)."""
    key_name = "profiling-bench-sweep-" + ("t" if spec.kind == S.FUNCTION_KIND_TRAINING else "i")
    key = P.ProfileKey(kind=spec.kind, runtime=spec.runtime, model=spec.model,
                       runtime_options=spec.runtime_options, gpu_model=SIM_GPU,
                       slo_latency_ms=spec.slo.latency_ms, slo_percentile=99.0 if spec.slo.latency_ms else 0)
    hidden, grid = hidden_spec(key, key_name, case.grid, GPU_MEMORY_MIB)
    async with grpc.aio.insecure_channel(stack.scheduler.address) as channel:
        sched = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        await sched.StartProfiling(scheduler_pb2.StartProfilingRequest(function=hidden, gpu_model=SIM_GPU),
                                   timeout=30)
        try:
            instance = await _ready(sched, key_name)
            nodes = (await sched.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=10)).nodes
            address = next(v.node.address for v in nodes if v.node.id == instance.node)
            async with grpc.aio.insecure_channel(address) as agent_channel:
                live = LiveInstance(sched, node_agent_pb2_grpc.NodeAgentServiceStub(agent_channel),
                                    key_name, instance.id, spec.slo.latency_ms / 1000,
                                    training=spec.kind == S.FUNCTION_KIND_TRAINING)
                if spec.kind == S.FUNCTION_KIND_TRAINING:
                    return await sweep_training(live, case.training_batch, shares=DEFAULT_TRAINING_SHARES)
                return await sweep_inference(live, spec.slo.latency_ms / 1000, grid=grid,
                                             protocol=DEFAULT_PROTOCOL)
        finally:
            await sched.StopProfiling(scheduler_pb2.StopProfilingRequest(name=key_name), timeout=60)


async def _ready(sched: scheduler_pb2_grpc.SchedulerServiceStub, name: str) -> types_pb2.Instance:
    for _ in range(600):
        listed = await sched.ListProfiling(scheduler_pb2.ListProfilingRequest(), timeout=10)
        for function in listed.functions:
            for instance in function.status.instances:
                if function.spec.name == name and instance.state == S.INSTANCE_STATE_READY:
                    return instance
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} did not become ready")


async def verify(stack: Stack, case: LiveCase, profiled: profiler_pb2.Profile) -> dict[str, Any]:
    """Deploy at the chosen request (no lending) and send the design rate, open loop."""
    spec = case.inference_spec()
    spec.name = "bench-verify"
    spec.max_batch = profiled.best_batch_size
    spec.resources.CopyFrom(S.Resources(sm_request=profiled.sm_request, sm_limit=profiled.sm_request,
                                        memory_mib=profiled.memory_mib))
    stack.sched.Deploy(scheduler_pb2.DeployRequest(function=spec), timeout=30)
    stack._wait(lambda: stack.sched.GetFunction(scheduler_pb2.GetFunctionRequest(name=spec.name),
                                                timeout=10).function.status.ready_replicas, "ready")
    rate, slo_s = profiled.design_rate_rps, case.slo_ms / 1000
    rng = random.Random(7)
    due, at = [], 0.0
    for _ in range(case.verify_requests):
        at += rng.expovariate(rate)
        due.append(at)
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(stack.scheduler.address) as channel:
        sched = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        began = time.monotonic() + 0.1

        async def one(t: float) -> None:
            delay = began + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await sched.Invoke(scheduler_pb2.InvokeRequest(function=spec.name, payload=b"{}"),
                                   timeout=max(10 * slo_s, 2.0))
                latencies.append(time.monotonic() - began - t)
            except grpc.aio.AioRpcError:
                latencies.append(float("inf"))

        await asyncio.gather(*(one(t) for t in due))
    within = sum(1 for latency in latencies if latency <= slo_s)
    return {"requests": len(latencies), "rate_rps": round(rate, 2),
            "share": profiled.sm_request, "attainment": within / len(latencies),
            "p99_ms": round(sorted(latencies)[int(0.99 * len(latencies)) - 1] * 1e3, 1)}


def run_live(case: LiveCase, log: Any = print) -> dict[str, Any]:
    """Everything above; returns the figures for `--json` (the `live` key)."""
    root = Path(tempfile.mkdtemp(prefix="dilu-bench-profiler-"))
    stack = Stack(root, case.grid)
    try:
        log(f"live: profiling {case.model} at {case.slo_ms:g} ms (slowdown {case.slowdown:g}) ...")
        inference, inference_s = profile(stack, case.inference_spec())
        log(f"live: ... {inference_s:.0f} s; profiling {case.training_model} training ...")
        training, training_s = profile(stack, case.training_spec())
        log(f"live: ... {training_s:.0f} s; the profiler stops, the exhaustive sweeps begin")
        stack.profiler.stop(timeout_s=30)
        (swept, _), inference_sweep_s = _timed(
            lambda: asyncio.run(sweep(stack, case.inference_spec(), case)))
        log(f"live: inference sweep {inference_sweep_s:.0f} s")
        (swept_share, _), training_sweep_s = _timed(
            lambda: asyncio.run(sweep(stack, case.training_spec(), case)))
        log(f"live: training sweep {training_sweep_s:.0f} s; verifying the sizing ...")
        verified = asyncio.run(verify(stack, case, inference))
    finally:
        stack.close()
    inference_same = (inference.chosen_share, inference.best_batch_size) == (swept.share, swept.batch)
    training_same = abs(training.sm_request - swept_share) < 1e-9
    return {
        "probes": inference.measured, "wall_s": round(inference_s, 1),
        "sweep_wall_s": round(inference_sweep_s, 1), "same_choice": inference_same and training_same,
        "verified_attainment": round(verified["attainment"], 4),
        "inference": {
            "model": case.model, "slo_ms": case.slo_ms, "slowdown": case.slowdown,
            "grid": {"shares": list(case.grid.shares), "batches": list(case.grid.batches)},
            "probes": inference.measured, "wall_s": round(inference_s, 1),
            "profile_s": round(inference.seconds, 1), "sweep_wall_s": round(inference_sweep_s, 1),
            "choice": {"share": inference.chosen_share, "batch": inference.best_batch_size},
            "sweep_choice": {"share": swept.share, "batch": swept.batch},
            "same_choice": inference_same, "sm_request": inference.sm_request,
            "sm_limit": inference.sm_limit, "memory_mib": inference.memory_mib,
            "design_rate_rps": round(inference.design_rate_rps, 2),
            "capacity_at_limit_rps": round(inference.capacity_at_limit_rps, 2),
            "notes": list(inference.notes), "verification": verified},
        "training": {
            "model": case.training_model, "batch": case.training_batch, "host_ms": case.host_ms,
            "slowdown": case.slowdown, "probes": training.measured, "wall_s": round(training_s, 1),
            "sweep_wall_s": round(training_sweep_s, 1), "share": training.sm_request,
            "sweep_share": swept_share, "same_choice": training_same, "message": training.message},
    }


def _timed(action: Any) -> tuple[Any, float]:
    began = time.monotonic()
    result = action()
    return result, time.monotonic() - began


def live_targets(live: dict[str, Any]) -> list[str]:
    """The live targets missed, in words."""
    missed = []
    for part in ("inference", "training"):
        figures = live[part]
        if not figures["same_choice"]:
            missed.append(f"live {part}: the search chose differently from the sweep")
        if figures["wall_s"] > TARGET_SHARE_OF_SWEEP * figures["sweep_wall_s"]:
            missed.append(f"live {part}: {figures['wall_s']:.0f} s is more than "
                          f"{TARGET_SHARE_OF_SWEEP:.0%} of the sweep's {figures['sweep_wall_s']:.0f} s")
        if figures["wall_s"] > TARGET_PROFILE_S:
            missed.append(f"live {part}: the profile took {figures['wall_s']:.0f} s, over "
                          f"{TARGET_PROFILE_S:.0f} s")
    if live["verified_attainment"] < TARGET_ATTAINMENT:
        missed.append(f"live: {live['verified_attainment']:.2%} of requests within the SLO at the "
                      f"request and design rate, below {TARGET_ATTAINMENT:.0%}")
    return missed
