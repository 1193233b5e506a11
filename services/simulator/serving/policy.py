"""The hooks a scaling policy plugs into the serving simulator: what it sees each tick and
the actions it may return. The simulator applies actions with the live platform's
semantics (see `System` in `systems.py` for how a policy is bundled with placement and
arbitration).

Each tick (`ScalingPolicy.interval_s`, e.g. 1 s, 2 s) the policy gets a `ClusterView`:
every function with its offered load, its queue and its instances, each instance with its
quota, effective share and the last closed one-second `QosWindow` (rps, completions within
the SLO, p50/p95/p99, queue, GPU busy time, time throttled, mean share, concurrency), every
GPU with what is committed on it (the headroom to the placement bounds), and every training
instance with its GPUs and quota (what `SetQuota` may lower for inference). It returns
actions:

- `SetQuota` (vertical, of an inference or a training instance): admitted like the node
  agent's `SetQuota` against the GPU's bounds (Σ requests ≤ max requested, Σ limits ≤ max
  limited; refused otherwise, counted in `refused_actions`), applied at the next arbiter
  period (10 ms).
- `ScaleOut` (horizontal): new instances, at the function's deployed quota, placed by the
  scheduler core with the system's placement policy (kept pending and retried every
  second while nothing admits them); each serves after its cold start (2 s + fp16 weights
  at 2 GB/s).
- `ScaleIn`: the named instance (or the one the scheduler's replica planning picks)
  drains: no new requests, its queue finishes, then its resources are released.
- `SetMaxBatch`: the instance's batcher uses a new maximum batch from its next batch on.

Replica bounds of the scenario are enforced (an action beyond them is refused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.simulator.serving.windows import QosWindow


@dataclass(frozen=True, slots=True)
class InstanceView:
    id: str
    function: str
    node: str
    gpus: tuple[str, ...]
    state: str                 # starting | ready | draining
    request: float
    limit: float
    share: float               # effective share now
    max_batch: int
    window: QosWindow | None   # the last closed one-second window (None: none yet)


@dataclass(frozen=True, slots=True)
class FunctionView:
    name: str
    model: str
    slo_ms: float
    replicas_min: int
    replicas_max: int
    window: QosWindow | None   # offered arrivals (incl. refused), completions, p99 ...
    queued: int                # waiting for a ready instance now
    instances: tuple[InstanceView, ...]


@dataclass(frozen=True, slots=True)
class GpuView:
    uuid: str
    node: str
    memory_total_mib: int
    sm_requested: float
    sm_limited: float
    memory_allocated_mib: int
    instances: tuple[str, ...]
    busy_s: float              # GPU time used during the last second


@dataclass(frozen=True, slots=True)
class TrainingView:
    """A training instance (a job's gang: the same quota on each of its GPUs)."""

    id: str
    job: str
    node: str
    gpus: tuple[str, ...]
    request: float
    limit: float
    share: float               # effective share now


@dataclass(frozen=True, slots=True)
class ClusterView:
    now_s: float
    max_requested: float
    max_limited: float
    functions: Mapping[str, FunctionView]
    gpus: Mapping[str, GpuView]
    training: Mapping[str, TrainingView] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SetQuota:
    instance_id: str
    request: float
    limit: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ScaleOut:
    """New instances start at the function's deployed quota and batch (the scheduler
    core's rule); a policy that wants another quota sets it once they are placed."""

    function: str
    count: int = 1
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ScaleIn:
    function: str
    instance_id: str | None = None   # None: the scheduler's replica planning chooses
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SetMaxBatch:
    instance_id: str
    max_batch: int
    reason: str = ""


Action = SetQuota | ScaleOut | ScaleIn | SetMaxBatch


class ScalingPolicy(Protocol):
    """A pure decision object: no I/O, time only from the view."""

    interval_s: float

    def decide(self, view: ClusterView) -> Sequence[Action]: ...
