"""Synthetic placement traces with the shape of the paper's (see data/ORIGIN.md): one
arrival per second, the same mix of kinds, demand ranges and lifetimes, any length and
any seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.scheduler.placement import InstanceShape, WorkloadKind
from services.simulator.trace import GIB, Event


@dataclass(frozen=True, slots=True)
class Mix:
    """Shares of arrivals, and of each kind the part that is ever deleted, as in the
    paper's traces (the rest stays to the end)."""

    inference: float = 0.6
    llm_inference: float = 0.2
    training: float = 0.2
    inference_deleted: float = 0.75
    training_deleted: float = 0.5


def generate(instances: int, seed: int = 0, mix: Mix | None = None) -> list[Event]:
    """Start events one second apart and delete events after each deleted instance's
    lifetime, in time order (a start before a delete at the same second)."""
    mix = mix or Mix()
    rng = random.Random(seed)
    timed: list[tuple[float, int, int, Event]] = []
    for n in range(instances):
        shape, lifetime_s = _draw(rng, mix, f"synthetic-{n:06d}")
        timed.append((float(n), 0, n, Event(float(n), True, shape.function, shape)))
        deleted = mix.training_deleted if shape.kind is WorkloadKind.TRAINING else mix.inference_deleted
        if rng.random() < deleted:
            end = float(n) + lifetime_s
            timed.append((end, 1, n, Event(end, False, shape.function, shape)))
    timed.sort(key=lambda t: t[:3])
    return [event for *_, event in timed]


def _draw(rng: random.Random, mix: Mix, name: str) -> tuple[InstanceShape, float]:
    roll = rng.random() * (mix.inference + mix.llm_inference + mix.training)
    headroom = round(rng.uniform(0.2, 0.3) if rng.random() < 0.9 else rng.uniform(0.3, 0.58), 2)
    if roll < mix.inference:
        kind, gpus, request = WorkloadKind.INFERENCE, 1, rng.randint(20, 40) / 100
        memory_gb, lifetime = rng.randint(3, 10), rng.choice((60, 120, 180))
    elif roll < mix.inference + mix.llm_inference:
        kind, gpus, request = WorkloadKind.LLM_INFERENCE, 1, rng.randint(40, 60) / 100
        memory_gb, lifetime = rng.randint(20, 30), rng.choice((60, 120, 180))
    else:
        kind, gpus, request = WorkloadKind.TRAINING, rng.choice((2, 4)), rng.randint(40, 80) / 100
        memory_gb, lifetime = rng.choice((25, 30, 35, 40)), rng.choice(range(600, 901, 60))
    limit = min(1.0, round(request + headroom, 2))
    shape = InstanceShape(function=name, kind=kind, sm_request=request, sm_limit=limit,
                          memory_mib=memory_gb * GIB, gpus=gpus)
    return shape, float(lifetime)
