"""Serving scenarios as YAML: the cluster, the functions and their load, training jobs, the
deploy order, the duration and the seed. `load_scenario` validates everything and names the
file, the field and the problem (`ScenarioError`).

```yaml
name: demo
duration_s: 60
seed: 7
cluster: {nodes: 1, gpus_per_node: 2, gpu_memory_mib: 40960,
          max_requested: 1.0, max_limited: 1.5}          # the bounds default to these
functions:
  - name: bert-base
    model: bert-base            # one of services.perf.SIM_MODELS
    slo_ms: 50
    trace: bursty               # bursty | periodic | sporadic (services/perf/data/workloads)
    scale: 2                    # requests per second per unit of the trace
    shift_s: 0                  # circular shift, in trace seconds (default 0)
    trace_span_s: 60            # scenario seconds the whole trace spans (default: its length)
    replicas: {min: 1, max: 4, initial: 1}   # initial defaults to min
    quota: {request: 0.2, limit: 0.5, memory_mib: 3072}   # optional: else the system sizes it
    max_batch: 8                # optional, as quota
    slowdown: 1.0               # the sim runtime option: batches take this factor longer
training:
  - name: roberta-finetune
    model: roberta-large
    gpus: 1
    quota: {request: 0.2, limit: 0.8, memory_mib: 16384}  # memory per GPU
    host_ms: 0                  # per step; `saturate`: the GPU part at the limit (see below)
    batch: 16                   # default 16
    slowdown: 1.0               # as for functions: the GPU part takes this factor longer
deploy: [resnet152, bert-base, roberta-finetune, resnet152]  # optional
```

`deploy` places one instance per entry, in order (a function named twice gets two); it
must name every initial instance exactly. Without it, the functions' instances go first,
in file order, then the training jobs. `host_ms: saturate` gives a job the host part that
makes it saturate at its limit: the step's whole-GPU time divided by the limit, so more
share than the limit would not make it faster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.node_agent.worker.engines import sim_training_step_gpu_s
from services.node_agent.worker.requirements import SLOWDOWN_RANGE
from services.perf import SIM_MODELS, load_model
from services.perf.traces import TRACES, load_trace

GPU_MEMORY_MIB_A100_40GB = 40960
MAX_DURATION_S = 7 * 24 * 3600
TRAINING_BATCH = 16


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class Quota:
    request: float
    limit: float
    memory_mib: int


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    nodes: int
    gpus_per_node: int
    gpu_memory_mib: int = GPU_MEMORY_MIB_A100_40GB
    max_requested: float = 1.0
    max_limited: float = 1.5

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True, slots=True)
class ServedFunction:
    name: str
    model: str
    slo_ms: float
    trace: str
    scale: float
    shift_s: float = 0.0
    trace_span_s: float | None = None
    replicas_min: int = 1
    replicas_max: int = 1
    replicas_initial: int = 1
    quota: Quota | None = None
    max_batch: int | None = None
    # The sim runtime option `slowdown` (>= 1): every batch takes this factor longer than
    # the tables say, in the simulator as in a sim worker.
    slowdown: float = 1.0

    def rate_at(self, t_s: float) -> float:
        """Requests per second offered at scenario time `t_s` (the trace wraps around)."""
        trace = load_trace(self.trace)
        span = self.trace_span_s or len(trace)
        position = (t_s * len(trace) / span + self.shift_s) % len(trace)
        return trace[int(position)] * self.scale


@dataclass(frozen=True, slots=True)
class TrainingJob:
    name: str
    model: str
    gpus: int
    quota: Quota
    host_ms: float
    batch: int = TRAINING_BATCH
    slowdown: float = 1.0

    @property
    def step_gpu_s(self) -> float:
        """The GPU part of a step on a whole GPU, slowdown included."""
        return sim_training_step_gpu_s(load_model(self.model), self.batch) * self.slowdown

    @property
    def saturated_steps_per_s(self) -> float:
        """Steps per second at its limit (or the host part, whichever binds)."""
        return 1.0 / max(self.step_gpu_s / self.quota.limit, self.host_ms / 1000)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    duration_s: float
    seed: int
    cluster: ClusterSpec
    functions: tuple[ServedFunction, ...]
    training: tuple[TrainingJob, ...] = ()
    deploy: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)

    def function(self, name: str) -> ServedFunction:
        return next(f for f in self.functions if f.name == name)

    def deploy_order(self) -> tuple[str, ...]:
        if self.deploy:
            return self.deploy
        order = [f.name for f in self.functions for _ in range(f.replicas_initial)]
        return (*order, *(t.name for t in self.training))


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ScenarioError(f"{path}: not valid YAML: {error}") from None
    return parse_scenario(raw, str(path), path)


def parse_scenario(raw: object, source: str, path: Path | None = None) -> Scenario:
    """Validate a scenario already read into Python values; `source` names it in errors."""
    fields = _Fields(source)
    top = fields.mapping(raw, "", {"name", "duration_s", "seed", "cluster", "functions",
                                   "training", "deploy"})
    name = fields.text(top, "name")
    duration = fields.number(top, "duration_s", low=1, high=MAX_DURATION_S)
    seed = fields.integer(top, "seed", low=0, high=2**63 - 1)
    cluster = _cluster(fields, top.get("cluster"), "cluster")
    raw_functions = top.get("functions", [])
    if not isinstance(raw_functions, list):
        fields.fail("functions", "must be a list")
    functions = tuple(_function(fields, f, f"functions[{i}]", cluster)
                      for i, f in enumerate(raw_functions))
    raw_training = top.get("training", [])
    if raw_training is None:
        raw_training = []
    if not isinstance(raw_training, list):
        fields.fail("training", "must be a list")
    training = tuple(_training(fields, t, f"training[{i}]", cluster)
                     for i, t in enumerate(raw_training))
    if not functions and not training:
        fields.fail("functions", "a scenario needs at least one function or training job")
    names = [f.name for f in functions] + [t.name for t in training]
    for i, one in enumerate(names):
        if one in names[:i]:
            where = f"functions[{i}]" if i < len(functions) else f"training[{i - len(functions)}]"
            fields.fail(f"{where}.name", f"{one!r} is used twice")
    deploy = _deploy(fields, top.get("deploy"), functions, training)
    return Scenario(name, duration, seed, cluster, functions, training, deploy, path)


class _Fields:
    """Typed reads from YAML mappings that fail with the file and the field's path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field_path: str, problem: str) -> None:
        raise ScenarioError(f"{self.source}: {field_path or 'the file'}: {problem}")

    def mapping(self, raw: object, where: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, "must be a mapping")
            raise AssertionError  # unreachable: for the type checker
        unknown = sorted(str(k) for k in raw if k not in allowed)
        if unknown:
            self.fail(_join(where, unknown[0]), f"unknown field (known: {', '.join(sorted(allowed))})")
        return raw

    def present(self, raw: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in raw or raw[key] is None:
            self.fail(_join(where, key), "is required")
        return raw[key]

    def text(self, raw: Mapping[str, Any], key: str, where: str = "") -> str:
        value = self.present(raw, key, where)
        if not isinstance(value, str) or not value or not all(
                c.isalnum() or c in "-_." for c in value):
            self.fail(_join(where, key), f"must be a non-empty name of letters, digits, '-', '_' "
                      f"or '.', got {value!r}")
        return str(value)

    def number(self, raw: Mapping[str, Any], key: str, where: str = "", *, low: float,
               high: float, default: float | None = None, low_open: bool = False) -> float:
        if default is not None and raw.get(key) is None:
            return default
        value = self.present(raw, key, where)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(_join(where, key), f"must be a number, got {value!r}")
        if value < low or value > high or (low_open and value == low):
            bracket = "(" if low_open else "["
            self.fail(_join(where, key), f"must be in {bracket}{low:g}, {high:g}], got {value:g}")
        return float(value)

    def integer(self, raw: Mapping[str, Any], key: str, where: str = "", *, low: int, high: int,
                default: int | None = None) -> int:
        if default is not None and raw.get(key) is None:
            return default
        value = self.present(raw, key, where)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(_join(where, key), f"must be an integer, got {value!r}")
        if not low <= value <= high:
            self.fail(_join(where, key), f"must be in [{low}, {high}], got {value}")
        return int(value)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _cluster(fields: _Fields, raw: object, where: str) -> ClusterSpec:
    spec = fields.mapping(raw, where, {"nodes", "gpus_per_node", "gpu_memory_mib",
                                       "max_requested", "max_limited"})
    max_requested = fields.number(spec, "max_requested", where, low=0, high=1, default=1.0,
                                  low_open=True)
    max_limited = fields.number(spec, "max_limited", where, low=max_requested, high=16,
                                default=1.5)
    return ClusterSpec(
        nodes=fields.integer(spec, "nodes", where, low=1, high=100_000),
        gpus_per_node=fields.integer(spec, "gpus_per_node", where, low=1, high=64),
        gpu_memory_mib=fields.integer(spec, "gpu_memory_mib", where, low=1024, high=1 << 22,
                                      default=GPU_MEMORY_MIB_A100_40GB),
        max_requested=max_requested, max_limited=max_limited)


def _model(fields: _Fields, raw: Mapping[str, Any], where: str) -> str:
    model = fields.present(raw, "model", where)
    if model not in SIM_MODELS:
        fields.fail(f"{where}.model", f"unknown model {model!r}; known: {', '.join(SIM_MODELS)}")
    return str(model)


def _quota(fields: _Fields, raw: object, where: str, cluster: ClusterSpec,
           gpus: int = 1) -> Quota:
    spec = fields.mapping(raw, where, {"request", "limit", "memory_mib"})
    request = fields.number(spec, "request", where, low=0.01, high=1)
    limit = fields.number(spec, "limit", where, low=request, high=1)
    memory = fields.integer(spec, "memory_mib", where, low=1, high=cluster.gpu_memory_mib)
    if request > cluster.max_requested:
        fields.fail(f"{where}.request", f"above the cluster's max_requested ({cluster.max_requested:g})")
    return Quota(request, limit, memory)


def _function(fields: _Fields, raw: object, where: str, cluster: ClusterSpec) -> ServedFunction:
    spec = fields.mapping(raw, where, {"name", "model", "slo_ms", "trace", "scale", "shift_s",
                                       "trace_span_s", "replicas", "quota", "max_batch",
                                       "slowdown"})
    name = fields.text(spec, "name", where)
    model = _model(fields, spec, where)
    trace = fields.present(spec, "trace", where)
    if trace not in TRACES:
        fields.fail(f"{where}.trace", f"unknown trace {trace!r}; known: {', '.join(TRACES)}")
    length = len(load_trace(trace))
    replicas = fields.mapping(spec.get("replicas", {}) or {}, f"{where}.replicas",
                              {"min", "max", "initial"})
    low = fields.integer(replicas, "min", f"{where}.replicas", low=1, high=10_000, default=1)
    high = fields.integer(replicas, "max", f"{where}.replicas", low=low, high=10_000, default=low)
    initial = fields.integer(replicas, "initial", f"{where}.replicas", low=low, high=high,
                             default=low)
    quota = (_quota(fields, spec["quota"], f"{where}.quota", cluster)
             if spec.get("quota") is not None else None)
    max_batch = (fields.integer(spec, "max_batch", where, low=1, high=1024)
                 if spec.get("max_batch") is not None else None)
    return ServedFunction(
        name=name, model=model, slo_ms=fields.number(spec, "slo_ms", where, low=0, high=3_600_000,
                                                     low_open=True),
        trace=str(trace), scale=fields.number(spec, "scale", where, low=0, high=1e6),
        shift_s=fields.number(spec, "shift_s", where, low=0, high=length, default=0.0),
        trace_span_s=(fields.number(spec, "trace_span_s", where, low=0, high=1e12, low_open=True)
                      if spec.get("trace_span_s") is not None else None),
        replicas_min=low, replicas_max=high, replicas_initial=initial, quota=quota,
        max_batch=max_batch, slowdown=_slowdown(fields, spec, where))


def _training(fields: _Fields, raw: object, where: str, cluster: ClusterSpec) -> TrainingJob:
    spec = fields.mapping(raw, where, {"name", "model", "gpus", "quota", "host_ms", "batch",
                                       "slowdown"})
    name = fields.text(spec, "name", where)
    model = _model(fields, spec, where)
    gpus = fields.integer(spec, "gpus", where, low=1, high=cluster.gpus_per_node)
    quota = _quota(fields, fields.present(spec, "quota", where), f"{where}.quota", cluster, gpus)
    batch = fields.integer(spec, "batch", where, low=1, high=1024, default=TRAINING_BATCH)
    slowdown = _slowdown(fields, spec, where)
    host = spec.get("host_ms", 0)
    if host == "saturate":
        host_ms = sim_training_step_gpu_s(load_model(model), batch) * slowdown / quota.limit * 1000
    else:
        host_ms = fields.number(spec, "host_ms", where, low=0, high=3_600_000, default=0.0)
    return TrainingJob(name, model, gpus, quota, host_ms, batch, slowdown)


def _slowdown(fields: _Fields, raw: Mapping[str, Any], where: str) -> float:
    low, high = SLOWDOWN_RANGE
    return fields.number(raw, "slowdown", where, low=low, high=high, default=1.0)


def _deploy(fields: _Fields, raw: object, functions: tuple[ServedFunction, ...],
            training: tuple[TrainingJob, ...]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        fields.fail("deploy", "must be a list of function and training job names")
        raise AssertionError
    wanted = {f.name: f.replicas_initial for f in functions} | {t.name: 1 for t in training}
    for i, entry in enumerate(raw):
        if entry not in wanted:
            fields.fail(f"deploy[{i}]", f"{entry!r} is neither a function nor a training job")
    for name, count in wanted.items():
        if raw.count(name) != count:
            fields.fail("deploy", f"names {name!r} {raw.count(name)} time(s); its initial "
                        f"instances are {count}")
    return tuple(raw)
