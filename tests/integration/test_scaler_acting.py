"""The acting scaler on a real stack: the co-scaling policy raises a quota under a load
step, scales out when one GPU cannot carry the load, and scales in and down after it;
SetPolicy refuses bad values; the standby takes over within 5 s and is quiet in its first
window. Policy windows are shortened through SetPolicy so the test stays fast."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from dilu.events.v1 import events_pb2
from dilu.v1 import scaler_pb2, scaler_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.cli.stack import ManagedProcess
from tests.helpers import assert_eventually, assert_eventually_async
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration
S = types_pb2
E = events_pb2
# Short windows: a decision a second, hysteresis of 3 s.
FAST = scaler_pb2.ScalingPolicy(rate_window_s=2, trend_window_s=2, scale_in_after_s=3,
                                scale_down_after_s=3, scale_out_patience_s=3)


def bert_spec(name: str = "bert") -> types_pb2.FunctionSpec:
    """bert-base at a 50 ms SLO: one instance carries ~34 req/s on a whole GPU, so 45 req/s
    needs a second instance, on the other GPU."""
    return types_pb2.FunctionSpec(
        name=name, kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM, model="bert-base",
        slo=types_pb2.Slo(latency_ms=50),
        resources=types_pb2.Resources(sm_request=0.3, sm_limit=0.5, memory_mib=3072),
        replicas=types_pb2.Replicas(min=1, max=3), max_batch=8)


def start_scaler(cluster: Cluster, *extra: str, name: str = "scaler") -> ManagedProcess:
    assert cluster.scheduler is not None
    return cluster._track(cluster.launcher.start(
        "scaler", "--scheduler", cluster.scheduler.address, *extra, name=name))


def scaler_stub(cluster: Cluster, scaler: ManagedProcess) -> scaler_pb2_grpc.ScalerServiceStub:
    return scaler_pb2_grpc.ScalerServiceStub(cluster.channel(scaler.address))


def mine(stub: scaler_pb2_grpc.ScalerServiceStub, function: str) -> list[E.ScalingDecision]:
    """The scaler's own decisions for `function`, oldest first."""
    decisions = stub.ListDecisions(scaler_pb2.ListDecisionsRequest(function=function, limit=1000),
                                   timeout=5).decisions
    return [d for d in reversed(decisions) if d.source == "scaler"]


def at_s(decision: E.ScalingDecision) -> float:
    return decision.at.seconds + decision.at.nanos / 1e9


class Load:
    """Open-loop Poisson-free steady load through the scheduler's Invoke."""

    def __init__(self, address: str, function: str, rps: float) -> None:
        self._address, self._function, self._rps = address, function, rps
        self.sent = self.failed = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self._address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            calls: set[asyncio.Task[None]] = set()

            async def call() -> None:
                try:
                    await stub.Invoke(scheduler_pb2.InvokeRequest(function=self._function),
                                      timeout=5)
                except grpc.aio.AioRpcError:
                    self.failed += 1

            start = time.monotonic()
            try:
                while True:
                    self.sent += 1
                    task = asyncio.create_task(call())
                    calls.add(task)
                    task.add_done_callback(calls.discard)
                    await asyncio.sleep(max(0.0, start + self.sent / self._rps - time.monotonic()))
            finally:
                for task in list(calls):
                    with contextlib.suppress(BaseException):
                        await task

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def kinds(decisions: list[E.ScalingDecision], after_s: float = 0.0) -> set[int]:
    return {d.kind for d in decisions if at_s(d) >= after_s}


