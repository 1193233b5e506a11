"""What the co-scaling policy sees at one decision: pure values, built by an adapter (the
serving simulator's, the live scaler's) from whatever it observes.

Per function: its SLO, its profile (`Profile`: the stand-in profile until the profiler's
lands; both satisfy the protocol), its cold-start time and replica bounds, the quota and
batch a new instance starts with, the offered load of the last window and each instance
with its quota, effective share and last QoS window. Per GPU: its bounds. Per training
job: its quota now and the quota it was deployed with. The GPUs an instance or a job holds
are named, so the policy can add up what each GPU carries itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

STARTING, READY, DRAINING = "starting", "ready", "draining"


class Profile(Protocol):
    """What the policy needs to know about a function's performance at a share.

    `capacity(share, max_batch)`: the highest Poisson rate (requests per second) one
    instance running at effective `share` with that maximum batch keeps within its SLO
    (for ≥ 99 % of requests); `best_batch(share)`: the maximum batch with the highest
    capacity there; `lone_batch_share(batch)`: the smallest share at which a lone batch,
    arriving at an idle instance, meets the SLO (None: not even a whole GPU);
    `gpu_s_per_request(batch)`: whole-GPU seconds one request costs in a batch of `batch`.
    The stand-in profile (`services.simulator.serving.profile.StandInProfile`) has them.
    """

    def capacity(self, share: float, max_batch: int) -> float: ...
    def best_batch(self, share: float) -> int: ...
    def lone_batch_share(self, batch: int = 1) -> float | None: ...
    def gpu_s_per_request(self, batch: int) -> float: ...


@dataclass(frozen=True, slots=True)
class Window:
    """One instance's (or one function's) QoS over one closed window."""

    start_s: float
    end_s: float
    arrivals: int           # requests routed to it (a function: offered, refused included)
    completed: int
    within_slo: int
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    queue: int = 0          # waiting at the window's end
    busy_s: float = 0.0     # whole-GPU seconds its batches used
    refused: int = 0        # a function: refused by a full queue

    @property
    def rps(self) -> float:
        return self.arrivals / max(self.end_s - self.start_s, 1e-9)

    @property
    def violations(self) -> int:
        return self.completed - self.within_slo + self.refused


@dataclass(frozen=True, slots=True)
class InstanceContext:
    id: str
    gpus: tuple[str, ...]
    state: str                      # starting | ready | draining
    request: float
    limit: float
    share: float                    # effective share now
    max_batch: int
    window: Window | None = None    # the last closed window (None: none yet)


@dataclass(frozen=True, slots=True)
class FunctionContext:
    name: str
    slo_ms: float
    profile: Profile
    cold_start_s: float
    replicas_min: int
    replicas_max: int
    # The quota and batch a new instance starts with (`ScaleOut` places that shape).
    start_request: float
    start_limit: float
    start_max_batch: int
    window: Window | None           # offered load of the last window
    queued: int                     # requests waiting for a ready instance now
    instances: tuple[InstanceContext, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainingContext:
    """One training instance (a job's gang: the same quota on each of its GPUs)."""

    id: str
    job: str
    gpus: tuple[str, ...]
    request: float
    limit: float
    share: float
    deployed_request: float          # what the job was deployed with: what it gets back
    deployed_limit: float


@dataclass(frozen=True, slots=True)
class GpuContext:
    uuid: str
    max_requested: float = 1.0       # the node's placement bounds
    max_limited: float = 1.5


@dataclass(frozen=True, slots=True)
class Context:
    now_s: float
    functions: Mapping[str, FunctionContext]
    gpus: Mapping[str, GpuContext]
    training: Mapping[str, TrainingContext] = field(default_factory=dict)
