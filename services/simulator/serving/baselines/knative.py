"""Two Knative deployments, both scaled by the KPA (`kpa.py`) and neither lending GPU time
(`fixed_share.py`):

- `exclusive-kpa`: a whole GPU per instance (`exclusive` placement: nothing else on it),
  as serverless platforms give GPUs today (`nvidia.com/gpu: 1`). Training jobs get whole
  GPUs as well and run at their limit.
- `static-kpa`: fixed fractional shares with request = limit (INFless, or KServe with
  fractional GPUs), placed best fit by limits (`infless-l`: limits never add up past one
  GPU, the fullest GPU that admits wins); the arbiter gives each instance exactly its share.

**The fixed share** (static-kpa) is chosen the way an operator with the stand-in profile
would: of the 10 % steps at which one instance meets the SLO at all, the one that serves
the function's mean rate (from its trace) at the KPA's 70 % target with the least reserved
GPU — share × max(minimum replicas, ⌈mean / (0.7 × capacity(share))⌉) — the larger share
on ties. Under time slicing capacity per share grows with the share (a tight SLO needs a
high share while a batch runs), so busy functions get whole GPUs and only light ones a
fraction; the shares chosen are printed with the results. The maximum batch is the
scenario's where it pins one, else the best one at the share; so is the memory.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from services.perf.traces import load_trace
from services.scheduler.placement import Placement, PlacementBounds, make_placement
from services.simulator.serving.arbitration import PERIOD_NS
from services.simulator.serving.baselines.fixed_share import FixedShareDriver
from services.simulator.serving.baselines.kpa import KpaPolicy, KpaSettings, KpaTarget, kpa_target
from services.simulator.serving.engine import Sizing
from services.simulator.serving.profile import StandInProfile
from services.simulator.serving.scenario import Scenario, ServedFunction

if TYPE_CHECKING:
    from services.simulator.serving.systems import ArbitrationFactory

STEPS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 11))


def mean_rate(function: ServedFunction) -> float:
    """The function's mean offered rate over its trace (req/s)."""
    rates = load_trace(function.trace)
    return sum(rates) / len(rates) * function.scale


def fixed_share(function: ServedFunction, profile: StandInProfile,
                utilization: float = KpaSettings().target_utilization) -> float:
    """The operator's fixed share (see the module docstring); 1.0 when no step meets the
    SLO (an infeasible SLO gets the most an instance can have)."""
    mean = mean_rate(function)
    best: tuple[float, float] | None = None  # (reserved GPU, -share)
    for share in STEPS:
        capacity = profile.capacity(share, function.max_batch or profile.best_batch(share))
        if capacity <= 0:
            continue
        instances = max(function.replicas_min, math.ceil(round(mean / (utilization * capacity), 9)))
        key = (round(share * instances, 9), -share)
        if best is None or key < best:
            best = key
    return 1.0 if best is None else -best[1]


def summarize(per_function: Mapping[str, str], short: Mapping[str, str], limit: int = 6) -> str:
    """`name: what` for a few functions, else how many got each `short` value."""
    if len(per_function) <= limit:
        return "; ".join(f"{name}: {what}" for name, what in per_function.items())
    counts = Counter(short.values())
    return ", ".join(f"{what} ×{n}" for what, n in sorted(counts.items()))


class _KnativeSystem:
    """What both deployments share: KPA scaling, no lending, a fixed share per function."""

    name = ""
    placement_name = ""
    settings = KpaSettings()

    def __init__(self) -> None:
        self._targets: dict[str, KpaTarget] = {}

    def share_of(self, function: ServedFunction, profile: StandInProfile | None) -> float:
        raise NotImplementedError

    def placement(self, bounds: PlacementBounds) -> Placement:
        return make_placement(self.placement_name, bounds)

    def arbitration(self) -> ArbitrationFactory:
        return FixedShareDriver

    def _target(self, function: ServedFunction, profile: StandInProfile | None) -> KpaTarget:
        target = self._targets.get(function.name)
        if target is None:
            share = self.share_of(function, profile)
            batch = function.max_batch or (profile.best_batch(share) if profile else 1)
            target = self._targets[function.name] = kpa_target(profile, share, batch, self.settings)
        return target

    def sizing(self, function: ServedFunction, profile: StandInProfile | None) -> Sizing:
        from services.simulator.serving.systems import memory_for  # it registers this module

        target = self._target(function, profile)
        memory = function.quota.memory_mib if function.quota is not None else 0
        return Sizing(function.replicas_initial, target.share, target.share,
                      memory or memory_for(function.model, target.max_batch), target.max_batch)

    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> KpaPolicy:
        targets = {f.name: self._target(f, profiles.get(f.name)) for f in scenario.functions}
        return KpaPolicy(targets, {f.name: f.replicas_initial for f in scenario.functions},
                         self.settings)

    def parameters(self) -> Mapping[str, object]:
        chosen = {name: f"share {t.share:g}, batch {t.max_batch}, {t.capacity_rps:.1f} req/s, "
                        f"target {t.target:.2f}" for name, t in self._targets.items()}
        return {"placement": self.placement_name, "arbitration": "no lending (share = limit)",
                "arbiter_period_ms": PERIOD_NS / 1e6, **self.settings.published(),
                "capacity": "stand-in capacity at the fixed share and max batch",
                "per_function": summarize(chosen, {n: f"share {t.share:g}" for n, t in
                                                   self._targets.items()})}


class ExclusiveKpa(_KnativeSystem):
    """A whole GPU per instance, Knative's KPA."""

    name = "exclusive-kpa"
    placement_name = "exclusive"

    def share_of(self, function: ServedFunction, profile: StandInProfile | None) -> float:
        return 1.0


class StaticKpa(_KnativeSystem):
    """Fixed fractional shares (request = limit), best fit by limits, Knative's KPA."""

    name = "static-kpa"
    placement_name = "infless-l"

    def share_of(self, function: ServedFunction, profile: StandInProfile | None) -> float:
        if profile is None:
            if function.quota is None:
                raise ValueError(f"{function.name}: no quota in the scenario and no profile")
            return function.quota.limit
        return fixed_share(function, profile, self.settings.target_utilization)

    def parameters(self) -> Mapping[str, object]:
        return {**super().parameters(),
                "fixed_share_rule": "the 10% step serving the trace's mean rate at the KPA "
                                    "target with the least reserved GPU (ties: larger)"}
