"""A node agent with `--cuda-shim on` preloads the CUDA shim into torch workers only.

There is no CUDA driver here, so the preloaded shim stands aside ("nothing to enforce")
and the worker's Python gate keeps enforcing: a real worker process must start, serve and
be throttled with the shim in it. Enforcement by the shim itself is tested against the fake
driver in tests/shim and measured on a GPU by bench/shim_gpu.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dilu.v1 import scheduler_pb2, types_pb2

from services.node_agent.pages import StatsReader
from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster, inference_spec, torch_inference_spec
from tests.shim.cbuild import find_compiler

S = types_pb2


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _worker_pid(cluster: Cluster, name: str) -> int:
    def ready_pid() -> int:
        for instance in cluster.function(name).status.instances:
            if instance.state == S.INSTANCE_STATE_READY:
                stats = StatsReader(cluster.runtime_dir / "n1" / f"{instance.id}.stats")
                return stats.read().pid
        return 0

    return assert_eventually(ready_pid, timeout=30, message=f"a ready worker of {name}")


def test_torch_workers_run_with_the_shim_preloaded_and_sim_workers_without(
        cluster: Cluster, tmp_path: Path):
    if find_compiler() is None:
        pytest.skip("no C compiler: the agent builds the shim from source")
    cluster.launcher.env["DILU_SHIM_CACHE"] = str(tmp_path / "shim-cache")
    cluster.start_scheduler()
    cluster.start_agent("n1", 2, "--cuda-shim", "on")
    assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
    cluster.deploy(torch_inference_spec("cnn"))
    cluster.deploy(inference_spec("sim"))

    torch_pid = _worker_pid(cluster, "cnn")
    preload = _environ(torch_pid).get("LD_PRELOAD", "")
    assert "libdilu_shim.so" in preload
    assert Path(preload.split()[0]).is_relative_to(tmp_path / "shim-cache")
    assert "libdilu_shim.so" not in _environ(_worker_pid(cluster, "sim")).get("LD_PRELOAD", "")

    image = {"image": [0.5] * (3 * 16 * 16)}
    reply = cluster.sched.Invoke(scheduler_pb2.InvokeRequest(
        function="cnn", payload=json.dumps(image).encode(), content_type="application/json"),
        timeout=20)
    assert 0 <= json.loads(reply.payload)["class"] < 10
    # Without a CUDA driver the shim stands aside and the Python gate counts the launch.
    instance = next(i for i in cluster.function("cnn").status.instances
                    if i.state == S.INSTANCE_STATE_READY)
    stats = StatsReader(cluster.runtime_dir / "n1" / f"{instance.id}.stats")
    assert_eventually(lambda: stats.read().launches >= 1, message="the gate admitted the batch")
