"""Values the placement policies work on. Pure data: no I/O, no clocks."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

from services.common.bounds import PlacementBounds

__all__ = ["SHARD_OVERHEAD_MIB", "SLO_BOUND", "Assignment", "GpuSlot", "InstanceShape",
           "PlacementBounds", "WorkloadKind"]


class WorkloadKind(Enum):
    INFERENCE = "inference"
    LLM_INFERENCE = "llm-inference"
    TRAINING = "training"


# Kinds with a latency SLO; training is throughput-bound and yields to them.
SLO_BOUND = frozenset({WorkloadKind.INFERENCE, WorkloadKind.LLM_INFERENCE})

# What each shard of a split model needs beyond its part of the weights: its own CUDA
# context, activations passed between stages and the runtime's buffers.
SHARD_OVERHEAD_MIB = 1024


@dataclass(frozen=True, slots=True)
class InstanceShape:
    """What one instance needs on each of its GPUs."""

    function: str
    kind: WorkloadKind
    sm_request: float
    sm_limit: float
    memory_mib: int
    gpus: int = 1
    # A single-GPU model that may be split into up to this many pipeline stages on
    # GPUs of one node when no single GPU has room for it (large-model inference).
    max_shards: int = 1

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.max_shards < 1:
            raise ValueError(f"{self.function}: gpus and max_shards must be at least 1")
        if self.max_shards > 1 and self.gpus != 1:
            raise ValueError(f"{self.function}: only a single-GPU model can be split")

    def sharded(self, shards: int) -> InstanceShape:
        """One stage of this model split `shards` ways: each GPU holds an even part of the
        memory plus `SHARD_OVERHEAD_MIB`, and an even part of the compute, rounded up to
        a hundredth of a GPU so that a split never asks for less than the whole."""
        if self.gpus != 1 or not 1 < shards <= self.max_shards:
            raise ValueError(f"{self.function} cannot be split {shards} ways")
        def part(share: float) -> float:
            return math.ceil(share / shards * 100 - 1e-6) / 100
        return replace(self, sm_request=part(self.sm_request), sm_limit=part(self.sm_limit),
                       memory_mib=math.ceil(self.memory_mib / shards) + SHARD_OVERHEAD_MIB,
                       gpus=shards, max_shards=1)


@dataclass(frozen=True, slots=True)
class GpuSlot:
    """One GPU and what is already committed on it."""

    node: str
    uuid: str
    memory_total_mib: int
    sm_requested: float = 0.0
    sm_limited: float = 0.0
    memory_allocated_mib: int = 0
    functions: tuple[str, ...] = ()

    @property
    def memory_free_mib(self) -> int:
        return self.memory_total_mib - self.memory_allocated_mib


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where an instance goes: one node, one GPU per `InstanceShape.gpus`."""

    node: str
    gpu_uuids: tuple[str, ...]
    # What each GPU holds, when the policy split the instance (`InstanceShape.sharded`);
    # None: what the instance asked for.
    per_gpu: InstanceShape | None = None
