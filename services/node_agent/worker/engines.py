"""Execution engines of a worker: the `sim` runtime (time from the measured A100 model)
and the `torch` runtime (a real PyTorch model), both admitted through the quota gate."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Protocol

from dilu.v1 import types_pb2

from services.node_agent.worker.gate import QuotaGate, SimDevice
from services.node_agent.worker.requirements import (
    largest_batch_within,
    memory_need_bytes,
    sim_options,
    training_batch,
)
from services.perf import PerfModel, load_model

log = logging.getLogger(__name__)
EXIT_INJECTED_CRASH = 3


class InferenceEngine(Protocol):
    content_type: str
    default_max_batch: int
    memory_bytes: int

    def memory_at(self, batch: int) -> int: ...
    def decode(self, payload: bytes, content_type: str) -> Any: ...
    def estimate_s(self, batch: int, share: float) -> float: ...
    async def run(self, samples: list[Any]) -> list[bytes]: ...


class TrainingEngine(Protocol):
    memory_bytes: int

    async def step(self) -> None: ...


def time_sliced_s(perf: PerfModel, batch: int, share: float) -> float:
    """Wall time of one batch run back to back at `share` under time slicing: its
    whole-GPU time (the tables' 100 % column) over the share."""
    return perf.full_gpu_cost_s(batch) / max(share, 0.01)


def sim_default_max_batch(perf: PerfModel, slo_ms: float, share: float) -> int:
    """Largest power-of-two batch whose run at `share` takes at most half the SLO."""
    best = 1
    for batch in (2, 4, 8, 16, 32):
        if slo_ms > 0 and time_sliced_s(perf, batch, share) * 1000 <= slo_ms / 2:
            best = batch
    return best


class SimInference:
    """A batch occupies the whole GPU for the tables' 100 % latency (times the runtime
    option `slowdown`), paced by the gate. The worker's own estimate knows the slowdown, as
    a worker that measures its batches would."""

    content_type = "application/json"

    def __init__(self, spec: types_pb2.FunctionSpec, gate: QuotaGate) -> None:
        self._perf = load_model(spec.model)
        self._device = SimDevice(gate)
        self._model = spec.model
        options = sim_options(spec)
        self._slowdown = options.get("slowdown", 1.0)
        self._crash_after = int(options.get("crash_after", 0))
        self._hang_after = int(options.get("hang_after", 0))
        self._served = 0
        control = gate.control()
        # Left open by the spec, the batch is the largest that meets the SLO and fits the
        # memory quota.
        self.default_max_batch = largest_batch_within(
            spec, control.memory_limit_bytes,
            sim_default_max_batch(self._perf, spec.slo.latency_ms / self._slowdown,
                                  max(control.request, 0.1)))
        self._spec = spec
        self.memory_bytes = memory_need_bytes(spec, spec.max_batch or self.default_max_batch)

    def memory_at(self, batch: int) -> int:
        """The footprint, bytes, when batches of up to `batch` run."""
        return memory_need_bytes(self._spec, batch)

    def decode(self, payload: bytes, content_type: str) -> Any:
        return len(payload)  # the simulated model does not look at its input

    def estimate_s(self, batch: int, share: float) -> float:
        return time_sliced_s(self._perf, batch, share) * self._slowdown

    async def run(self, samples: list[Any]) -> list[bytes]:
        batch = len(samples)
        await self._inject_faults()
        await self._device.run(self._perf.full_gpu_cost_s(batch) * self._slowdown)
        self._served += batch
        answer = json.dumps({"model": self._model, "runtime": "sim", "batch": batch}).encode()
        return [answer] * batch


    async def _inject_faults(self) -> None:
        """The runtime options `crash_after` and `hang_after` (fault injection)."""
        if self._crash_after and self._served >= self._crash_after:
            log.error("injected crash after %d requests (runtime option crash_after)", self._served)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(EXIT_INJECTED_CRASH)
        if self._hang_after and self._served >= self._hang_after:
            log.warning("injected hang after %d requests (runtime option hang_after)", self._served)
            await asyncio.Event().wait()  # never answers again


def sim_training_step_gpu_s(perf: PerfModel, batch: int) -> float:
    """The GPU part of one simulated training step: its whole-GPU time."""
    return perf.training_step_s(batch, 1.0)


class SimTraining:
    """A step's GPU part (times the runtime option `slowdown`) runs through the gate while
    its host part (runtime option `host_ms`: data loading, all-reduce; 0 = none) overlaps
    it: a step takes
    max(GPU part / share, host part), so a job with a host part saturates below a whole GPU."""

    def __init__(self, spec: types_pb2.FunctionSpec, gate: QuotaGate) -> None:
        self._perf = load_model(spec.model)
        self._device = SimDevice(gate)
        self._clock = gate.clock
        self._batch = training_batch(spec)
        options = sim_options(spec)
        self._host_s = options["host_ms"] / 1000
        self._gpu_s = sim_training_step_gpu_s(self._perf, self._batch) * options.get("slowdown", 1.0)
        self.memory_bytes = memory_need_bytes(spec, self._batch)  # weights, grads, optimiser

    async def step(self) -> None:
        if self._host_s <= 0:
            await self._device.run(self._gpu_s)
            return
        await asyncio.gather(self._device.run(self._gpu_s), self._clock.sleep(self._host_s))


class _MeasuredCost:
    """Running estimate of a torch launch's cost per sample, from measured runs."""

    def __init__(self) -> None:
        self.per_sample_s = 0.0

    def estimate_s(self, samples: int) -> float:
        return self.per_sample_s * samples

    def record(self, samples: int, elapsed_s: float) -> None:
        observed = elapsed_s / max(samples, 1)
        self.per_sample_s = observed if self.per_sample_s == 0 else (
            0.8 * self.per_sample_s + 0.2 * observed)


async def _gated(gate: QuotaGate, cost: _MeasuredCost, samples: int, work: Any) -> Any:
    """Admit one indivisible torch launch at its estimated cost, then charge what it took."""
    estimate_ns = max(1, round(cost.estimate_s(samples) * 1e9))
    await gate.admit(estimate_ns)
    started = time.perf_counter()
    try:
        return await asyncio.to_thread(work)
    finally:
        elapsed = time.perf_counter() - started
        cost.record(samples, elapsed)
        gate.complete(estimate_ns, round(elapsed * 1e9))


class TorchInferenceEngine:
    def __init__(self, spec: types_pb2.FunctionSpec, gate: QuotaGate) -> None:
        from services.node_agent.worker import torch_runtime

        self._runtime = torch_runtime.build_inference(spec, torch_runtime.pick_device())
        self._gate = gate
        self._cost = _MeasuredCost()
        self.content_type = self._runtime.content_type
        self.default_max_batch = largest_batch_within(
            spec, gate.control().memory_limit_bytes, self._runtime.max_batch_default)
        self._spec = spec
        self.memory_bytes = memory_need_bytes(spec, spec.max_batch or self.default_max_batch)

    def memory_at(self, batch: int) -> int:
        return memory_need_bytes(self._spec, batch)

    def decode(self, payload: bytes, content_type: str) -> Any:
        return self._runtime.decode(payload, content_type)

    def estimate_s(self, batch: int, share: float) -> float:
        return self._cost.estimate_s(batch) / max(share, 0.01)

    async def run(self, samples: list[Any]) -> list[bytes]:
        result: list[bytes] = await _gated(self._gate, self._cost, len(samples),
                                           lambda: self._runtime.run_batch(samples))
        return result


class TorchTrainingEngine:
    def __init__(self, spec: types_pb2.FunctionSpec, gate: QuotaGate) -> None:
        from services.node_agent.worker import torch_runtime

        self._runtime = torch_runtime.build_training(spec, torch_runtime.pick_device())
        self._gate = gate
        self._cost = _MeasuredCost()
        self.memory_bytes = memory_need_bytes(spec, self._runtime.batch_size)

    async def step(self) -> None:
        await _gated(self._gate, self._cost, self._runtime.batch_size, self._runtime.step)


def inference_engine(spec: types_pb2.FunctionSpec, gate: QuotaGate) -> InferenceEngine:
    if spec.runtime == types_pb2.RUNTIME_TORCH:
        return TorchInferenceEngine(spec, gate)
    return SimInference(spec, gate)


def training_engine(spec: types_pb2.FunctionSpec, gate: QuotaGate) -> TrainingEngine:
    if spec.runtime == types_pb2.RUNTIME_TORCH:
        return TorchTrainingEngine(spec, gate)
    return SimTraining(spec, gate)
