"""Secure mode against real processes (`dilu up --secure` on free ports): who may call what
on every gRPC port, what NATS lets each identity do, credentials that prove nobody or no
longer anything, the metrics endpoint, workers under their own uids (as root), and that no
refusal leaves a traceback behind.

One stack for the module; each test uses functions of its own.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from dilu.events.v1 import events_pb2
from dilu.v1 import (
    node_agent_pb2,
    node_agent_pb2_grpc,
    profiler_pb2,
    profiler_pb2_grpc,
    scaler_pb2,
    scaler_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

from services.cli.main import main as dilu_main
from services.common import subjects
from services.common.security.certs import DevCa
from services.common.security.tls import channel_credentials, client_context
from services.node_agent.pages import StatsReader
from services.scaler.lease import LEASE_BUCKET, LEASE_KEY
from tests.helpers import assert_eventually
from tests.integration.conftest import inference_spec
from tests.integration.secure_stack import SecureStack, secure_stack

pytestmark = pytest.mark.integration
S = types_pb2
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
SCHEDULER, AGENT = "dilu-scheduler", "dilu-node-agent.local"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    state_dir = tmp_path_factory.mktemp("secure")
    with secure_stack(state_dir) as stack:
        assert_eventually(lambda: _sched(stack).ListNodes(scheduler_pb2.ListNodesRequest(),
                                                          timeout=5).nodes,
                          timeout=20, message="the node registers")
        ca = DevCa.open_or_create(stack.credentials.directory)
        ca.issue("dilu-node-agent.n2")
        ca.issue("stale", not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), days=1)
        DevCa.open_or_create(state_dir / "foreign").issue("dilu-operator")
        yield stack
    for log in stack.logs():
        print(f"----- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def _sched(stack: SecureStack, token: str | None = None) -> scheduler_pb2_grpc.SchedulerServiceStub:
    token = stack.credentials.operator_token() if token is None else token
    return scheduler_pb2_grpc.SchedulerServiceStub(
        stack.channel(stack.address("scheduler"), SCHEDULER, token=token))


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def _dilu(stack: SecureStack, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    code = dilu_main([*argv[:2], "--nats-url", stack.nats_url, "--state-dir",
                      str(stack.state_dir), *argv[2:]])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def _token(stack: SecureStack, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    return _dilu(stack, capsys, "token", "create", *flags).strip()


def _deployed(stack: SecureStack, spec: types_pb2.FunctionSpec) -> types_pb2.Function:
    sched = _sched(stack)
    sched.Deploy(scheduler_pb2.DeployRequest(function=spec), timeout=30)
    return assert_eventually(lambda: (f := sched.GetFunction(scheduler_pb2.GetFunctionRequest(
        name=spec.name), timeout=5).function).status.ready_replicas == 1 and f,
        timeout=40, message=f"{spec.name} ready")


def _ready(function: types_pb2.Function) -> types_pb2.Instance:
    return next(i for i in function.status.instances if i.state == S.INSTANCE_STATE_READY)


def _snapshot(function: types_pb2.Function) -> tuple[object, ...]:
    return (function.spec.SerializeToString(deterministic=True), function.status.desired_replicas,
            sorted((i.id, i.state, i.quota.sm_request) for i in function.status.instances))


def _grpcurl(*args: str) -> str:
    done = subprocess.run([GRPCURL, "-max-time", "10", *args], capture_output=True, text=True,
                          timeout=30, check=False)
    return done.stdout + done.stderr


def test_grpcurl_without_credentials_gets_unauthenticated_on_every_service(secure: SecureStack):
    ca = str(secure.credentials.ca)
    for service in ("scheduler", "node-agent", "profiler", "scaler"):
        out = _grpcurl("-cacert", ca, secure.address(service), "list")
        assert "Unauthenticated" in out and "no credentials" in out, (service, out)
    out = _grpcurl("-cacert", ca, "-d", '{"name": "x"}', secure.address("scheduler"),
                   "dilu.v1.SchedulerService/DeleteFunction")
    assert "Unauthenticated" in out
    # Plaintext finds no server to speak to; the peer port wants a certificate.
    assert "Unauthenticated" not in _grpcurl("-connect-timeout", "2", "-plaintext",
                                             secure.address("scheduler"), "list")
    assert "Failed to dial" in _grpcurl("-connect-timeout", "2", "-cacert", ca,
                                        secure.peer_address("scheduler"), "list")


def test_grpcurl_with_a_token_or_a_client_certificate_is_served(secure: SecureStack):
    ca, token = str(secure.credentials.ca), secure.credentials.operator_token()
    out = _grpcurl("-cacert", ca, "-H", f"authorization: Bearer {token}",
                   secure.address("scheduler"), "dilu.v1.SchedulerService/ListNodes")
    assert '"id": "local"' in out, out
    operator = secure.files("dilu-operator")
    out = _grpcurl("-cacert", ca, "-cert", str(operator.cert), "-key", str(operator.key),
                   secure.peer_address("scheduler"), "dilu.v1.SchedulerService/ListNodes")
    assert '"id": "local"' in out, out


def test_a_deployer_manages_its_namespace_and_nothing_of_another(secure: SecureStack,
                                                                 capsys: pytest.CaptureFixture[str]):
    spec = inference_spec("theirs", request=0.1, limit=0.2, memory_mib=1024)
    spec.namespace = "team-b"
    before = _snapshot(_deployed(secure, spec))
    alice = _sched(secure, _token(secure, capsys, "--role", "deployer", "--namespace", "team-a",
                                  "--name", "alice"))
    for call in (lambda: alice.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name="theirs"), timeout=10),
                 lambda: alice.ScaleOut(scheduler_pb2.ScaleOutRequest(function="theirs"), timeout=10),
                 lambda: alice.ScaleIn(scheduler_pb2.ScaleInRequest(function="theirs"), timeout=10),
                 lambda: alice.Invoke(scheduler_pb2.InvokeRequest(function="theirs"), timeout=10),
                 lambda: alice.GetFunction(scheduler_pb2.GetFunctionRequest(name="theirs"), timeout=10),
                 lambda: alice.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=10),
                 lambda: alice.Deploy(scheduler_pb2.DeployRequest(function=spec), timeout=10)):
        assert _code(call) == grpc.StatusCode.PERMISSION_DENIED
    time.sleep(0.5)
    assert _snapshot(_sched(secure).GetFunction(scheduler_pb2.GetFunctionRequest(name="theirs"),
                                                timeout=10).function) == before
    # Its own: a spec without a namespace lands in alice's, and alice sees only that one.
    own = inference_spec("mine", request=0.1, limit=0.2, memory_mib=1024)
    deployed = alice.Deploy(scheduler_pb2.DeployRequest(function=own), timeout=30).function
    assert deployed.spec.namespace == "team-a"
    listed = alice.ListFunctions(scheduler_pb2.ListFunctionsRequest(), timeout=10).functions
    assert [f.spec.name for f in listed] == ["mine"]
    assert_eventually(lambda: _code(lambda: alice.Invoke(scheduler_pb2.InvokeRequest(
        function="mine"), timeout=10)) == grpc.StatusCode.OK, timeout=40,
        message="alice invokes her own function")
    alice.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name="mine"), timeout=30)
    audit = (secure.state_dir / "logs" / "scheduler.log").read_text()
    assert "refused PERMISSION_DENIED /dilu.v1.SchedulerService/DeleteFunction caller=alice " \
           "role=deployer/team-a via=token" in audit


def test_an_invoker_invokes_only_what_it_is_granted(secure: SecureStack,
                                                    capsys: pytest.CaptureFixture[str]):
    _deployed(secure, inference_spec("granted", request=0.1, limit=0.2, memory_mib=1024))
    bob = _sched(secure, _token(secure, capsys, "--role", "invoker", "--function", "granted",
                                "--name", "bob"))
    assert bob.Invoke(scheduler_pb2.InvokeRequest(function="granted"), timeout=10).instance_id
    assert _code(lambda: bob.Invoke(scheduler_pb2.InvokeRequest(function="theirs"),
                                    timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: bob.ScaleOut(scheduler_pb2.ScaleOutRequest(function="granted"),
                                      timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    assert [f.spec.name for f in bob.ListFunctions(scheduler_pb2.ListFunctionsRequest(),
                                                   timeout=10).functions] == ["granted"]


def test_a_node_agents_certificate_cannot_call_another_node_agent(secure: SecureStack):
    address = secure.peer_address("node-agent")
    set_quota = node_agent_pb2.SetQuotaRequest(instance_id="any", quota=types_pb2.Quota(
        sm_request=1.0, sm_limit=1.0, memory_limit_mib=1024))
    for identity in ("dilu-node-agent.n2", AGENT, "dilu-prometheus"):
        agent = node_agent_pb2_grpc.NodeAgentServiceStub(secure.channel(address, AGENT, identity=identity))
        assert _code(lambda a=agent: a.SetQuota(set_quota, timeout=10)) == \
            grpc.StatusCode.PERMISSION_DENIED, identity
        assert _code(lambda a=agent: a.GetNodeStatus(node_agent_pb2.GetNodeStatusRequest(),
                                                     timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    for identity in (SCHEDULER, "dilu-profiler", "dilu-operator"):
        agent = node_agent_pb2_grpc.NodeAgentServiceStub(secure.channel(address, AGENT, identity=identity))
        assert agent.GetNodeStatus(node_agent_pb2.GetNodeStatusRequest(), timeout=10).node.id == "local"
    audit = (secure.state_dir / "logs" / "node-agent.log").read_text()
    assert "refused PERMISSION_DENIED /dilu.v1.NodeAgentService/SetQuota " \
           "caller=dilu-node-agent.n2 role=node-agent via=certificate node=n2" in audit


def test_workers_serve_mutual_tls_to_services_only(secure: SecureStack):
    function = _deployed(secure, inference_spec("guarded", request=0.1, limit=0.2, memory_mib=1024))
    endpoint = _ready(function).endpoint

    def infer(identity: str) -> grpc.StatusCode:
        stub = worker_pb2_grpc.WorkerServiceStub(
            secure.channel(endpoint, "dilu-worker.local", identity=identity))
        return _code(lambda: stub.Infer(worker_pb2.InferRequest(), timeout=10))

    assert infer(SCHEDULER) == grpc.StatusCode.OK
    assert infer(AGENT) == grpc.StatusCode.OK
    for identity in ("dilu-operator", "dilu-node-agent.n2", "dilu-scaler"):
        assert infer(identity) == grpc.StatusCode.PERMISSION_DENIED, identity
    assert infer("") == grpc.StatusCode.UNAVAILABLE  # no certificate: no handshake


async def test_nats_holds_a_node_agent_to_its_own_node(secure: SecureStack):
    errors: list[str] = []
    watcher = await secure.bus_as("dilu-operator")
    agent = await secure.bus_as(AGENT, errors)
    seen: list[str] = []

    async def keep(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append(msg.subject)

    try:
        await watcher.subscribe("dilu.>", cb=keep)
        await watcher.flush()
        functions = await watcher.jetstream().key_value(subjects.FUNCTIONS_BUCKET)
        await agent.publish("dilu.qos.local.probe", b"mine")
        for subject in ("dilu.qos.n2.probe", "dilu.events.instance.n2.probe",
                        "dilu.telemetry.gpu.n2.GPU-x", "dilu.events.scaling.probe"):
            await agent.publish(subject, b"forged")
        await agent.flush()
        ajs = agent.jetstream(timeout=2.0)
        for subject in ("$KV.dilu-functions.forged", "$KV.dilu-nodes.n2"):
            with pytest.raises(nats.errors.TimeoutError):  # the server never stores it
                await ajs.publish(subject, b"forged", timeout=1.0)
        await agent.subscribe("dilu.qos.>")  # it reads no one's QoS
        await agent.flush()
        await asyncio.sleep(0.5)
        assert "dilu.qos.local.probe" in seen
        assert not [s for s in seen if "probe" in s and s != "dilu.qos.local.probe"], seen
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await functions.get("forged")
        refused = " ".join(errors).lower()
        for subject in ("dilu.qos.n2.probe", "dilu.events.scaling.probe", "$kv.dilu-functions.forged",
                        "$kv.dilu-nodes.n2"):
            assert f'permissions violation for publish to "{subject}"' in refused, subject
        assert 'permissions violation for subscription to "dilu.qos.>"' in refused
    finally:
        await agent.close()
        await watcher.close()
    server_log = (secure.state_dir / "nats" / "nats-server.log").read_text()
    assert 'user:dilu-node-agent.local" - Publish Violation - Subject "dilu.qos.n2.probe"' in server_log


async def test_the_scheduler_drops_an_event_whose_payload_names_another_node(secure: SecureStack):
    """A forged payload on the agent's own subject (what NATS cannot see) changes nothing."""
    function = _deployed(secure, inference_spec("steady", request=0.1, limit=0.2, memory_mib=1024))
    instance = _ready(function)
    agent = await secure.bus_as("dilu-node-agent.local")
    try:
        event = events_pb2.InstanceEvent(function="steady", instance_id=instance.id, node="n2",
                                         kind=events_pb2.INSTANCE_EVENT_KIND_FAILED)
        await agent.publish(subjects.instance_events("local", "steady"), event.SerializeToString())
        await agent.flush()
    finally:
        await agent.close()
    await asyncio.sleep(1.0)
    after = _sched(secure).GetFunction(scheduler_pb2.GetFunctionRequest(name="steady"), timeout=10)
    assert [(i.id, i.state) for i in after.function.status.instances] == [
        (instance.id, S.INSTANCE_STATE_READY)]


