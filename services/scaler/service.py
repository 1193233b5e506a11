"""gRPC servicer of dilu.v1.ScalerService: the acting scaler's controls and what it sees.

`SetPolicy` switches the policy live: its `mode` (`COSCALE`, or `STATIC` to turn
co-scaling off; unspecified keeps the mode) and its parameters (a `ScalingPolicy`, every
field validated by `CoscaleSettings.from_proto`, INVALID_ARGUMENT naming
`policy.<field>`; unset fields keep their defaults). Both apply from the next decision on.
`GetStatus` says whether co-scaling acts here (`co_scaling_active`: mode COSCALE, the HA
lease held, a scheduler to act through) and, per function, its instances' live quotas,
the headroom the policy sees on their GPUs and the scaler's own last decision. Requests
are checked against their ranges (`services.common.limits`) first, as on every service."""

from __future__ import annotations

import grpc
from dilu.v1 import scaler_pb2, scaler_pb2_grpc, types_pb2

from services.common import limits
from services.common.channels import ChannelPool
from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import InvalidArgument
from services.scaler.acting import COSCALE, STATIC, ActingScaler
from services.scaler.coscale import CoscaleSettings
from services.scaler.live_context import headroom, live_quotas
from services.scaler.observer import QosObserver

MODES = {scaler_pb2.POLICY_MODE_COSCALE: COSCALE, scaler_pb2.POLICY_MODE_STATIC: STATIC}
MODE_VALUES = {name: value for value, name in MODES.items()}


def check_policy(policy: scaler_pb2.ScalingPolicy) -> CoscaleSettings:
    """The settings a `ScalingPolicy` carries (unset fields keep their defaults), or
    `InvalidArgument` naming the first bad field."""
    return CoscaleSettings.from_proto(policy)


def check_mode(mode: int, current: str) -> str:
    if mode == scaler_pb2.POLICY_MODE_UNSPECIFIED:
        return current
    name = MODES.get(mode)  # type: ignore[call-overload]  # an int off the wire
    if name is None:
        raise InvalidArgument("mode", f"must be POLICY_MODE_COSCALE or POLICY_MODE_STATIC, got {mode}")
    return name


class ScalerServicer(scaler_pb2_grpc.ScalerServiceServicer):
    def __init__(self, observer: QosObserver, scaler: ActingScaler | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        """`scaler` None: one with no scheduler to act through (it only observes)."""
        self._observer = observer
        self._scaler = scaler or ActingScaler(ChannelPool(), "")
        self._clock = clock

    async def GetStatus(self, request: scaler_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> scaler_pb2.GetStatusResponse:
        scaler = self._scaler
        return scaler_pb2.GetStatusResponse(
            co_scaling_active=scaler.active, policy=scaler.settings.to_proto(),
            mode=MODE_VALUES[scaler.mode], lease_held=scaler.holder,
            functions=self._observer.functions(self._clock.time()), scaling=self._scaling())

    def _scaling(self) -> list[scaler_pb2.FunctionScaling]:
        scaler = self._scaler
        seen = scaler.last_context
        if seen is None:
            return []
        quotas = live_quotas(scaler.last_nodes, scaler.applied)
        result = []
        for name, function in sorted(seen.functions.items()):
            request_room, limit_room = headroom(seen, name)
            entry = scaler_pb2.FunctionScaling(function=name, request_headroom=request_room,
                                               limit_headroom=limit_room)
            for instance in function.instances:
                q = quotas.get(instance.id)
                entry.instances.add(
                    instance_id=instance.id, node=q.node if q else "",
                    state=_STATE_VALUES.get(instance.state, types_pb2.INSTANCE_STATE_UNSPECIFIED),
                    sm_request=q.request if q else instance.request,
                    sm_limit=q.limit if q else instance.limit,
                    effective_share=q.share if q else 0.0)
            last = self._observer.decisions(name, 1, source="scaler")
            if last:
                entry.last_decision.CopyFrom(last[0])
            result.append(entry)
        return result

    async def SetPolicy(self, request: scaler_pb2.SetPolicyRequest,
                        context: grpc.aio.ServicerContext) -> scaler_pb2.SetPolicyResponse:
        mode = check_mode(request.mode, self._scaler.mode)
        settings = check_policy(request.policy)  # unset means every default
        self._scaler.settings = settings
        self._scaler.set_mode(mode)
        return scaler_pb2.SetPolicyResponse(policy=settings.to_proto(), mode=MODE_VALUES[mode])

    async def ListDecisions(self, request: scaler_pb2.ListDecisionsRequest,
                            context: grpc.aio.ServicerContext) -> scaler_pb2.ListDecisionsResponse:
        function = limits.check_optional_name("function", request.function)
        limit = limits.check_int("limit", request.limit, limits.DECISIONS_LIMIT) or 100
        return scaler_pb2.ListDecisionsResponse(
            decisions=self._observer.decisions(function, limit))


_STATE_VALUES = {"starting": types_pb2.INSTANCE_STATE_STARTING,
                 "ready": types_pb2.INSTANCE_STATE_READY,
                 "draining": types_pb2.INSTANCE_STATE_DRAINING}
