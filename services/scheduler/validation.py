"""Deploy validation: a pure function from a FunctionSpec to a normalised copy, or an
`InvalidArgument` naming the first bad field.

Every field is held to its range in `services.common.limits`; then what can be known up
front about running the spec is checked, so that a spec no worker could run is refused
here instead of failing on every restart: the runtime's options against its documented
schema (`requirements`), and the model's memory need at its largest allowed batch against
`resources.memory_mib` per GPU.
"""

from __future__ import annotations

from dilu.v1 import types_pb2

from services.common import limits
from services.common.errors import InvalidArgument
from services.node_agent.worker.requirements import (
    MIB,
    check_runtime_options,
    checked_batch,
    memory_need_bytes,
)
from services.node_agent.worker.torch_catalog import TORCH_MODELS
from services.perf import SIM_MODELS

S = types_pb2
NAME_PATTERN = limits.NAME_PATTERN
KINDS: dict[int, str] = {S.FUNCTION_KIND_INFERENCE: "FUNCTION_KIND_INFERENCE",
         S.FUNCTION_KIND_LLM_INFERENCE: "FUNCTION_KIND_LLM_INFERENCE",
         S.FUNCTION_KIND_TRAINING: "FUNCTION_KIND_TRAINING"}
RUNTIMES: dict[int, str] = {S.RUNTIME_SIM: "RUNTIME_SIM", S.RUNTIME_TORCH: "RUNTIME_TORCH"}
_MODELS = {S.RUNTIME_SIM: frozenset(SIM_MODELS), S.RUNTIME_TORCH: TORCH_MODELS}


def validate_spec(spec: types_pb2.FunctionSpec, prefix: str = "function") -> types_pb2.FunctionSpec:
    """Check every field and fill defaults (percentile 99, sm_limit = sm_request when the
    request is set, 1 GPU, min 1 replica, max = min; the namespace is the caller's to fill,
    see `SchedulerServicer.Deploy`); the input is not changed. Shares, memory and max_batch
    may be left unset: the profile fills them (`needs_profile`)."""
    limits.check_name(f"{prefix}.name", spec.name)
    limits.check_optional_name(f"{prefix}.namespace", spec.namespace)
    limits.check_enum(f"{prefix}.kind", spec.kind, KINDS)
    limits.check_enum(f"{prefix}.runtime", spec.runtime, RUNTIMES)
    _validate_model(spec, prefix)
    normalised = types_pb2.FunctionSpec()
    normalised.CopyFrom(spec)
    _validate_slo(normalised, prefix)
    _validate_resources(normalised, prefix)
    _validate_replicas(normalised, prefix)
    if normalised.HasField("max_batch"):
        limits.check_int(f"{prefix}.max_batch", normalised.max_batch, limits.BATCH)
    limits.check_map(f"{prefix}.labels", normalised.labels, max_entries=limits.LABELS_MAX,
                     key_pattern=limits.LABEL_KEY_PATTERN,
                     value_max_bytes=limits.LABEL_VALUE_MAX_BYTES)
    limits.check_text(f"{prefix}.weights_uri", normalised.weights_uri, limits.WEIGHTS_URI_MAX)
    limits.check_map(f"{prefix}.runtime_options", normalised.runtime_options,
                     max_entries=limits.OPTIONS_MAX, key_pattern=limits.OPTION_KEY_PATTERN,
                     value_max_bytes=limits.OPTION_VALUE_MAX_BYTES)
    check_runtime_options(normalised)
    if normalised.resources.HasField("memory_mib"):
        _check_memory_need(normalised, prefix)
    return normalised


def _validate_model(spec: types_pb2.FunctionSpec, prefix: str) -> None:
    field = f"{prefix}.model"
    limits.check_text(field, spec.model, limits.MODEL_MAX, required=True)
    known = _MODELS[spec.runtime]
    if spec.model not in known:
        runtime = "sim runtime has no performance model" if spec.runtime == S.RUNTIME_SIM \
            else "torch runtime builds no model named"
        raise InvalidArgument(field, f"the {runtime} {spec.model!r}; known: {', '.join(sorted(known))}")