def test_credentials_that_prove_nobody_or_no_longer_anything(secure: SecureStack,
                                                              capsys: pytest.CaptureFixture[str]):
    ok = grpc.StatusCode.OK

    def list_with(token: str) -> grpc.StatusCode:
        return _code(lambda: _sched(secure, token).ListFunctions(
            scheduler_pb2.ListFunctionsRequest(), timeout=10))

    for malformed in ("nope", "dilu_" + "x" * 42, "dilu_" + "!" * 43):
        assert list_with(malformed) == grpc.StatusCode.UNAUTHENTICATED
    channel = secure.channel(secure.address("scheduler"), SCHEDULER)
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    assert _code(lambda: stub.ListFunctions(scheduler_pb2.ListFunctionsRequest(), timeout=10,
                                            metadata=[("authorization", "Basic b3A6b3A=")])) == \
        grpc.StatusCode.UNAUTHENTICATED
    short = _token(secure, capsys, "--role", "invoker", "--namespace", "team-a", "--ttl-s", "1",
                   "--name", "brief")
    carol = _token(secure, capsys, "--role", "deployer", "--namespace", "team-c", "--name", "carol")
    dave = _token(secure, capsys, "--role", "deployer", "--namespace", "team-d", "--name", "dave")
    assert list_with(carol) == ok and list_with(dave) == ok
    time.sleep(1.2)
    assert list_with(short) == grpc.StatusCode.UNAUTHENTICATED  # expired
    _dilu(secure, capsys, "token", "revoke", "carol")
    _dilu(secure, capsys, "role", "remove", "dave")
    assert_eventually(lambda: list_with(carol) == grpc.StatusCode.UNAUTHENTICATED, timeout=10,
                      message="a revoked token is refused within 10 s")
    assert_eventually(lambda: list_with(dave) == grpc.StatusCode.PERMISSION_DENIED, timeout=10,
                      message="a token whose role was removed is refused within 10 s")
    _dilu(secure, capsys, "role", "set", "dave", "--role", "deployer", "--namespace", "team-d")
    assert_eventually(lambda: list_with(dave) == ok, timeout=10, message="a role given back")
    # Certificates: expired, or of another CA, are refused at the handshake of the peer port.
    for files, expect in ((secure.files("stale"), SCHEDULER),):
        stub = scheduler_pb2_grpc.SchedulerServiceStub(secure.channel(
            secure.peer_address("scheduler"), expect, identity="stale"))
        assert _code(lambda s=stub: s.ListFunctions(scheduler_pb2.ListFunctionsRequest(),
                                                    timeout=10)) == grpc.StatusCode.UNAVAILABLE
        assert files.cert.exists()
    foreign = secure.state_dir / "foreign"
    channel = grpc.secure_channel(secure.peer_address("scheduler"), channel_credentials(
        secure.credentials.ca.read_bytes(), (foreign / "dilu-operator.crt").read_bytes(),
        (foreign / "dilu-operator.key").read_bytes()),
        options=[("grpc.ssl_target_name_override", SCHEDULER)])
    assert _code(lambda: scheduler_pb2_grpc.SchedulerServiceStub(channel).ListFunctions(
        scheduler_pb2.ListFunctionsRequest(), timeout=10)) == grpc.StatusCode.UNAVAILABLE


