"""Live profiling on a real stack: a profiler measuring sim workers on a hidden instance
through the scheduler's request path and the agent's knobs; Deploys left to their profile;
what happens when a function cannot be profiled, and when the profiler itself is killed.

The profiler runs with a small grid (shares 0.5 and 1, batches 1 and 4) and short trials
(40 counted requests after 5) so that a whole profile takes seconds, not minutes; the
protocol and the rules are those of production."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dilu.v1 import (
    node_agent_pb2,
    profiler_pb2,
    profiler_pb2_grpc,
    scaler_pb2,
    scaler_pb2_grpc,
    scheduler_pb2,
    types_pb2,
)

from services.cli.stack import ManagedProcess, NatsServer, ServiceLauncher
from services.cli.tables import status_report
from services.common.profiling import is_profiling
from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration
S = types_pb2
P = profiler_pb2
SMALL = ("--shares", "0.5,1", "--batches", "1,4", "--trial-requests", "40",
         "--warmup-requests", "5", "--training-shares", "0.25,0.5,0.75,1")


class Profiled(Cluster):
    profiler: ManagedProcess
    agent: ManagedProcess
    scaler: ManagedProcess

    @property
    def prof(self) -> profiler_pb2_grpc.ProfilerServiceStub:
        return profiler_pb2_grpc.ProfilerServiceStub(self.channel(self.profiler.address))

    def hidden(self) -> list[types_pb2.Function]:
        return list(self.sched.ListProfiling(scheduler_pb2.ListProfilingRequest(), timeout=10).functions)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profiled]:
    tmp: Path = tmp_path_factory.mktemp("profiling")
    nats = NatsServer(tmp / "nats").start()
    cluster = Profiled(tmp, nats, ServiceLauncher(tmp, nats.url))
    try:
        cluster.start_scheduler()
        cluster.agent = cluster.start_agent("n1", 3)
        cluster.scaler = cluster.start_service("scaler")
        cluster.profiler = cluster.start_profiler(*SMALL)
        assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
        yield cluster
    finally:
        cluster.close()
        for log in sorted((tmp / "logs").glob("*.log")):
            print(f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


def spec(name: str, slo_ms: float = 100, **options: str) -> types_pb2.FunctionSpec:
    """resnet152 on the sim runtime with nothing sized: the profile decides."""
    return S.FunctionSpec(name=name, kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM,
                          model="resnet152", slo=S.Slo(latency_ms=slo_ms), runtime_options=options)


def test_a_deploy_left_to_its_profile_is_profiled_first_and_placed_with_its_figures(stack: Profiled):
    stack.deploy(spec("sized"))
    waiting = assert_eventually(
        lambda: [i for i in stack.function("sized").status.instances
                 if i.state == S.INSTANCE_STATE_PENDING and i.message.startswith("profiling")],
        timeout=10, message="pending with reason 'profiling'")
    assert len(waiting) == 1 and stack.function("sized").status.state == S.FUNCTION_STATE_PROFILING

    # A second request for the same key (another name, same model, options and SLO) joins
    # the run the Deploy asked for, and waits with it.
    joined: list[profiler_pb2.Profile] = []
    waiter = threading.Thread(target=lambda: joined.append(stack.prof.ProfileFunction(
        P.ProfileFunctionRequest(function=spec("other"), wait=True), timeout=240).profile))
    waiter.start()

    hidden = assert_eventually(stack.hidden, timeout=20, message="the hidden instance")
    name = hidden[0].spec.name
    assert is_profiling(name) and hidden[0].spec.resources.sm_request == 1.0
    listed = stack.sched.ListFunctions(scheduler_pb2.ListFunctionsRequest(), timeout=10).functions
    assert [f.spec.name for f in listed] == ["sized"]  # never a user function
    with pytest.raises(grpc.RpcError) as hidden_get:
        stack.function(name)
    assert hidden_get.value.code() == grpc.StatusCode.NOT_FOUND
    report = status_report(listed, list(stack.nodes().values()), profiling=hidden)
    assert "PROFILING" in report and f"{name}-" in report.split("PROFILING")[1]

    waiter.join(timeout=240)
    profile = joined[0]
    assert profile.state == P.PROFILE_STATE_READY and profile.attempts == 1  # one run for both
    assert profile.measured >= 2 and sum(p.chosen for p in profile.points) == 1
    chosen = next(p for p in profile.points if p.chosen)
    assert chosen.meets_slo and chosen.throughput_rps > 0
    assert (chosen.sm_share, chosen.batch_size) == (profile.chosen_share, profile.best_batch_size)
    assert 0 < profile.sm_request <= profile.sm_limit <= 1 and profile.memory_mib > 0
    assert profile.design_rate_rps > 0 and profile.key.gpu_model == "NVIDIA A100-SXM4-40GB"
    stored = stack.prof.GetProfile(P.GetProfileRequest(key=profile.key), timeout=10).profile
    assert stored.key_id == profile.key_id and stored.state == P.PROFILE_STATE_READY

    def placed() -> types_pb2.Function:
        function = stack.function("sized")
        ready = [i for i in function.status.instances if i.state == S.INSTANCE_STATE_READY]
        return function if ready else None  # type: ignore[return-value]

    function = assert_eventually(placed, timeout=20, message="sized and placed")
    quota = function.status.instances[0].quota
    assert (quota.sm_request, quota.sm_limit, quota.memory_limit_mib) == (
        profile.sm_request, profile.sm_limit, profile.memory_mib)
    assert function.spec.max_batch == profile.best_batch_size
    assert function.status.profile_key_id == profile.key_id and not function.status.awaiting_profile
    assert function.status.state == S.FUNCTION_STATE_OK
    assert_eventually(lambda: stack.hidden() == [], timeout=20, message="hidden instance removed")
    # The scaler never heard of it.
    scaler = scaler_pb2_grpc.ScalerServiceStub(stack.channel(stack.scaler.address))
    seen = scaler.GetStatus(scaler_pb2.GetStatusRequest(), timeout=10).functions
    assert not any(is_profiling(f.function) for f in seen)


def test_an_slo_no_share_meets_is_failed_precondition_naming_the_fastest_latency(stack: Profiled):
    with pytest.raises(grpc.RpcError) as refused:
        stack.prof.ProfileFunction(P.ProfileFunctionRequest(function=spec("quick", slo_ms=8),
                                                            wait=True), timeout=120)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "fastest latency measured is" in refused.value.details()
    assert_eventually(lambda: stack.hidden() == [], timeout=20, message="hidden instance removed")


@pytest.mark.parametrize(("option", "failure", "said"), [
    ("crash_after", P.PROFILE_FAILURE_CRASHED, "injected crash after"),
    ("hang_after", P.PROFILE_FAILURE_HUNG, "stopped answering"),
])
def test_a_function_that_fails_while_profiled_is_reported_and_not_retried(
        stack: Profiled, option: str, failure: int, said: str):
    faulty = spec(f"faulty-{option.replace('_', '-')}", **{option: "25"})
    with pytest.raises(grpc.RpcError) as failed:
        stack.prof.ProfileFunction(P.ProfileFunctionRequest(function=faulty, wait=True), timeout=120)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert said in failed.value.details()
    if option == "hang_after":  # its last log line says why
        assert "injected hang after" in failed.value.details()
    assert_eventually(lambda: stack.hidden() == [], timeout=20, message="hidden instance removed")
    # Asked again without `refresh`, the failure stands: no retry loop.
    again = stack.prof.ProfileFunction(P.ProfileFunctionRequest(function=faulty), timeout=10).profile
    assert again.state == P.PROFILE_STATE_FAILED and again.failure == failure
    assert again.attempts == 1


def test_the_batch_knob_and_the_share_cap_reach_a_running_worker(stack: Profiled):
    knob = spec("knob", slo_ms=10_000)
    knob.max_batch = 1
    knob.resources.CopyFrom(S.Resources(sm_request=0.1, sm_limit=0.1, memory_mib=2048))
    stack.deploy(knob)
    instance = assert_eventually(lambda: [i for i in stack.function("knob").status.instances
                                          if i.state == S.INSTANCE_STATE_READY], timeout=20)[0]
    agent = stack.agent_stub(stack.agent)

    def burst() -> list[int]:
        results: list[int] = []

        def one() -> None:
            results.append(stack.sched.Invoke(scheduler_pb2.InvokeRequest(function="knob"),
                                              timeout=30).batch_size)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    assert max(burst()) == 1
    tuned = agent.TuneInstance(node_agent_pb2.TuneInstanceRequest(instance_id=instance.id, max_batch=8),
                               timeout=10)
    assert tuned.max_batch == 8 and tuned.memory_bytes > 0 and tuned.requests >= 8
    assert max(burst()) > 1
    with pytest.raises(grpc.RpcError) as too_big:
        agent.TuneInstance(node_agent_pb2.TuneInstanceRequest(instance_id=instance.id, max_batch=4096),
                           timeout=10)
    assert too_big.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "MiB" in too_big.value.details() and "quota" in too_big.value.details()
    capped = agent.TuneInstance(node_agent_pb2.TuneInstanceRequest(instance_id=instance.id,
                                                                   share_cap=0.05), timeout=10)
    assert capped.share_cap == 0.05 and capped.effective_share == pytest.approx(0.05)
    released = agent.TuneInstance(node_agent_pb2.TuneInstanceRequest(instance_id=instance.id,
                                                                     share_cap=1.0), timeout=10)
    assert released.effective_share == pytest.approx(0.1)
    with pytest.raises(grpc.RpcError) as unknown:
        agent.TuneInstance(node_agent_pb2.TuneInstanceRequest(instance_id="nope", max_batch=2),
                           timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    stack.sched.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name="knob"), timeout=30)


def test_a_killed_profilers_instance_is_removed_by_its_successor_which_takes_the_run_over(
        stack: Profiled):
    asked = stack.prof.ProfileFunction(P.ProfileFunctionRequest(function=spec("orphan", slo_ms=150)),
                                       timeout=10).profile
    first = assert_eventually(
        lambda: [i for f in stack.hidden() for i in f.status.instances
                 if i.state == S.INSTANCE_STATE_READY], timeout=30, message="measuring")[0]
    stack.profiler.kill()  # SIGKILL: no clean-up of its own
    assert [i.id for f in stack.hidden() for i in f.status.instances] == [first.id]

    stack.profiler = stack.start_profiler(*SMALL)
    assert_eventually(lambda: first.id not in [i.id for f in stack.hidden() for i in f.status.instances],
                      timeout=30, message="the predecessor's instance stopped")
    record = assert_eventually(
        lambda: (p := stack.prof.GetProfile(P.GetProfileRequest(key=asked.key), timeout=10).profile)
        .attempts == 2 and p, timeout=30, message="the successor took the run over")
    assert record.state in (P.PROFILE_STATE_RUNNING, P.PROFILE_STATE_READY)
