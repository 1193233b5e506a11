"""Live profiling without processes: the protocol's rate search, the time-slicing search
against its exhaustive sweep, the whole session on the serving simulator's single-instance
model (virtual time), the sizing of a spec from a profile, profile keys, and the
scheduler core's Deploys left to their profile and the profiler's hidden instances."""

from __future__ import annotations

import asyncio
import itertools
import math
import pickle

import pytest
from dilu.v1 import profiler_pb2, types_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument, NotFound
from services.common.profiling import is_profiling, key_id, profile_key, profiling_name
from services.profiler.live.protocol import (
    Protocol,
    RateSearch,
    TrialOutcome,
    below_floor_rates,
    rung,
    rung_rate,
)
from services.profiler.live.session import (
    LIVE_TOLERANCES,
    profile_inference,
    profile_training,
    sweep_inference,
    sweep_training,
)
from services.profiler.search import (
    DEFAULT_GRID,
    CapacityBelowFloor,
    Grid,
    InfeasibleSlo,
    InferenceSearch,
    Measurement,
    best_with_ties,
)
from services.profiler.search.types import Probe
from services.scheduler.core.sizing import size_spec
from services.scheduler.validation import validate_spec
from services.simulator.serving.profiled import SimulatedInstance
from tests.unit.scheduler_world import FakeAgent, World, inference_spec

S = types_pb2
P = profiler_pb2
PROTOCOL = Protocol()


# ---- the rate search ------------------------------------------------------------------

def _search(capacity: float, bound: float, at_least: float | None = None) -> RateSearch:
    search = RateSearch(bound, PROTOCOL, at_least)
    while (rate := search.next_rate()) is not None:
        passed = rate <= capacity
        search.record(TrialOutcome(rate, 200, 200 if passed else 190, 0.05, 1.0), passed)
    return search


@given(st.floats(12.0, 900.0), st.floats(1.05, 4.0))
def test_the_rate_search_finds_the_highest_rung_a_point_sustains(capacity: float, headroom: float):
    bound = capacity * headroom
    search = _search(capacity, bound)
    assert search.capacity_rps == rung_rate(rung(capacity, PROTOCOL.rate_step), PROTOCOL.rate_step)
    assert len(search.trials) <= 12


def test_the_rate_search_reports_nothing_below_its_floor_and_stops_at_a_raised_one():
    assert _search(capacity=2.0, bound=400.0).capacity_rps == 0.0  # 220 requests take > 20 s
    cut = _search(capacity=30.0, bound=400.0, at_least=50.0)
    assert cut.capacity_rps == 0.0 and cut.trials[-1].rate_rps <= 50.0
    assert _search(capacity=80.0, bound=400.0, at_least=50.0).capacity_rps > 50.0


# ---- the search under time slicing ----------------------------------------------------

GRID = Grid(shares=(0.2, 0.4, 0.6, 0.8, 1.0), batches=(1, 2, 4, 8))


@st.composite
def time_sliced_curves(draw: st.DrawFn) -> dict[tuple[float, int], float]:
    """Capacities whose efficiency does not fall with share or batch (T1, T3'), with
    plateaus (ties) on purpose: rounded to a ladder, as live probes report them."""
    capacity = {}
    for j, batch in enumerate(GRID.batches):
        for i, share in enumerate(GRID.shares):
            below_share = (capacity.get((GRID.shares[i - 1], batch), 0.0) * share / GRID.shares[i - 1]
                           if i else 0.0)
            below_batch = capacity.get((share, GRID.batches[j - 1]), 0.0) if j else 0.0
            floor = max(below_share, below_batch, 1.0)
            capacity[share, batch] = round(floor * draw(st.sampled_from([1.0, 1.0, 1.01, 1.1, 1.5])), 6)
    return capacity


@st.composite
def lone_thresholds(draw: st.DrawFn) -> dict[int, int]:
    """Per batch, the first share index whose lone request meets the SLO: never earlier for
    a bigger batch (a bigger batch is never faster, more share never slower)."""
    thresholds, low = {}, 0
    for batch in GRID.batches:
        low = draw(st.integers(low, len(GRID.shares)))
        thresholds[batch] = low
    return thresholds


@settings(max_examples=80, deadline=None)
@given(time_sliced_curves(), lone_thresholds())
def test_on_time_sliced_curves_the_search_chooses_the_sweeps_very_point(
        capacity: dict[tuple[float, int], float], thresholds: dict[int, int]):
    slo_s = 0.1

    def measure(share: float, batch: int) -> Measurement:
        if GRID.shares.index(share) < thresholds[batch]:
            return Measurement(0.11, batch / 0.11, 0)  # a lone request misses the SLO
        return Measurement(0.05, capacity[share, batch], 0)

    search = InferenceSearch(slo_s, GRID, LIVE_TOLERANCES, exact_ties=True)
    while (point := search.next_probe()) is not None:
        search.record(*point, measure(*point))
    probes = [Probe(s, b, measure(s, b)) for s in GRID.shares for b in GRID.batches]
    feasible = [p for p in probes if p.meets(slo_s)]
    if not feasible:
        with pytest.raises(InfeasibleSlo):
            search.result()
        return
    chosen, swept = search.result(), best_with_ties(feasible)
    assert (chosen.share, chosen.batch) == (swept.share, swept.batch)
    assert chosen.measurement.latency_s <= slo_s  # never an SLO-violating choice


