"""gRPC servicer of dilu.v1.SchedulerService: every field checked against its range
(`services.common.limits`), then a Scheduler call, proto out. In secure mode the
authorization interceptor has admitted the call already; here a deploy lands in the
deployer's namespace when its spec names none, and listings show only what the caller may
see (`services.common.security.policy`)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from dilu.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.common import limits
from services.common.attribution import checked_source
from services.common.errors import InvalidArgument
from services.common.security.interceptor import current_caller
from services.common.security.policy import effective_namespace, visible
from services.scheduler.scheduler import Scheduler


def _count(value: int) -> int:
    return limits.check_int("count", value, limits.SCALE_COUNT) or 1


def _reason(value: str) -> str:
    return limits.check_text("reason", value, limits.REASON_MAX_BYTES) or "manual"


def _instance_ids(values: Sequence[str]) -> list[str]:
    if len(values) > limits.INSTANCE_IDS_MAX:
        raise InvalidArgument("instance_ids", f"must name at most {limits.INSTANCE_IDS_MAX} "
                                              f"instances, got {len(values)}")
    return [limits.check_id(f"instance_ids[{i}]", value) for i, value in enumerate(values)]


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def Deploy(self, request: scheduler_pb2.DeployRequest,
                     context: grpc.aio.ServicerContext) -> scheduler_pb2.DeployResponse:
        if not request.HasField("function"):
            raise InvalidArgument("function", "is required")
        spec = types_pb2.FunctionSpec()
        spec.CopyFrom(request.function)
        spec.namespace = effective_namespace(spec.namespace, current_caller())
        return scheduler_pb2.DeployResponse(function=await self._scheduler.deploy(spec))

    async def DeleteFunction(self, request: scheduler_pb2.DeleteFunctionRequest,
                             context: grpc.aio.ServicerContext) -> scheduler_pb2.DeleteFunctionResponse:
        stopped = await self._scheduler.delete(limits.check_name("name", request.name))
        return scheduler_pb2.DeleteFunctionResponse(stopped_instances=stopped)

    async def GetFunction(self, request: scheduler_pb2.GetFunctionRequest,
                          context: grpc.aio.ServicerContext) -> scheduler_pb2.GetFunctionResponse:
        return scheduler_pb2.GetFunctionResponse(
            function=self._scheduler.get(limits.check_name("name", request.name)))

    async def ListFunctions(self, request: scheduler_pb2.ListFunctionsRequest,
                            context: grpc.aio.ServicerContext) -> scheduler_pb2.ListFunctionsResponse:
        caller = current_caller()
        return scheduler_pb2.ListFunctionsResponse(functions=[
            f for f in self._scheduler.functions()
            if visible(caller, f.spec.name, f.spec.namespace)])

    async def ScaleOut(self, request: scheduler_pb2.ScaleOutRequest,
                       context: grpc.aio.ServicerContext) -> scheduler_pb2.ScaleOutResponse:
        name = limits.check_name("function", request.function)
        count, reason = _count(request.count), _reason(request.reason)
        function = await self._scheduler.scale(name, count, reason,
                                               source=checked_source("source", request.source))
        return scheduler_pb2.ScaleOutResponse(function=function)

    async def ScaleIn(self, request: scheduler_pb2.ScaleInRequest,
                      context: grpc.aio.ServicerContext) -> scheduler_pb2.ScaleInResponse:
        name = limits.check_name("function", request.function)
        count, reason = _count(request.count), _reason(request.reason)
        function = await self._scheduler.scale(name, -count, reason,
                                               source=checked_source("source", request.source),
                                               instance_ids=_instance_ids(request.instance_ids))
        return scheduler_pb2.ScaleInResponse(function=function)

    async def Invoke(self, request: scheduler_pb2.InvokeRequest,
                     context: grpc.aio.ServicerContext) -> scheduler_pb2.InvokeResponse:
        limits.check_name("function", request.function)
        limits.check_invoke_body(request.payload, request.content_type)
        limits.check_int("timeout_ms", request.timeout_ms, limits.INVOKE_TIMEOUT_MS)
        return await self._scheduler.invoke(request)

    async def ListNodes(self, request: scheduler_pb2.ListNodesRequest,
                        context: grpc.aio.ServicerContext) -> scheduler_pb2.ListNodesResponse:
        return scheduler_pb2.ListNodesResponse(nodes=self._scheduler.list_nodes())

    async def StartProfiling(self, request: scheduler_pb2.StartProfilingRequest,
                             context: grpc.aio.ServicerContext) -> scheduler_pb2.StartProfilingResponse:
        if not request.HasField("function"):
            raise InvalidArgument("function", "is required")
        limits.check_text("gpu_model", request.gpu_model, limits.GPU_MODEL_MAX)
        function = await self._scheduler.start_profiling(request.function, request.gpu_model)
        return scheduler_pb2.StartProfilingResponse(function=function)

    async def StopProfiling(self, request: scheduler_pb2.StopProfilingRequest,
                            context: grpc.aio.ServicerContext) -> scheduler_pb2.StopProfilingResponse:
        stopped = await self._scheduler.stop_profiling(limits.check_name("name", request.name))
        return scheduler_pb2.StopProfilingResponse(stopped_instances=stopped)

    async def ListProfiling(self, request: scheduler_pb2.ListProfilingRequest,
                            context: grpc.aio.ServicerContext) -> scheduler_pb2.ListProfilingResponse:
        return scheduler_pb2.ListProfilingResponse(functions=self._scheduler.profiling_functions())
