"""HAS-GPU (Euro-Par'25, `KontonGu/HAS-GPU`): hybrid auto-scaling of fine-grained GPU
quotas, as its controller decides (`internal/controller/has_autoscaling.go`,
`persistentReconcile.go`, `request_predictor_kalman.go`).

Every 2 s, per function: the offered rate over the last 10 s goes through a Kalman filter
(A = H = 1, Q = 1, R = 10, starting at 0 with P = 1) whose state is then raised by √P and
to at least the measurement + 5 req/s (the raised state is what the filter carries on
from). Against the function's capacity — the sum of its instances' capacities at their
quotas (the reference's `rapp`; here the stand-in capacity at the quota and max batch):

- **Scale up** when the prediction passes 0.9 × capacity, by the deficit d = prediction −
  0.9 × capacity. Vertical first: each instance in turn, largest quota first, grows in
  10 % steps of its GPU while its GPU has room and until the capacity it gained covers
  what is left of d. Then horizontal, while d is left: a new instance on each used GPU
  whose occupancy (Σ quotas) is below 95 %, least occupied first, taking the room it has in
  10 % steps if an instance there meets the SLO at all; then one on a GPU that holds
  nothing, at the most efficient quota; and again, until d is covered or nothing is gained.
- **Scale down** when the prediction is below 0.3 × capacity and the function's last
  scale-down is 10 s old, by d = 0.9 × capacity − prediction: quotas shrink first (smallest
  quota first, 10 % steps, until the capacity given up covers d; the last instance stops
  at a step whose capacity is under 0.1 req/s), then whole instances whose capacity fits
  in what is left of d go (never the last).

No lending: request = limit = the quota, the arbiter gives exactly that
(`fixed_share.py`); a training job reserves and runs at its limit. A function starts at its
most efficient quota (the 10 % step with the highest capacity per share) with its best batch
at that quota, on the least occupied used GPU under 50 %, else a GPU that holds nothing.

Where this follows the simulator rather than the reference (noted for the record):
- There are no MPS SM partitions here, only time shares: a quota is the share, every
  instance's SM partition is the whole GPU, GPU occupancy is Σ limits. So the reference's
  orderings by SM partition become orderings by quota, and its rule that only instances
  with at most 50 % SMs are removed on scale-down does not apply (all are eligible).
- The most efficient configuration is taken over every quota that meets the SLO: the
  reference also requires 35 req/s, a figure of its own models, else falls back to
  30 % quota and batch 4.
- New instances start at the function's deployed quota (the scheduler core's rule), so
  HAS-GPU deploys at the smallest 10 % step that meets the SLO at all and sets the quota it
  chose for the instance (the room on a used GPU, or the most efficient one on a new GPU)
  at its next tick (within 1 s, during the cold start; the initial instances during the
  first second). The placement puts each new instance on the GPU the controller chose
  (`HasPlanner`), as the reference's controller names the node and GPU of a new pod, and
  counts that GPU as holding the chosen quota from the moment it is placed.
- "Meets the SLO at all" is the stand-in capacity (≥ 99 % within the SLO) above zero; the
  reference's `rapp` is a throughput model that does not look at the SLO. Under time
  slicing a small quota carries almost nothing within a tight SLO, yet such instances are
  created (on used GPUs) and kept (shrunk to 10 % on scale-down), and the platform's
  least-outstanding router sends them requests: what costs HAS-GPU most here.
- One Kalman filter per function (the reference shares one across all functions).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.scheduler.placement import PlacementBounds
from services.simulator.serving import policy as hooks
from services.simulator.serving.arbitration import PERIOD_NS
from services.simulator.serving.baselines.fixed_share import FixedShareDriver
from services.simulator.serving.baselines.has_placement import (
    EPS,
    FIRST_MAX_OCCUPANCY,
    MAX_OCCUPANCY,
    STEP,
    HasGpuPlacement,
    HasPlanner,
    floor_step,
)
from services.simulator.serving.engine import Sizing
from services.simulator.serving.instances import DRAINING, READY
from services.simulator.serving.profile import StandInProfile
from services.simulator.serving.scenario import Scenario, ServedFunction

if TYPE_CHECKING:
    from services.simulator.serving.systems import ArbitrationFactory



@dataclass(frozen=True, slots=True)
class HasSettings:
    tick_s: float = 2.0
    rate_window_s: int = 10
    kalman_q: float = 1.0
    kalman_r: float = 10.0
    headroom_sqrt_p: float = 1.0        # Alpha: the state is raised by Alpha × √P
    min_buffer_rps: float = 5.0
    scale_up: float = 0.9
    scale_down: float = 0.3
    step: float = STEP                  # DeltaIq: quota steps of 10 % of a GPU
    cooldown_s: float = 10.0
    max_occupancy: float = MAX_OCCUPANCY
    initial_occupancy: float = FIRST_MAX_OCCUPANCY
    min_rps: float = 0.1                # the last instance is not shrunk below this

    def published(self) -> dict[str, object]:
        return {"tick_s": self.tick_s, "rate_window_s": self.rate_window_s,
                "kalman": f"A=H=1, Q={self.kalman_q:g}, R={self.kalman_r:g}, x0=0, P0=1, "
                          f"+{self.headroom_sqrt_p:g}·√P, ≥ rps+{self.min_buffer_rps:g}",
                "scale_up_at": f"{self.scale_up:g} × capacity",
                "scale_down_at": f"{self.scale_down:g} × capacity",
                "quota_step": self.step, "scale_down_cooldown_s": self.cooldown_s,
                "used_gpu_max_occupancy": self.max_occupancy,
                "first_instance_max_occupancy": self.initial_occupancy}


class KalmanPredictor:
    """HAS-GPU's request predictor: a scalar Kalman filter whose state is biased upward
    after every update (the bias stays in the state)."""

    def __init__(self, settings: HasSettings = HasSettings()) -> None:
        self.x = 0.0
        self.p = 1.0
        self._q, self._r = settings.kalman_q, settings.kalman_r
        self._alpha, self._buffer = settings.headroom_sqrt_p, settings.min_buffer_rps

    def update(self, measured: float) -> float:
        p_pred = self.p + self._q                  # A = 1
        gain = p_pred / (p_pred + self._r)         # H = 1
        self.x = self.x + gain * (measured - self.x)
        self.p = (1 - gain) * p_pred
        self.x += self._alpha * math.sqrt(self.p)
        self.x = max(self.x, measured + self._buffer)
        return self.x


@dataclass(frozen=True, slots=True)
class HasConfig:
    """A function's configuration: its batch, the smallest quota that meets the SLO at
    all (deployed), the most efficient quota, and its capacity curve at the batch."""

    max_batch: int
    smallest: float
    efficient: float
    memory_mib: int
    profile: StandInProfile | None

    def capacity(self, quota: float) -> float:
        return self.profile.capacity(quota, self.max_batch) if self.profile is not None else 0.0


def has_config(function: ServedFunction, profile: StandInProfile | None) -> HasConfig:
    """The batch and quotas HAS-GPU configures a function with (the scenario's batch and
    memory win where it pins them)."""
    from services.simulator.serving.systems import memory_for  # it registers this module

    def memory(batch: int) -> int:
        pinned = function.quota.memory_mib if function.quota is not None else 0
        return pinned or memory_for(function.model, batch)

    if profile is None:
        share = function.quota.limit if function.quota is not None else 1.0
        batch = function.max_batch or 1
        return HasConfig(batch, share, share, memory(batch), None)
    steps = [round(STEP * k, 1) for k in range(1, 11)]

    def capacity(share: float) -> float:
        return profile.capacity(share, function.max_batch or profile.best_batch(share))

    feasible = [s for s in steps if capacity(s) > 0]
    if not feasible:
        batch = function.max_batch or profile.best_batch(1.0)
        return HasConfig(batch, 1.0, 1.0, memory(batch), profile)
    efficient = max(feasible, key=lambda s: (round(capacity(s) / s, 9), -s))
    batch = function.max_batch or profile.best_batch(efficient)
    smallest = next(s for s in steps if profile.capacity(s, batch) > 0)
    return HasConfig(batch, smallest, efficient, memory(batch), profile)


class HasGpuPolicy:
    interval_s = 1.0  # rates are sampled every second; decisions every `settings.tick_s`

    def __init__(self, configs: Mapping[str, HasConfig], planner: HasPlanner,
                 settings: HasSettings = HasSettings()) -> None:
        self.configs = dict(configs)
        self.planner = planner
        self.settings = settings
        self.predictors = {name: KalmanPredictor(settings) for name in configs}
        self.rates: dict[str, deque[float]] = {
            name: deque(maxlen=settings.rate_window_s) for name in configs}
        self.last_scale_down: dict[str, float] = {}
        self.predicted: dict[str, float] = {}
        self._seen: set[str] = set()

    def decide(self, view: hooks.ClusterView) -> Sequence[hooks.Action]:
        self.planner.max_occupancy = self.settings.max_occupancy
        self.planner.plans.clear()  # what was not placed by now falls back to the rule
        self.planner.pending.clear()  # configured below: the view holds the rest
        state = _Cluster(view, {name: c.memory_mib for name, c in self.configs.items()})
        actions = self._configure_new(view, state)
        tick = abs(view.now_s / self.settings.tick_s - round(view.now_s / self.settings.tick_s)) < 1e-6
        for name, function in view.functions.items():
            window = function.window
            self.rates[name].append(window.rps if window is not None else 0.0)
            if not tick:
                continue
            rates = self.rates[name]
            predicted = self.predicted[name] = self.predictors[name].update(sum(rates) / len(rates))
            if not any(i.state == READY for i in function.instances):
                continue
            actions += self.autoscale(function, predicted, view.now_s, state)
        return actions

    def _configure_new(self, view: hooks.ClusterView, state: _Cluster) -> list[hooks.Action]:
        """Give instances placed since the last tick the quota chosen for them: the room on
        a shared GPU, the most efficient quota on a GPU of their own."""
        actions: list[hooks.Action] = []
        for name, function in view.functions.items():
            config = self.configs[name]
            for instance in function.instances:
                if instance.id in self._seen or instance.state == DRAINING:
                    continue
                self._seen.add(instance.id)
                gpu = instance.gpus[0]
                current = state.quota[instance.id]
                if state.holders[gpu] == {instance.id}:
                    target = config.efficient
                else:
                    target = round(current + floor_step(1.0 - state.occupancy[gpu]), 2)
                if target > current + EPS:
                    actions.append(state.set_quota(instance, target, "has-gpu: placed"))
        return actions

    # ---- one function ---------------------------------------------------------------

    def autoscale(self, function: hooks.FunctionView, predicted: float, now_s: float,
                  state: _Cluster) -> list[hooks.Action]:
        config = self.configs[function.name]
        pods = [i for i in function.instances if i.state != DRAINING]
        capacity = sum(config.capacity(state.quota[p.id]) for p in pods)
        s = self.settings
        if predicted > s.scale_up * capacity:
            return self.scale_up(function, pods, predicted - s.scale_up * capacity, state)
        if predicted < s.scale_down * capacity:
            last = self.last_scale_down.get(function.name)
            if last is not None and now_s - last < s.cooldown_s:
                return []
            actions = self.scale_down(function, pods, s.scale_up * capacity - predicted, state)
            if actions:
                self.last_scale_down[function.name] = now_s
            return actions
        return []

    def scale_up(self, function: hooks.FunctionView, pods: list[hooks.InstanceView],
                 deficit: float, state: _Cluster) -> list[hooks.Action]:
        config, step = self.configs[function.name], self.settings.step
        actions: list[hooks.Action] = []
        for pod in sorted(pods, key=lambda p: (-state.quota[p.id], p.id)):
            current = state.quota[pod.id]
            room = 1.0 - state.occupancy[pod.gpus[0]]
            new, gained, k = current, 0.0, 1
            while k * step <= room + EPS and gained < deficit:
                new = round(current + k * step, 2)
                gained = config.capacity(new) - config.capacity(current)
                k += 1
            deficit -= gained
            if new > current + EPS:
                actions.append(state.set_quota(pod, new, "has-gpu: vertical up"))
        planned: list[str] = []
        room_for = function.replicas_max - len(pods)
        while deficit > 0 and len(planned) < room_for:
            before = deficit
            for uuid in state.used_gpus(self.settings.max_occupancy):
                quota = floor_step(1.0 - state.occupancy[uuid])
                if quota < step - EPS or not state.fits_memory(uuid, function.name):
                    continue
                capacity = config.capacity(quota)
                if capacity <= 0 or len(planned) >= room_for:
                    continue
                planned.append(state.add(uuid, function.name, quota))
                deficit -= capacity
                if deficit <= 0:
                    break
            if deficit > 0 and len(planned) < room_for:
                fresh = state.unused_gpu(function.name)
                if fresh is not None:
                    planned.append(state.add(fresh, function.name, config.efficient))
                    deficit -= config.capacity(config.efficient)
            if deficit == before:
                break  # nothing gained: no room anywhere
        if planned:
            self.planner.plans[function.name] = planned
            actions.append(hooks.ScaleOut(function.name, len(planned), reason="has-gpu: out"))
        return actions

    def scale_down(self, function: hooks.FunctionView, pods: list[hooks.InstanceView],
                   excess: float, state: _Cluster) -> list[hooks.Action]:
        config, step = self.configs[function.name], self.settings.step
        actions: list[hooks.Action] = []
        ordered = sorted(pods, key=lambda p: (state.quota[p.id], p.id))
        capacity = {p.id: config.capacity(state.quota[p.id]) for p in ordered}
        for pod in ordered:
            if excess <= 0:
                break
            current = state.quota[pod.id]
            new, given, k = current, 0.0, 1
            while current - k * step > EPS and given < excess:
                new = round(current - k * step, 2)
                left = config.capacity(new)
                given = capacity[pod.id] - left
                if len(ordered) == 1 and left < self.settings.min_rps:
                    break  # as the reference: it stops at (not before) this step
                k += 1
            if new < current - EPS:
                excess -= given
                capacity[pod.id] -= given
                actions.append(state.set_quota(pod, new, "has-gpu: vertical down"))
        removable = len(ordered) - function.replicas_min
        for pod in list(ordered):
            if excess <= 0 or removable <= 0:
                break
            if capacity[pod.id] <= excess:
                excess -= capacity[pod.id]
                removable -= 1
                actions.append(hooks.ScaleIn(function.name, pod.id, reason="has-gpu: in"))
        return actions


class _Cluster:
    """The controller's picture of the GPUs during one tick, kept current as it decides
    (as the reference updates its GPU records while it plans)."""

    def __init__(self, view: hooks.ClusterView, memory_mib: Mapping[str, int]) -> None:
        self.occupancy = {u: g.sm_limited for u, g in view.gpus.items()}
        self.memory_free = {u: g.memory_total_mib - g.memory_allocated_mib for u, g in view.gpus.items()}
        self.holders = {u: set(g.instances) for u, g in view.gpus.items()}
        self.order = {u: k for k, u in enumerate(view.gpus)}
        self.quota = {i.id: i.limit for f in view.functions.values() for i in f.instances}
        self._memory = memory_mib

    def set_quota(self, instance: hooks.InstanceView, quota: float, reason: str) -> hooks.SetQuota:
        gpu = instance.gpus[0]
        self.occupancy[gpu] += quota - self.quota[instance.id]
        self.quota[instance.id] = quota
        return hooks.SetQuota(instance.id, quota, quota, reason)

    def used_gpus(self, max_occupancy: float) -> list[str]:
        used = [u for u in self.order if self.holders[u] and self.occupancy[u] < max_occupancy - EPS]
        return sorted(used, key=lambda u: (self.occupancy[u], self.order[u]))

    def unused_gpu(self, function: str) -> str | None:
        return next((u for u in self.order if not self.holders[u] and self.fits_memory(u, function)),
                    None)

    def fits_memory(self, uuid: str, function: str) -> bool:
        return self.memory_free[uuid] >= self._memory[function]

    def add(self, uuid: str, function: str, quota: float) -> str:
        self.occupancy[uuid] += quota
        self.memory_free[uuid] -= self._memory[function]
        self.holders[uuid].add(f"{function} (planned)")
        return uuid


class HasGpu:
    """HAS-GPU: `has-gpu` placement, no lending, its hybrid vertical/horizontal scaling."""

    name = "has-gpu"
    settings = HasSettings()

    def __init__(self) -> None:
        self.planner = HasPlanner()
        self._configs: dict[str, HasConfig] = {}

    def _config(self, function: ServedFunction, profile: StandInProfile | None) -> HasConfig:
        config = self._configs.get(function.name)
        if config is None:
            config = self._configs[function.name] = has_config(function, profile)
            self.planner.efficient[function.name] = config.efficient
        return config

    def placement(self, bounds: PlacementBounds) -> HasGpuPlacement:
        return HasGpuPlacement(bounds, self.planner)

    def arbitration(self) -> ArbitrationFactory:
        return FixedShareDriver

    def sizing(self, function: ServedFunction, profile: StandInProfile | None) -> Sizing:
        config = self._config(function, profile)
        return Sizing(function.replicas_initial, config.smallest, config.smallest,
                      config.memory_mib, config.max_batch)

    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> HasGpuPolicy:
        configs = {f.name: self._config(f, profiles.get(f.name)) for f in scenario.functions}
        return HasGpuPolicy(configs, self.planner, self.settings)

    def parameters(self) -> Mapping[str, object]:
        from services.simulator.serving.baselines.knative import summarize

        chosen = {name: f"quota {c.efficient:g} (deployed {c.smallest:g}), batch {c.max_batch}"
                  for name, c in self._configs.items()}
        return {"placement": "has-gpu (least occupied used GPU < 95 %, else a new GPU)",
                "arbitration": "no lending (share = quota)", "arbiter_period_ms": PERIOD_NS / 1e6,
                **self.settings.published(),
                "capacity": "stand-in capacity at the quota and max batch (the reference's rapp)",
                "per_function": summarize(chosen, {n: f"quota {c.efficient:g} (deployed "
                                                      f"{c.smallest:g})" for n, c in
                                                   self._configs.items()})}
