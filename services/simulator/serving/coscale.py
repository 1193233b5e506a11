"""The `coscale` systems: Dilu's co-scaling policy (`services.scaler.coscale`) in the serving
simulator, with `complementary` placement and the node agent's arbitration (`GpuArbiter`
with `NodeArbitration`), as today's platform has them.

`CoscaleAdapter` is the thin adapter between the simulator's hooks (`policy.py`: a
`ClusterView` each tick, simulator actions back) and the pure core
(`services.scaler.coscale.decide`: a `Context`, core actions back); the live scaler is the
other adapter. Each function's start quota (what it is deployed with, and what `ScaleOut`
places) comes from its stand-in profile (`sizing.start_quota`): request = limit = the busy
share at which one instance carries the mean rate of its trace × (1 +
`capacity_headroom`), at least the lone-batch share (a lone request meets its SLO before
the arbiter lends anything) and at most `start_share_max` (0.5: a shape that fits beside
any one job whose limit is at most a whole GPU, so that new instances go beside training,
whose GPUs are held anyway); maximum batch = the best there. The policy sizes each
instance from its first decision on. Scenario fields that pin a quota win (`demo`).

The trade-off that start shape makes, measured on `paper-testbed` (one run each, the
rest of the policy as it is): at ≤ 0.5 a new instance fits beside a training job whose
GPUs are held anyway, and coscale holds 13 883 GPU-seconds, but a gang steps at its
slowest member, so a busy neighbour on one GPU of a 4-GPU gang slows all four: training
gets 47 % of saturated (the two 4-GPU gangs 23 % and 32 %). Starting every instance with
a whole-GPU limit keeps newcomers off GPUs whose training limits are high (Σ limits ≤
`max_limited`): training gets 83.3 % (the gangs 100 %), attainment 99.8 %, but 17 016
GPU-seconds, more than `dilu-paper`'s 16 717. The default keeps the first.

Ablations: `coscale-vertical-only` (replicas stay as deployed) and
`coscale-horizontal-only` (every quota stays as deployed, training's included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from services.perf.traces import load_trace
from services.scaler.coscale import (
    DEFAULT_SETTINGS,
    Context,
    CoscaleSettings,
    CoscaleState,
    FunctionContext,
    GpuContext,
    InstanceContext,
    ScaleIn,
    ScaleOut,
    SetInferenceQuota,
    SetMaxBatch,
    SetTrainingQuota,
    TrainingContext,
    Window,
    decide,
)
from services.scaler.coscale import Action as CoreAction
from services.scaler.coscale.sizing import start_quota
from services.scheduler.placement import Placement, PlacementBounds, make_placement
from services.simulator.serving import policy as hooks
from services.simulator.serving.arbitration import HUNGER_HOLD_NS, PERIOD_NS, NodeArbitrationDriver
from services.simulator.serving.engine import Sizing, cold_start_s
from services.simulator.serving.profile import StandInProfile
from services.simulator.serving.scenario import Scenario, ServedFunction
from services.simulator.serving.windows import QosWindow


def start_sizing(function: ServedFunction, profile: StandInProfile | None,
                 settings: CoscaleSettings = DEFAULT_SETTINGS) -> Sizing:
    """The quota a function is deployed with and `ScaleOut` places (see the module)."""
    from services.simulator.serving.systems import memory_for

    replicas = function.replicas_initial
    if function.quota is not None and function.max_batch is not None:
        quota = function.quota
        return Sizing(replicas, quota.request, quota.limit, quota.memory_mib, function.max_batch)
    if profile is None:
        raise ValueError(f"{function.name}: no quota in the scenario and no profile to size from")
    rates = load_trace(function.trace)
    mean = sum(rates) / len(rates) * function.scale / replicas
    request, limit, max_batch = start_quota(profile, mean, settings.capacity_headroom,
                                            1 - settings.slo_target, settings.start_share_max)
    memory = 0
    if function.quota is not None:
        request, limit, memory = function.quota.request, function.quota.limit, function.quota.memory_mib
    max_batch = function.max_batch or max_batch
    return Sizing(replicas, request, limit, memory or memory_for(function.model, max_batch), max_batch)


class CoscaleAdapter:
    """The simulator's `ScalingPolicy` around the pure core."""

    def __init__(self, scenario: Scenario, profiles: Mapping[str, StandInProfile],
                 settings: CoscaleSettings) -> None:
        self.interval_s = settings.interval_s
        self.settings = settings
        self.state = CoscaleState()
        self._profiles = profiles
        self._functions = {f.name: f for f in scenario.functions}
        self._sizing = {f.name: start_sizing(f, profiles.get(f.name), settings)
                        for f in scenario.functions}
        self._cold = {f.name: cold_start_s(f.model) for f in scenario.functions}
        self._jobs = {t.name: t for t in scenario.training}
        self.decisions: list[tuple[float, CoreAction]] = []   # what it asked for, for reading

    def decide(self, view: hooks.ClusterView) -> list[hooks.Action]:
        actions, self.state = decide(self.context(view), self.state, view.now_s, self.settings)
        self.decisions += [(view.now_s, a) for a in actions]
        return [_to_hook(a) for a in actions]

    def context(self, view: hooks.ClusterView) -> Context:
        functions = {}
        for name, f in view.functions.items():
            sizing = self._sizing[name]
            functions[name] = FunctionContext(
                name=name, slo_ms=f.slo_ms, profile=self._profiles[name],
                cold_start_s=self._cold[name], replicas_min=f.replicas_min,
                replicas_max=f.replicas_max, start_request=sizing.request,
                start_limit=sizing.limit, start_max_batch=sizing.max_batch,
                window=_window(f.window), queued=f.queued,
                instances=tuple(InstanceContext(i.id, i.gpus, i.state, i.request, i.limit, i.share,
                                                i.max_batch, _window(i.window))
                                for i in f.instances))
        training = {}
        for t in view.training.values():
            job = self._jobs[t.job]
            training[t.id] = TrainingContext(t.id, t.job, t.gpus, t.request, t.limit, t.share,
                                             job.quota.request, job.quota.limit)
        gpus = {uuid: GpuContext(uuid, view.max_requested, view.max_limited) for uuid in view.gpus}
        return Context(view.now_s, functions, gpus, training)


