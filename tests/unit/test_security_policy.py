"""The permission table (`services.common.security.policy`): every RPC has a row, and each
role may do what the README's table says and nothing more."""

from __future__ import annotations

import pytest
from dilu.v1 import (
    node_agent_pb2,
    profiler_pb2,
    scaler_pb2,
    scheduler_pb2,
    types_pb2,
    worker_pb2,
)

from services.common.security.identity import Caller, Role
from services.common.security.policy import (
    RULES,
    decide,
    decide_namespace,
    effective_namespace,
    may_call,
    visible,
)

SERVICES = [scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
            node_agent_pb2.DESCRIPTOR.services_by_name["NodeAgentService"],
            profiler_pb2.DESCRIPTOR.services_by_name["ProfilerService"],
            scaler_pb2.DESCRIPTOR.services_by_name["ScalerService"],
            worker_pb2.DESCRIPTOR.services_by_name["WorkerService"]]
DECLARED = {f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods}

OPERATOR = Caller("root", Role.OPERATOR, "token")
ALICE = Caller("alice", Role.DEPLOYER, "token", namespace="team-a")
BOB = Caller("bob", Role.INVOKER, "token", functions=frozenset({"resnet"}))
CAROL = Caller("carol", Role.INVOKER, "token", namespace="team-a")
NOBODY = Caller("dave", Role.NONE, "token")
SCHEDULER = Caller("dilu-scheduler", Role.SCHEDULER, "certificate")
SCALER = Caller("dilu-scaler", Role.SCALER, "certificate")
PROFILER = Caller("dilu-profiler", Role.PROFILER, "certificate")
AGENT_N1 = Caller("dilu-node-agent.n1", Role.NODE_AGENT, "certificate", node="n1")
WORKER_N1 = Caller("dilu-worker.n1", Role.WORKER, "certificate", node="n1")


def test_every_rpc_of_every_service_has_a_row():
    assert set(RULES) == DECLARED


def _allowed(caller: Caller, method: str, request: object = None, namespace: str | None = "x",
             local_node: str = "") -> bool:
    verdict = decide(caller, method, request, local_node=local_node)
    if verdict.function and not verdict.allowed:
        verdict = decide_namespace(caller, verdict.function, namespace)
    return verdict.allowed


S = "/dilu.v1.SchedulerService/"
N = "/dilu.v1.NodeAgentService/"
W = "/dilu.v1.WorkerService/"


def test_a_deployer_manages_only_its_own_namespace():
    delete = scheduler_pb2.DeleteFunctionRequest(name="f")
    assert _allowed(ALICE, S + "DeleteFunction", delete, namespace="team-a")
    assert not _allowed(ALICE, S + "DeleteFunction", delete, namespace="team-b")
    assert not _allowed(ALICE, S + "DeleteFunction", delete, namespace="")  # "default"
    scale = scheduler_pb2.ScaleOutRequest(function="f")
    assert not _allowed(ALICE, S + "ScaleOut", scale, namespace="team-b")
    assert not _allowed(ALICE, S + "ScaleIn", scheduler_pb2.ScaleInRequest(function="f"),
                        namespace="team-b")
    assert not _allowed(ALICE, S + "Invoke", scheduler_pb2.InvokeRequest(function="f"),
                        namespace="team-b")
    assert _allowed(ALICE, S + "Invoke", scheduler_pb2.InvokeRequest(function="f"),
                    namespace="team-a")


def test_a_deploy_lands_in_the_deployers_namespace_unless_it_names_another():
    own = scheduler_pb2.DeployRequest(function=types_pb2.FunctionSpec(name="f"))
    other = scheduler_pb2.DeployRequest(function=types_pb2.FunctionSpec(name="f", namespace="team-b"))
    assert _allowed(ALICE, S + "Deploy", own)
    assert not _allowed(ALICE, S + "Deploy", other)
    assert effective_namespace("", ALICE) == "team-a"
    assert effective_namespace("", OPERATOR) == "default"
    assert effective_namespace("team-b", OPERATOR) == "team-b"


def test_a_function_that_does_not_exist_is_left_to_the_rpc_to_report():
    assert _allowed(ALICE, S + "DeleteFunction", scheduler_pb2.DeleteFunctionRequest(name="f"),
                    namespace=None)


def test_an_invoker_invokes_what_it_is_granted_and_nothing_else():
    invoke = scheduler_pb2.InvokeRequest(function="resnet")
    assert _allowed(BOB, S + "Invoke", invoke, namespace="team-z")
    assert not _allowed(BOB, S + "Invoke", scheduler_pb2.InvokeRequest(function="bert"))
    assert not _allowed(BOB, S + "Deploy", scheduler_pb2.DeployRequest())
    assert not _allowed(BOB, S + "ScaleOut", scheduler_pb2.ScaleOutRequest(function="resnet"))
    assert not _allowed(BOB, S + "DeleteFunction", scheduler_pb2.DeleteFunctionRequest(name="resnet"))
    # Granted a namespace: every function of it.
    assert _allowed(CAROL, S + "Invoke", scheduler_pb2.InvokeRequest(function="x"), namespace="team-a")
    assert not _allowed(CAROL, S + "Invoke", scheduler_pb2.InvokeRequest(function="x"),
                        namespace="team-b")


