"""gRPC servicer of dilu.v1.ScalerService. The scaler observes QoS and scaling decisions on
the bus; the co-scaling policy that acts on them is not built yet and says so."""

from __future__ import annotations

import grpc
from dilu.v1 import scaler_pb2, scaler_pb2_grpc

from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import InvalidArgument, Unimplemented
from services.scaler.observer import QosObserver


class ScalerServicer(scaler_pb2_grpc.ScalerServiceServicer):
    def __init__(self, observer: QosObserver, clock: Clock = SYSTEM_CLOCK) -> None:
        self._observer = observer
        self._clock = clock

    async def GetStatus(self, request: scaler_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> scaler_pb2.GetStatusResponse:
        return scaler_pb2.GetStatusResponse(
            co_scaling_active=False, functions=self._observer.functions(self._clock.time()))

    async def SetPolicy(self, request: scaler_pb2.SetPolicyRequest,
                        context: grpc.aio.ServicerContext) -> scaler_pb2.SetPolicyResponse:
        raise Unimplemented("the adaptive 2D co-scaling policy is not built yet; "
                            "the scaler only observes QoS and scaling decisions")

    async def ListDecisions(self, request: scaler_pb2.ListDecisionsRequest,
                            context: grpc.aio.ServicerContext) -> scaler_pb2.ListDecisionsResponse:
        if request.limit < 0:
            raise InvalidArgument("limit", f"must not be negative, got {request.limit}")
        return scaler_pb2.ListDecisionsResponse(
            decisions=self._observer.decisions(request.function, request.limit or 100))
