"""CUDA graph capture under the shim, as torch.cuda.graph drives it.

tests/shim/drivers/graph_capture.c warms up on the legacy stream and another one,
synchronizes, and captures ~200 launches in CU_STREAM_CAPTURE_MODE_GLOBAL on a side stream
while the shim's completion thread polls the events of work still in flight. The fake driver
applies CUDA's rule for potentially unsafe calls during a capture (fake_cuda.c): an event
query from any thread that has not switched itself to CU_STREAM_CAPTURE_MODE_RELAXED
invalidates a global capture, and cuStreamEndCapture then fails with
CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph (in PyTorch: "operation not permitted
when stream is capturing" and a failed torch.cuda.graph). The shim must leave the capture
intact, with no event of its own recorded into it, at the whole GPU and at a share, whether
the capturing thread is alone or another thread launches on its own stream meanwhile; and
work captured into a graph is charged when the graph runs, not when it is captured.

To see these tests catch the bug they guard against, build the shim from a copy of its
sources whose completion thread does not call cuThreadExchangeStreamCaptureMode (launch.c,
reaper_main): every capture then ends with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.node_agent.pages import Stats
from tests.shim import cbuild

CUDA_SUCCESS = 0
CAPTURE_STATUS_ACTIVE = 1


@pytest.fixture(scope="module")
def graph_capture(fake_cuda_dir: Path, build_driver: Callable[..., Path],
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("graph_capture")
    return {
        "linked": build_driver("graph_capture", out, link_fake=True, fake_dir=fake_cuda_dir,
                               output_name="graph_capture_linked"),
        "proc_address": build_driver("graph_capture", out, link_fake=False,
                                     extra_flags=("-DVIA_PROC_ADDRESS",), output_name="graph_capture_proc"),
    }


def run_capture(binary: Path, shim: Path, fake_dir: Path, directory: Path, scenario: str,
                share: float) -> tuple[dict[str, Any], Stats]:
    """Run the driver under `shim` at `share`: its JSON line (after checking it exited 0),
    and the instance's stats page."""
    pages = cbuild.write_pages(directory, share)
    done = cbuild.run_program(binary, scenario, env=cbuild.driver_env(fake_dir, shim, pages))
    return cbuild.single_result(done), pages.read_stats()


def assert_capture_intact(result: dict[str, Any]) -> None:
    # The completion thread polled during the capture: else nothing here was tested.
    assert result["queries_during_capture"] > 0, result
    assert result["end_capture"] == CUDA_SUCCESS and result["graph"] is True, result
    assert result["status_before_end"] == CAPTURE_STATUS_ACTIVE, result
    assert result["invalidated_captures"] == 0, result
    assert result["launch_errors"] == 0, result
    assert result["captured"] == result["launched"] >= 200, result
    assert result["events_on_capturing_streams"] == 0, result
    assert result["replayed"] == CUDA_SUCCESS, result


@pytest.mark.parametrize("path", ["linked", "proc_address"])
@pytest.mark.parametrize("share", [1.0, 0.5])
def test_global_capture_survives_the_completion_thread(
        graph_capture: dict[str, Path], shim: Path, fake_cuda_dir: Path, tmp_path: Path,
        share: float, path: str) -> None:
    result, _ = run_capture(graph_capture[path], shim, fake_cuda_dir, tmp_path, "single", share)
    assert_capture_intact(result)


@pytest.mark.parametrize("share", [1.0, 0.5])
@pytest.mark.parametrize("scenario", ["single", "second_thread"])
def test_capture_counts_only_what_ran_while_other_threads_go_on(
        graph_capture: dict[str, Path], shim: Path, fake_cuda_dir: Path, tmp_path: Path,
        share: float, scenario: str) -> None:
    result, stats = run_capture(graph_capture["linked"], shim, fake_cuda_dir, tmp_path, scenario, share)
    assert_capture_intact(result)
    # With a second thread, its launches (and the shim's markers on its stream) went on
    # meanwhile; alone, there were none.
    assert (result["second_launches"] > 0) == (scenario == "second_thread"), result
    assert result["second_errors"] == 0, result
    # Charged: the warm-up, the long kernel and the replay (52), and the second thread's
    # launches; the 200 captured launches ran nowhere.
    assert result["executed"] == 52, result
    assert stats.launches == result["executed"] + result["second_launches"], (stats, result)