def test_metrics_want_a_certificate_and_health_does_not(secure: SecureStack):
    address = secure.stack.services["node-agent"].metrics_address
    context = ssl.create_default_context(cafile=str(secure.credentials.ca))
    context.check_hostname = False
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://{address}/metrics", context=context, timeout=10)
    assert refused.value.code == 403
    with urllib.request.urlopen(f"https://{address}/healthz", context=context, timeout=10) as answer:
        assert answer.status == 200 and answer.read() == b"SERVING\n"
    scraper = client_context(secure.files("dilu-prometheus"))
    scraper.check_hostname = False
    with urllib.request.urlopen(f"https://{address}/metrics", context=scraper, timeout=10) as answer:
        assert b'dilu_service_info{service="node-agent"' in answer.read()


def test_workers_run_as_their_own_uids_and_cannot_open_each_others_pages(secure: SecureStack):
    if not secure.isolated:
        pytest.skip("per-worker uids need root and an interpreter other uids may run")
    a = _deployed(secure, inference_spec("iso-a", request=0.1, limit=0.2, memory_mib=1024))
    b = _deployed(secure, inference_spec("iso-b", request=0.1, limit=0.2, memory_mib=1024))
    node_dir = secure.runtime_dir
    pages = {f.spec.name: node_dir / _ready(f).id for f in (a, b)}
    uids = {}
    for name, base in pages.items():
        pid = StatsReader(base.with_suffix(".stats")).read().pid
        uids[name] = os.stat(f"/proc/{pid}").st_uid
    assert len(set(uids.values())) == 2 and all(61001 <= u <= 61099 for u in uids.values())

    def as_worker(uid: int, code: str) -> str:
        # setpriv, not subprocess's user=: this process runs gRPC threads, whose fork
        # handlers a plain fork would run; setpriv lets subprocess use vfork.
        done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--groups=61000",
                               "/bin/sh", "-c", code],
                              capture_output=True, text=True, timeout=10, check=False)
        return done.stdout + done.stderr

    probe = ("for f in {ctl} {stats} {spec}; do (cat $f > /dev/null && echo read $f) 2>/dev/null "
             "|| echo denied $f; done; (: >> {ctl}) 2>/dev/null && echo wrote ctl || echo no-write ctl; "
             "ls {dir} > /dev/null 2>&1 && echo listed || echo no-list")
    mine, theirs = pages["iso-a"], pages["iso-b"]
    own = as_worker(uids["iso-a"], probe.format(ctl=mine.with_suffix(".ctl"),
                                                stats=mine.with_suffix(".stats"),
                                                spec=mine.with_suffix(".spec"), dir=node_dir))
    assert own.count("read ") == 3 and "no-write ctl" in own and "no-list" in own, own
    other = as_worker(uids["iso-a"], probe.format(ctl=theirs.with_suffix(".ctl"),
                                                  stats=theirs.with_suffix(".stats"),
                                                  spec=theirs.with_suffix(".spec"), dir=node_dir))
    assert other.count("denied ") == 3 and "read " not in other, other
    assert _sched(secure).Invoke(scheduler_pb2.InvokeRequest(function="iso-b"), timeout=10).instance_id
    for name in pages:  # stopping them signals processes of other uids
        _sched(secure).DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name=name), timeout=30)