def test_listings_show_a_deployer_and_an_invoker_only_theirs():
    assert visible(ALICE, "f", "team-a") and not visible(ALICE, "f", "team-b")
    assert visible(BOB, "resnet", "anything") and not visible(BOB, "bert", "anything")
    assert visible(OPERATOR, "f", "team-b") and visible(None, "f", "team-b")
    assert not visible(ALICE, "f", "")  # the default namespace is not team-a's


def test_only_the_scheduler_scaler_profiler_and_operators_call_node_agents():
    set_quota = N + "SetQuota"
    for caller in (OPERATOR, SCHEDULER, SCALER, PROFILER):
        assert may_call(caller, set_quota).allowed, caller
    for caller in (AGENT_N1, WORKER_N1, ALICE, BOB, NOBODY):
        assert not may_call(caller, set_quota).allowed, caller
    assert may_call(SCHEDULER, N + "StartInstance").allowed
    assert not may_call(SCALER, N + "StartInstance").allowed
    assert not may_call(PROFILER, N + "StopInstance").allowed


def test_only_services_and_the_workers_own_agent_call_a_worker():
    infer = W + "Infer"
    for caller in (SCHEDULER, PROFILER):
        assert may_call(caller, infer, local_node="n1").allowed
    assert may_call(AGENT_N1, infer, local_node="n1").allowed
    assert not may_call(AGENT_N1, infer, local_node="n2").allowed
    assert may_call(AGENT_N1, W + "SetBatchSize", local_node="n1").allowed  # a future knob
    assert not may_call(SCHEDULER, W + "SetBatchSize", local_node="n1").allowed
    for caller in (OPERATOR, ALICE, BOB, SCALER, WORKER_N1):
        assert not may_call(caller, infer, local_node="n1").allowed, caller


def test_a_principal_without_a_role_may_do_nothing_but_check_health():
    for method in DECLARED:
        assert not may_call(NOBODY, method).allowed
    assert may_call(NOBODY, "/grpc.health.v1.Health/Check").allowed
    assert not may_call(NOBODY, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").allowed


@pytest.mark.parametrize("method", sorted(DECLARED))
def test_an_operator_may_call_everything_but_workers(method: str):
    assert may_call(OPERATOR, method).allowed == (not method.startswith(W))


def test_an_rpc_without_a_row_is_the_operators_alone():
    assert may_call(OPERATOR, "/dilu.v1.SchedulerService/Future").allowed
    for caller in (SCHEDULER, SCALER, PROFILER, ALICE):
        assert not may_call(caller, "/dilu.v1.SchedulerService/Future").allowed


def test_the_scaler_may_call_exactly_what_it_acts_through():
    """The acting scaler's records (ListFunctions, ListNodes) and actions (ScaleOut, ScaleIn,
    SetQuota): nothing more, so its certificate cannot deploy, delete, invoke, start or stop."""
    allowed = {m for m in DECLARED if may_call(SCALER, m).allowed}
    assert allowed == {S + "ListFunctions", S + "ListNodes", S + "ScaleOut", S + "ScaleIn",
                       N + "SetQuota"}


def test_the_profiler_may_call_exactly_what_its_live_runs_call():
    """Its hidden instances (StartProfiling, StopProfiling, ListProfiling), their load
    (Invoke), the nodes, and the agents' knobs (TuneInstance, SetQuota, GetNodeStatus);
    TuneInstance and the profiling RPCs are no one else's but the operator's."""
    allowed = {m for m in DECLARED if may_call(PROFILER, m).allowed}
    assert {S + "StartProfiling", S + "StopProfiling", S + "ListProfiling", S + "Invoke",
            S + "ListNodes", N + "TuneInstance"} <= allowed
    assert not allowed & {N + "StartInstance", N + "StopInstance", "/dilu.v1.WorkerService/SetMaxBatch"}
    only_theirs = {S + "StartProfiling", S + "StopProfiling", S + "ListProfiling", N + "TuneInstance"}
    for caller in (ALICE, BOB, SCHEDULER, SCALER, AGENT_N1, WORKER_N1):
        assert not any(may_call(caller, m).allowed for m in only_theirs), caller.principal
    assert all(may_call(OPERATOR, m).allowed for m in only_theirs)


def test_a_profile_is_read_by_its_key_which_no_namespace_owns():
    request = profiler_pb2.GetProfileRequest(key=profiler_pb2.ProfileKey(model="resnet152"))
    assert decide(ALICE, "/dilu.v1.ProfilerService/GetProfile", request).allowed
    assert not may_call(BOB, "/dilu.v1.ProfilerService/GetProfile").allowed