async def test_load_step_raises_scales_out_then_in_and_down(one_node: Cluster) -> None:
    cluster = one_node
    scaler = start_scaler(cluster)
    stub = scaler_stub(cluster, scaler)

    # Bad values are refused naming the field, and the policy in force stays as it was.
    before = stub.GetStatus(scaler_pb2.GetStatusRequest(), timeout=5)
    for policy, mode, field in [
            (scaler_pb2.ScalingPolicy(interval_s=0), 0, "policy.interval_s"),
            (scaler_pb2.ScalingPolicy(capacity_headroom=0.7), 0, "policy.scale_in_headroom"),
            (scaler_pb2.ScalingPolicy(), 7, "mode")]:
        with pytest.raises(grpc.RpcError) as refused:
            stub.SetPolicy(scaler_pb2.SetPolicyRequest(policy=policy, mode=mode), timeout=5)  # type: ignore[arg-type]
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (refused.value.details() or "")
    after = stub.GetStatus(scaler_pb2.GetStatusRequest(), timeout=5)
    assert after.policy == before.policy and after.mode == scaler_pb2.POLICY_MODE_COSCALE
    answer = stub.SetPolicy(scaler_pb2.SetPolicyRequest(policy=FAST), timeout=5)
    assert answer.policy.scale_in_after_s == 3 and answer.mode == scaler_pb2.POLICY_MODE_COSCALE

    cluster.deploy(bert_spec())
    assert_eventually(lambda: cluster.function("bert").status.ready_replicas == 1, timeout=30,
                      message="bert ready")
    assert_eventually(lambda: stub.GetStatus(scaler_pb2.GetStatusRequest(),
                                             timeout=5).co_scaling_active,
                      message="co-scaling active")
    assert cluster.scheduler is not None
    load = Load(cluster.scheduler.address, "bert", rps=45)
    load.start()
    try:
        await assert_eventually_async(
            lambda: _has(stub, E.SCALING_KIND_VERTICAL_UP, E.SCALING_KIND_HORIZONTAL_OUT),
            timeout=25, message="a vertical raise and a scale-out under the load")
        ups = [d for d in mine(stub, "bert") if d.kind == E.SCALING_KIND_VERTICAL_UP]
        outs = [d for d in mine(stub, "bert") if d.kind == E.SCALING_KIND_HORIZONTAL_OUT]
        # vertical first: the raise comes before the scale-out, which the full GPU forces
        assert at_s(ups[0]) <= at_s(outs[0])
        await assert_eventually_async(
            lambda: _ready(cluster, 2), timeout=20, message="the second instance ready")

        def shows_both() -> scaler_pb2.FunctionScaling:
            status = stub.GetStatus(scaler_pb2.GetStatusRequest(), timeout=5)
            (bert,) = [f for f in status.scaling if f.function == "bert"]
            assert len(bert.instances) >= 2, bert
            return bert

        bert = await asyncio.to_thread(assert_eventually, shows_both, message="status shows both")
        assert bert.last_decision.source == "scaler"
        assert max(i.sm_request for i in bert.instances) > 0.3  # raised from the spec's 0.3
    finally:
        await load.stop()
    ended = time.time()
    assert load.sent > 0

    # After the load: a scale-in and a lowered quota, both the scaler's.
    await assert_eventually_async(
        lambda: _has(stub, E.SCALING_KIND_HORIZONTAL_IN, E.SCALING_KIND_VERTICAL_DOWN,
                     after_s=ended),
        timeout=30, message="scale-in and scale-down after the load")
    await assert_eventually_async(lambda: _ready(cluster, 1), timeout=20,
                                  message="back to one instance")
    (instance,) = [i for i in cluster.function("bert").status.instances
                   if i.state == S.INSTANCE_STATE_READY]
    assert instance.quota.sm_request < 0.9, "the quota came down after the load"


async def _has(stub: scaler_pb2_grpc.ScalerServiceStub, *wanted: int, after_s: float = 0.0) -> bool:
    seen = kinds(await asyncio.to_thread(mine, stub, "bert"), after_s)
    assert set(wanted) <= seen, f"seen {sorted(seen)}"
    return True


async def _ready(cluster: Cluster, count: int) -> bool:
    function = await asyncio.to_thread(cluster.function, "bert")
    ready = sum(1 for i in function.status.instances if i.state == S.INSTANCE_STATE_READY)
    assert ready == count, f"{ready} ready"
    return True


async def test_standby_takes_over_within_5s_and_is_quiet_in_its_first_window(
        one_node: Cluster) -> None:
    cluster = one_node
    # The holder only observes (static); the standby would act, every 3 s.
    holder = start_scaler(cluster, "--policy", "static", name="scaler-a")
    holder_stub = scaler_stub(cluster, holder)
    assert_eventually(lambda: holder_stub.GetStatus(scaler_pb2.GetStatusRequest(),
                                                    timeout=5).lease_held,
                      message="the first scaler holds the lease")
    standby = start_scaler(cluster, name="scaler-b")
    standby_stub = scaler_stub(cluster, standby)
    standby_stub.SetPolicy(scaler_pb2.SetPolicyRequest(
        policy=scaler_pb2.ScalingPolicy(interval_s=3, rate_window_s=2, trend_window_s=2)),
        timeout=5)
    status = standby_stub.GetStatus(scaler_pb2.GetStatusRequest(), timeout=5)
    assert not status.lease_held and not status.co_scaling_active

    cluster.deploy(bert_spec())
    assert_eventually(lambda: cluster.function("bert").status.ready_replicas == 1, timeout=30,
                      message="bert ready")
    assert cluster.scheduler is not None
    load = Load(cluster.scheduler.address, "bert", rps=20)
    load.start()
    try:
        await asyncio.sleep(3)  # the load is seen; nobody acts on it
        assert mine(standby_stub, "bert") == []
        holder.kill()
        killed = time.monotonic()

        async def took_over() -> bool:
            return (await asyncio.to_thread(standby_stub.GetStatus, scaler_pb2.GetStatusRequest(),
                                            timeout=5)).co_scaling_active

        await assert_eventually_async(took_over, timeout=8, interval=0.05,
                                      message="the standby took over")
        took = time.time()
        print(f"took over {time.monotonic() - killed:.2f} s after the holder died")
        assert time.monotonic() - killed <= 5.0
        await assert_eventually_async(
            lambda: _has(standby_stub, E.SCALING_KIND_VERTICAL_UP), timeout=15,
            message="the standby raised bert's quota")
        first = mine(standby_stub, "bert")[0]
        # Its first decision after the takeover was quiet: nothing before the next one.
        assert at_s(first) - took >= 2.5, f"acted {at_s(first) - took:.2f} s after taking over"
    finally:
        await load.stop()


