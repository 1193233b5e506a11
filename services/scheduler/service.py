"""gRPC servicer of dilu.v1.SchedulerService: proto in, Scheduler call, proto out."""

from __future__ import annotations

import grpc
from dilu.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.attribution import checked_source
from services.common.errors import InvalidArgument
from services.scheduler.scheduler import Scheduler


def _name(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    return value


def _count(value: int) -> int:
    if value < 0:
        raise InvalidArgument("count", f"must not be negative, got {value}")
    return value or 1


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def Deploy(self, request: scheduler_pb2.DeployRequest,
                     context: grpc.aio.ServicerContext) -> scheduler_pb2.DeployResponse:
        if not request.HasField("function"):
            raise InvalidArgument("function", "is required")
        return scheduler_pb2.DeployResponse(function=await self._scheduler.deploy(request.function))

    async def DeleteFunction(self, request: scheduler_pb2.DeleteFunctionRequest,
                             context: grpc.aio.ServicerContext) -> scheduler_pb2.DeleteFunctionResponse:
        stopped = await self._scheduler.delete(_name("name", request.name))
        return scheduler_pb2.DeleteFunctionResponse(stopped_instances=stopped)

    async def GetFunction(self, request: scheduler_pb2.GetFunctionRequest,
                          context: grpc.aio.ServicerContext) -> scheduler_pb2.GetFunctionResponse:
        return scheduler_pb2.GetFunctionResponse(
            function=self._scheduler.get(_name("name", request.name)))

    async def ListFunctions(self, request: scheduler_pb2.ListFunctionsRequest,
                            context: grpc.aio.ServicerContext) -> scheduler_pb2.ListFunctionsResponse:
        return scheduler_pb2.ListFunctionsResponse(functions=self._scheduler.functions())

    async def ScaleOut(self, request: scheduler_pb2.ScaleOutRequest,
                       context: grpc.aio.ServicerContext) -> scheduler_pb2.ScaleOutResponse:
        function = await self._scheduler.scale(
            _name("function", request.function), _count(request.count),
            request.reason or "manual", source=checked_source("source", request.source))
        return scheduler_pb2.ScaleOutResponse(function=function)

    async def ScaleIn(self, request: scheduler_pb2.ScaleInRequest,
                      context: grpc.aio.ServicerContext) -> scheduler_pb2.ScaleInResponse:
        function = await self._scheduler.scale(
            _name("function", request.function), -_count(request.count),
            request.reason or "manual", source=checked_source("source", request.source),
            instance_ids=request.instance_ids)
        return scheduler_pb2.ScaleInResponse(function=function)

    async def Invoke(self, request: scheduler_pb2.InvokeRequest,
                     context: grpc.aio.ServicerContext) -> scheduler_pb2.InvokeResponse:
        _name("function", request.function)
        if request.timeout_ms < 0:
            raise InvalidArgument("timeout_ms", f"must not be negative, got {request.timeout_ms}")
        return await self._scheduler.invoke(request)

    async def ListNodes(self, request: scheduler_pb2.ListNodesRequest,
                        context: grpc.aio.ServicerContext) -> scheduler_pb2.ListNodesResponse:
        return scheduler_pb2.ListNodesResponse(nodes=self._scheduler.list_nodes())