def _validate_slo(spec: types_pb2.FunctionSpec, prefix: str) -> None:
    slo = spec.slo
    if spec.kind == S.FUNCTION_KIND_TRAINING and slo.latency_ms == 0:
        pass  # training is best effort: no latency target
    elif slo.latency_ms == 0:
        raise InvalidArgument(f"{prefix}.slo.latency_ms", "is required for inference functions")
    else:
        limits.check_number(f"{prefix}.slo.latency_ms", slo.latency_ms, limits.LATENCY_MS)
    limits.check_number(f"{prefix}.slo.percentile", slo.percentile, limits.PERCENTILE)
    if slo.percentile == 0:
        slo.percentile = 99.0


def needs_profile(spec: types_pb2.FunctionSpec) -> bool:
    """Whether a validated spec leaves its share or its memory to the profile (a Deploy
    then waits for the profile before placing anything)."""
    res = spec.resources
    return not res.HasField("sm_request") or not res.HasField("memory_mib")


def _validate_resources(spec: types_pb2.FunctionSpec, prefix: str) -> None:
    res = spec.resources
    field = f"{prefix}.resources"
    if res.HasField("sm_request"):
        limits.check_number(f"{field}.sm_request", res.sm_request, limits.SHARE)
        if not res.HasField("sm_limit"):
            res.sm_limit = res.sm_request
    if res.HasField("sm_limit"):
        limits.check_number(f"{field}.sm_limit", res.sm_limit, limits.SHARE)
        if res.HasField("sm_request") and res.sm_request > res.sm_limit:
            raise InvalidArgument(f"{field}.sm_request",
                                  f"must not exceed sm_limit ({res.sm_request} > {res.sm_limit})")
    if res.HasField("memory_mib"):
        limits.check_int(f"{field}.memory_mib", res.memory_mib, limits.MEMORY_MIB)
    limits.check_int(f"{field}.gpus_per_instance", res.gpus_per_instance, limits.GPUS_PER_INSTANCE)
    if res.gpus_per_instance == 0:
        res.gpus_per_instance = 1
    if res.gpus_per_instance > 1 and spec.kind == S.FUNCTION_KIND_INFERENCE:
        raise InvalidArgument(f"{field}.gpus_per_instance",
                              "only training may span several GPUs")
    if res.gpus_per_instance > 1 and spec.kind == S.FUNCTION_KIND_LLM_INFERENCE:
        raise InvalidArgument(
            f"{field}.gpus_per_instance",
            "an LLM inference instance runs its whole model on one GPU: split instances "
            "(a model in pipeline stages over several GPUs) do not exist yet; use 1")


# An unset `replicas.max` lets an inference function scale out: to twice its minimum, and
# at least 4 (room for the co-scaling policy's horizontal waves on a small cluster, a
# bound on what one burst can take from everyone else). Training does not scale out.
DEFAULT_MAX_AT_LEAST = 4


def default_replicas_max(kind: int, minimum: int) -> int:
    """What an unset (0) `replicas.max` means for a function of `kind` with `minimum`."""
    if kind == S.FUNCTION_KIND_TRAINING:
        return max(minimum, 1)
    return max(2 * minimum, DEFAULT_MAX_AT_LEAST)


def _validate_replicas(spec: types_pb2.FunctionSpec, prefix: str) -> None:
    rep = spec.replicas
    if not rep.HasField("min"):
        rep.min = 1
    limits.check_int(f"{prefix}.replicas.min", rep.min, limits.REPLICAS)
    limits.check_int(f"{prefix}.replicas.max", rep.max, limits.MAX_REPLICAS)
    if rep.max == 0:
        rep.max = default_replicas_max(spec.kind, rep.min)
    if rep.max < rep.min:
        raise InvalidArgument(f"{prefix}.replicas.max", f"must be at least min ({rep.max} < {rep.min})")


def _check_memory_need(spec: types_pb2.FunctionSpec, prefix: str) -> None:
    batch = checked_batch(spec)
    need_mib = -(-memory_need_bytes(spec, batch) // MIB)
    if need_mib > spec.resources.memory_mib:
        at = "its training batch" if spec.kind == S.FUNCTION_KIND_TRAINING else (
            "max_batch" if spec.HasField("max_batch") else "batch 1 (max_batch left to the profile)")
        raise InvalidArgument(
            f"{prefix}.resources.memory_mib",
            f"{spec.model} needs {need_mib} MiB per GPU at {at} ({batch}), more than "
            f"memory_mib {spec.resources.memory_mib}")