# ---- whole sessions on the single-instance model (virtual time) ------------------------

SMALL = Grid(shares=(0.5, 0.75, 1.0), batches=(1, 4, 16))


def test_a_live_session_chooses_as_its_sweep_and_sizes_within_its_rules():
    instance = SimulatedInstance("gpt2-large", 150, 4.0, slowdown=1.3)
    profile = asyncio.run(profile_inference(instance, 0.150, grid=SMALL))
    swept, sweep_s = asyncio.run(sweep_inference(SimulatedInstance("gpt2-large", 150, 4.0, slowdown=1.3),
                                                 0.150, grid=SMALL))
    assert (profile.choice.share, profile.choice.batch) == (swept.share, swept.batch)
    assert profile.search_seconds < sweep_s
    assert 0 < profile.request <= profile.limit <= 1.0
    assert profile.best_batch == profile.choice.batch
    assert profile.memory_mib == instance.perf.memory_mib(profile.best_batch)
    assert profile.design_rate_rps == pytest.approx(0.7 * profile.capacity_at_limit_rps)
    # The slowdown is measured, not read from the tables: batch 1 at 100 % takes 1.3 × 28.7 ms.
    lone = min(p.lone_s for p in profile.points if p.share == 1.0 and p.batch == 1) \
        if any(p.share == 1.0 and p.batch == 1 for p in profile.points) else None
    assert lone is None or lone > 1.3 * 0.0287


def test_an_slo_below_any_lone_request_is_infeasible_naming_the_fastest_latency():
    with pytest.raises(InfeasibleSlo) as refused:
        asyncio.run(profile_inference(SimulatedInstance("resnet152", 15, 4.0), 0.015, grid=SMALL))
    assert refused.value.fastest_latency_s > 0.015 and refused.value.fastest_share == 1.0


def test_a_training_session_finds_where_the_host_part_binds_as_its_sweep_does():
    # bert-base, batch 4: 3 × 32.7 ms of GPU per step; with 200 ms of host part the step is
    # host-bound from a share of 0.49 up: the smallest 5 % step keeping 98 % is 0.50.
    def job() -> SimulatedInstance:
        return SimulatedInstance("bert-base", 0, 0.0, training_batch=4, host_ms=200.0)

    profile = asyncio.run(profile_training(job(), 4))
    chosen, sweep_s = asyncio.run(sweep_training(job(), 4))
    assert profile.share == chosen == 0.5
    assert profile.seconds < sweep_s / 2


# ---- sizing a spec from its profile ---------------------------------------------------

def _profile(**figures: float) -> profiler_pb2.Profile:
    return P.Profile(state=P.PROFILE_STATE_READY, sm_request=0.3, sm_limit=0.6,
                     best_batch_size=8, memory_mib=1200, **figures)  # type: ignore[arg-type]


def _unsized(**resources: float) -> types_pb2.FunctionSpec:
    spec = types_pb2.FunctionSpec(name="f", kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM,
                                  model="resnet152", slo=S.Slo(latency_ms=100))
    for field, value in resources.items():
        setattr(spec.resources, field, value)
    return validate_spec(spec)


def test_a_spec_left_to_its_profile_takes_all_its_figures():
    sized = size_spec(_unsized(), _profile())
    res = sized.resources
    assert (res.sm_request, res.sm_limit, res.memory_mib, sized.max_batch) == (0.3, 0.6, 1200, 8)


def test_what_the_spec_set_is_kept_and_the_rest_fits_around_it():
    capped = size_spec(_unsized(sm_limit=0.2), _profile())
    assert (capped.resources.sm_request, capped.resources.sm_limit) == (0.2, 0.2)
    kept = size_spec(_unsized(sm_request=0.5), _profile())  # validation set the limit to it
    assert (kept.resources.sm_request, kept.resources.sm_limit, kept.resources.memory_mib) == (0.5, 0.5, 1200)
    # A memory the spec set bounds the batch: resnet152 needs 115 MiB + 32 per sample.
    tight = size_spec(_unsized(memory_mib=300), _profile())
    assert tight.resources.memory_mib == 300 and tight.max_batch == 5
    with pytest.raises(InvalidArgument):
        size_spec(_unsized(memory_mib=100), _profile())  # not even batch 1 fits


