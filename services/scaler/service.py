"""gRPC servicer of dilu.v1.ScalerService. The scaler observes QoS and scaling decisions on
the bus; the co-scaling policy that acts on them is not built yet and says so. Requests
are checked against their ranges (`services.common.limits`) first, as on every service."""

from __future__ import annotations

import grpc
from dilu.v1 import scaler_pb2, scaler_pb2_grpc

from services.common import limits
from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import Unimplemented
from services.scaler.observer import QosObserver


def check_policy(policy: scaler_pb2.ScalingPolicy, prefix: str = "policy") -> None:
    """Every parameter in its range (0 keeps the default)."""
    limits.check_number(f"{prefix}.slo_drift_threshold", policy.slo_drift_threshold,
                        limits.SLO_DRIFT_THRESHOLD)
    limits.check_number(f"{prefix}.scale_in_after_s", policy.scale_in_after_s,
                        limits.SCALE_IN_AFTER_S)
    limits.check_number(f"{prefix}.vertical_step", policy.vertical_step, limits.VERTICAL_STEP)


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
        raise Unimplemented("the adaptive 2D co-scaling policy is not built yet; "
                            "the scaler only observes QoS and scaling decisions")

    async def ListDecisions(self, request: scaler_pb2.ListDecisionsRequest,
                            context: grpc.aio.ServicerContext) -> scaler_pb2.ListDecisionsResponse:
        function = limits.check_optional_name("function", request.function)
        limit = limits.check_int("limit", request.limit, limits.DECISIONS_LIMIT) or 100
        return scaler_pb2.ListDecisionsResponse(
            decisions=self._observer.decisions(function, limit))
