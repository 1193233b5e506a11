"""Systems to compare: each a bundle of placement + node arbitration + scaling behind one
interface, with its published parameters printed beside its results.

A `System` answers, for one scenario:

- `placement(bounds)`: the scheduler placement policy (a `services.scheduler.placement`
  object) that places every instance, at the start and on scale-out;
- `arbitration()`: a factory of per-node arbitration drivers,
  `make(schedule, node, gpus, *, ticked, on_shares) -> driver` (see `arbitration.py` for
  the driver's duties: `attach`, `update`, `detach`, `poke`, `start`; it calls each
  instance's `set_share(now_ns, share)`). `dilu_arbitration` is today's platform's;
- `sizing(function, profile)`: replicas at the start, the quota and the maximum batch each
  instance gets (from the scenario where it pins them, else from the stand-in `profile`);
- `policy(scenario, profiles)`: a `ScalingPolicy` (see `policy.py`) or None for none;
- `parameters()`: the published parameters, printed with the results.

Adding a system is one line in `SYSTEMS` (name → factory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from services.perf import load_model
from services.perf.traces import load_trace
from services.scheduler.placement import Placement, PlacementBounds, make_placement
from services.simulator.serving.arbitration import HUNGER_HOLD_NS, PERIOD_NS, NodeArbitrationDriver
from services.simulator.serving.baselines import DiluPaper, ExclusiveKpa, HasGpu, StaticKpa
from services.simulator.serving.coscale import Coscale, CoscaleHorizontalOnly, CoscaleVerticalOnly
from services.simulator.serving.engine import Sizing
from services.simulator.serving.policy import ScalingPolicy
from services.simulator.serving.profile import StandInProfile
from services.simulator.serving.scenario import Scenario, ServedFunction

ArbitrationFactory = Callable[..., Any]


class System(Protocol):
    name: str

    def parameters(self) -> Mapping[str, object]: ...
    def placement(self, bounds: PlacementBounds) -> Placement: ...
    def arbitration(self) -> ArbitrationFactory: ...
    def sizing(self, function: ServedFunction, profile: StandInProfile | None) -> Sizing: ...
    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> ScalingPolicy | None: ...


def dilu_arbitration() -> ArbitrationFactory:
    """Today's node arbitration: `NodeArbitration` (GpuArbiter per GPU, hunger, gangs,
    draining), driven on events."""
    return NodeArbitrationDriver


def memory_for(model: str, max_batch: int) -> int:
    """An instance's memory quota when the scenario gives none: the model's estimate at its
    maximum batch plus 1 GiB for the CUDA context and allocator, rounded up to 256 MiB."""
    need = load_model(model).memory_mib(max_batch) + 1024
    return math.ceil(need / 256) * 256


def operator_sizing(function: ServedFunction, profile: StandInProfile | None) -> Sizing:
    """What an operator deploys when the scenario pins no quota, from the stand-in profile
    and the function's trace (mean and peak of its rate): the request carries the mean rate
    on the initial replicas, the limit carries the peak (lent by the arbiter when it is
    spare) and is at least the share at which a lone request meets the SLO, and the maximum
    batch is the best one at the limit. Scenario fields that are pinned win."""
    replicas = function.replicas_initial
    if function.quota is not None and function.max_batch is not None:
        quota = function.quota
        return Sizing(replicas, quota.request, quota.limit, quota.memory_mib, function.max_batch)
    if profile is None:
        raise ValueError(f"{function.name}: no quota in the scenario and no profile to size from")
    rates = [r * function.scale for r in load_trace(function.trace)]
    mean, peak = sum(rates) / len(rates) / replicas, max(rates) / replicas
    lone = profile.lone_batch_share(1) or 1.0
    if function.quota is not None:
        request, limit, memory = function.quota.request, function.quota.limit, function.quota.memory_mib
    else:
        request = min(1.0, profile.share_for(mean) or 1.0)
        limit = min(1.0, max(request, lone, profile.share_for(peak) or 1.0))
        memory = 0
    max_batch = function.max_batch or profile.best_batch(limit)
    return Sizing(replicas, request, limit, memory or memory_for(function.model, max_batch),
                  max_batch)


class Static:
    """Today's platform: `complementary` placement, `GpuArbiter` + node arbitration, no
    scaling; the replicas and quotas the scenario gives (else `operator_sizing`)."""

    name = "static"

    def parameters(self) -> Mapping[str, object]:
        return {"placement": "complementary", "arbiter_period_ms": PERIOD_NS / 1e6,
                "hunger_hold_ms": HUNGER_HOLD_NS / 1e6, "training_decrease": 0.5,
                "training_increase_per_period": 0.02, "scaling": "none",
                "sizing": "scenario, else operator_sizing (request: mean rate, limit: peak)"}

    def placement(self, bounds: PlacementBounds) -> Placement:
        return make_placement("complementary", bounds)

    def arbitration(self) -> ArbitrationFactory:
        return dilu_arbitration()

    def sizing(self, function: ServedFunction, profile: StandInProfile | None) -> Sizing:
        return operator_sizing(function, profile)

    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> ScalingPolicy | None:
        return None


SYSTEMS: dict[str, Callable[[], System]] = {
    "static": Static,
    "exclusive-kpa": ExclusiveKpa, "static-kpa": StaticKpa, "has-gpu": HasGpu, "dilu-paper": DiluPaper,
    "coscale": Coscale, "coscale-vertical-only": CoscaleVerticalOnly,
    "coscale-horizontal-only": CoscaleHorizontalOnly,
}


def make_system(name: str) -> System:
    try:
        return SYSTEMS[name]()
    except KeyError:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}") from None
