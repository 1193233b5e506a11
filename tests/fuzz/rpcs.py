"""The table of RPCs the fuzz suite drives: for each, the server it goes to and the
strategy of its requests (serialized; valid-shaped and garbage). Add a row when an RPC is
added to any service; `test_fuzz` fails when a dilu.v1 RPC has no row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dilu.v1 import (
    node_agent_pb2,
    profiler_pb2,
    scaler_pb2,
    scheduler_pb2,
    types_pb2,
    worker_pb2,
)
from hypothesis import strategies as st

from services.common import limits
from services.scaler.coscale import CoscaleSettings
from tests.fuzz import strategies as fz


@dataclass(frozen=True, slots=True)
class FuzzContext:
    """What strategies need to know about the running stack."""

    gpu_uuids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rpc:
    """One RPC to fuzz. `target` names a server of the stack (a service, or a seeded
    worker); `requests` makes the strategy of its serialized requests."""

    service: str
    method: str
    target: str
    requests: Callable[[FuzzContext], st.SearchStrategy[bytes]]
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.service.removeprefix('dilu.v1.')}.{self.method}{self.label}"

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


def _empty(message_type: type) -> Callable[[FuzzContext], st.SearchStrategy[bytes]]:
    return lambda _: fz.requests(st.just(message_type()))


def _named(message_type: type, field: str) -> Callable[[FuzzContext], st.SearchStrategy[bytes]]:
    return lambda _: fz.requests(fz.messages(message_type, {field: (fz.VALID_NAMES, fz.names())}))


def _deploy(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(st.one_of(st.builds(scheduler_pb2.DeployRequest, function=fz.function_specs()),
                                 st.just(scheduler_pb2.DeployRequest())))


_COUNT = (st.integers(0, 2), fz.ints(limits.SCALE_COUNT))
_REASON = (st.sampled_from(["", "fuzz"]), fz.texts(limits.REASON_MAX_BYTES))
_SOURCE = (st.sampled_from(["", "fuzz", "cli"]),
           st.one_of(st.sampled_from(fz.HOSTILE_STRINGS), st.text(max_size=40)))


def _scale_out(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(scheduler_pb2.ScaleOutRequest, {
        "function": (fz.VALID_NAMES, fz.names()), "count": _COUNT, "reason": _REASON,
        "source": _SOURCE}))


def _scale_in(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(scheduler_pb2.ScaleInRequest, {
        "function": (fz.VALID_NAMES, fz.names()), "count": _COUNT, "reason": _REASON,
        "source": _SOURCE, "instance_ids": (st.just([]), st.one_of(st.lists(fz.ids(), max_size=3),
                                                st.just(["fz-0"] * 1001)))}))


def _invoke(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(scheduler_pb2.InvokeRequest, {
        "function": (fz.VALID_NAMES, fz.names()),
        "payload": (st.sampled_from([b"", b"{}"]), fz.infer_payloads()),
        "content_type": fz.content_types(),
        "timeout_ms": (st.integers(0, 5000), fz.ints(limits.INVOKE_TIMEOUT_MS))}))


def _start(context: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(st.one_of(fz.messages(node_agent_pb2.StartInstanceRequest, {
        "instance_id": (fz.VALID_IDS, fz.ids()),
        "function": (fz.function_specs(), fz.function_specs()),
        "gpu_uuids": fz.gpu_lists(context.gpu_uuids),
        "quota": (fz.quotas(), fz.quotas())}),
        st.just(node_agent_pb2.StartInstanceRequest())))


def _stop(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(node_agent_pb2.StopInstanceRequest, {
        "instance_id": (fz.VALID_IDS, fz.ids()),
        "drain_timeout_ms": (st.integers(0, 2000), fz.ints(limits.DRAIN_TIMEOUT_MS))}))


def _set_quota(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(node_agent_pb2.SetQuotaRequest, {
        "instance_id": (fz.VALID_IDS, fz.ids()), "quota": (fz.quotas(), st.one_of(st.none(), fz.quotas())),
        "reason": _REASON, "source": _SOURCE}))


_SIM_GPU = "NVIDIA A100-SXM4-40GB"


def _sim_only(spec: types_pb2.FunctionSpec) -> types_pb2.FunctionSpec:
    """The profiler measures what it is given: a valid torch spec would build a real model
    on the fuzz stack's CPUs (their validation is Deploy's, fuzzed there)."""
    if spec.runtime == types_pb2.RUNTIME_TORCH:
        spec.runtime = types_pb2.RUNTIME_SIM
    return spec


def _profile(_: FuzzContext) -> st.SearchStrategy[bytes]:
    specs = fz.function_specs(startable=False).map(_sim_only)
    return fz.requests(st.one_of(fz.messages(profiler_pb2.ProfileFunctionRequest, {
        "function": (specs, specs),
        "design_rate_rps": (st.sampled_from([0.0, 20.0]), fz.floats(limits.DESIGN_RATE_RPS)),
        "gpu_model": (st.sampled_from(["", _SIM_GPU]), fz.texts(limits.GPU_MODEL_MAX)),
        # A valid call that waits answers by its deadline: drawn rarely, it costs seconds.
        "wait": (st.just(False), st.booleans()),
        "refresh": (st.booleans(), st.booleans())}),
        st.just(profiler_pb2.ProfileFunctionRequest())))


def _get_profile(_: FuzzContext) -> st.SearchStrategy[bytes]:
    key = fz.messages(profiler_pb2.ProfileKey, {
        "kind": (st.sampled_from([types_pb2.FUNCTION_KIND_INFERENCE, types_pb2.FUNCTION_KIND_TRAINING]),
                 fz.enums([1, 2, 3])),
        "runtime": (st.just(types_pb2.RUNTIME_SIM), fz.enums([1, 2])),
        "model": (st.sampled_from(["resnet152", "bert-base"]), fz.texts(limits.MODEL_MAX)),
        "gpu_model": (st.just(_SIM_GPU), fz.texts(limits.GPU_MODEL_MAX)),
        "slo_latency_ms": (st.sampled_from([50.0, 100.0]), fz.floats(limits.LATENCY_MS)),
        "slo_percentile": (st.just(99.0), fz.floats(limits.PERCENTILE)),
        "design_rate_rps": (st.just(0.0), fz.floats(limits.DESIGN_RATE_RPS)),
        "runtime_options": (st.just({}), fz.string_maps(["batch", "slowdown", "x y"], ["1", "abc"]))})
    return fz.requests(st.one_of(st.builds(profiler_pb2.GetProfileRequest, key=key),
                                 st.just(profiler_pb2.GetProfileRequest())))


_PROFILING_NAMES = st.sampled_from(["profiling-fz-a", "profiling-fz-b"])


def _hidden_specs(spec: types_pb2.FunctionSpec, name: str) -> types_pb2.FunctionSpec:
    spec.name = name
    return _sim_only(spec)


def _start_profiling(_: FuzzContext) -> st.SearchStrategy[bytes]:
    valid = st.builds(_hidden_specs, fz.function_specs(), _PROFILING_NAMES)
    return fz.requests(st.one_of(fz.messages(scheduler_pb2.StartProfilingRequest, {
        "function": (valid, fz.function_specs(startable=False)),
        "gpu_model": (st.sampled_from(["", _SIM_GPU]), fz.texts(limits.GPU_MODEL_MAX))}),
        st.just(scheduler_pb2.StartProfilingRequest())))


def _stop_profiling(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(scheduler_pb2.StopProfilingRequest, {
        "name": (_PROFILING_NAMES, fz.names())}))


def _tune(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(node_agent_pb2.TuneInstanceRequest, {
        "instance_id": (fz.VALID_IDS, fz.ids()),
        "max_batch": (st.one_of(st.none(), st.sampled_from([1, 4, 8])), fz.ints(limits.BATCH)),
        "share_cap": (st.one_of(st.none(), st.sampled_from([0.5, 1.0])), fz.floats(limits.SHARE))}))


def _set_max_batch(_: FuzzContext) -> st.SearchStrategy[bytes]:
    # The seeded worker's batch may move: what the suite keeps unchanged is its function's
    # spec and quota, not how it batches.
    return fz.requests(fz.messages(worker_pb2.SetMaxBatchRequest, {
        "max_batch": (st.sampled_from([1, 4, 8]), fz.ints(limits.BATCH))}))


def _set_policy(_: FuzzContext) -> st.SearchStrategy[bytes]:
    # Valid: unset or the default; wild: the range's edges and beyond.
    defaults = CoscaleSettings()
    fields: dict[str, fz.Field] = {
        name: (st.sampled_from([None, getattr(defaults, name)]), fz.floats(bounds))
        for name, bounds in limits.POLICY.items()}
    fields |= {flag: (st.sampled_from([None, True]), st.booleans())
               for flag in ("vertical", "horizontal")}
    # The mode: valid (unspecified keeps it; static stops acting, coscale acts again) or
    # out of the enum (INVALID_ARGUMENT naming `mode`).
    modes = fz.enums([scaler_pb2.POLICY_MODE_UNSPECIFIED, scaler_pb2.POLICY_MODE_COSCALE,
                      scaler_pb2.POLICY_MODE_STATIC])
    return fz.requests(st.builds(scaler_pb2.SetPolicyRequest,
                                 policy=fz.messages(scaler_pb2.ScalingPolicy, fields),
                                 mode=modes))


def _list_decisions(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(scaler_pb2.ListDecisionsRequest, {
        "function": (st.sampled_from(["", *fz.FUZZ_NAMES]), fz.names()),
        "limit": (st.integers(0, 10), fz.ints(limits.DECISIONS_LIMIT))}))


def _infer(_: FuzzContext) -> st.SearchStrategy[bytes]:
    return fz.requests(fz.messages(worker_pb2.InferRequest, {
        "payload": (st.sampled_from([b"", b"{}"]), fz.infer_payloads()),
        "content_type": fz.content_types()}))


_SCHED, _AGENT = "dilu.v1.SchedulerService", "dilu.v1.NodeAgentService"
_PROF, _SCALER = "dilu.v1.ProfilerService", "dilu.v1.ScalerService"

RPCS: tuple[Rpc, ...] = (
    Rpc(_SCHED, "Deploy", "scheduler", _deploy),
    Rpc(_SCHED, "DeleteFunction", "scheduler", _named(scheduler_pb2.DeleteFunctionRequest, "name")),
    Rpc(_SCHED, "GetFunction", "scheduler", _named(scheduler_pb2.GetFunctionRequest, "name")),
    Rpc(_SCHED, "ListFunctions", "scheduler", _empty(scheduler_pb2.ListFunctionsRequest)),
    Rpc(_SCHED, "ScaleOut", "scheduler", _scale_out),
    Rpc(_SCHED, "ScaleIn", "scheduler", _scale_in),
    Rpc(_SCHED, "Invoke", "scheduler", _invoke),
    Rpc(_SCHED, "ListNodes", "scheduler", _empty(scheduler_pb2.ListNodesRequest)),
    Rpc(_SCHED, "StartProfiling", "scheduler", _start_profiling),
    Rpc(_SCHED, "StopProfiling", "scheduler", _stop_profiling),
    Rpc(_SCHED, "ListProfiling", "scheduler", _empty(scheduler_pb2.ListProfilingRequest)),
    Rpc(_AGENT, "StartInstance", "node-agent", _start),
    Rpc(_AGENT, "StopInstance", "node-agent", _stop),
    Rpc(_AGENT, "SetQuota", "node-agent", _set_quota),
    Rpc(_AGENT, "GetNodeStatus", "node-agent", _empty(node_agent_pb2.GetNodeStatusRequest)),
    Rpc(_AGENT, "TuneInstance", "node-agent", _tune),
    Rpc(_PROF, "ProfileFunction", "profiler", _profile),
    Rpc(_PROF, "GetProfile", "profiler", _get_profile),
    Rpc(_SCALER, "GetStatus", "scaler", _empty(scaler_pb2.GetStatusRequest)),
    Rpc(_SCALER, "SetPolicy", "scaler", _set_policy),
    Rpc(_SCALER, "ListDecisions", "scaler", _list_decisions),
    Rpc("dilu.v1.WorkerService", "Infer", "worker-sim", _infer, "[sim]"),
    Rpc("dilu.v1.WorkerService", "Infer", "worker-torch", _infer, "[torch]"),
    Rpc("dilu.v1.WorkerService", "SetMaxBatch", "worker-sim", _set_max_batch, "[sim]"),
)
