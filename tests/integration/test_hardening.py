"""What a careless or hostile user broke when the platform was tried as a new user would
(issue 11), each case against real processes: ids as paths, extreme quotas, oversized
fields on the bus, two servers on one port, undecodable requests, a torch model too big for
its quota, and addresses for a cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from dilu.v1 import node_agent_pb2, node_agent_pb2_grpc, scheduler_pb2, types_pb2

from services.cli.stack import NatsServer, ServiceLauncher, StackError
from services.node_agent.pages import MIB, ControlPageWriter, control_for, create_stats_page
from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster, inference_spec

S = types_pb2
ROOT = Path(__file__).resolve().parents[2]


def _gpu(stub: node_agent_pb2_grpc.NodeAgentServiceStub) -> str:
    return stub.GetNodeStatus(node_agent_pb2.GetNodeStatusRequest()).node.gpus[0].uuid


def _quota(share: float = 0.3, memory_mib: int = 4096) -> types_pb2.Quota:
    return types_pb2.Quota(sm_request=share, sm_limit=share, memory_limit_mib=memory_mib)


def _refused(call, field: str) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith(field), refused.value.details()
    return refused.value


def _no_tracebacks(cluster: Cluster) -> None:
    for log in (cluster.tmp / "logs").glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log.name


def test_an_instance_id_that_is_a_path_is_refused_and_touches_no_file(cluster: Cluster, tmp_path: Path):
    agent = cluster.start_agent("n1", 1)
    stub = cluster.agent_stub(agent)
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    (victim.parent / "victim.spec").write_text("someone else's file")
    before = sorted(victim.parent.iterdir())
    for instance_id in (str(victim), "../victim", "a/b", "a.b", "*", ">", "x" * 81, " i1"):
        _refused(lambda i=instance_id: stub.StartInstance(node_agent_pb2.StartInstanceRequest(
            instance_id=i, function=inference_spec("f"), gpu_uuids=[_gpu(stub)], quota=_quota())),
            "instance_id")
        _refused(lambda i=instance_id: stub.StopInstance(node_agent_pb2.StopInstanceRequest(
            instance_id=i)), "instance_id")
        _refused(lambda i=instance_id: stub.SetQuota(node_agent_pb2.SetQuotaRequest(
            instance_id=i, quota=_quota())), "instance_id")
    assert sorted(victim.parent.iterdir()) == before
    assert (victim.parent / "victim.spec").read_text() == "someone else's file"
    assert not list(cluster.runtime_dir.parent.glob("*.ctl"))
    _no_tracebacks(cluster)


def test_an_extreme_set_quota_is_refused_and_the_node_keeps_working(cluster: Cluster):
    agent = cluster.start_agent("n1", 1)
    stub = cluster.agent_stub(agent)
    stub.StartInstance(node_agent_pb2.StartInstanceRequest(
        instance_id="i1", function=inference_spec("f"), gpu_uuids=[_gpu(stub)], quota=_quota()))
    for quota, field in [
        (types_pb2.Quota(sm_request=0.3, sm_limit=0.3, memory_limit_mib=2**62), "quota.memory_limit_mib"),
        (types_pb2.Quota(sm_request=0.3, sm_limit=0.3, memory_limit_mib=40961), "quota.memory_limit_mib"),
        (types_pb2.Quota(sm_request=5e-324, sm_limit=0.3), "quota.sm_request"),
        (types_pb2.Quota(sm_request=0.3, sm_limit=float("inf")), "quota.sm_limit"),
        (types_pb2.Quota(sm_request=float("nan"), sm_limit=0.3), "quota.sm_request"),
    ]:
        _refused(lambda q=quota: stub.SetQuota(node_agent_pb2.SetQuotaRequest(
            instance_id="i1", quota=q)), field)
    # Every later SetQuota still works and the arbiter still runs.
    for share in (0.5, 0.2):
        applied = stub.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id="i1", quota=_quota(share)))
        assert applied.quota.effective_share == pytest.approx(share)
    log = (cluster.tmp / "logs" / "node-agent-n1.log").read_text()
    assert "_arbitrate failed" not in log and "Traceback" not in log


def test_a_very_long_function_name_is_refused_and_other_instances_keep_serving(cluster: Cluster):
    cluster.start_scheduler()
    agent = cluster.start_agent("n1", 1)
    stub = cluster.agent_stub(agent)
    assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
    cluster.deploy(inference_spec("keep"))
    assert_eventually(lambda: cluster.function("keep").status.ready_replicas == 1, timeout=20,
                      message="keep serves")
    long_spec = inference_spec("f" * 1_100_000)  # once pushed the heartbeat past 1 MiB
    _refused(lambda: stub.StartInstance(node_agent_pb2.StartInstanceRequest(
        instance_id="long", function=long_spec, gpu_uuids=[_gpu(stub)], quota=_quota()),
        timeout=10), "function.name")
    # For over two node timeouts (1.5 s) the node keeps heartbeating and its instance serves.
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert cluster.nodes()["n1"].state == S.NODE_STATE_READY
        time.sleep(0.2)
    instances = cluster.function("keep").status.instances
    assert [i.state for i in instances] == [S.INSTANCE_STATE_READY]
    cluster.sched.Invoke(scheduler_pb2.InvokeRequest(function="keep"), timeout=10)


def test_a_second_scheduler_on_a_taken_port_refuses_to_start(cluster: Cluster):
    first = cluster.start_scheduler()
    port = first.address.rsplit(":", 1)[1]
    try:
        second = cluster.launcher.start("scheduler", "--port", port, name="scheduler-2")
    except StackError as refused:
        assert "exited with 2" in str(refused)
        assert "cannot listen on" in str(refused) and "Traceback" not in str(refused)
    else:
        second.stop()
        pytest.fail("a second scheduler started on a port the first one owns")
    # The first one still serves alone.
    assert cluster.sched.ListFunctions(scheduler_pb2.ListFunctionsRequest(), timeout=5) is not None


def test_undecodable_requests_get_invalid_argument_without_a_traceback(one_node: Cluster):
    profiler = one_node.start_profiler()
    scaler = one_node.start_service("scaler")
    agent_address = next(p.address for p in one_node.processes if p.name == "node-agent-n1")
    assert one_node.scheduler is not None
    targets = [(one_node.scheduler.address, "/dilu.v1.SchedulerService/Deploy"),
               (one_node.scheduler.address, "/dilu.v1.SchedulerService/Invoke"),
               (agent_address, "/dilu.v1.NodeAgentService/StartInstance"),
               # Not GetProfile: its field 1 is reserved now (the old function name), so
               # one of the garbages below decodes there as an unknown field.
               (profiler.address, "/dilu.v1.ProfilerService/ProfileFunction"),
               (scaler.address, "/dilu.v1.ScalerService/ListDecisions")]
    for address, method in targets:
        call = one_node.channel(address).unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe", b"\x0a" * 3):
            with pytest.raises(grpc.RpcError) as refused:
                call(garbage, timeout=5)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, garbage)
            assert refused.value.details().startswith("request: is not a valid dilu.v1.")
    _no_tracebacks(one_node)


def test_deploy_refuses_specs_no_worker_could_run(cluster: Cluster):
    cluster.start_scheduler()
    too_small = inference_spec("small", memory_mib=64)
    one_mib = inference_spec("one", memory_mib=1)
    misspelt = inference_spec("typo")
    misspelt.runtime, misspelt.model = S.RUNTIME_TORCH, "resnet"
    misspelt.runtime_options["widht"] = "8"
    split = inference_spec("llm", memory_mib=20000)
    split.kind, split.model = S.FUNCTION_KIND_LLM_INFERENCE, "llama2-7b"
    split.resources.gpus_per_instance = 2
    for spec, field in [(too_small, "function.resources.memory_mib"),
                        (one_mib, "function.resources.memory_mib"),
                        (misspelt, "function.runtime_options.widht"),
                        (split, "function.resources.gpus_per_instance")]:
        _refused(lambda s=spec: cluster.deploy(s), field)
    assert not cluster.sched.ListFunctions(scheduler_pb2.ListFunctionsRequest()).functions


def test_a_torch_worker_checks_its_memory_quota_before_building_the_model(tmp_path: Path):
    # A 1 GiB transformer (256 M float32 parameters) under a 100 MiB quota.
    spec = types_pb2.FunctionSpec(
        name="big", kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_TORCH, model="transformer",
        slo=types_pb2.Slo(latency_ms=100), runtime_options={
            "vocab": "250000", "d_model": "1024", "heads": "8", "layers": "1"})
    (tmp_path / "big.spec").write_bytes(spec.SerializeToString())
    control = ControlPageWriter(tmp_path / "big.ctl", control_for(0.5, 0.5, 0.5, 100 * MIB))
    create_stats_page(tmp_path / "big.stats")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
           "DILU_INSTANCE_ID": "big", "DILU_SPEC": str(tmp_path / "big.spec"),
           "DILU_CONTROL": str(tmp_path / "big.ctl"), "DILU_STATS": str(tmp_path / "big.stats")}
    # The peak resident memory of the worker alone, measured by a parent of its own.
    measure = ("import resource, subprocess, sys\n"
               "code = subprocess.run([sys.executable, '-m', 'services.node_agent.worker']).returncode\n"
               "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    try:
        result = subprocess.run([sys.executable, "-c", measure], env=env, cwd=ROOT, timeout=120,
                                capture_output=True, text=True)
    finally:
        control.close()
    code, peak_kib = (int(x) for x in result.stdout.split())
    assert code == 2, result.stderr
    assert "out of GPU memory" in result.stderr and "the instance's quota is 100 MiB" in result.stderr
    assert peak_kib < 250 * 1024, f"the worker peaked at {peak_kib // 1024} MiB resident"


def test_an_agent_bound_to_every_interface_advertises_an_address_others_can_dial(cluster: Cluster):
    cluster.start_scheduler()
    wildcard = cluster.start_agent("n1", 1, "--host", "0.0.0.0")
    node = assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered").node
    host, port = node.address.rsplit(":", 1)
    assert host not in ("0.0.0.0", "", "::") and port == wildcard.address.rsplit(":", 1)[1]
    named = cluster.start_agent("n2", 1, "--advertise-host", "localhost")
    node = assert_eventually(lambda: cluster.nodes().get("n2"), message="n2 registered").node
    assert node.address == f"localhost:{named.address.rsplit(':', 1)[1]}"
    # Workers advertise the node's address too, and Invoke reaches them through it.
    spec = inference_spec("where", max_replicas=2)
    spec.replicas.min = 2
    cluster.deploy(spec)
    ready = assert_eventually(
        lambda: [i for i in cluster.function("where").status.instances
                 if i.state == S.INSTANCE_STATE_READY] if cluster.function(
            "where").status.ready_replicas == 2 else [], timeout=20, message="both replicas")
    endpoints = {i.node: i.endpoint for i in ready}
    assert endpoints["n2"].startswith("localhost:")
    assert endpoints["n1"].rsplit(":", 1)[0] == host
    served = {cluster.sched.Invoke(scheduler_pb2.InvokeRequest(function="where"),
                                   timeout=10).instance_id for _ in range(6)}
    assert served == {i.id for i in ready}
    assert json.loads(cluster.sched.Invoke(scheduler_pb2.InvokeRequest(function="where"),
                                           timeout=10).payload)["runtime"] == "sim"


def test_a_jetstream_store_never_has_two_nats_servers(tmp_path: Path):
    first = NatsServer(tmp_path / "nats").start()
    second = NatsServer(tmp_path / "nats")
    try:
        with pytest.raises(StackError, match="already runs on it"):
            second.start()
        assert first.proc is not None and first.proc.alive()
    finally:
        second.stop()  # in case it started after all
        first.stop()
    second = NatsServer(tmp_path / "nats").start()  # free again once the first stopped
    second.stop()


@pytest.mark.parametrize("service", ["scheduler", "scaler"])
def test_a_service_stopping_together_with_nats_exits_promptly_and_cleanly(
        tmp_path: Path, service: str):
    # What `kill -9` of `dilu up` does: every child gets SIGTERM at once, NATS included.
    # Draining a connection that is reconnecting once hung a service for good.
    for attempt in range(3):
        root = tmp_path / str(attempt)
        nats = NatsServer(root / "nats").start()
        process = ServiceLauncher(root, nats.url).start(service)
        try:
            time.sleep(0.3 * attempt)
            assert nats.proc is not None
            os.kill(nats.proc.pid, signal.SIGTERM)
            os.kill(process.pid, signal.SIGTERM)
            assert process.process.wait(timeout=10) == 0
        finally:
            process.kill()
            nats.stop()
        log = (root / "logs" / f"{service}.log").read_text()
        assert "Traceback" not in log and "stopped" in log
