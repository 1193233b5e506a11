"""What the scheduler does when a function keeps failing, against real processes: back-off,
the degraded state, a bounded failure history, a clean re-deploy; and invoking training.

A torch spec whose weights file is missing stands for "a spec only the worker can find
out it cannot run": Deploy cannot check a file on the node, so it is accepted and every
worker exits within a couple of seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from dilu.v1 import scheduler_pb2, types_pb2

from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster, inference_spec, torch_inference_spec

S = types_pb2
ROOT = Path(__file__).resolve().parents[2]
# Short back-off so that five failures fit in a test: 0.2, 0.4, 0.8 s, then 1 s.
QUICK_BACKOFF = ("--backoff-initial-s", "0.2", "--backoff-max-s", "1")


def dilu(*args: str, scheduler: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}"}
    return subprocess.run([sys.executable, "-m", "services.cli.main", "--scheduler", scheduler,
                           *args], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def test_a_function_only_its_worker_cannot_run_backs_off_and_degrades(
        cluster: Cluster, tmp_path: Path):
    scheduler = cluster.start_scheduler(*QUICK_BACKOFF)
    cluster.start_agent("n1")
    assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
    # Only the node can find out that the weights file is missing: Deploy accepts it.
    spec = torch_inference_spec("broken")
    spec.weights_uri = str(tmp_path / "missing.pt")
    cluster.deploy(spec)

    seen: set[str] = set()
    most_terminal = 0

    def degraded() -> types_pb2.Function:
        nonlocal most_terminal
        function = cluster.function("broken")
        seen.update(i.id for i in function.status.instances)
        terminal = [i for i in function.status.instances
                    if i.state in (S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_LOST)]
        most_terminal = max(most_terminal, len(terminal))
        assert function.status.state == S.FUNCTION_STATE_DEGRADED, function.status
        return function

    function = assert_eventually(degraded, timeout=60, interval=0.2,
                                 message="five failures in a row degrade the function")
    status = function.status
    assert status.consecutive_failures >= 5
    assert "missing.pt" in status.last_error
    assert status.HasField("next_retry_at")
    assert most_terminal <= 5  # a bounded history, however long it fails
    failed = sorted(i.created_at.ToNanoseconds() / 1e9 for i in status.instances
                    if i.state == S.INSTANCE_STATE_FAILED)
    assert len(failed) >= 3
    assert len(seen) <= status.consecutive_failures + 1  # one start per failure, no more
    # The next start waits for next_retry_at (degraded: the longest back-off, 1 s here).
    retry_at = status.next_retry_at.ToNanoseconds() / 1e9
    retried = assert_eventually(
        lambda: [i for i in cluster.function("broken").status.instances if i.id not in seen],
        timeout=10, interval=0.05, message="retried after the back-off")
    assert retried[0].created_at.ToNanoseconds() / 1e9 >= retry_at - 0.01
    seen.update(i.id for i in retried)

    shown = dilu("status", scheduler=scheduler.address)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("broken "))
    assert "degraded" in row and "missing.pt" in row
    printed = json.loads(dilu("status", "--json", scheduler=scheduler.address).stdout)
    assert printed["functions"][0]["status"]["state"] == "FUNCTION_STATE_DEGRADED"
    assert "consecutive_failures" in printed["functions"][0]["status"]
    assert "desired_replicas" in printed["functions"][0]["status"]


def test_a_redeployed_function_shows_none_of_the_deleted_ones_failures(
        one_node: Cluster, tmp_path: Path):
    spec = torch_inference_spec("again")
    spec.weights_uri = str(tmp_path / "missing.pt")
    one_node.deploy(spec)
    old = assert_eventually(
        lambda: {i.id for i in one_node.function("again").status.instances
                 if i.state == S.INSTANCE_STATE_FAILED},
        timeout=20, message="the first deployment fails")

    one_node.sched.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name="again"))
    fresh = one_node.deploy(inference_spec("again"))

    assert [i.state for i in fresh.status.instances] == [S.INSTANCE_STATE_STARTING]
    assert not {i.id for i in fresh.status.instances} & old
    assert fresh.status.state == S.FUNCTION_STATE_OK
    assert fresh.status.consecutive_failures == 0 and not fresh.status.last_error
    ready = assert_eventually(
        lambda: (f := one_node.function("again")).status.ready_replicas == 1 and f,
        timeout=15, message="the re-deployed function serves")
    assert {i.id for i in ready.status.instances}.isdisjoint(old)


def test_invoking_a_training_function_is_a_failed_precondition(one_node: Cluster):
    spec = inference_spec("trainer")
    spec.kind = S.FUNCTION_KIND_TRAINING
    spec.model = "bert-base"
    spec.ClearField("slo")
    one_node.deploy(spec)

    with pytest.raises(grpc.RpcError) as refused:
        one_node.sched.Invoke(scheduler_pb2.InvokeRequest(function="trainer", payload=b"{}"))

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "training" in refused.value.details()


def test_dilu_status_json_uses_the_api_field_names(one_node: Cluster):
    one_node.deploy(inference_spec("named"))
    assert one_node.scheduler is not None

    shown = dilu("status", "--json", scheduler=one_node.scheduler.address)

    assert shown.returncode == 0, shown.stderr
    function = json.loads(shown.stdout)["functions"][0]
    assert function["spec"]["resources"]["sm_request"] == 0.3
    assert function["status"]["desired_replicas"] == 1
    assert "created_at" in function["status"]["instances"][0]
    assert "desiredReplicas" not in shown.stdout
