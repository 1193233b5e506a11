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
    # co-scaling is on: its actions and the GPU time it reserved are in the summary
    assert re.search(r"co-scaling actions: \d+ vertical, \d+ horizontal", summary)
    used = re.search(r"GPU-seconds (\d+), reserved share-seconds (\d+)", summary)
    assert used and int(used.group(1)) > 0 and int(used.group(2)) > 0


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


def _up(state: Path, ports: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}"}
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--state-dir", str(state),
         *[x for pair in ports.items() for x in pair]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def _stack_record(state: Path) -> dict:  # type: ignore[type-arg]
    return assert_eventually(lambda: (state / "stack.json").exists() and json.loads(
        (state / "stack.json").read_text()), timeout=60, message="dilu up wrote stack.json")


def _stop_recorded(state: Path) -> None:
    """Stop whatever a stack recorded that still runs (when the test failed midway)."""
    from services.cli.ownership import same_process

    try:
        record = json.loads((state / "stack.json").read_text())
    except (OSError, ValueError):
        return
    for name, pid in record.get("pids", {}).items():
        if same_process(pid, record.get("starts", {}).get(name)):
            os.kill(pid, signal.SIGKILL)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_dilu_up_owns_its_state_dir_survives_a_crash_loop_and_leaves_nothing_after_kill_9(
        tmp_path: Path):
    from services.cli.stack import free_port
    from services.node_agent.pages import StatsReader

    ports = {flag: str(free_port()) for flag in (
        "--nats-port", "--scheduler-port", "--node-agent-port", "--profiler-port", "--scaler-port")}
    state = tmp_path / "state"
    up = _up(state, ports)
    again: subprocess.Popen[str] | None = None
    try:
        stack = _stack_record(state)
        scheduler = stack["endpoints"]["scheduler"]
        # A second stack on the same state dir refuses, naming the owner.
        second = dilu("up", "--state-dir", str(state), *[x for p in ports.items() for x in p])
        assert second.returncode == 1 and f"pid {up.pid}" in second.stderr, second.stderr
        assert dilu("deploy", str(ROOT / "examples" / "resnet152.yaml"),
                    scheduler=scheduler).returncode == 0
        instance = assert_eventually(lambda: next(
            (w for w in dilu("status", scheduler=scheduler).stdout.splitlines()
             if w.startswith("resnet152-") and " ready " in w), None), timeout=20,
            message="resnet152 serves").split()[0]
        worker = StatsReader(state / "run" / "local" / f"{instance}.stats").read().pid

        # The profiler keeps dying: after 5 deaths within a minute it is left down, alone.
        for _ in range(5):
            pid = json.loads((state / "stack.json").read_text())["pids"]["profiler"]
            os.kill(pid, signal.SIGKILL)
            assert_eventually(lambda p=pid: (r := json.loads((state / "stack.json").read_text()))
                              ["pids"]["profiler"] != p or "profiler" in r["down"],
                              timeout=20, message="profiler restarted or left down")
        record = json.loads((state / "stack.json").read_text())
        assert "died 5 times" in record["down"]["profiler"]
        assert up.poll() is None
        invoked = dilu("invoke", "resnet152", scheduler=scheduler)
        assert invoked.returncode == 0 and instance in invoked.stderr, invoked.stderr

        # kill -9 of `dilu up`: every process it started, and the worker, goes with it.
        os.kill(up.pid, signal.SIGKILL)
        up.wait()
        survivors = [pid for name, pid in record["pids"].items() if name != "profiler"] + [worker]
        # Each stops within its shutdown bound (grace 5 s + 10 s), whatever hangs.
        assert_eventually(lambda: all(_gone(pid) for pid in survivors), timeout=30,
                          message="no orphans after kill -9 of dilu up")
        down = dilu("down", "--state-dir", str(state))
        assert down.returncode == 0 and "was gone" in down.stdout, down.stdout + down.stderr

        # The next `dilu up` takes the state dir and the store over, with the function kept.
        again = _up(state, ports)
        scheduler = _stack_record(state)["endpoints"]["scheduler"]
        assert_eventually(lambda: "resnet152" in dilu("status", scheduler=scheduler).stdout,
                          timeout=20, message="the function survived")
        assert dilu("down", "--state-dir", str(state)).returncode == 0
        assert again.wait(timeout=30) == 0
    finally:
        for process in (up, again):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        _stop_recorded(state)


def test_dilu_scale_out_zero_and_invoke_of_a_missing_file_are_clear_errors(tmp_path: Path):
    zero = dilu("scale", "f", "--out", "0", scheduler="127.0.0.1:1")
    assert zero.returncode == 2 and "must be at least 1" in zero.stderr
    missing = dilu("invoke", "f", "--file", str(tmp_path / "missing.json"), scheduler="127.0.0.1:1")
    assert missing.returncode == 2 and "cannot read the request body" in missing.stderr
    assert "Traceback" not in missing.stderr
