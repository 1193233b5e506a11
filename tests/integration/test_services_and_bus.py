"""Profiler and scaler processes, and events on the bus seen by a plain nats-py client."""

from __future__ import annotations

import asyncio

import grpc
import nats
import pytest
from dilu.events.v1 import events_pb2
from dilu.v1 import (
    node_agent_pb2,
    profiler_pb2,
    profiler_pb2_grpc,
    scaler_pb2,
    scaler_pb2_grpc,
    scheduler_pb2,
    types_pb2,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster, inference_spec


def test_profiler_serves_health_and_answers_without_a_cluster(cluster: Cluster):
    cluster.start_scheduler()  # and no node: nothing to profile on
    profiler = cluster.start_profiler()
    channel = cluster.channel(profiler.address)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="dilu.v1.ProfilerService"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = profiler_pb2_grpc.ProfilerServiceStub(channel)

    with pytest.raises(grpc.RpcError) as no_node:
        stub.ProfileFunction(profiler_pb2.ProfileFunctionRequest(function=inference_spec("p")))
    assert no_node.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no node is ready" in no_node.value.details()
    key = profiler_pb2.ProfileKey(kind=types_pb2.FUNCTION_KIND_INFERENCE,
                                  runtime=types_pb2.RUNTIME_SIM, model="resnet152",
                                  gpu_model="NVIDIA A100-SXM4-40GB", slo_latency_ms=100,
                                  slo_percentile=99)
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetProfile(profiler_pb2.GetProfileRequest(key=key))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_scaler_records_scaling_decisions_and_recovers_them_after_a_restart(cluster: Cluster):
    scaler = cluster.start_service("scaler")
    cluster.start_scheduler()
    cluster.start_agent("n1")
    assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
    cluster.deploy(inference_spec("grow", request=0.1, limit=0.1))
    cluster.sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function="grow", count=2,
                                                         reason="load test"))
    stub = scaler_pb2_grpc.ScalerServiceStub(cluster.channel(scaler.address))

    decisions = assert_eventually(
        lambda: stub.ListDecisions(scaler_pb2.ListDecisionsRequest(function="grow")).decisions,
        message="scaler saw the decision")
    assert decisions[0].kind == events_pb2.SCALING_KIND_HORIZONTAL_OUT
    assert (decisions[0].replicas_before, decisions[0].replicas_after) == (1, 3)
    assert decisions[0].reason == "load test" and decisions[0].source == "manual"
    status = stub.GetStatus(scaler_pb2.GetStatusRequest())
    assert status.co_scaling_active is False

    scaler.kill()  # the history lives in JetStream, not in the process
    restarted = cluster.start_service("scaler")
    stub = scaler_pb2_grpc.ScalerServiceStub(cluster.channel(restarted.address))
    recovered = assert_eventually(
        lambda: stub.ListDecisions(scaler_pb2.ListDecisionsRequest(function="grow")).decisions,
        message="restarted scaler recovered the decision")
    assert list(recovered) == list(decisions)


async def test_instance_lifecycle_events_reach_a_bus_subscriber(cluster: Cluster):
    cluster.start_scheduler()
    agent = cluster.start_agent("n1")
    nc = await nats.connect(cluster.nats.url)
    seen: list[events_pb2.InstanceEvent] = []

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        event = events_pb2.InstanceEvent()
        event.ParseFromString(msg.data)
        seen.append(event)
        assert msg.subject == f"dilu.events.instance.{event.node}.{event.function}"

    await nc.subscribe("dilu.events.instance.>", cb=collect)
    await nc.flush()
    try:
        await asyncio.to_thread(assert_eventually, lambda: cluster.nodes().get("n1"))
        function = await asyncio.to_thread(cluster.deploy, inference_spec("evt"))
        await asyncio.to_thread(cluster.sched.DeleteFunction,
                                scheduler_pb2.DeleteFunctionRequest(name="evt"))
        for _ in range(50):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    instance_id = function.status.instances[0].id
    kinds = [e.kind for e in seen if e.instance_id == instance_id]
    # READY may or may not come in between: the worker races the delete.
    assert kinds[0] == events_pb2.INSTANCE_EVENT_KIND_STARTING
    assert kinds[-1] == events_pb2.INSTANCE_EVENT_KIND_STOPPED
    assert set(kinds) <= {events_pb2.INSTANCE_EVENT_KIND_STARTING, events_pb2.INSTANCE_EVENT_KIND_READY,
                          events_pb2.INSTANCE_EVENT_KIND_STOPPED}
    assert all(e.node == "n1" for e in seen)
    held = cluster.agent_stub(agent).GetNodeStatus(node_agent_pb2.GetNodeStatusRequest()).node
    assert list(held.instances) == []


def test_the_agent_refuses_gpus_it_does_not_have_and_bad_quotas(cluster: Cluster):
    agent = cluster.start_agent("n1", gpus=1)
    stub = cluster.agent_stub(agent)
    gpu = stub.GetNodeStatus(node_agent_pb2.GetNodeStatusRequest()).node.gpus[0]
    assert gpu.uuid.startswith("GPU-") and gpu.memory_total_mib == 40960

    with pytest.raises(grpc.RpcError) as foreign:
        stub.StartInstance(node_agent_pb2.StartInstanceRequest(
            instance_id="i1", function=inference_spec("f"), gpu_uuids=["GPU-elsewhere"]))
    assert foreign.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gpu_uuids" in foreign.value.details()

    with pytest.raises(grpc.RpcError) as no_quota:
        stub.StartInstance(node_agent_pb2.StartInstanceRequest(
            instance_id="i1", function=inference_spec("f"), gpu_uuids=[gpu.uuid]))
    assert no_quota.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "quota.sm_request" in no_quota.value.details()

    good = types_pb2.Quota(sm_request=0.3, sm_limit=0.5, memory_limit_mib=4096)
    stub.StartInstance(node_agent_pb2.StartInstanceRequest(
        instance_id="i1", function=inference_spec("f"), gpu_uuids=[gpu.uuid], quota=good))
    for bad, field in [(types_pb2.Quota(sm_request=0.5, sm_limit=0.3), "quota.sm_limit"),
                       (types_pb2.Quota(sm_request=1.5, sm_limit=1.5), "quota.sm_request"),
                       (types_pb2.Quota(sm_request=0.2, sm_limit=0.2, memory_limit_mib=-1),
                        "quota.memory_limit_mib")]:
        with pytest.raises(grpc.RpcError) as refused:
            stub.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id="i1", quota=bad))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in refused.value.details()
    # Once the worker runs, lowering its memory below what it uses is refused.
    assert_eventually(lambda: stub.GetNodeStatus(node_agent_pb2.GetNodeStatusRequest()).node
                      .instances[0].state == types_pb2.INSTANCE_STATE_READY, message="i1 ready")
    with pytest.raises(grpc.RpcError) as too_small:
        stub.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id="i1", quota=types_pb2.Quota(
            sm_request=0.3, sm_limit=0.5, memory_limit_mib=1)))
    assert too_small.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    applied = stub.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id="i1", quota=types_pb2.Quota(
        sm_request=0.4, sm_limit=0.4, memory_limit_mib=4096))).quota
    assert (applied.sm_request, applied.sm_limit, applied.effective_share) == (0.4, 0.4, 0.4)
    with pytest.raises(grpc.RpcError) as unknown:
        stub.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id="nope", quota=good))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
