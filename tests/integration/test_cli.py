"""The `dilu` CLI and grpcurl, as a user would type them, against a running stack."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def dilu(*args: str, scheduler: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}"}
    command = [sys.executable, "-m", "services.cli.main"]
    if scheduler:
        command += ["--scheduler", scheduler]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True,
                          timeout=30)


def test_grpcurl_lists_the_service_and_deploys_and_reports_bad_fields(one_node: Cluster):
    address = one_node.scheduler.address
    listed = grpcurl(address, "list")
    assert "dilu.v1.SchedulerService" in listed.stdout.split()

    body = {"function": {"name": "curl", "kind": "FUNCTION_KIND_INFERENCE",
                         "runtime": "RUNTIME_SIM", "model": "bert-base",
                         "slo": {"latency_ms": 50},
                         "resources": {"sm_request": 0.2, "sm_limit": 0.4, "memory_mib": 2048}}}
    deployed = grpcurl("-d", json.dumps(body), address, "dilu.v1.SchedulerService/Deploy")
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["function"]["status"]["instances"][0]["node"] == "n1"

    body["function"]["name"] = "curl-bad"
    body["function"]["resources"]["memory_mib"] = -1
    refused = grpcurl("-d", json.dumps(body), address, "dilu.v1.SchedulerService/Deploy")
    assert refused.returncode != 0
    assert "InvalidArgument" in refused.stderr
    assert "function.resources.memory_mib" in refused.stderr


def test_dilu_deploy_status_scale_invoke_and_delete(one_node: Cluster):
    address = one_node.scheduler.address
    deployed = dilu("deploy", str(ROOT / "examples" / "bert-base.yaml"), scheduler=address)
    assert deployed.returncode == 0, deployed.stderr
    assert "bert-base" in deployed.stdout

    status = dilu("status", scheduler=address)
    assert status.returncode == 0, status.stderr
    assert "bert-base" in status.stdout and "n1/gpu0" in status.stdout

    scaled = dilu("scale", "bert-base", "--out", "1", scheduler=address)
    assert scaled.returncode == 0 and "/2 ready" in scaled.stdout
    assert_eventually(lambda: one_node.function("bert-base").status.ready_replicas == 2,
                      message="both workers serving")

    invoked = dilu("invoke", "bert-base", scheduler=address)
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout) == {"model": "bert-base", "runtime": "sim", "batch": 1}
    assert "served by bert-base-" in invoked.stderr

    deleted = dilu("delete", "bert-base", scheduler=address)
    assert deleted.returncode == 0 and "2 instances stopped" in deleted.stdout
    missing = dilu("delete", "bert-base", scheduler=address)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_dilu_deploy_reports_an_unreadable_spec(one_node: Cluster, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    result = dilu("deploy", str(bad), scheduler=one_node.scheduler.address)
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_dilu_demo_runs_unattended_to_its_summary_and_exits_zero():
    # The README's run command replays 60 s of load; a shorter replay exercises every step.
    result = dilu("demo", "--seconds", "8", "--table-every", "3", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "INVALID_ARGUMENT: function.resources.sm_request" in out
    assert "offered: resnet152" in out and "roberta-finetune" in out  # the live table
    summary = out[out.index("=== summary ==="):]
    served = re.search(r"requests served: (\d+) of (\d+); SLO attainment ([\d.]+)%", summary)
    assert served and int(served.group(1)) > 0 and int(served.group(2)) >= int(served.group(1))
    assert "mean GPU utilisation, all GPUs" in summary and "done" in out


def test_dilu_up_serves_until_dilu_down_and_stops_every_child(tmp_path: Path):
    from services.cli.stack import free_port

    ports = {flag: str(free_port()) for flag in (
        "--nats-port", "--scheduler-port", "--node-agent-port", "--profiler-port", "--scaler-port",
        "--scheduler-metrics-port", "--node-agent-metrics-port", "--profiler-metrics-port",
        "--scaler-metrics-port")}
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}"}
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--state-dir", str(state),
         *[x for pair in ports.items() for x in pair]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        stack = assert_eventually(lambda: (state / "stack.json").exists() and json.loads(
            (state / "stack.json").read_text()), timeout=60, message="dilu up wrote stack.json")
        scheduler = stack["endpoints"]["scheduler"]
        assert scheduler == f"127.0.0.1:{ports['--scheduler-port']}"
        assert stack["metrics"]["scaler"] == \
            f"http://127.0.0.1:{ports['--scaler-metrics-port']}/metrics"
        deployed = dilu("deploy", str(ROOT / "examples" / "resnet152.yaml"), scheduler=scheduler)
        assert deployed.returncode == 0, deployed.stderr
        before = dilu("status", scheduler=scheduler).stdout
        instance = next(w for w in before.split() if w.startswith("resnet152-"))

        # Kill the scheduler: `dilu up` restarts it and it recovers its state.
        os.kill(stack["pids"]["scheduler"], signal.SIGKILL)
        restarted = assert_eventually(
            lambda: json.loads((state / "stack.json").read_text())["pids"]["scheduler"]
            != stack["pids"]["scheduler"], timeout=30, message="scheduler restarted")
        assert restarted
        after = assert_eventually(
            lambda: (r := dilu("status", scheduler=scheduler)).returncode == 0 and r,
            timeout=20, message="restarted scheduler answers")
        assert instance in after.stdout
        children = [json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.json")]
        assert len(children) == 4

        down = dilu("down", "--state-dir", str(state))
        assert down.returncode == 0, down.stdout + down.stderr
        assert up.wait(timeout=30) == 0
        output = up.stdout.read() if up.stdout else ""
        assert "Dilu is up" in output and "scheduler exited; restarted" in output
        assert "stopped" in output
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or \
                Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
