"""GPU backends: the simulator, NVML on this driverless machine, and the NVML logic on a fake pynvml."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from services.node_agent.gpus import (
    BACKENDS,
    GpuBackendUnavailable,
    GpuSample,
    NvmlGpuBackend,
    SimGpuBackend,
    open_backend,
)

MIB = 1024 * 1024


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


no_driver = pytest.mark.skipif(_nvml_works(), reason="this machine has a working NVIDIA driver")


# --- sim ---------------------------------------------------------------------------------------------------

def test_sim_devices_stable_per_node_id() -> None:
    a = SimGpuBackend("node-a", 2).devices()
    assert a == SimGpuBackend("node-a", 2).devices()
    assert {d.uuid for d in a}.isdisjoint(d.uuid for d in SimGpuBackend("node-b", 2).devices())
    assert [d.index for d in a] == [0, 1]
    assert all(d.uuid.startswith("GPU-") and d.memory_total_mib == 40960 for d in a)


def test_sim_sample_shape() -> None:
    b = SimGpuBackend("n", 3, "H100-80GB")
    samples = b.sample()
    assert [s.uuid for s in samples] == [d.uuid for d in b.devices()]
    assert all(s == GpuSample(s.uuid, None, None, {}) for s in samples)
    b.close()
    b.close()


def test_sim_rejects_bad_type_and_count() -> None:
    with pytest.raises(ValueError, match="unknown sim GPU type"):
        SimGpuBackend("n", 1, "V100")
    with pytest.raises(ValueError, match="at least one GPU"):
        SimGpuBackend("n", 0)


# --- nvml on this machine ----------------------------------------------------------------------------------

@no_driver
def test_nvml_unavailable_without_driver() -> None:
    with pytest.raises(GpuBackendUnavailable, match="--gpu-backend sim"):
        NvmlGpuBackend()
    with pytest.raises(GpuBackendUnavailable):
        open_backend("nvml", "n", 1, "A100-40GB")


@no_driver
def test_auto_falls_back_to_sim(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="services.node_agent.gpus"):
        b = open_backend("auto", "n", 2, "A100-80GB")
    assert isinstance(b, SimGpuBackend) and len(b.devices()) == 2
    assert "using sim" in caplog.text


def test_missing_pynvml_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(GpuBackendUnavailable, match="sim"):
        NvmlGpuBackend()
    assert isinstance(open_backend("auto", "n", 1, "A100-40GB"), SimGpuBackend)


def test_unknown_kind() -> None:
    assert BACKENDS == ("auto", "nvml", "sim")
    with pytest.raises(ValueError, match="auto, nvml, sim"):
        open_backend("bogus", "n", 1, "A100-40GB")


# --- nvml logic against a fake pynvml ----------------------------------------------------------------------

@dataclass
class _Gpu:
    uuid: str | bytes
    name: str | bytes
    total: int
    used: int
    util: int
    procs: list[tuple[int, int | None]]


class _FakeNvml:
    """The slice of pynvml the backend uses; handles are indices into gpus."""

    def __init__(self, gpus: list[_Gpu]) -> None:
        self.gpus = gpus
        self.shutdowns = 0
        self.fail: set[str] = set()
        self.init_error: str | None = None

    def module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")

        class NVMLError(Exception):
            pass

        def check(call: str) -> None:
            if call in self.fail:
                raise NVMLError(f"{call} not supported")

        def init() -> None:
            if self.init_error:
                raise NVMLError(self.init_error)

        def shutdown() -> None:
            self.shutdowns += 1

        def util(h: int) -> Any:
            check("util")
            return types.SimpleNamespace(gpu=self.gpus[h].util, memory=0)

        def mem(h: int) -> Any:
            check("mem")
            g = self.gpus[h]
            return types.SimpleNamespace(total=g.total, used=g.used, free=g.total - g.used)

        def procs(h: int) -> Any:
            check("procs")
            return [types.SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in self.gpus[h].procs]

        m.NVMLError = NVMLError  # type: ignore[attr-defined]
        m.nvmlInit = init  # type: ignore[attr-defined]
        m.nvmlShutdown = shutdown  # type: ignore[attr-defined]
        m.nvmlDeviceGetCount = lambda: len(self.gpus)  # type: ignore[attr-defined]
        m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
        m.nvmlDeviceGetUUID = lambda h: self.gpus[h].uuid  # type: ignore[attr-defined]
        m.nvmlDeviceGetName = lambda h: self.gpus[h].name  # type: ignore[attr-defined]
        m.nvmlDeviceGetMemoryInfo = mem  # type: ignore[attr-defined]
        m.nvmlDeviceGetUtilizationRates = util  # type: ignore[attr-defined]
        m.nvmlDeviceGetComputeRunningProcesses = procs  # type: ignore[attr-defined]
        return m


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _FakeNvml:
    f = _FakeNvml([
        # bytes for strings as older nvidia-ml-py returns them; pid 102's memory is unknown to NVML
        _Gpu(b"GPU-aaaa", b"NVIDIA A100-SXM4-40GB", 40960 * MIB, 1000 * MIB, 37,
             [(101, 800 * MIB), (102, None)]),
        _Gpu("GPU-bbbb", "NVIDIA H100 80GB HBM3", 81920 * MIB, 0, 0, []),
    ])
    monkeypatch.setitem(sys.modules, "pynvml", f.module())
    return f


def test_fake_devices(fake: _FakeNvml) -> None:
    devs = NvmlGpuBackend().devices()
    assert [(d.uuid, d.index, d.model, d.memory_total_mib) for d in devs] == [
        ("GPU-aaaa", 0, "NVIDIA A100-SXM4-40GB", 40960),
        ("GPU-bbbb", 1, "NVIDIA H100 80GB HBM3", 81920),
    ]


def test_fake_sample(fake: _FakeNvml) -> None:
    a, b = NvmlGpuBackend().sample()
    assert a == GpuSample("GPU-aaaa", 0.37, 1000, {101: 800, 102: 0})
    assert b == GpuSample("GPU-bbbb", 0.0, 0, {})


def test_fake_failing_query_spares_the_rest(fake: _FakeNvml) -> None:
    backend = NvmlGpuBackend()
    fake.fail = {"util"}
    a, _ = backend.sample()
    assert a == GpuSample("GPU-aaaa", None, 1000, {101: 800, 102: 0})
    fake.fail = {"mem", "procs"}
    a, _ = backend.sample()
    assert a == GpuSample("GPU-aaaa", 0.37, None, {})


def test_fake_init_error_is_unavailable(fake: _FakeNvml) -> None:
    fake.init_error = "Driver Not Loaded"
    with pytest.raises(GpuBackendUnavailable, match=r"Driver Not Loaded.*--gpu-backend sim"):
        NvmlGpuBackend()


def test_fake_close_is_idempotent(fake: _FakeNvml) -> None:
    backend = NvmlGpuBackend()
    backend.close()
    backend.close()
    assert fake.shutdowns == 1


def test_fake_auto_picks_nvml_when_gpus(fake: _FakeNvml) -> None:
    b = open_backend("auto", "n", 1, "A100-40GB")
    assert isinstance(b, NvmlGpuBackend) and b.name == "nvml" and len(b.devices()) == 2


def test_fake_auto_picks_sim_when_no_gpus(fake: _FakeNvml) -> None:
    fake.gpus = []
    b = open_backend("auto", "n", 1, "A100-40GB")
    assert isinstance(b, SimGpuBackend)
    assert fake.shutdowns == 1  # the unused NVML session was released
