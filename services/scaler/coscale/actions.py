"""What the co-scaling policy asks for. Each action carries a human-readable reason (kept
in `DILU_SCALING` and traced, live). The shell applies them in the order given: what
lowers a quota comes before what raises one, so every raise finds the room it was sized
for (the node agent admits each against its GPU's bounds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SetInferenceQuota:
    """Vertical: an inference instance's new request and limit (fractions of one GPU)."""

    instance_id: str
    function: str
    request: float
    limit: float
    reason: str


@dataclass(frozen=True, slots=True)
class SetTrainingQuota:
    """Vertical: a training instance yields room to inference (or gets it back)."""

    instance_id: str
    job: str
    request: float
    limit: float
    reason: str


@dataclass(frozen=True, slots=True)
class SetMaxBatch:
    instance_id: str
    function: str
    max_batch: int
    reason: str


@dataclass(frozen=True, slots=True)
class ScaleOut:
    """Horizontal: `count` new instances of `function` (placed by the scheduler, at the
    function's starting quota; the policy sizes them once they are placed)."""

    function: str
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class ScaleIn:
    """Horizontal: the named instance drains (its queue finishes) and goes."""

    function: str
    instance_id: str
    reason: str


Action = SetInferenceQuota | SetTrainingQuota | SetMaxBatch | ScaleOut | ScaleIn