def test_profile_keys_hash_what_determines_a_profile():
    spec = validate_spec(inference_spec("a"))
    key = profile_key(spec, "NVIDIA A100-SXM4-40GB")
    other = validate_spec(inference_spec("b", request=0.9, limit=1.0))  # name and resources do not count
    assert key_id(profile_key(other, "NVIDIA A100-SXM4-40GB")) == key_id(key)
    spec.runtime_options["slowdown"] = "1.3"
    assert key_id(profile_key(spec, "NVIDIA A100-SXM4-40GB")) != key_id(key)
    assert key_id(profile_key(other, "NVIDIA A100-SXM4-80GB")) != key_id(key)
    name = profiling_name(key_id(key))
    assert is_profiling(name) and len(name) <= 63


# ---- the scheduler core -----------------------------------------------------------------

def test_a_deploy_left_to_its_profile_stays_pending_until_sized_then_places_its_figures():
    world = World(FakeAgent("n1"))
    world.deploy(validate_spec(_unsized()))
    world.pass_()
    function = world.core.function("f")
    assert function.status.awaiting_profile and function.status.state == S.FUNCTION_STATE_PROFILING
    assert [i.state for i in function.status.instances] == [S.INSTANCE_STATE_PENDING]
    assert function.status.instances[0].message == "profiling"
    (name, key), = world.core.awaiting_profiles()
    assert name == "f" and key.gpu_model == "NVIDIA A100-SXM4-40GB"
    world.core.profile_progress("f", P.Profile(state=P.PROFILE_STATE_RUNNING, message="measured 3"),
                                world.now)
    assert world.core.function("f").status.instances[0].message == "profiling: measured 3"

    change = world.core.sized("f", _profile(key_id=key_id(key)), world.now)
    world.run(world.core.apply(change, world.now))
    function = world.core.function("f")
    placed = function.status.instances[0]
    assert placed.state == S.INSTANCE_STATE_STARTING and function.status.state == S.FUNCTION_STATE_OK
    assert (placed.quota.sm_request, placed.quota.sm_limit, placed.quota.memory_limit_mib) == (0.3, 0.6, 1200)
    assert function.spec.max_batch == 8 and function.status.profile_key_id == key_id(key)
    assert world.core.awaiting_profiles() == []


def test_a_failed_profile_marks_the_function_and_places_nothing():
    world = World(FakeAgent("n1"))
    world.deploy(validate_spec(_unsized()))
    world.core.profile_progress("f", P.Profile(state=P.PROFILE_STATE_FAILED,
                                               message="no share meets the SLO"), world.now)
    world.pass_()
    function = world.core.function("f")
    assert function.status.state == S.FUNCTION_STATE_PROFILE_FAILED
    assert "no share meets" in function.status.last_error
    assert [i.state for i in function.status.instances] == [S.INSTANCE_STATE_PENDING]


def test_profiling_instances_take_a_whole_free_gpu_and_are_nobodys_functions():
    world = World(FakeAgent("n1", gpus=2))
    world.deploy(inference_spec("user", request=0.5, limit=0.5))
    hidden = validate_spec(_unsized())
    hidden.name = "profiling-abc"
    with pytest.raises(InvalidArgument):
        world.core.deploy(hidden, world.now)  # users may not take the prefix
    world.run(world.core.apply(world.core.start_profiling(hidden, "NVIDIA A100-SXM4-40GB", world.now),
                               world.now))
    assert world.core.start_profiling(hidden, "", world.now) is None  # idempotent
    (profiling,) = world.core.profiling_functions()
    instance = profiling.status.instances[0]
    user_gpu = world.core.function("user").status.instances[0].gpu_uuids
    assert instance.quota.sm_request == 1.0 and instance.gpu_uuids != user_gpu
    assert [f.spec.name for f in world.core.functions()] == ["user"]
    with pytest.raises(NotFound):
        world.core.function("profiling-abc")
    with pytest.raises(NotFound):
        world.core.scale("profiling-abc", 1, world.now)
    assert world.core.spec("profiling-abc").resources.sm_limit == 1.0  # Invoke reaches it

    # Its worker fails: never restarted (the profiler reports the failure).
    world.report(instance.id, S.INSTANCE_STATE_FAILED, "worker exited with code 3: boom")
    for _ in range(40):
        world.pass_()
    states = [i.state for i in world.core.profiling_functions()[0].status.instances]
    assert S.INSTANCE_STATE_STARTING not in states and S.INSTANCE_STATE_PENDING not in states
    world.run(world.core.apply(world.core.stop_profiling("profiling-abc", world.now), world.now))
    assert world.core.profiling_functions() == []