async def test_scale_from_zero_serves_every_held_request_and_refuses_beyond_the_queue(
        cluster: Cluster) -> None:
    cluster.start_scheduler("--hold-max-requests", "6", "--hold-max-wait-s", "30")
    cluster.start_agent("n1")
    assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
    scaler = scaler_stub(cluster, start_scaler(cluster))
    scaler.SetPolicy(scaler_pb2.SetPolicyRequest(policy=scaler_pb2.ScalingPolicy(
        rate_window_s=2, trend_window_s=2, keep_alive_s=3, scale_in_after_s=3)), timeout=5)
    spec = bert_spec("cold")
    spec.replicas.min = 0
    cluster.deploy(spec)
    function = cluster.function("cold")
    assert function.status.desired_replicas == 0 and not function.status.instances
    assert cluster.scheduler is not None
    async with grpc.aio.insecure_channel(cluster.scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

        async def invoke() -> grpc.StatusCode:
            try:
                await stub.Invoke(scheduler_pb2.InvokeRequest(function="cold"), timeout=40)
            except grpc.aio.AioRpcError as error:
                details.append(error.details() or "")
                return error.code()
            return grpc.StatusCode.OK

        details: list[str] = []
        started = time.monotonic()
        # A flood of 10 at zero: 6 are held and served, 4 refused at once, saying why.
        codes = await asyncio.gather(*(invoke() for _ in range(10)))
        cold_s = time.monotonic() - started
    print(f"cold start through Invoke: {cold_s:.2f} s")
    assert codes.count(grpc.StatusCode.OK) == 6, codes
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 4, codes
    assert all("hold queue holds 6" in d for d in details), details
    function = cluster.function("cold")
    assert function.status.ready_replicas >= 1

    # Idle past the keep-alive: the scaler takes it back to zero.
    assert_eventually(lambda: cluster.function("cold").status.desired_replicas == 0, timeout=20,
                      message="back to zero after the keep-alive")
    ins = [d for d in mine(scaler, "cold") if d.kind == E.SCALING_KIND_HORIZONTAL_IN]
    assert ins and ins[-1].replicas_after == 0


async def test_a_vertical_decision_is_one_trace_from_the_scaler_to_the_control_page(
        cluster: Cluster) -> None:
    from tests.integration.test_tracing import _spans

    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-scheduler.jsonl")
    cluster.start_scheduler()
    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-node.jsonl")
    cluster.start_agent("n1")
    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-scaler.jsonl")
    start_scaler(cluster)
    assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
    cluster.deploy(bert_spec())
    assert_eventually(lambda: cluster.function("bert").status.ready_replicas == 1, timeout=30,
                      message="bert ready")
    assert cluster.scheduler is not None
    load = Load(cluster.scheduler.address, "bert", rps=20)
    load.start()

    def traced() -> tuple[dict, dict, dict]:
        decides = {s["context"]["trace_id"]: s for s in _spans(cluster.tmp / "spans-scaler.jsonl")
                   if s["name"] == "scaler.decide"}
        node = _spans(cluster.tmp / "spans-node.jsonl")
        calls = [s for s in node if s["name"] == "/dilu.v1.NodeAgentService/SetQuota"
                 and s["context"]["trace_id"] in decides]
        writes = [s for s in node if s["name"] == "node_agent.control_page_write"
                  and calls and s["context"]["trace_id"] == calls[0]["context"]["trace_id"]]
        assert calls and writes, "no traced SetQuota with its page write yet"
        return decides[calls[0]["context"]["trace_id"]], calls[0], writes[0]

    try:
        decide, call, write = await asyncio.to_thread(assert_eventually, traced, 20.0)
    finally:
        await load.stop()
    assert write["parent_id"] == call["context"]["span_id"]
    assert decide["links"], "the decision links the QoS reports it was made from"
