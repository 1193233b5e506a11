"""GPU backends of the node agent. GPUs are identified by UUID, never by index alone."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class GpuDevice:
    uuid: str
    index: int
    model: str
    memory_total_mib: int


class GpuBackend(Protocol):
    name: str

    def devices(self) -> list[GpuDevice]: ...


# Simulated GPU types: product name and memory, as NVML would report them.
SIM_GPU_TYPES = {
    "A100-40GB": ("NVIDIA A100-SXM4-40GB", 40960),
    "A100-80GB": ("NVIDIA A100-SXM4-80GB", 81920),
    "H100-80GB": ("NVIDIA H100 80GB HBM3", 81920),
}


class SimGpuBackend:
    """N simulated GPUs of one type. UUIDs derive from the node id so they survive restarts
    of the agent (the scheduler's placements refer to them)."""

    name = "sim"

    def __init__(self, node_id: str, count: int, gpu_type: str = "A100-40GB") -> None:
        if gpu_type not in SIM_GPU_TYPES:
            raise ValueError(f"unknown sim GPU type {gpu_type!r}; known: {', '.join(SIM_GPU_TYPES)}")
        if count < 1:
            raise ValueError(f"a node needs at least one GPU, got {count}")
        model, memory = SIM_GPU_TYPES[gpu_type]
        self._devices = [
            GpuDevice(uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node_id}/{i}')}", index=i,
                      model=model, memory_total_mib=memory)
            for i in range(count)
        ]

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)