def test_a_profiling_instance_waits_for_a_free_gpu_of_its_model():
    world = World(FakeAgent("n1", gpus=1, gpu_model="NVIDIA A100-SXM4-80GB"))
    hidden = validate_spec(_unsized())
    hidden.name = "profiling-xyz"
    world.run(world.core.apply(world.core.start_profiling(hidden, "NVIDIA A100-SXM4-40GB", world.now),
                               world.now))
    world.pass_()
    (instance,) = world.core.profiling_functions()[0].status.instances
    assert instance.state == S.INSTANCE_STATE_PENDING and "no ready node" in instance.message
    assert math.isclose(instance.quota.sm_request, 1.0)


def test_a_scenario_sized_by_the_profiler_takes_its_rules_and_keeps_what_it_pins():
    from services.simulator.serving.profiled import profiler_sizing
    from services.simulator.serving.scenario import Quota, ServedFunction
    from services.simulator.serving.systems import memory_for

    free = ServedFunction(name="bert", model="bert-base", slo_ms=60, trace="bursty", scale=2)
    sizing = profiler_sizing(free, overhead_ms=1.0)
    assert 0 < sizing.request <= sizing.limit <= 1.0
    assert sizing.max_batch in DEFAULT_GRID.batches
    assert sizing.memory_mib == memory_for("bert-base", sizing.max_batch)
    pinned = ServedFunction(name="bert", model="bert-base", slo_ms=60, trace="bursty", scale=2,
                            quota=Quota(0.2, 0.5, 3072))
    kept = profiler_sizing(pinned, overhead_ms=1.0)
    assert (kept.request, kept.limit, kept.memory_mib) == (0.2, 0.5, 3072)
    assert kept.max_batch == sizing.max_batch  # the batch still comes from the profile


# ---- below the rate floor ---------------------------------------------------------------

def test_below_the_floor_the_ladder_halves_from_the_floor_to_the_slowest_trial():
    rates = below_floor_rates(38.2, PROTOCOL)  # gpt2-large's bound at (1.0, 1): floor 11/s
    assert rates[0] == rung_rate(rung(11.0, PROTOCOL.rate_step), PROTOCOL.rate_step)
    assert all(math.isclose(a / b, PROTOCOL.rate_step ** PROTOCOL.below_floor_rungs)
               for a, b in itertools.pairwise(rates))
    slowest = (PROTOCOL.warmup_requests + PROTOCOL.requests) / PROTOCOL.slow_trial_s
    assert rates[-1] >= slowest > rates[-1] / PROTOCOL.rate_step ** PROTOCOL.below_floor_rungs
    assert below_floor_rates(38.2, PROTOCOL, floor_failed=True) == rates[1:]


def test_a_function_feasible_alone_but_below_the_floor_is_sized_from_below_it():
    # gpt2-large at 60 ms: a lone request takes 32.7 ms on a whole GPU, but no point carries
    # the floor of 11 requests/s with 99 % within the SLO (the previous rule refused it).
    profile = asyncio.run(profile_inference(SimulatedInstance("gpt2-large", 60, 4.0), 0.060,
                                            grid=SMALL))
    chosen = profile.choice.measurement
    assert 0 < chosen.throughput_rps < 11.0 and chosen.latency_s <= 0.060
    assert chosen.throughput_rps in below_floor_rates(1e3, PROTOCOL)  # a rung of the ladder
    assert any("below" in note for note in profile.notes)
    assert 0 < profile.request <= profile.limit <= 1.0
    swept, _ = asyncio.run(sweep_inference(SimulatedInstance("gpt2-large", 60, 4.0), 0.060,
                                           grid=SMALL))
    assert (profile.choice.share, profile.choice.batch) == (swept.share, swept.batch)


def test_feasible_alone_but_carrying_nothing_is_told_apart_from_an_slo_nothing_meets():
    with pytest.raises(CapacityBelowFloor) as starved:
        asyncio.run(profile_inference(SimulatedInstance("gpt2-large", 40, 4.0), 0.040, grid=SMALL))
    assert starved.value.fastest_latency_s <= 0.040 and starved.value.floor_rps < 11.0
    assert "a lone request meets" in starved.value.message
    assert f"{starved.value.floor_rps:.2f} requests/s" in starved.value.message
    with pytest.raises(InfeasibleSlo) as refused:
        asyncio.run(profile_inference(SimulatedInstance("gpt2-large", 30, 4.0), 0.030, grid=SMALL))
    assert not isinstance(refused.value, CapacityBelowFloor)
    assert refused.value.fastest_latency_s > 0.030 and "no share meets" in refused.value.message


def test_profiling_errors_survive_a_process_pool():
    fastest = Probe(1.0, 1, Measurement(0.0327, 30.6, 2048))
    for error in (InfeasibleSlo(0.020, fastest), CapacityBelowFloor(0.060, fastest, 2.79, 0.99)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.message == error.message
        assert copy.fastest_latency_s == error.fastest_latency_s and copy.code == error.code
