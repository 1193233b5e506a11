"""The live scaler's adapter (pure): the policy's context from the scheduler's records and
the bus; and the scheduler's hold queue (scale from zero) with plain callables."""

from __future__ import annotations

import asyncio

import pytest
from dilu.events.v1 import events_pb2
from dilu.v1 import types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import ResourceExhausted, Unavailable
from services.scaler.coscale import READY, STARTING, CoscaleState, ScaleOut, decide
from services.scaler.live_context import (
    Applied,
    BusView,
    FunctionFacts,
    build_context,
    headroom,
    live_quotas,
)
from services.scheduler.activator import HoldQueue, HoldSettings
from services.simulator.serving.profile import StandInProfile

S = types_pb2
# A made-up linear profile: 40 req/s per whole GPU at any batch.
PROFILE = StandInProfile("bert-base", 50, 4, (0.5, 1.0), (1, 8), ((20.0, 20.0), (40.0, 40.0)))
FACTS = {"f": FunctionFacts(PROFILE, 2.0)}


def _function(instances: list[tuple[str, int, str]]) -> types_pb2.Function:
    spec = S.FunctionSpec(name="f", kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM,
                          model="bert-base", slo=S.Slo(latency_ms=50),
                          resources=S.Resources(sm_request=0.3, sm_limit=0.5, memory_mib=3072),
                          replicas=S.Replicas(min=1, max=3), max_batch=8)
    status = S.FunctionStatus(desired_replicas=len(instances))
    for iid, state, gpu in instances:
        status.instances.add(id=iid, function="f", state=state, node="n1", gpu_uuids=[gpu],
                             quota=S.Quota(sm_request=0.3, sm_limit=0.5))
    return S.Function(spec=spec, status=status)


def _training() -> types_pb2.Function:
    spec = S.FunctionSpec(name="t", kind=S.FUNCTION_KIND_TRAINING, runtime=S.RUNTIME_SIM,
                          model="roberta-large",
                          resources=S.Resources(sm_request=0.2, sm_limit=0.8, memory_mib=16384))
    status = S.FunctionStatus(desired_replicas=1)
    status.instances.add(id="t-1", function="t", state=S.INSTANCE_STATE_READY, node="n1",
                         gpu_uuids=["g1"])
    return S.Function(spec=spec, status=status)


def _nodes(reports: list[tuple[str, str, float, float, int]]) -> list[types_pb2.NodeView]:
    node = S.Node(id="n1", address="127.0.0.1:1",
                  bounds=S.PlacementBounds(max_requested=1.0, max_limited=1.5))
    node.gpus.add(uuid="g0")
    node.gpus.add(uuid="g1")
    for iid, gpu, request, limit, version in reports:
        node.instances.add(instance_id=iid, gpu_uuids=[gpu], quota_version=version,
                           quota=S.Quota(sm_request=request, sm_limit=limit,
                                         effective_share=limit, memory_limit_mib=3072))
    return [S.NodeView(node=node, state=S.NODE_STATE_READY)]


def _report(iid: str, end_s: float, requests: int, violations: int, queue: int) -> events_pb2.QosReport:
    at = Timestamp()
    at.FromNanoseconds(int(end_s * 1e9))
    return events_pb2.QosReport(function="f", instance_id=iid, window_end=at, window_s=1.0,
                                requests=requests, rps=requests, p99_ms=40, queue_length=queue,
                                violations=violations, slo_ms=50)


