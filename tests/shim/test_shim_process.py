"""The shim across fork(): the child is limited at the instance's share with a completion
thread of its own (threads do not survive fork), the parent's keeps working, and the two
processes share the instance's stats page: launches and GPU time add up, and the memory
quota is reserved and committed across both.

Runs tests/shim/drivers/fork_share.c against the fake driver (tests/shim/fake_cuda.c, which
has no threads and survives fork).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.node_agent.pages import ControlPageWriter, StatsReader, control_for, create_stats_page
from services.node_agent.shim import build_shim
from tests.shim import cbuild

TIMEOUT_S = 30
GIB = 1 << 30
MIB = 1 << 20
SHARE = 0.5
PHASE_S = 0.4


@pytest.fixture(scope="session")
def process_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libdilu_shim.so, built once for this module's tests."""
    if cbuild.find_compiler() is None:
        pytest.skip("no C compiler ($CC or cc) on PATH: the shim tests build C code")
    return build_shim(out_dir=tmp_path_factory.mktemp("process_shim"), strict=True)


@pytest.fixture(scope="module")
def fork_share(fake_cuda_dir: Path, build_driver: Callable[..., Path],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_driver("fork_share", tmp_path_factory.mktemp("fork_share"), link_fake=True,
                        fake_dir=fake_cuda_dir)


def _run_fork_share(binary: Path, shim: Path, fake_dir: Path, directory: Path,
                    memory_limit_bytes: int) -> tuple[subprocess.CompletedProcess[str], Path]:
    control, stats = directory / "control", directory / "stats"
    ControlPageWriter(control, control_for(SHARE, SHARE, 1.0, memory_limit_bytes)).close()
    create_stats_page(stats)
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("FAKE_CUDA_", "DILU_")) and key != "LD_PRELOAD"}
    environment.update(LD_LIBRARY_PATH=str(fake_dir), LD_PRELOAD=str(shim), DILU_SHIM_QUIET="1",
                       DILU_CONTROL=str(control), DILU_STATS=str(stats))
    done = subprocess.run([str(binary), str(PHASE_S)], env=environment, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    return done, stats


def _lines(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    by_process: dict[str, dict[str, Any]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            by_process[result["process"]] = result
    return by_process


def test_fork_child_is_limited_and_shares_the_instance_accounting(
        fork_share: Path, process_shim: Path, fake_cuda_dir: Path, tmp_path: Path) -> None:
    done, stats_path = _run_fork_share(fork_share, process_shim, fake_cuda_dir, tmp_path,
                                       memory_limit_bytes=3 * GIB // 2)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    results = _lines(done)
    assert set(results) == {"parent", "child"}, done.stdout
    parent, child = results["parent"], results["child"]
    assert parent["failures"] == child["failures"] == 0
    assert parent["child_status"] == 0
    phases = [parent["before_fork"], child["phase"], parent["after_fork"]]
    for phase in phases:
        # Each process is held to the share on its own (the other is idle meanwhile), which
        # needs a live completion thread in it: the child's is new, the parent's survived.
        assert abs(phase["busy_fraction"] - SHARE) < 0.1, phases
        assert phase["launches"] > 0
        assert phase["admitted"] == phase["launches"]
        assert phase["throttled_ns"] > 0

    stats = StatsReader(stats_path).read()
    # One stats page for the instance: both processes' launches and GPU time land on it.
    assert stats.launches == sum(phase["launches"] for phase in phases)
    gpu_ns = sum(phase["gpu_ns"] for phase in phases)
    assert 0.9 * gpu_ns <= stats.busy_ns <= 1.02 * gpu_ns, (stats.busy_ns, gpu_ns)
    assert stats.throttled_ns >= sum(phase["throttled_ns"] for phase in phases)
    # The parent's 1 GiB was charged once, the child's refused 1 GiB never, the child's
    # 256 MiB while it lived; the child's free of the parent's pointer returned nothing,
    # and the parent's own free returned its gigabyte.
    assert stats.memory_used_bytes == 0
    assert stats.memory_peak_bytes == GIB + 256 * MIB
