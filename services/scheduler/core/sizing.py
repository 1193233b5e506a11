"""Sizing a function from its profile: the figures its spec left unset, filled in (pure).

A Deploy whose spec leaves `sm_request` or `memory_mib` unset waits for its profile
(`validation.needs_profile`); then:

- `sm_request` unset: the profile's request — at most `sm_limit` when the spec set that;
- `sm_limit` unset (the request was unset too, or validation would have set it to the
  request): the profile's limit, at least the request;
- `memory_mib` unset: the profile's memory at its best batch, or the model's need at the
  spec's own `max_batch` when that is larger;
- `max_batch` unset (inference): the profile's best batch, or the largest batch up to it
  that fits a `memory_mib` the spec set.

What the spec set is kept. Training profiles size request = limit (the share keeping 98 %
of a whole GPU's throughput) and memory at the step batch.
"""

from __future__ import annotations

from dilu.v1 import profiler_pb2, types_pb2

from services.node_agent.worker.requirements import (
    MIB,
    largest_batch_within,
    memory_need_bytes,
)
from services.scheduler.validation import validate_spec

__all__ = ["size_spec"]

S = types_pb2


def size_spec(spec: types_pb2.FunctionSpec, profile: profiler_pb2.Profile) -> types_pb2.FunctionSpec:
    """`spec` (validated) with what it left unset taken from a ready `profile`; validated
    again (InvalidArgument if the result could not run, e.g. a memory the spec set that
    is too small for any batch)."""
    sized = types_pb2.FunctionSpec()
    sized.CopyFrom(spec)
    res = sized.resources
    if not res.HasField("sm_request"):
        request = profile.sm_request
        if res.HasField("sm_limit"):
            request = min(request, res.sm_limit)
        res.sm_request = request
        if not res.HasField("sm_limit"):
            res.sm_limit = max(profile.sm_limit, request)
    inference = spec.kind != S.FUNCTION_KIND_TRAINING
    if inference and not sized.HasField("max_batch"):
        best = max(1, profile.best_batch_size)
        sized.max_batch = (largest_batch_within(sized, res.memory_mib * MIB, best)
                           if res.HasField("memory_mib") else best)
    if not res.HasField("memory_mib"):
        batch = sized.max_batch if inference else 1
        need = -(-memory_need_bytes(sized, batch) // MIB)
        res.memory_mib = max(profile.memory_mib, need)
    return validate_spec(sized)
