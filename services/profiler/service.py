"""gRPC servicer of dilu.v1.ProfilerService. Stored profiles are served from JetStream KV;
live profiling is not built yet and says so (the search itself, `services.profiler.search`,
runs offline on the bundled tables: `dilu profile --offline`). Requests are checked against
their ranges (`services.common.limits`) first, as on every service."""

from __future__ import annotations

import grpc
from dilu.v1 import profiler_pb2, profiler_pb2_grpc

from services.common import limits
from services.common.bus import ProtoKV
from services.common.errors import InvalidArgument, NotFound, Unimplemented
from services.profiler.metrics import ProfilingMetrics
from services.scheduler.validation import validate_spec


class ProfilerServicer(profiler_pb2_grpc.ProfilerServiceServicer):
    def __init__(self, profiles: ProtoKV[profiler_pb2.Profile],
                 metrics: ProfilingMetrics | None = None) -> None:
        self._profiles = profiles
        # The profiling search, once built, times each run with `self.metrics.run()`.
        self.metrics = metrics

    async def ProfileFunction(self, request: profiler_pb2.ProfileFunctionRequest,
                              context: grpc.aio.ServicerContext) -> profiler_pb2.ProfileFunctionResponse:
        if not request.HasField("function"):
            raise InvalidArgument("function", "is required")
        # Shares and memory may be left unset: finding them is what profiling is for.
        validate_spec(request.function, resources_required=False)
        raise Unimplemented("the live multi-factor profiling search (SM request, SM limit and batch "
                            "size for an SLO, measured on a running worker) is not built yet; "
                            "`dilu profile --offline` runs the search on the bundled A100 tables")

    async def GetProfile(self, request: profiler_pb2.GetProfileRequest,
                         context: grpc.aio.ServicerContext) -> profiler_pb2.GetProfileResponse:
        name = limits.check_name("function", request.function)  # a KV key: checked first
        profile = await self._profiles.get(name)
        if profile is None:
            raise NotFound(f"no profile stored for function {name!r}")
        return profiler_pb2.GetProfileResponse(profile=profile)
