"""The shim across fork(): the child is limited at the instance's share with a completion
thread of its own (threads do not survive fork), the parent's keeps working, and the two
processes share the instance's stats page: launches and GPU time add up, and the memory
quota is reserved and committed across both.

Runs tests/shim/drivers/fork_share.c against the fake driver (tests/shim/fake_cuda.c, which
has no threads and survives fork).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.shim import cbuild

GIB = 1 << 30
MIB = 1 << 20
SHARE = 0.5
PHASE_S = 0.4


@pytest.fixture(scope="module")
def fork_share(fake_cuda_dir: Path, build_driver: Callable[..., Path],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_driver("fork_share", tmp_path_factory.mktemp("fork_share"), link_fake=True,
                        fake_dir=fake_cuda_dir)


def test_fork_child_is_limited_and_shares_the_instance_accounting(
        fork_share: Path, shim: Path, fake_cuda_dir: Path, tmp_path: Path) -> None:
    pages = cbuild.write_pages(tmp_path, SHARE, memory_limit_bytes=3 * GIB // 2)
    done = cbuild.run_program(fork_share, PHASE_S, env=cbuild.driver_env(fake_cuda_dir, shim, pages))
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    # Each process prints its own line, named by its "process" field.
    results = {result["process"]: result for result in cbuild.json_lines(done)}
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

    stats = pages.read_stats()
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
