"""GPU backends of the node agent. GPUs are identified by UUID, never by index alone."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nvml", "sim")

_MIB = 1024 * 1024
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class GpuDevice:
    uuid: str
    index: int
    model: str
    memory_total_mib: int


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of a GPU. A field is None when the backend cannot measure it."""

    uuid: str
    utilization: float | None  # [0,1] fraction of the sample period in which a kernel ran
    memory_used_mib: int | None
    process_memory_mib: dict[int, int]  # pid -> MiB used on this GPU


class GpuBackend(Protocol):
    name: str

    def devices(self) -> list[GpuDevice]: ...

    def sample(self) -> list[GpuSample]: ...

    def close(self) -> None: ...


class GpuBackendUnavailable(RuntimeError):
    """The requested GPU backend cannot run on this machine (e.g. no NVIDIA driver)."""


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

    def sample(self) -> list[GpuSample]:
        """Nothing is measurable here: the agent derives simulated use from its workers' counters."""
        return [GpuSample(uuid=d.uuid, utilization=None, memory_used_mib=None, process_memory_mib={})
                for d in self._devices]

    def close(self) -> None:
        """Nothing to release."""


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes for strings, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


class NvmlGpuBackend:
    """The real GPUs of this machine, read through NVML (pynvml from nvidia-ml-py)."""

    name = "nvml"

    def __init__(self) -> None:
        # Imported here so that importing this module works where nvidia-ml-py is not installed.
        try:
            import pynvml
        except ImportError as e:
            raise GpuBackendUnavailable(
                f"NVML is unavailable: cannot import pynvml ({e}); use --gpu-backend sim") from e
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise GpuBackendUnavailable(
                f"NVML is unavailable (no NVIDIA driver or GPU?): {e}; use --gpu-backend sim") from e
        self._closed = False
        try:
            self._devices, self._handles = self._enumerate()
        except pynvml.NVMLError as e:
            self.close()
            raise GpuBackendUnavailable(
                f"NVML initialised but listing GPUs failed: {e}; use --gpu-backend sim") from e

    def _enumerate(self) -> tuple[list[GpuDevice], dict[str, Any]]:
        nv = self._nvml
        devices: list[GpuDevice] = []
        handles: dict[str, Any] = {}
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            gpu_uuid = _text(nv.nvmlDeviceGetUUID(h))
            devices.append(GpuDevice(uuid=gpu_uuid, index=i, model=_text(nv.nvmlDeviceGetName(h)),
                                     memory_total_mib=nv.nvmlDeviceGetMemoryInfo(h).total // _MIB))
            # Handles stay valid until nvmlShutdown; looking them up per sample would be wasted calls.
            handles[gpu_uuid] = h
        return devices, handles

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def _query(self, call: Callable[[Any], _T], handle: Any) -> _T | None:
        # One failing query (unsupported on this GPU, GPU lost, ...) must not cost the other readings.
        try:
            return call(handle)
        except self._nvml.NVMLError as e:
            log.debug("NVML query failed: %s", e)
            return None

    def sample(self) -> list[GpuSample]:
        """Read utilisation, used memory and per-process memory of every GPU."""
        nv = self._nvml
        out = []
        for gpu_uuid, h in self._handles.items():
            rates = self._query(nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._query(nv.nvmlDeviceGetMemoryInfo, h)
            procs = self._query(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
            per_pid: dict[int, int] = {}
            for p in procs:
                # usedGpuMemory is None when NVML cannot tell (e.g. under MIG or without permission):
                # the pid is still on this GPU, so keep it with 0 rather than lose it.
                used = p.usedGpuMemory // _MIB if p.usedGpuMemory is not None else 0
                per_pid[p.pid] = per_pid.get(p.pid, 0) + used
            out.append(GpuSample(
                uuid=gpu_uuid,
                utilization=rates.gpu / 100 if rates is not None else None,
                memory_used_mib=mem.used // _MIB if mem is not None else None,
                process_memory_mib=per_pid,
            ))
        return out

    def close(self) -> None:
        """Shut NVML down; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as e:
            log.warning("nvmlShutdown failed: %s", e)


def open_backend(kind: str, node_id: str, sim_gpus: int, sim_gpu_type: str) -> GpuBackend:
    """Open the GPU backend named by kind (one of BACKENDS). "auto" takes NVML when it works and
    sees at least one GPU, else the simulator with sim_gpus GPUs of sim_gpu_type."""
    if kind == "sim":
        return SimGpuBackend(node_id, sim_gpus, sim_gpu_type)
    if kind == "nvml":
        return NvmlGpuBackend()
    if kind != "auto":
        raise ValueError(f"unknown GPU backend {kind!r}; valid: {', '.join(BACKENDS)}")
    try:
        nvml = NvmlGpuBackend()
    except GpuBackendUnavailable as e:
        log.info("GPU backend auto: using sim, %s", e)
        return SimGpuBackend(node_id, sim_gpus, sim_gpu_type)
    if not nvml.devices():
        nvml.close()
        log.info("GPU backend auto: using sim, NVML reports no GPUs")
        return SimGpuBackend(node_id, sim_gpus, sim_gpu_type)
    log.info("GPU backend auto: using nvml, %d GPU(s) found", len(nvml.devices()))
    return nvml
