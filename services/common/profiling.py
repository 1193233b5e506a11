"""What every service agrees on about profiles: their key, the key's id, and the names of
the profiler's hidden instances.

A profile is keyed by what determines it (DESIGN.md *Profiles*): the function's kind
(training and inference measure different things), runtime, model, runtime options, the
GPU model it was measured on, its SLO (latency and percentile) and the design rate its
request is sized for (0: the default). `key_id` hashes them into the profile's KV key; the
profiler's hidden instance for a key is the function `profiling-<first 20 hex of the id>`,
a name users may not deploy under (`PROFILING_PREFIX`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable

from dilu.v1 import profiler_pb2, types_pb2

__all__ = [
    "PROFILING_PREFIX",
    "is_profiling",
    "key_id",
    "most_common_gpu_model",
    "profile_key",
    "profiling_name",
]

PROFILING_PREFIX = "profiling-"
"""Names of the profiler's hidden instances start with it; Deploy refuses it."""


def is_profiling(name: str) -> bool:
    return name.startswith(PROFILING_PREFIX)


def profile_key(spec: types_pb2.FunctionSpec, gpu_model: str,
                design_rate_rps: float = 0.0) -> profiler_pb2.ProfileKey:
    """The key of `spec`'s profile on `gpu_model` (a validated spec: its percentile is
    filled in). Training keys carry no SLO and no design rate."""
    training = spec.kind == types_pb2.FUNCTION_KIND_TRAINING
    key = profiler_pb2.ProfileKey(
        kind=spec.kind, runtime=spec.runtime, model=spec.model, gpu_model=gpu_model,
        slo_latency_ms=0.0 if training else spec.slo.latency_ms,
        slo_percentile=0.0 if training else (spec.slo.percentile or 99.0),
        design_rate_rps=0.0 if training else design_rate_rps)
    key.runtime_options.update(spec.runtime_options)
    return key


def key_id(key: profiler_pb2.ProfileKey) -> str:
    """A KV-safe id of `key`: a hash of its fields in a canonical form."""
    canonical = json.dumps([int(key.kind), int(key.runtime), key.model,
                            sorted(key.runtime_options.items()), key.gpu_model,
                            repr(float(key.slo_latency_ms)), repr(float(key.slo_percentile)),
                            repr(float(key.design_rate_rps))], separators=(",", ":"))
    return "p" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def profiling_name(profile_key_id: str) -> str:
    """The name of the hidden function that profiles the key with this id."""
    return PROFILING_PREFIX + profile_key_id.removeprefix("p")[:20]


def most_common_gpu_model(nodes: Iterable[types_pb2.Node]) -> str:
    """The GPU model most GPUs of `nodes` have (the first by name on a tie); '' for none.
    What a profile is measured on when its caller names no GPU model."""
    counts = Counter(gpu.model for node in nodes for gpu in node.gpus)
    if not counts:
        return ""
    return min(counts, key=lambda model: (-counts[model], model))
