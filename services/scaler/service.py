"""gRPC servicer of dilu.v1.ScalerService. The scaler observes QoS and scaling decisions on
the bus. The co-scaling policy (`services.scaler.coscale`, a pure core) is built and runs
in the serving simulator; the live scaler does not run it yet (the next issue wires it:
`SetPolicy` will carry a `ScalingPolicy`, converted by `CoscaleSettings.from_proto`), so
`SetPolicy` checks the policy it is given (INVALID_ARGUMENT naming the field) and then
answers UNIMPLEMENTED, saying so. Requests are checked against their ranges
(`services.common.limits`) first, as on every service."""

from __future__ import annotations

import grpc
from dilu.v1 import scaler_pb2, scaler_pb2_grpc

from services.common import limits
from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import Unimplemented
from services.scaler.coscale import CoscaleSettings
from services.scaler.observer import QosObserver


def check_policy(policy: scaler_pb2.ScalingPolicy) -> CoscaleSettings:
    """The settings a `ScalingPolicy` carries (unset fields keep their defaults), or
    `InvalidArgument` naming the first bad field."""
    return CoscaleSettings.from_proto(policy)


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
        check_policy(request.policy)  # unset means every default
        raise Unimplemented("the live scaler does not run the co-scaling policy yet (it runs "
                            "in the serving simulator: dilu simulate serve); the scaler only "
                            "observes QoS and scaling decisions")

    async def ListDecisions(self, request: scaler_pb2.ListDecisionsRequest,
                            context: grpc.aio.ServicerContext) -> scaler_pb2.ListDecisionsResponse:
        function = limits.check_optional_name("function", request.function)
        limit = limits.check_int("limit", request.limit, limits.DECISIONS_LIMIT) or 100
        return scaler_pb2.ListDecisionsResponse(
            decisions=self._observer.decisions(function, limit))
