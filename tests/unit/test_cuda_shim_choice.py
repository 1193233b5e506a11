"""Which node agents preload the CUDA shim, and what happens when it cannot be built."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.node_agent import __main__ as agent_main
from services.node_agent.shim import ShimBuildError, preload_env


def _builds(path: Path):
    return lambda: path


def _fails():
    raise ShimBuildError("no C compiler found")


def test_auto_preloads_only_on_real_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shim = tmp_path / "libdilu_shim.so"
    monkeypatch.setattr(agent_main, "build_shim", _builds(shim))
    assert agent_main.cuda_shim("auto", "nvml") == shim
    assert agent_main.cuda_shim("auto", "sim") is None
    assert agent_main.cuda_shim("off", "nvml") is None
    assert agent_main.cuda_shim("on", "sim") == shim


def test_a_failed_build_stops_on_but_not_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_main, "build_shim", _fails)
    assert agent_main.cuda_shim("auto", "nvml") is None  # the Python gate enforces instead
    with pytest.raises(SystemExit):
        agent_main.cuda_shim("on", "nvml")


def test_the_shim_goes_first_in_ld_preload(tmp_path: Path) -> None:
    shim = tmp_path / "libdilu_shim.so"
    assert preload_env(shim, {}) == {"LD_PRELOAD": str(shim)}
    assert preload_env(shim, {"LD_PRELOAD": "/opt/other.so"}) == {
        "LD_PRELOAD": f"{shim} /opt/other.so"}
