"""gRPC servicer of dilu.v1.ProfilerService: requests checked against their ranges
(`services.common.limits`) first, as on every service; then the profile's record in the
store (`ProfileStore`): asked for (or joined), and followed until it is finished when the
caller waits. The runs themselves are the `Profiler`'s (`profiler.py`)."""

from __future__ import annotations

import asyncio
import time

import grpc
from dilu.v1 import profiler_pb2, profiler_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.common import limits
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.profiling import key_id, most_common_gpu_model, profile_key
from services.common.security.identity import Role
from services.common.security.interceptor import current_caller
from services.profiler.store import ProfileStore
from services.scheduler.validation import KINDS, RUNTIMES, validate_spec

P = profiler_pb2
_FINISHED = (P.PROFILE_STATE_READY, P.PROFILE_STATE_FAILED)
_WAIT_POLL_S = 0.25
# A waiting call answers this long before its deadline, with the state the profile is in.
_DEADLINE_MARGIN_S = 1.0


def _for_caller(profile: profiler_pb2.Profile) -> profiler_pb2.Profile:
    """The record as the caller may see it: a deployer's or invoker's answer leaves out
    the `function` label, the name of whichever function asked first (perhaps another
    namespace's; the key itself is no namespace's, `security/policy.py`)."""
    caller = current_caller()
    if caller is None or caller.role not in (Role.DEPLOYER, Role.INVOKER):
        return profile
    shown = P.Profile()
    shown.CopyFrom(profile)
    shown.ClearField("function")
    return shown


class ProfilerServicer(profiler_pb2_grpc.ProfilerServiceServicer):
    def __init__(self, store: ProfileStore, scheduler: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
        self._store = store
        self._scheduler = scheduler

    async def ProfileFunction(self, request: profiler_pb2.ProfileFunctionRequest,
                              context: grpc.aio.ServicerContext) -> profiler_pb2.ProfileFunctionResponse:
        if not request.HasField("function"):
            raise InvalidArgument("function", "is required")
        # Shares and memory may be left unset: finding them is what profiling is for.
        spec = validate_spec(request.function)
        design = limits.check_number("design_rate_rps", request.design_rate_rps,
                                     limits.DESIGN_RATE_RPS)
        limits.check_text("gpu_model", request.gpu_model, limits.GPU_MODEL_MAX)
        gpu_model = await self._gpu_model(request.gpu_model)
        record = await self._store.ask(profile_key(spec, gpu_model, design), spec.name,
                                       refresh=request.refresh)
        if request.wait:
            remaining = context.time_remaining()
            record = await self._until_finished(
                record, None if remaining is None else max(0.0, remaining - _DEADLINE_MARGIN_S))
            if record.state == P.PROFILE_STATE_FAILED:
                raise FailedPrecondition(f"profiling {spec.name} failed: {record.message}")
        return P.ProfileFunctionResponse(profile=_for_caller(record))

    async def GetProfile(self, request: profiler_pb2.GetProfileRequest,
                         context: grpc.aio.ServicerContext) -> profiler_pb2.GetProfileResponse:
        if not request.HasField("key"):
            raise InvalidArgument("key", "is required")
        key = request.key
        limits.check_enum("key.kind", key.kind, KINDS)
        limits.check_enum("key.runtime", key.runtime, RUNTIMES)
        limits.check_text("key.model", key.model, limits.MODEL_MAX, required=True)
        limits.check_text("key.gpu_model", key.gpu_model, limits.GPU_MODEL_MAX, required=True)
        limits.check_map("key.runtime_options", key.runtime_options, max_entries=limits.OPTIONS_MAX,
                         key_pattern=limits.OPTION_KEY_PATTERN,
                         value_max_bytes=limits.OPTION_VALUE_MAX_BYTES)
        if key.kind != types_pb2.FUNCTION_KIND_TRAINING:
            limits.check_number("key.slo_latency_ms", key.slo_latency_ms, limits.LATENCY_MS)
            limits.check_number("key.slo_percentile", key.slo_percentile, limits.PERCENTILE)
        limits.check_number("key.design_rate_rps", key.design_rate_rps, limits.DESIGN_RATE_RPS)
        profile = await self._store.get(key_id(key))
        if profile is None:
            raise NotFound(f"no profile stored for {key.model} on {key.gpu_model!r} "
                           f"with that SLO and those options (key {key_id(key)})")
        return P.GetProfileResponse(profile=_for_caller(profile))

    async def _gpu_model(self, asked: str) -> str:
        """The GPU model to profile on: the one asked for, if a ready node has it; else
        the one most GPUs of the ready nodes have."""
        try:
            views = (await self._scheduler.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=10)).nodes
        except grpc.aio.AioRpcError as error:
            raise Unavailable(f"the scheduler cannot be reached to find a GPU: {error.details()}") from error
        ready = [v.node for v in views if v.state == types_pb2.NODE_STATE_READY]
        if asked:
            if not any(g.model == asked for node in ready for g in node.gpus):
                raise FailedPrecondition(f"gpu_model: no ready node has a GPU of model {asked!r}")
            return asked
        model = most_common_gpu_model(ready)
        if not model:
            raise Unavailable("no node is ready to profile on")
        return model

    async def _until_finished(self, record: profiler_pb2.Profile,
                              within_s: float | None) -> profiler_pb2.Profile:
        """Follow a record until it is READY or FAILED, or `within_s` passes (then the
        state it is in: a caller's deadline becomes an answer, not DEADLINE_EXCEEDED)."""
        deadline = None if within_s is None else time.monotonic() + within_s
        while record.state not in _FINISHED:
            if deadline is not None and time.monotonic() >= deadline:
                return record
            await asyncio.sleep(_WAIT_POLL_S)
            latest = await self._store.get(record.key_id)
            if latest is None:
                raise Unavailable(f"profile {record.key_id} vanished from the store")
            record = latest
        return record
