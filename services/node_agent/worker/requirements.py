"""What an instance needs from its worker, known from its spec alone (nothing is built):
the runtime options each runtime accepts, and the GPU memory per GPU an instance needs at a
batch size.

The scheduler's Deploy checks both up front, so that a spec no worker could run is refused
instead of restarting forever; the worker checks the same memory need against its quota
before it allocates anything. Both sides call these functions, so they cannot disagree.

**Runtime options.** Each runtime documents its keys; an unknown key is refused (a typo
must not silently run something else):

- `torch`: the model's options and the runtime's `threads` and `batch`
  (`torch_catalog`, which documents them with their bounds);
- `sim`: the table `SIM_OPTIONS` below. To add a key, add a row: which function kinds may
  set it, how its value is parsed and bounded, its default and a line of help (the README
  lists the table).

**Memory need.** `sim`: the performance model's estimate (`PerfModel.memory_mib`: fp16
weights plus activations per sample), three times that for training (weights, gradients,
optimiser state) at its step batch. `torch`: computed from the options
(`torch_catalog.memory_need_bytes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dilu.v1 import types_pb2

from services.common import limits
from services.common.errors import InvalidArgument
from services.node_agent.worker import torch_catalog
from services.perf import load_model

S = types_pb2
MIB = 1024 * 1024
_ALL_KINDS = frozenset({S.FUNCTION_KIND_INFERENCE, S.FUNCTION_KIND_LLM_INFERENCE,
                        S.FUNCTION_KIND_TRAINING})
_TRAINING = frozenset({S.FUNCTION_KIND_TRAINING})
_INFERENCE = frozenset({S.FUNCTION_KIND_INFERENCE, S.FUNCTION_KIND_LLM_INFERENCE})


def _field(key: str) -> str:
    return f"function.runtime_options.{key}"


def int_option(low: int, high: int) -> Callable[[str, str], float]:
    """A parser for an integer option in [low, high]."""

    def parse(key: str, raw: str) -> float:
        try:
            value = int(raw.strip())
        except ValueError:
            raise InvalidArgument(_field(key), f"must be an integer, got {raw[:40]!r}") from None
        if not low <= value <= high:
            raise InvalidArgument(_field(key), f"must be in [{low}, {high}], got {value}")
        return value

    return parse


def float_option(low: float, high: float) -> Callable[[str, str], float]:
    """A parser for a finite decimal option in [low, high]."""

    def parse(key: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise InvalidArgument(_field(key), f"must be a number, got {raw[:40]!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise InvalidArgument(_field(key), f"must be in [{low:g}, {high:g}], got {value!r}")
        return value

    return parse


@dataclass(frozen=True, slots=True)
class SimOption:
    """One option of the `sim` runtime."""

    kinds: frozenset[int]  # function kinds that may set it
    parse: Callable[[str, str], float]  # (key, raw) -> value, or InvalidArgument
    default: float
    help: str


SLOWDOWN_RANGE = (1.0, 100.0)
"""Bounds of the sim runtime's `slowdown` option (and of the serving simulator's field)."""

SIM_OPTIONS: dict[str, SimOption] = {
    "batch": SimOption(_TRAINING, int_option(1, int(limits.BATCH.high)), 16,
                       "samples per training step"),
    "host_ms": SimOption(_TRAINING, float_option(0, 3_600_000), 0,
                         "host part of a training step in ms (data loading, all-reduce), "
                         "overlapping its GPU part; 0: none"),
    "slowdown": SimOption(_ALL_KINDS, float_option(*SLOWDOWN_RANGE), 1.0,
                          "GPU work takes this factor longer than the A100 tables say (a "
                          "slower card, a heavier input): a latency the tables do not know, "
                          "for profiling and what-if runs; 1: none"),
    # Fault injection, for tests and drills of what happens when a function misbehaves.
    "crash_after": SimOption(_INFERENCE, int_option(0, 1 << 40), 0,
                             "the worker exits (status 3, saying so in its log) after serving "
                             "this many requests; 0: never"),
    "hang_after": SimOption(_INFERENCE, int_option(0, 1 << 40), 0,
                            "the worker stops answering after serving this many requests; "
                            "0: never"),
}


def sim_options(spec: types_pb2.FunctionSpec) -> dict[str, float]:
    """Every `sim` option of `spec`, parsed, defaults filled in; unknown keys (or keys
    its kind may not set) refused."""
    allowed = {key: option for key, option in SIM_OPTIONS.items() if spec.kind in option.kinds}
    for key in sorted(spec.runtime_options):
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(_field(key), f"unknown option of the sim runtime for this kind "
                                               f"of function; known: {known}")
    return {key: (option.parse(key, spec.runtime_options[key])
                  if key in spec.runtime_options else option.default)
            for key, option in allowed.items()}


def torch_config(spec: types_pb2.FunctionSpec) -> torch_catalog.ModelConfig:
    """The torch model's config, every option checked against its schema."""
    config = torch_catalog.parse_config(spec.model, spec.runtime_options,
                                        torch_catalog.RUNTIME_OPTIONS)
    torch_catalog.check_runtime_options(spec.runtime_options)
    return config


def check_runtime_options(spec: types_pb2.FunctionSpec) -> None:
    """Refuse unknown keys and bad values of `spec.runtime_options` for its runtime."""
    if spec.runtime == S.RUNTIME_TORCH:
        torch_config(spec)
    elif spec.runtime == S.RUNTIME_SIM:
        sim_options(spec)


def training_batch(spec: types_pb2.FunctionSpec) -> int:
    """Samples per training step."""
    if spec.runtime == S.RUNTIME_TORCH:
        return torch_catalog.training_batch(spec.runtime_options)
    return int(sim_options(spec)["batch"])


def checked_batch(spec: types_pb2.FunctionSpec) -> int:
    """The batch whose memory Deploy checks: the training step's batch, or the largest
    inference batch allowed (1 when the batch is left to the profile)."""
    if spec.kind == S.FUNCTION_KIND_TRAINING:
        return training_batch(spec)
    return spec.max_batch if spec.HasField("max_batch") else 1


def memory_need_bytes(spec: types_pb2.FunctionSpec, batch: int) -> int:
    """GPU memory per GPU one instance of `spec` needs when it runs batches of `batch`
    (training: its step batch, whatever `batch` says)."""
    training = spec.kind == S.FUNCTION_KIND_TRAINING
    if spec.runtime == S.RUNTIME_TORCH:
        size = training_batch(spec) if training else batch
        return torch_catalog.memory_need_bytes(torch_config(spec), size, training)
    perf = load_model(spec.model)
    if training:
        return 3 * perf.memory_mib(training_batch(spec)) * MIB  # weights, gradients, optimiser
    return perf.memory_mib(batch) * MIB


def largest_batch_within(spec: types_pb2.FunctionSpec, memory_limit_bytes: int,
                         ceiling: int) -> int:
    """The largest inference batch in [1, ceiling] whose memory need fits the limit
    (0: no limit); 1 when even that does not fit (the caller refuses to start then)."""
    if not memory_limit_bytes:
        return ceiling
    best = 1
    for batch in range(1, ceiling + 1):
        if memory_need_bytes(spec, batch) > memory_limit_bytes:
            break
        best = batch
    return best

