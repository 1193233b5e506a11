"""A small world for driving the co-scaling core in tests: GPUs with placement bounds,
instances and training jobs whose quotas the core's actions change (admitted as a node
agent admits them: a change that raises must fit the GPU's bounds, a lowering always
fits), new instances placed on the GPU in use with the most room for their starting shape
(else an idle one) and ready after their cold start, and one-second windows at the rates
the test sets."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from services.scaler.coscale import (
    READY,
    STARTING,
    Action,
    Context,
    CoscaleSettings,
    CoscaleState,
    FunctionContext,
    GpuContext,
    InstanceContext,
    Profile,
    ScaleIn,
    ScaleOut,
    SetInferenceQuota,
    SetMaxBatch,
    SetTrainingQuota,
    TrainingContext,
    Window,
    decide,
)

EPS = 1e-9


@dataclass
class Spec:
    name: str
    profile: Profile
    replicas_min: int = 1
    replicas_max: int = 8
    start_request: float = 0.2
    start_limit: float = 0.5
    cold_start_s: float = 2.0
    slo_ms: float = 50.0


@dataclass
class World:
    gpus: dict[str, GpuContext]
    specs: dict[str, Spec]
    training: dict[str, TrainingContext] = field(default_factory=dict)
    instances: dict[str, tuple[str, InstanceContext, float]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    settings: CoscaleSettings = field(default_factory=CoscaleSettings)
    state: CoscaleState = field(default_factory=CoscaleState)
    refused: list[Action] = field(default_factory=list)
    now_s: float = 0.0
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, function: str, gpu: str, request: float, limit: float, max_batch: int = 4,
            state: str = READY) -> str:
        iid = f"{function}-{next(self._numbers)}"
        self.instances[iid] = (function, InstanceContext(iid, (gpu,), state, request, limit, limit,
                                                         max_batch), 0.0)
        return iid

    # ---- what the core sees --------------------------------------------------------------

    def context(self) -> Context:
        for iid, (name, inst, ready_at) in list(self.instances.items()):
            if inst.state == STARTING and self.now_s >= ready_at:
                self.instances[iid] = (name, replace(inst, state=READY), ready_at)
        functions = {}
        for name, spec in self.specs.items():
            rate = self.rates.get(name, 0.0)
            arrivals = round(rate)
            functions[name] = FunctionContext(
                name, spec.slo_ms, spec.profile, spec.cold_start_s, spec.replicas_min,
                spec.replicas_max, spec.start_request, spec.start_limit, 4,
                Window(self.now_s - 1, self.now_s, arrivals, arrivals, arrivals), 0,
                tuple(i for n, i, _ in self.instances.values() if n == name))
        return Context(self.now_s, functions, dict(self.gpus), dict(self.training))

    def step(self) -> list[Action]:
        """One second on, one decision, its actions applied."""
        self.now_s += 1.0
        actions, self.state = decide(self.context(), self.state, self.now_s, self.settings)
        for action in actions:
            self.apply(action)
        return list(actions)

    # ---- the agents and the scheduler ------------------------------------------------------

    def holds(self, uuid: str) -> tuple[float, float]:
        requested = sum(i.request for _, i, _ in self.instances.values() if uuid in i.gpus)
        limited = sum(i.limit for _, i, _ in self.instances.values() if uuid in i.gpus)
        requested += sum(t.request for t in self.training.values() if uuid in t.gpus)
        limited += sum(t.limit for t in self.training.values() if uuid in t.gpus)
        return requested, limited

    def fits(self, gpus: tuple[str, ...], d_request: float, d_limit: float) -> bool:
        for uuid in gpus:
            requested, limited = self.holds(uuid)
            bounds = self.gpus[uuid]
            if d_request > 0 and requested + d_request > bounds.max_requested + EPS:
                return False
            if d_limit > 0 and limited + d_limit > bounds.max_limited + EPS:
                return False
        return True

    def apply(self, action: Action) -> None:
        if isinstance(action, SetInferenceQuota):
            name, inst, ready_at = self.instances[action.instance_id]
            if not self.fits(inst.gpus, action.request - inst.request, action.limit - inst.limit):
                self.refused.append(action)
                return
            self.instances[inst.id] = (name, replace(inst, request=action.request, limit=action.limit,
                                                     share=action.limit), ready_at)
        elif isinstance(action, SetTrainingQuota):
            job = self.training[action.instance_id]
            if not self.fits(job.gpus, action.request - job.request, action.limit - job.limit):
                self.refused.append(action)
                return
            self.training[job.id] = replace(job, request=action.request, limit=action.limit)
        elif isinstance(action, SetMaxBatch):
            name, inst, ready_at = self.instances[action.instance_id]
            self.instances[inst.id] = (name, replace(inst, max_batch=action.max_batch), ready_at)
        elif isinstance(action, ScaleOut):
            spec = self.specs[action.function]
            for _ in range(action.count):
                uuid = self._place(spec)
                if uuid is not None:
                    iid = self.add(spec.name, uuid, spec.start_request, spec.start_limit,
                                   state=STARTING)
                    name, inst, _ = self.instances[iid]
                    self.instances[iid] = (name, inst, self.now_s + spec.cold_start_s)
        elif isinstance(action, ScaleIn):
            self.instances.pop(action.instance_id, None)

    def _place(self, spec: Spec) -> str | None:
        used = {u for _, i, _ in self.instances.values() for u in i.gpus}
        used |= {u for t in self.training.values() for u in t.gpus}
        best, room = None, -1.0
        for uuid in sorted(self.gpus):
            if uuid in used and self.fits((uuid,), spec.start_request, spec.start_limit):
                free = self.gpus[uuid].max_requested - self.holds(uuid)[0]
                if free > room:
                    best, room = uuid, free
        if best is not None:
            return best
        return next((u for u in sorted(self.gpus) if u not in used), None)
