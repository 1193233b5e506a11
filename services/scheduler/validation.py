"""Deploy validation: a pure function from a FunctionSpec to a normalised copy, or an
`InvalidArgument` naming the first bad field."""

from __future__ import annotations

import math
import re

from dilu.v1 import types_pb2

from services.common.errors import InvalidArgument
from services.node_agent.worker.torch_catalog import TORCH_MODELS

NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

# Models the sim runtime has measured performance tables for.
SIM_MODELS = frozenset({"resnet152", "bert-base", "roberta-large", "gpt2-large", "llama2-7b"})

MAX_GPUS_PER_INSTANCE = 8
MAX_REPLICAS = 1000
MAX_BATCH = 4096


def _share(field: str, value: float) -> None:
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise InvalidArgument(field, f"must be in (0, 1] (a fraction of one GPU), got {value}")


def validate_spec(spec: types_pb2.FunctionSpec, prefix: str = "function") -> types_pb2.FunctionSpec:
    """Check every field and fill defaults (percentile 99, 1 GPU, min 1 replica, max = min)."""
    if not spec.name:
        raise InvalidArgument(f"{prefix}.name", "must not be empty")
    if not NAME_PATTERN.match(spec.name):
        raise InvalidArgument(
            f"{prefix}.name",
            f"{spec.name!r} must be 1-63 lowercase letters, digits or '-', "
            "starting with a letter and not ending with '-'",
        )
    if spec.kind not in (
        types_pb2.FUNCTION_KIND_INFERENCE,
        types_pb2.FUNCTION_KIND_LLM_INFERENCE,
        types_pb2.FUNCTION_KIND_TRAINING,
    ):
        raise InvalidArgument(
            f"{prefix}.kind",
            "must be FUNCTION_KIND_INFERENCE, FUNCTION_KIND_LLM_INFERENCE or "
            f"FUNCTION_KIND_TRAINING, got {spec.kind}",
        )
    if spec.runtime not in (types_pb2.RUNTIME_SIM, types_pb2.RUNTIME_TORCH):
        raise InvalidArgument(
            f"{prefix}.runtime", f"must be RUNTIME_SIM or RUNTIME_TORCH, got {spec.runtime}"
        )
    if not spec.model:
        raise InvalidArgument(f"{prefix}.model", "must not be empty")
    if spec.runtime == types_pb2.RUNTIME_SIM and spec.model not in SIM_MODELS:
        raise InvalidArgument(
            f"{prefix}.model",
            f"the sim runtime has no performance model for {spec.model!r}; "
            f"known: {', '.join(sorted(SIM_MODELS))}",
        )
    if spec.runtime == types_pb2.RUNTIME_TORCH and spec.model not in TORCH_MODELS:
        raise InvalidArgument(
            f"{prefix}.model",
            f"the torch runtime builds no model named {spec.model!r}; "
            f"known: {', '.join(sorted(TORCH_MODELS))}",
        )

    normalised = types_pb2.FunctionSpec()
    normalised.CopyFrom(spec)
    _validate_slo(normalised, prefix)
    _validate_resources(normalised, prefix)
    _validate_replicas(normalised, prefix)
    if not 0 <= spec.max_batch <= MAX_BATCH:
        raise InvalidArgument(f"{prefix}.max_batch", f"must be in [0, {MAX_BATCH}], got {spec.max_batch}")
    return normalised


def _validate_slo(spec: types_pb2.FunctionSpec, prefix: str) -> None:
    slo = spec.slo
    if math.isnan(slo.latency_ms) or slo.latency_ms < 0:
        raise InvalidArgument(f"{prefix}.slo.latency_ms", f"must be positive, got {slo.latency_ms}")
    if spec.kind != types_pb2.FUNCTION_KIND_TRAINING and slo.latency_ms == 0:
        raise InvalidArgument(f"{prefix}.slo.latency_ms", "is required for inference functions")
    if math.isnan(slo.percentile) or not 0 <= slo.percentile <= 100:
        raise InvalidArgument(f"{prefix}.slo.percentile", f"must be in (0, 100], got {slo.percentile}")
    if slo.percentile == 0:
        slo.percentile = 99.0


def _validate_resources(spec: types_pb2.FunctionSpec, prefix: str) -> None:
    res = spec.resources
    _share(f"{prefix}.resources.sm_request", res.sm_request)
    if res.sm_limit == 0:
        res.sm_limit = res.sm_request
    _share(f"{prefix}.resources.sm_limit", res.sm_limit)
    if res.sm_request > res.sm_limit:
        raise InvalidArgument(
            f"{prefix}.resources.sm_request",
            f"must not exceed sm_limit ({res.sm_request} > {res.sm_limit})",
        )
    if res.memory_mib < 0:
        raise InvalidArgument(f"{prefix}.resources.memory_mib", f"must not be negative, got {res.memory_mib}")
    if res.memory_mib == 0:
        raise InvalidArgument(f"{prefix}.resources.memory_mib", "must be set (GPU memory per GPU, MiB)")
    if not 0 <= res.gpus_per_instance <= MAX_GPUS_PER_INSTANCE:
        raise InvalidArgument(
            f"{prefix}.resources.gpus_per_instance",
            f"must be in [1, {MAX_GPUS_PER_INSTANCE}], got {res.gpus_per_instance}",
        )
    if res.gpus_per_instance == 0:
        res.gpus_per_instance = 1
    if res.gpus_per_instance > 1 and spec.kind == types_pb2.FUNCTION_KIND_INFERENCE:
        raise InvalidArgument(
            f"{prefix}.resources.gpus_per_instance",
            "only training and LLM inference may span several GPUs",
        )


def _validate_replicas(spec: types_pb2.FunctionSpec, prefix: str) -> None:
    rep = spec.replicas
    if not rep.HasField("min"):
        rep.min = 1
    if not 0 <= rep.min <= MAX_REPLICAS:
        raise InvalidArgument(f"{prefix}.replicas.min", f"must be in [0, {MAX_REPLICAS}], got {rep.min}")
    if not 0 <= rep.max <= MAX_REPLICAS:
        raise InvalidArgument(f"{prefix}.replicas.max", f"must be in [0, {MAX_REPLICAS}], got {rep.max}")
    if rep.max == 0:
        rep.max = max(rep.min, 1)
    if rep.max < rep.min:
        raise InvalidArgument(f"{prefix}.replicas.max", f"must be at least min ({rep.max} < {rep.min})")
