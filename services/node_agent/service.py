"""gRPC servicer of dilu.v1.NodeAgentService. Every field is checked against its range
(`services.common.limits`) before the agent acts; ids before they name a file."""

from __future__ import annotations

import grpc
from dilu.v1 import node_agent_pb2, node_agent_pb2_grpc

from services.common import limits
from services.common.attribution import checked_source
from services.common.errors import InvalidArgument
from services.node_agent.agent import NodeAgent


class NodeAgentServicer(node_agent_pb2_grpc.NodeAgentServiceServicer):
    def __init__(self, agent: NodeAgent) -> None:
        self._agent = agent

    async def StartInstance(self, request: node_agent_pb2.StartInstanceRequest,
                            context: grpc.aio.ServicerContext) -> node_agent_pb2.StartInstanceResponse:
        if not request.HasField("function"):
            raise InvalidArgument("function", "is required")
        report = await self._agent.start_instance(request.instance_id, request.function,
                                                  list(request.gpu_uuids), request.quota)
        return node_agent_pb2.StartInstanceResponse(instance=report)

    async def StopInstance(self, request: node_agent_pb2.StopInstanceRequest,
                           context: grpc.aio.ServicerContext) -> node_agent_pb2.StopInstanceResponse:
        limits.check_id("instance_id", request.instance_id)
        limits.check_int("drain_timeout_ms", request.drain_timeout_ms, limits.DRAIN_TIMEOUT_MS)
        await self._agent.stop_instance(request.instance_id,
                                        request.drain_timeout_ms / 1000 or None)
        return node_agent_pb2.StopInstanceResponse()

    async def SetQuota(self, request: node_agent_pb2.SetQuotaRequest,
                       context: grpc.aio.ServicerContext) -> node_agent_pb2.SetQuotaResponse:
        if not request.HasField("quota"):
            raise InvalidArgument("quota", "is required")
        limits.check_text("reason", request.reason, limits.REASON_MAX_BYTES)
        source = checked_source("source", request.source)
        quota, version = await self._agent.set_quota(request.instance_id, request.quota,
                                                     reason=request.reason, source=source)
        return node_agent_pb2.SetQuotaResponse(quota=quota, quota_version=version)

    async def GetNodeStatus(self, request: node_agent_pb2.GetNodeStatusRequest,
                            context: grpc.aio.ServicerContext) -> node_agent_pb2.GetNodeStatusResponse:
        return node_agent_pb2.GetNodeStatusResponse(node=self._agent.status())

    async def TuneInstance(self, request: node_agent_pb2.TuneInstanceRequest,
                           context: grpc.aio.ServicerContext) -> node_agent_pb2.TuneInstanceResponse:
        return await self._agent.tune_instance(
            request.instance_id,
            request.max_batch if request.HasField("max_batch") else None,
            request.share_cap if request.HasField("share_cap") else None)
