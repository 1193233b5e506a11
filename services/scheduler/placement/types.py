"""Values the placement policies work on. Pure data: no I/O, no clocks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class WorkloadKind(Enum):
    INFERENCE = "inference"
    LLM_INFERENCE = "llm-inference"
    TRAINING = "training"


@dataclass(frozen=True, slots=True)
class InstanceShape:
    """What one instance needs on each of its GPUs."""

    function: str
    kind: WorkloadKind
    sm_request: float
    sm_limit: float
    memory_mib: int
    gpus: int = 1


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


@dataclass(frozen=True, slots=True)
class PlacementBounds:
    """Over-subscription bounds per GPU. Requests are guaranteed, so never above 1;
    limits may be over-subscribed because not every instance bursts at once."""

    max_requested: float = 1.0
    max_limited: float = 1.5

    def admits(self, gpu: GpuSlot, shape: InstanceShape) -> bool:
        # epsilon so shares that add up to exactly 1.0 in decimal still fit in binary
        eps = 1e-9
        return (
            gpu.sm_requested + shape.sm_request <= self.max_requested + eps
            and gpu.sm_limited + shape.sm_limit <= self.max_limited + eps
            and gpu.memory_allocated_mib + shape.memory_mib <= gpu.memory_total_mib
        )