def test_the_cli_calls_with_a_token_or_a_certificate(secure: SecureStack,
                                                     capsys: pytest.CaptureFixture[str]):
    ca = ["--ca", str(secure.credentials.ca)]
    token = ["--token-file", str(secure.credentials.token_path)]
    operator = secure.files("dilu-operator")
    capsys.readouterr()
    assert dilu_main([*ca, *token, "--scheduler", secure.address("scheduler"), "status"]) == 0
    assert "local/gpu0" in capsys.readouterr().out
    assert dilu_main([*ca, "--cert", str(operator.cert), "--key", str(operator.key), "--scheduler",
                      secure.peer_address("scheduler"), "status"]) == 0
    assert "local/gpu0" in capsys.readouterr().out
    assert dilu_main([*ca, "--scheduler", secure.address("scheduler"), "status"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert dilu_main(["--token", "dilu_x", "status"]) == 2  # a token needs the CA
    assert "--ca" in capsys.readouterr().err


def _bert(name: str, namespace: str) -> types_pb2.FunctionSpec:
    """bert-base at a 50 ms SLO: 20 req/s needs more than its 0.3 of a GPU, so the scaler
    raises it (tests/integration/test_scaler_acting.py has the figures)."""
    return types_pb2.FunctionSpec(
        name=name, namespace=namespace, kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM,
        model="bert-base", slo=types_pb2.Slo(latency_ms=50), max_batch=8,
        resources=types_pb2.Resources(sm_request=0.3, sm_limit=0.5, memory_mib=3072),
        replicas=types_pb2.Replicas(min=1, max=2))


async def _load(stack: SecureStack, function: str, rps: float, stop: asyncio.Event) -> list[str]:
    """Invoke `function` at `rps` as the operator until `stop`; the codes of the answers."""
    tls = grpc.composite_channel_credentials(
        channel_credentials(stack.credentials.ca.read_bytes()),
        grpc.access_token_call_credentials(stack.credentials.operator_token()))
    codes: list[str] = []
    async with grpc.aio.secure_channel(stack.address("scheduler"), tls, options=[
            ("grpc.ssl_target_name_override", SCHEDULER)]) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

        async def call() -> None:
            try:
                await stub.Invoke(scheduler_pb2.InvokeRequest(function=function), timeout=20)
                codes.append("OK")
            except grpc.aio.AioRpcError as error:
                codes.append(error.code().name)

        calls, start = [], time.monotonic()
        while not stop.is_set():
            calls.append(asyncio.create_task(call()))
            await asyncio.sleep(max(0.0, start + len(calls) / rps - time.monotonic()))
        await asyncio.gather(*calls)
    return codes


def test_the_scaler_acts_over_the_peer_ports_and_only_it_may(
        secure: SecureStack, capsys: pytest.CaptureFixture[str]):
    """The acting scaler in a secure stack: its ListFunctions/ListNodes and ScaleOut/ScaleIn
    on the scheduler's peer port and SetQuota on the agent's, with its own certificate; an
    Invoke refused by authorization is never held (the function stays at zero); tokens
    other than the operator's cannot take the scaler's paths, and the scaler's certificate
    nothing beyond them."""
    operator = _sched(secure)
    scaler = scaler_pb2_grpc.ScalerServiceStub(secure.channel(
        secure.address("scaler"), "dilu-scaler", token=secure.credentials.operator_token()))
    status = scaler.GetStatus(scaler_pb2.GetStatusRequest(), timeout=10)
    assert status.co_scaling_active and status.lease_held  # its NATS user keeps its lease
    cold = _bert("cold-s", "team-s")
    cold.replicas.min = 0
    operator.Deploy(scheduler_pb2.DeployRequest(function=cold), timeout=30)
    alice = _token(secure, capsys, "--role", "deployer", "--namespace", "team-a", "--name", "alice-s")
    web = _token(secure, capsys, "--role", "invoker", "--function", "co-scaled", "--name", "web-s")
    anonymous = scheduler_pb2_grpc.SchedulerServiceStub(
        secure.channel(secure.address("scheduler"), SCHEDULER))
    invoke = scheduler_pb2.InvokeRequest(function="cold-s")
    assert _code(lambda: anonymous.Invoke(invoke, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    for token in (alice, web):
        assert _code(lambda t=token: _sched(secure, t).Invoke(invoke, timeout=10)) == \
            grpc.StatusCode.PERMISSION_DENIED
    time.sleep(0.5)
    function = operator.GetFunction(scheduler_pb2.GetFunctionRequest(name="cold-s"),
                                    timeout=10).function
    assert function.status.desired_replicas == 0 and not function.status.instances, \
        "a refused Invoke was held (it asked for an instance at zero)"
    # An authorized one is held and served (the scaler kept still meanwhile: a fresh
    # instance of a function at zero has no QoS window yet, which it takes for idle).
    scaler.SetPolicy(scaler_pb2.SetPolicyRequest(mode=scaler_pb2.POLICY_MODE_STATIC), timeout=10)
    try:
        assert operator.Invoke(invoke, timeout=30).instance_id
    finally:
        scaler.SetPolicy(scaler_pb2.SetPolicyRequest(mode=scaler_pb2.POLICY_MODE_COSCALE,
                                                     policy=scaler_pb2.ScalingPolicy(
            rate_window_s=2, trend_window_s=2, scale_out_patience_s=3)), timeout=10)
    operator.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name="cold-s"), timeout=30)
    spec = _bert("co-scaled", "team-s")
    _deployed(secure, spec)

    def raised() -> list[events_pb2.ScalingDecision]:
        decisions = scaler.ListDecisions(scaler_pb2.ListDecisionsRequest(
            function="co-scaled", limit=100), timeout=10).decisions
        ups = [d for d in decisions if d.source == "scaler"
               and d.kind == events_pb2.SCALING_KIND_VERTICAL_UP]
        assert ups, f"no raise by the scaler yet: {[(d.kind, d.source) for d in decisions]}"
        return ups

    async def under_load() -> tuple[list[events_pb2.ScalingDecision], list[str]]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(secure, "co-scaled", 20, stop))
        try:
            # Held at zero, served once the scheduler starts one; then the scaler raises it.
            return await asyncio.to_thread(assert_eventually, raised, 60.0,
                                           message="the scaler raised the quota under load"), []
        finally:
            stop.set()
            codes.extend(await load)

    codes: list[str] = []
    try:
        ups, _ = asyncio.run(under_load())
    finally:
        scaler.SetPolicy(scaler_pb2.SetPolicyRequest(policy=scaler_pb2.ScalingPolicy()), timeout=10)
    assert codes.count("OK") > len(codes) // 2, codes
    assert ups[0].node == "local" and ups[0].quota_after.sm_request > 0.3
    for service in ("scheduler", "node-agent"):
        log = (secure.state_dir / "logs" / f"{service}.log").read_text()
        assert "caller=dilu-scaler" not in log, f"{service} refused the scaler"
    # Nothing the scaler called refused it (its own server's audit lines aside).
    scaler_log = (secure.state_dir / "logs" / "scaler.log").read_text().splitlines()
    assert not [line for line in scaler_log if "dilu.audit" not in line and (
        "UNAUTHENTICATED" in line or "PERMISSION_DENIED" in line)]

    # Other tokens: not the scaler's paths (nor the scaler's own service).
    instance = _ready(operator.GetFunction(scheduler_pb2.GetFunctionRequest(name="co-scaled"),
                                           timeout=10).function)
    set_quota = node_agent_pb2.SetQuotaRequest(instance_id=instance.id, quota=types_pb2.Quota(
        sm_request=1.0, sm_limit=1.0, memory_limit_mib=3072), source="scaler")
    denied = grpc.StatusCode.PERMISSION_DENIED
    scale_out = scheduler_pb2.ScaleOutRequest(function="co-scaled")
    scale_in = scheduler_pb2.ScaleInRequest(function="co-scaled")
    for token in (alice, web):
        sched = _sched(secure, token)
        agent = node_agent_pb2_grpc.NodeAgentServiceStub(
            secure.channel(secure.address("node-agent"), AGENT, token=token))
        them = scaler_pb2_grpc.ScalerServiceStub(
            secure.channel(secure.address("scaler"), "dilu-scaler", token=token))
        for method, request in ((sched.ScaleOut, scale_out), (sched.ScaleIn, scale_in),
                                (sched.ListNodes, scheduler_pb2.ListNodesRequest()),
                                (agent.SetQuota, set_quota),
                                (them.SetPolicy, scaler_pb2.SetPolicyRequest())):
            assert _code(lambda m=method, r=request: m(r, timeout=10)) == denied, method
    assert "refused PERMISSION_DENIED /dilu.v1.NodeAgentService/SetQuota caller=web-s " \
           "role=invoker via=token" in (secure.state_dir / "logs" / "node-agent.log").read_text()
    # The scaler's certificate: nothing beyond its rows.
    sched = scheduler_pb2_grpc.SchedulerServiceStub(secure.channel(
        secure.peer_address("scheduler"), SCHEDULER, identity="dilu-scaler"))
    agent = node_agent_pb2_grpc.NodeAgentServiceStub(secure.channel(
        secure.peer_address("node-agent"), AGENT, identity="dilu-scaler"))
    for method, request in (
            (sched.Invoke, invoke), (sched.Deploy, scheduler_pb2.DeployRequest(function=spec)),
            (sched.GetFunction, scheduler_pb2.GetFunctionRequest(name="co-scaled")),
            (sched.DeleteFunction, scheduler_pb2.DeleteFunctionRequest(name="co-scaled")),
            (agent.StopInstance, node_agent_pb2.StopInstanceRequest(instance_id=instance.id)),
            (agent.GetNodeStatus, node_agent_pb2.GetNodeStatusRequest())):
        assert _code(lambda m=method, r=request: m(r, timeout=10)) == denied, method
    # ... and on the bus no one else writes the scaler's lease.
    errors: list[str] = []

    async def take_the_lease() -> None:
        bus = await secure.bus_as(AGENT, errors)
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await bus.jetstream(timeout=1.0).publish(f"$KV.{LEASE_BUCKET}.{LEASE_KEY}", b"me",
                                                         timeout=1.0)
        finally:
            await bus.close()

    asyncio.run(take_the_lease())
    assert f'permissions violation for publish to "$kv.{LEASE_BUCKET}.{LEASE_KEY}"' in \
        " ".join(errors).lower()
    operator.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name="co-scaled"), timeout=30)