def test_the_context_carries_windows_quotas_bounds_and_training():
    bus = BusView()
    bus.on_qos(_report("f-1", 99.0, 10, 0, 2), 99.0)
    bus.on_qos(_report("f-1", 100.0, 30, 3, 6), 100.0)
    telemetry = events_pb2.GpuTelemetry(node="n1", gpu_uuid="g0")
    telemetry.at.FromNanoseconds(int(99.8e9))
    telemetry.instances.add(instance_id="f-1", busy_ns=400_000_000)
    bus.on_telemetry(telemetry)
    functions = [_function([("f-1", S.INSTANCE_STATE_READY, "g0"),
                            ("f-2", S.INSTANCE_STATE_PENDING, "")]), _training()]
    nodes = _nodes([("f-1", "g0", 0.3, 0.5, 1), ("t-1", "g1", 0.2, 0.8, 1)])
    context = build_context(100.2, functions, nodes, bus, FACTS, {})

    f = context.functions["f"]
    assert (f.replicas_min, f.replicas_max, f.start_request, f.start_limit) == (1, 3, 0.3, 0.5)
    ready, pending = f.instances
    assert ready.state == READY and pending.state == STARTING and pending.window is None
    assert ready.window is not None
    # 30 answered, 3 late, the queue grew by 4: 34 arrived; 0.4 s of GPU in the window
    assert (ready.window.arrivals, ready.window.completed, ready.window.within_slo) == (34, 30, 27)
    assert ready.window.busy_s == pytest.approx(0.4)
    assert f.window is not None and f.window.arrivals == 34
    assert set(context.gpus) == {"g0", "g1"} and context.gpus["g0"].max_limited == 1.5
    (job,) = context.training.values()
    assert (job.gpus, job.deployed_request, job.deployed_limit) == (("g1",), 0.2, 0.8)
    # a stale report is no window at all
    assert build_context(110.0, functions, nodes, bus, FACTS, {}).functions["f"].window is None
    # a function without facts (no profile yet) is left out
    assert "f" not in build_context(100.2, functions, nodes, bus, {}, {}).functions


def test_what_the_scaler_applied_wins_over_an_older_report_not_a_newer_one():
    nodes = _nodes([("f-1", "g0", 0.3, 0.5, 2)])
    assert live_quotas(nodes, {"f-1": Applied(0.6, 0.9, 3)})["f-1"].request == 0.6
    assert live_quotas(nodes, {"f-1": Applied(0.6, 0.9, 1)})["f-1"].request == 0.3


def test_a_gpu_that_refused_a_raise_shows_no_room_and_the_policy_scales_out():
    bus = BusView()
    for k in range(6):
        bus.on_qos(_report("f-1", 95.0 + k, 15, 0, 0), 95.0 + k)
    functions = [_function([("f-1", S.INSTANCE_STATE_READY, "g0")])]
    nodes = _nodes([("f-1", "g0", 0.3, 0.5, 1)])
    open_context = build_context(100.2, functions, nodes, bus, FACTS, {})
    full = build_context(100.2, functions, nodes, bus, FACTS, {}, refused={"g0": 110.0})
    assert headroom(open_context, "f") == pytest.approx((0.7, 1.0))
    assert headroom(full, "f") == pytest.approx((0.0, 0.0))
    # 15 req/s: the open GPU takes a raise; the full one makes the policy scale out (the
    # policy wants the need above the capacity at two decisions in a row)
    raised, _ = decide(open_context, CoscaleState(), 100.2)
    assert not any(isinstance(a, ScaleOut) for a in raised), raised
    _, state = decide(full, CoscaleState(), 100.2)
    bus.on_qos(_report("f-1", 101.0, 15, 0, 0), 101.0)
    again = build_context(101.2, functions, nodes, bus, FACTS, {}, refused={"g0": 110.0})
    actions, _ = decide(again, state, 101.2)
    assert any(isinstance(a, ScaleOut) for a in actions), actions


async def test_held_requests_wait_for_an_instance_and_the_first_asks_for_one():
    queue = HoldQueue(HoldSettings(max_held=3, max_wait_s=5, poll_s=0.01))
    ready = asyncio.Event()
    asked: list[str] = []

    def route() -> tuple[str, str]:
        if not ready.is_set():
            raise Unavailable("no ready instance")
        return "f-1", "127.0.0.1:1"

    async def ask() -> None:
        asked.append("f")
        asyncio.get_running_loop().call_later(0.1, ready.set)

    held = [asyncio.create_task(queue.hold("f", 5, route, lambda: len(asked), ask))
            for _ in range(3)]
    await asyncio.sleep(0.02)
    with pytest.raises(ResourceExhausted, match="hold queue holds 3"):
        await queue.hold("f", 5, route, lambda: 1, ask)
    assert [await h for h in held] == [("f-1", "127.0.0.1:1")] * 3
    assert asked == ["f"] and len(queue.cold_starts["f"]) == 1 and not queue.held


async def test_a_held_request_whose_wait_runs_out_is_unavailable():
    queue = HoldQueue(HoldSettings(max_held=3, max_wait_s=0.1, poll_s=0.01))

    def route() -> tuple[str, str]:
        raise Unavailable("no ready instance")

    async def ask() -> None:
        return None

    with pytest.raises(Unavailable, match=r"became ready within 0\.1 s"):
        await queue.hold("f", 5, route, lambda: 0, ask)
    assert not queue.held