def _window(w: QosWindow | None) -> Window | None:
    if w is None:
        return None
    return Window(w.start_s, w.end_s, w.arrivals, w.completed, w.within_slo, w.p50_ms, w.p95_ms,
                  w.p99_ms, w.queue, w.busy_s, w.refused)


def _to_hook(action: CoreAction) -> hooks.Action:
    if isinstance(action, SetInferenceQuota | SetTrainingQuota):
        return hooks.SetQuota(action.instance_id, action.request, action.limit, action.reason)
    if isinstance(action, SetMaxBatch):
        return hooks.SetMaxBatch(action.instance_id, action.max_batch, action.reason)
    if isinstance(action, ScaleOut):
        return hooks.ScaleOut(action.function, action.count, action.reason)
    assert isinstance(action, ScaleIn)
    return hooks.ScaleIn(action.function, action.instance_id, action.reason)


class Coscale:
    """Dilu's co-scaling: `complementary` placement, `GpuArbiter` + node arbitration, and
    the `coscale` policy (vertical first, horizontal when vertical cannot cover it)."""

    name = "coscale"
    settings = CoscaleSettings()

    def parameters(self) -> Mapping[str, object]:
        return {"placement": "complementary", "arbiter_period_ms": PERIOD_NS / 1e6,
                "hunger_hold_ms": HUNGER_HOLD_NS / 1e6, **asdict(self.settings),
                "sizing": "stand-in profile: request = limit = the share for the trace's "
                          "mean rate x (1 + capacity_headroom), >= lone-batch share, <= "
                          "start_share_max; then the policy"}

    def placement(self, bounds: PlacementBounds) -> Placement:
        return make_placement("complementary", bounds)

    def arbitration(self) -> Any:
        return NodeArbitrationDriver

    def sizing(self, function: ServedFunction, profile: StandInProfile | None) -> Sizing:
        return start_sizing(function, profile, self.settings)

    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> CoscaleAdapter:
        return CoscaleAdapter(scenario, profiles, self.settings.validated())


class CoscaleVerticalOnly(Coscale):
    """Ablation: quotas only; replicas stay as deployed."""

    name = "coscale-vertical-only"
    settings = replace(CoscaleSettings(), horizontal=False)


class CoscaleHorizontalOnly(Coscale):
    """Ablation: replicas only; every quota stays as deployed."""

    name = "coscale-horizontal-only"
    settings = replace(CoscaleSettings(), vertical=False)