def test_the_profiler_profiles_over_the_peer_ports_and_only_it_may(
        secure: SecureStack, capsys: pytest.CaptureFixture[str]):
    """The live profiler in a secure stack: a Deploy left to its profile makes the
    scheduler write a WANTED record (its NATS user may), the profiler runs its hidden
    instance through the scheduler's peer port and tunes it on the agent's (which relays
    the batch to the worker over mutual TLS), and the function is placed with the figures.
    The profiling RPCs and TuneInstance are the profiler's and the operator's alone."""
    alice = _token(secure, capsys, "--role", "deployer", "--namespace", "team-p", "--name", "alice-p")
    listing = scheduler_pb2.ListProfilingRequest()
    tune = node_agent_pb2.TuneInstanceRequest(instance_id="none", max_batch=2)
    assert _code(lambda: _sched(secure, alice).ListProfiling(listing, timeout=10)) == \
        grpc.StatusCode.PERMISSION_DENIED
    as_alice = node_agent_pb2_grpc.NodeAgentServiceStub(
        secure.channel(secure.address("node-agent"), AGENT, token=alice))
    assert _code(lambda: as_alice.TuneInstance(tune, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    for identity, allowed in (("dilu-profiler", True), ("dilu-scaler", False), (SCHEDULER, False)):
        sched = scheduler_pb2_grpc.SchedulerServiceStub(
            secure.channel(secure.peer_address("scheduler"), SCHEDULER, identity=identity))
        agent = node_agent_pb2_grpc.NodeAgentServiceStub(
            secure.channel(secure.peer_address("node-agent"), AGENT, identity=identity))
        assert _code(lambda s=sched: s.ListProfiling(listing, timeout=10)) == (
            grpc.StatusCode.OK if allowed else grpc.StatusCode.PERMISSION_DENIED), identity
        assert _code(lambda a=agent: a.TuneInstance(tune, timeout=10)) == (
            grpc.StatusCode.NOT_FOUND if allowed else grpc.StatusCode.PERMISSION_DENIED), identity

    unsized = S.FunctionSpec(name="profiled-p", namespace="team-p", kind=S.FUNCTION_KIND_INFERENCE,
                             runtime=S.RUNTIME_SIM, model="resnet152", slo=S.Slo(latency_ms=100))
    _sched(secure, alice).Deploy(scheduler_pb2.DeployRequest(function=unsized), timeout=30)
    operator = _sched(secure)
    function = assert_eventually(lambda: (f := operator.GetFunction(scheduler_pb2.GetFunctionRequest(
        name="profiled-p"), timeout=5).function).status.ready_replicas == 1 and f,
        timeout=90, message="profiled-p profiled and placed")
    assert function.status.profile_key_id
    ready = _ready(function)
    assert ready.quota.sm_request > 0 and function.spec.max_batch in (1, 2)
    profile = asyncio.run(_profile_of(secure, function.status.profile_key_id))
    assert profile.state == profiler_pb2.PROFILE_STATE_READY and profile.measured >= 1
    assert profile.best_batch_size == function.spec.max_batch and profile.function == "profiled-p"
    # The profiler's certificate tunes a running instance: the agent relays the batch to the
    # worker over mutual TLS with its own certificate.
    agent = node_agent_pb2_grpc.NodeAgentServiceStub(
        secure.channel(secure.peer_address("node-agent"), AGENT, identity="dilu-profiler"))
    for batch in (1, function.spec.max_batch):
        tuned = agent.TuneInstance(node_agent_pb2.TuneInstanceRequest(
            instance_id=ready.id, max_batch=batch), timeout=10)
        assert tuned.max_batch == batch
    as_deployer = profiler_pb2_grpc.ProfilerServiceStub(
        secure.channel(secure.address("profiler"), "dilu-profiler", token=alice))
    seen = as_deployer.GetProfile(profiler_pb2.GetProfileRequest(key=profile.key), timeout=10).profile
    assert seen.key_id == profile.key_id and seen.function == ""  # no function's name


async def _profile_of(stack: SecureStack, key_id: str) -> profiler_pb2.Profile:
    """The record in the profiles bucket, read as the operator."""
    bus = await stack.bus_as("dilu-operator")
    try:
        entry = await (await bus.jetstream().key_value(subjects.PROFILES_BUCKET)).get(key_id)
        return profiler_pb2.Profile.FromString(entry.value or b"")
    finally:
        await bus.close()


def test_no_refusal_left_a_traceback(secure: SecureStack):
    for log in secure.logs():
        assert "Traceback" not in log.read_text(errors="replace"), log


def test_the_demo_runs_to_its_summary_in_secure_mode():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'gen' / 'python'}"}
    result = subprocess.run([sys.executable, "-m", "services.cli.main", "demo", "--secure",
                             "--seconds", "8", "--table-every", "4"], capture_output=True,
                            text=True, env=env, timeout=150, cwd=root, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "secure: TLS and authentication everywhere" in out
    assert "https://127.0.0.1:" in out  # metrics over TLS
    summary = out[out.index("=== summary ==="):]
    served = re.search(r"requests served: (\d+) of (\d+)", summary)
    assert served and int(served.group(1)) > 0
    assert "METRICS REQ/S" in out  # the node agent's /metrics was read with a certificate
    assert re.search(r"co-scaling actions: \d+ vertical, \d+ horizontal", summary)
