"""Properties of the co-scaling policy over random clusters at constant loads (hypothesis):
what it asks for always fits the GPUs' bounds (the agents never refuse it), request ≤
limit, training never below its floor, replicas within their bounds (never below the
minimum), and once converged it does nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scaler.coscale import (
    MIN_SHARE,
    CoscaleSettings,
    GpuContext,
    ScaleIn,
    ScaleOut,
    SetInferenceQuota,
    SetTrainingQuota,
    TrainingContext,
)
from services.scaler.coscale.room import ceil_share
from tests.unit.coscale_world import Spec, World

SETTLE_S = 150        # long enough for every hysteresis and keep-alive to play out
QUIET_S = 40          # and then nothing


@dataclass(frozen=True)
class Linear:
    per_share_rps: float
    lone: float

    def capacity(self, share: float, max_batch: int) -> float:
        return self.per_share_rps * share if share >= self.lone - 1e-9 else 0.0

    def best_batch(self, share: float) -> int:
        return 1 if share < 0.5 else 4

    def lone_batch_share(self, batch: int = 1) -> float | None:
        return self.lone

    def gpu_s_per_request(self, batch: int) -> float:
        return 0.02 / batch


@st.composite
def worlds(draw: st.DrawFn) -> World:
    gpus = [f"g{k}" for k in range(draw(st.integers(1, 4)))]
    world = World({g: GpuContext(g, 1.0, draw(st.sampled_from([1.0, 1.5]))) for g in gpus}, {},
                  settings=CoscaleSettings(keep_alive_s=30.0))
    for j in range(draw(st.integers(0, 2))):
        request = draw(st.floats(0.05, 0.5)).__round__(2)
        limit = min(1.0, request + draw(st.floats(0.0, 0.5)).__round__(2))
        width = draw(st.integers(1, len(gpus)))
        first = draw(st.integers(0, len(gpus) - width))
        on = tuple(gpus[first:first + width])
        if world.fits(on, request, limit):
            world.training[f"t-{j}"] = TrainingContext(f"t-{j}", f"t{j}", on, request, limit, limit,
                                                       request, limit)
    for k in range(draw(st.integers(1, 3))):
        lone = draw(st.floats(0.1, 0.5)).__round__(2)
        low = draw(st.integers(0, 2))
        spec = Spec(f"f{k}", Linear(draw(st.floats(20, 200)), lone), replicas_min=low,
                    replicas_max=low + draw(st.integers(1, 3)), start_request=lone,
                    start_limit=max(lone, 0.5), cold_start_s=draw(st.sampled_from([1.0, 2.0, 3.0])))
        world.specs[spec.name] = spec
        world.rates[spec.name] = draw(st.sampled_from([0.0, 1.0, 5.0, 20.0, 60.0, 150.0]))
        for _ in range(max(1, low)):
            uuid = world._place(spec)
            if uuid is not None:
                world.add(spec.name, uuid, spec.start_request, spec.start_limit)
    return world


def floors(job: TrainingContext, settings: CoscaleSettings) -> tuple[float, float]:
    request = max(MIN_SHARE, ceil_share(settings.training_request_floor * job.deployed_request))
    limit = max(request, ceil_share(settings.training_limit_floor * job.deployed_request))
    return min(request, job.deployed_request), min(limit, job.deployed_limit)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_what_the_policy_asks_for_fits_stays_in_bounds_and_converges(world: World) -> None:
    jobs = dict(world.training)
    history = []
    for _ in range(SETTLE_S + QUIET_S):
        count = {name: sum(1 for n, _, _ in world.instances.values() if n == name)
                 for name in world.specs}
        actions = world.step()
        history.append(actions)
        for action in actions:
            if isinstance(action, SetInferenceQuota):
                assert MIN_SHARE - 1e-9 <= action.request <= action.limit + 1e-9 <= 1 + 2e-9
            elif isinstance(action, SetTrainingQuota):
                request_floor, limit_floor = floors(jobs[action.instance_id], world.settings)
                assert action.request >= request_floor - 1e-9
                assert action.limit >= limit_floor - 1e-9
                assert action.request <= action.limit + 1e-9
                assert action.limit <= jobs[action.instance_id].deployed_limit + 1e-9
            elif isinstance(action, ScaleOut):
                spec = world.specs[action.function]
                assert action.count >= 1
                assert count[action.function] + action.count <= spec.replicas_max
            elif isinstance(action, ScaleIn):
                count[action.function] -= 1
                spec = world.specs[action.function]
                if world.rates[action.function] > 0 or spec.replicas_min > 0:
                    assert count[action.function] >= max(1, spec.replicas_min)
        for uuid in world.gpus:
            requested, limited = world.holds(uuid)
            assert requested <= world.gpus[uuid].max_requested + 1e-6
            assert limited <= world.gpus[uuid].max_limited + 1e-6
    assert not world.refused, world.refused[:3]
    assert not any(history[-QUIET_S:]), [a for step in history[-QUIET_S:] for a in step][:3]
