"""The node agent's budget: starts and quota changes admitted against the placement
bounds, refusals that name the GPU and its headroom and change nothing, and the refusal
as a caller reads it back through the error interceptor."""

from __future__ import annotations

import math

import grpc
import pytest
from dilu.v1 import node_agent_pb2, node_agent_pb2_grpc, types_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common.bounds import AGENT_DEFAULT, PlacementBounds
from services.common.grpc_server import GrpcServer
from services.node_agent.budget import Hold, NodeBudget, NoRoom, room_refusal

GPU_MIB = 40960


def budget(bounds: PlacementBounds = AGENT_DEFAULT, gpus: int = 2) -> NodeBudget:
    return NodeBudget("n1", {f"g{i}": GPU_MIB for i in range(gpus)}, bounds)


def test_starts_fill_a_gpu_up_to_its_bounds_and_no_further():
    book = budget()
    for i in range(3):
        book.start(f"a{i}", ["g0"], Hold(0.3, 0.5, 4096))
    with pytest.raises(NoRoom) as refused:
        book.start("a3", ["g0"], Hold(0.3, 0.3, 4096))
    assert refused.value.bound == "sm_request"
    assert refused.value.headroom.gpu_uuid == "g0"
    assert refused.value.headroom.sm_request == pytest.approx(0.1)
    assert "g0" in refused.value.message and "n1" in refused.value.message
    assert book.hold_of("a3") is None and book.instances_on("g0") == ["a0", "a1", "a2"]
    book.start("a3", ["g0"], Hold(0.1, 0.0, 4096))  # exactly the room left fits


def test_tenths_that_add_up_to_one_in_decimal_fit_in_binary():
    book = budget()
    for i in range(10):
        book.start(f"a{i}", ["g0"], Hold(0.1, 0.1, 1024))
    assert book.within_bounds("g0")


@pytest.mark.parametrize(("hold", "bound"), [
    (Hold(0.1, 1.1, 1024), "sm_limit"),
    (Hold(0.1, 0.1, GPU_MIB), "memory_mib"),
])
def test_limits_and_memory_have_their_own_bounds(hold: Hold, bound: str):
    book = budget(PlacementBounds(1.0, 1.5))
    book.start("a", ["g0"], Hold(0.2, 0.5, 1024))
    with pytest.raises(NoRoom) as refused:
        book.start("b", ["g0"], hold)
    assert refused.value.bound == bound


def test_a_raise_that_does_not_fit_is_refused_and_changes_nothing():
    book = budget()
    book.start("a", ["g0"], Hold(0.3, 0.5, 4096))
    book.start("b", ["g0"], Hold(0.5, 0.5, 4096))
    with pytest.raises(NoRoom) as refused:
        book.resize("a", Hold(0.6, 0.6, 4096))
    # The most `a` may hold beside `b`: its own 0.3 counts as room for it.
    assert refused.value.headroom.sm_request == pytest.approx(0.5)
    assert book.hold_of("a") == Hold(0.3, 0.5, 4096)
    assert book.resize("a", Hold(0.5, 0.5, 8192)) == Hold(0.3, 0.5, 4096)
    assert book.used("g0") == Hold(1.0, 1.0, 12288)


def test_a_lowering_is_admitted_even_on_a_gpu_beyond_tighter_bounds():
    book = budget(PlacementBounds(0.5, 0.5))
    book.start("a", ["g0"], Hold(0.5, 0.5, 4096))
    book.bounds = PlacementBounds(0.2, 0.2)  # as if tightened under it
    book.resize("a", Hold(0.4, 0.4, 2048))
    with pytest.raises(NoRoom):
        book.resize("a", Hold(0.4, 0.45, 2048))


def test_a_gang_is_admitted_on_all_its_gpus_or_on_none():
    book = budget()
    book.start("big", ["g1"], Hold(0.8, 0.8, 1024))
    with pytest.raises(NoRoom) as refused:
        book.start("gang", ["g0", "g1"], Hold(0.4, 0.4, 1024))
    assert refused.value.headroom.gpu_uuid == "g1"
    assert book.instances_on("g0") == [] and book.gpus_of("gang") == ()
    book.start("gang", ["g0", "g1"], Hold(0.2, 0.2, 1024))
    with pytest.raises(NoRoom):
        book.resize("gang", Hold(0.3, 0.3, 1024))  # fits g0, not g1
    assert book.hold_of("gang") == Hold(0.2, 0.2, 1024)


def test_starting_twice_is_idempotent_and_a_release_frees_the_room():
    book = budget()
    book.start("a", ["g0"], Hold(0.9, 0.9, 1024))
    book.start("a", ["g0"], Hold(0.9, 0.9, 1024))
    assert book.used("g0").sm_request == pytest.approx(0.9)
    book.release("a")
    book.release("a")
    book.start("b", ["g0"], Hold(1.0, 1.0, GPU_MIB))
    with pytest.raises(KeyError):
        book.start("c", ["nope"], Hold(0.1, 0.1, 1))
    with pytest.raises(KeyError):
        book.resize("ghost", Hold(0.1, 0.1, 1))


def test_unbounded_limits_are_never_the_reason():
    book = budget(PlacementBounds(1.0, math.inf))
    for i in range(10):
        book.start(f"a{i}", ["g0"], Hold(0.1, 1.0, 1024))
    assert book.headroom("g0").sm_limit == math.inf


class _Full(node_agent_pb2_grpc.NodeAgentServiceServicer):
    async def SetQuota(self, request, context):  # type: ignore[no-untyped-def]
        book = budget(PlacementBounds(0.9, 1.2))
        book.start("other", ["g0"], Hold(0.55, 0.6, 30000))
        book.start(request.instance_id, ["g0"], Hold(0.2, 0.2, 4096))
        book.resize(request.instance_id, Hold.of(request.quota))


async def test_a_refusal_reaches_the_caller_as_resource_exhausted_with_the_gpu_and_headroom():
    server = GrpcServer("127.0.0.1", 0)
    server.add(node_agent_pb2_grpc.add_NodeAgentServiceServicer_to_server, _Full(),
               "dilu.v1.NodeAgentService")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await node_agent_pb2_grpc.NodeAgentServiceStub(channel).SetQuota(
                    node_agent_pb2.SetQuotaRequest(instance_id="i1", quota=types_pb2.Quota(
                        sm_request=0.5, sm_limit=0.5, memory_limit_mib=4096)))
    finally:
        await server.stop(0.5)
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "GPU g0" in error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    refusal = room_refusal(status)
    assert refusal is not None
    assert (refusal.node, refusal.bound, refusal.headroom.gpu_uuid) == ("n1", "sm_request", "g0")
    assert refusal.headroom.sm_request == 0.9 - 0.55  # exactly: asking for it must fit
    assert refusal.headroom.memory_mib == GPU_MIB - 30000
    assert refusal.bounds == PlacementBounds(0.9, 1.2)
    quota_failure = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(quota_failure) for d in status.details if d.Is(quota_failure.DESCRIPTOR))
    assert quota_failure.violations[0].subject == "gpu:g0"
