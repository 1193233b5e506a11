"""The common server bootstrap, in process on port 0: health, reflection, error mapping."""

from __future__ import annotations

import grpc
import pytest
from dilu.v1 import scaler_pb2, scaler_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.grpc_server import GrpcServer
from services.scaler.observer import QosObserver
from services.scaler.service import ScalerServicer


class _Broken(ScalerServicer):
    async def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals")


@pytest.fixture
async def server():
    srv = GrpcServer("127.0.0.1", 0)
    srv.add(scaler_pb2_grpc.add_ScalerServiceServicer_to_server, _Broken(QosObserver()),
            "dilu.v1.ScalerService")
    await srv.start()
    yield srv
    await srv.stop(0.5)


async def test_health_reports_serving_for_the_service_and_the_server(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "dilu.v1.ScalerService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]))
        names = [s.name async for r in replies for s in r.list_services_response.service]
    assert "dilu.v1.ScalerService" in names


async def test_unexpected_errors_become_internal_without_leaking_details(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.GetStatus(scaler_pb2.GetStatusRequest())
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (failed.value.details() or "")


async def test_domain_errors_keep_their_code_and_message(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as bad_policy:
            await stub.SetPolicy(scaler_pb2.SetPolicyRequest(
                policy=scaler_pb2.ScalingPolicy(interval_s=0)))
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.ListDecisions(scaler_pb2.ListDecisionsRequest(limit=-1))
    assert bad_policy.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_policy.value.details().startswith("policy.interval_s:")
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.details().startswith("limit:")


async def test_stopping_turns_health_to_not_serving():
    srv = GrpcServer("127.0.0.1", 0)
    await srv.start()
    await srv._health.enter_graceful_shutdown()
    async with grpc.aio.insecure_channel(srv.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await srv.stop(0.1)
