"""A live profiling session: the searches of `services.profiler.search` driven probe by probe
against an instance, and the sizing rules applied to what they measured.

The instance is anything that implements `ProbedInstance` — the live stack (`runner.py`:
knobs through the node agent, load through the scheduler's `Invoke`) or the serving
simulator's single-instance model in virtual time
(`services.simulator.serving.profiled`) — so the same rules size a function in both.

Inference
---------
Each probe is one point (share, maximum batch) measured by the protocol of `protocol.py`:
its capacity (the highest Poisson rate served with the SLO's percentile of requests within
the SLO). `InferenceSearch` picks the probes and returns the point of highest capacity per
share (ties within 2 % to the smaller share, then batch). Then, from the curve:

- **best batch** b* = the chosen point's batch;
- **limit** = the smallest share (to 0.01) at which a lone batch of b*, arriving after an
  idle gap, meets the SLO under the gate: every one of `lone_repeats` such batches has all
  its requests within the SLO. Time slicing makes this the share a burst needs while it
  runs: bert-base batch 1 takes 15 ms of GPU time, 150 ms at share 0.1 — a 60 ms SLO needs
  about 0.27 (15 / 0.27 = 56 ms, less the burst credit, plus the trip through the
  scheduler). When the capacity at that share is on the cliff (below a quarter of the
  chosen point's, scaled to the share: a lone batch fits but queueing sinks any stream),
  the limit is the next share of the grid past the cliff, noted in the profile;
- **request** = the smallest share (to 0.01) whose capacity at b* covers the design rate:
  one trial at 1.2 times the design rate passes (the margin: one trial is a noisy
  verdict). The design rate is the caller's (`ProfileFunctionRequest.design_rate_rps`),
  or by default 70 % of the capacity at the limit, so that an instance carries its design
  load on its guarantee and bursts to the limit. E.g. a capacity of 120 requests/s at the
  limit 0.45 gives a design rate of 84 and, capacity being about proportional to share
  (267 requests/s per whole GPU), a request near 1.2 × 84 / 267 = 0.38. A request above
  the limit raises the limit to it;
- **memory** = the worker's footprint at b*.

Training
--------
`TrainingSearch` bisects the share (5 % steps) for the smallest that keeps >= 98 % of the
full GPU's steps per second; steps are counted by the worker, over at least
`training_steps` steps and `training_min_s` seconds after a warm-up. A job whose step has a
host part h (data loading, all-reduce) saturates where its GPU part g at share s stops
binding: g / s = h. With g = 127 ms and h = 200 ms that is 0.64, and the answer is the
first 5 % step at or above 0.98 × 0.64 (0.65). Request = limit = that share (more buys
nothing); memory is the footprint at its step batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from services.profiler.live.protocol import (
    DEFAULT_PROTOCOL,
    Protocol,
    RateSearch,
    TrialOutcome,
    allowed_misses,
    below_floor_rates,
    percentile_s,
    unit_arrivals,
)
from services.profiler.search import (
    DEFAULT_GRID,
    DEFAULT_TRAINING_SHARES,
    Choice,
    Grid,
    InferenceSearch,
    Measurement,
    Probe,
    Tolerances,
    TrainingChoice,
    TrainingSearch,
    best_with_ties,
)
from services.profiler.search.bounds import TEMPORAL
from services.profiler.search.types import CapacityBelowFloor, InfeasibleSlo

__all__ = [
    "DESIGN_FRACTION",
    "InferenceProfile",
    "LoneFigures",
    "PointResult",
    "ProbedInstance",
    "TrainingProfile",
    "measure_below_floor",
    "measure_capacity",
    "measure_lone",
    "measure_point",
    "profile_inference",
    "profile_training",
    "sweep_inference",
    "sweep_training",
]

DESIGN_FRACTION = 0.7
"""The default design rate, as a fraction of the capacity at the limit."""

LIVE_TOLERANCES = Tolerances(noise=0.06, superlinear=0.13, sharing=TEMPORAL)
"""The search's assumptions for live capacity probes: time slicing (efficiency does not
fall with share), within 6 % (the rate ladder's 5 % step and measurement noise)."""

MIB = 1 << 20


class ProbedInstance(TypingProtocol):
    """What a session needs from the instance it measures (one instance, many points)."""

    async def configure(self, share: float, max_batch: int) -> int:
        """Run at `share` with `max_batch` as the largest batch from now on; returns the
        worker's memory footprint at that batch, bytes."""
        ...

    async def lone(self, batch: int, idle_s: float) -> list[float]:
        """After `idle_s` without requests, `batch` requests at once: their latencies, s."""
        ...

    async def trial(self, arrivals_s: Sequence[float], counted_from: int, slo_s: float,
                    allowed: int) -> tuple[list[float], float, bool]:
        """Requests at `arrivals_s` (s from the start): the latencies of those from index
        `counted_from` on, the trial's duration (s), and whether it stopped early because
        more than `allowed` counted requests missed `slo_s`."""
        ...

    async def training_rate(self, protocol: Protocol) -> float:
        """Training steps per second at the current share."""
        ...

    def clock(self) -> float:
        """The instance's time in seconds (wall time live, virtual time in the simulator):
        what the profile's and each probe's `seconds` are measured on."""
        ...


@dataclass(frozen=True, slots=True)
class PointResult:
    """One probe: its measurement, the trials behind it and what it cost (instance time)."""

    share: float
    batch: int
    measurement: Measurement
    lone_s: float
    lone_batch_s: float
    trials: tuple[TrialOutcome, ...]
    seconds: float

    @property
    def feasible(self) -> bool:
        return bool(self.trials) and self.measurement.throughput_rps > 0


@dataclass(frozen=True, slots=True)
class InferenceProfile:
    """A live inference profile: the search's choice and curve, and the sizing."""

    slo_s: float
    target: float
    choice: Choice
    points: tuple[PointResult, ...]
    best_batch: int
    limit: float
    request: float
    design_rate_rps: float
    capacity_at_limit_rps: float
    memory_mib: int
    search_seconds: float
    seconds: float
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainingProfile:
    choice: TrainingChoice
    share: float
    batch: int
    memory_mib: int
    seconds: float


async def _lone_latency(instance: ProbedInstance, batch: int, protocol: Protocol) -> list[float]:
    """The slowest request of each of `lone_repeats` lone batches."""
    return [max(await instance.lone(batch, protocol.idle_gap_s)) for _ in range(protocol.lone_repeats)]


async def _trial(instance: ProbedInstance, rate: float, slo_s: float, target: float,
                 protocol: Protocol) -> TrialOutcome:
    arrivals = [t / rate for t in unit_arrivals(protocol)]
    allowed = allowed_misses(protocol.requests, target)
    latencies, duration, stopped = await instance.trial(arrivals, protocol.warmup_requests,
                                                        slo_s, allowed)
    within = sum(1 for latency in latencies if latency <= slo_s)
    return TrialOutcome(rate, len(latencies), within, percentile_s(latencies, target * 100),
                        duration, stopped)


@dataclass(frozen=True, slots=True)
class LoneFigures:
    """A probe's cheap first step: lone requests and a lone batch after idle gaps."""

    share: float
    batch: int
    lone_s: float        # median of the lone requests
    lone_batch_s: float  # slowest request of the slowest lone batch
    memory_mib: int
    seconds: float

    def measurement_if_infeasible(self, slo_s: float) -> Measurement | None:
        """When a lone request misses the SLO no rate meets it: the lone batch's figures
        (the `Measurer` contract); None otherwise."""
        if self.lone_s <= slo_s:
            return None
        worst = max(self.lone_batch_s, self.lone_s)
        return Measurement(worst, self.batch / worst, self.memory_mib)

    @property
    def bound_rps(self) -> float:
        """What the point could sustain at most: back-to-back full batches, each no faster
        than `LONE_MARGIN` times a lone batch (which had the gate's burst credit)."""
        return LONE_MARGIN * self.batch / self.lone_batch_s


CLIFF_FRACTION = 0.25
"""A share whose capacity is below this fraction of the chosen point's, scaled to the share,
is on the cliff: a lone batch meets the SLO there but a stream barely does (time slicing
and a 99 % target: bert-base at a 60 ms SLO carries nothing measurable below 0.7 although a
lone request takes 46 ms at 0.4)."""

REQUEST_HEADROOM = 1.2
"""The request must carry this much more than the design rate in its trial: one trial of
200 requests is a noisy verdict at the edge, and the margin keeps a long run at the design
rate above the target."""

LONE_MARGIN = 1.25
"""How much faster a batch may run back to back than alone after an idle gap, at most: the
gate's burst credit (one period at the share) and the trip through the scheduler, which a
lone batch's latency includes, are a fifth of it at most for the batches profiled here."""


async def measure_lone(instance: ProbedInstance, share: float, batch: int,
                       protocol: Protocol) -> LoneFigures:
    started = instance.clock()
    memory = await instance.configure(share, batch)
    lone = sorted(await _lone_latency(instance, 1, protocol))[protocol.lone_repeats // 2]
    lone_batch = max(await _lone_latency(instance, batch, protocol)) if batch > 1 else lone
    return LoneFigures(share, batch, lone, lone_batch, -(-memory // MIB),
                       instance.clock() - started)


async def measure_capacity(instance: ProbedInstance, lone: LoneFigures, slo_s: float,
                           target: float, protocol: Protocol,
                           at_least_rps: float | None = None) -> PointResult:
    """The rate search of `protocol.py` at a point whose lone requests meet the SLO (only
    for a capacity of `at_least_rps` or more, when given: one failing trial there ends it)."""
    started = instance.clock()
    await instance.configure(lone.share, lone.batch)
    search = RateSearch(lone.bound_rps, protocol, at_least_rps)
    while (rate := search.next_rate()) is not None:
        outcome = await _trial(instance, rate, slo_s, target, protocol)
        search.record(outcome, outcome.passed(protocol.requests, target))
    capacity = search.capacity_rps
    latency = search.latency_s if capacity > 0 else max(lone.lone_batch_s, lone.lone_s)
    return PointResult(lone.share, lone.batch, Measurement(latency, capacity, lone.memory_mib),
                       lone.lone_s, lone.lone_batch_s, tuple(search.trials),
                       lone.seconds + instance.clock() - started)


async def measure_point(instance: ProbedInstance, share: float, batch: int, slo_s: float,
                        target: float, protocol: Protocol,
                        at_least_rps: float | None = None) -> PointResult:
    """One whole probe by the protocol (see `protocol.py`): lone requests, then the
    capacity unless a lone request already misses the SLO."""
    lone = await measure_lone(instance, share, batch, protocol)
    missed = lone.measurement_if_infeasible(slo_s)
    if missed is not None:
        return PointResult(share, batch, missed, lone.lone_s, lone.lone_batch_s, (), lone.seconds)
    return await measure_capacity(instance, lone, slo_s, target, protocol, at_least_rps)


async def _smallest_share(passes: Callable[[float], object], low: int, high: int,
                          guess: int | None = None) -> int:
    """The smallest hundredth h in (low, high] with `await passes(h / 100)` true, given
    that `high` passes (it is not asked) and that passing is monotone in the share. From a
    guess it gallops (1, 2, 4 ... hundredths) to a bracket, then bisects."""
    fail, ok = low, high
    if guess is not None and fail < guess < ok:
        step = 1
        if await passes(guess / 100):  # type: ignore[misc]
            ok = guess
            while ok - step > fail and await passes((ok - step) / 100):  # type: ignore[misc]
                ok -= step
                step *= 2
            fail = max(fail, ok - step)
        else:
            fail = guess
            while fail + step < ok and not await passes((fail + step) / 100):  # type: ignore[misc]
                fail += step
                step *= 2
            ok = min(ok, fail + step)
    while ok - fail > 1:
        middle = (ok + fail) // 2
        if await passes(middle / 100):  # type: ignore[misc]
            ok = middle
        else:
            fail = middle
    return ok


async def measure_below_floor(instance: ProbedInstance, lone: LoneFigures, slo_s: float,
                              target: float, protocol: Protocol, *, floor_failed: bool = False,
                              at_least_rps: float = 0.0) -> PointResult:
    """The capacity below the floor (`protocol.py`, step 3) of a point whose lone requests
    meet the SLO: the highest rung of `below_floor_rates` that passes, top down (only rungs
    of at least `at_least_rps`); 0 when none does."""
    started = instance.clock()
    await instance.configure(lone.share, lone.batch)
    trials: list[TrialOutcome] = []
    measured: Measurement | None = None
    for rate in below_floor_rates(lone.bound_rps, protocol, floor_failed=floor_failed):
        if rate < at_least_rps * (1 - 1e-9):
            break
        outcome = await _trial(instance, rate, slo_s, target, protocol)
        trials.append(outcome)
        if outcome.passed(protocol.requests, target):
            measured = Measurement(outcome.latency_s, rate, lone.memory_mib)
            break
    if measured is None:
        measured = Measurement(max(lone.lone_batch_s, lone.lone_s), 0.0, lone.memory_mib)
    return PointResult(lone.share, lone.batch, measured, lone.lone_s, lone.lone_batch_s,
                       tuple(trials), lone.seconds + instance.clock() - started)


async def _search_grid(instance: ProbedInstance, slo_s: float, target: float, grid: Grid,
                       protocol: Protocol, lones: dict[tuple[float, int], LoneFigures],
                       floor_failed: set[tuple[float, int]] | None,
                       on_point: Callable[[PointResult], None] | None,
                       ) -> tuple[InferenceSearch, list[PointResult]]:
    """One pass of the grid search: capacities by the rate search above the floor
    (`floor_failed` None), or below it (the set: points whose trial at the floor failed).
    `lones` caches the cheap first steps across passes."""
    # Below the floor the ladder resolves capacity only to a factor of 2: chasing exact
    # ties there buys nothing but minutes of trials; the 2 % tie rule still decides.
    search = InferenceSearch(slo_s, grid, LIVE_TOLERANCES, exact_ties=floor_failed is None)
    points: list[PointResult] = []
    bounded: set[tuple[float, int]] = set()
    while (point := search.next_probe()) is not None:
        share, batch = point
        lone = lones.get(point)
        if lone is None:
            lone = lones[point] = await measure_lone(instance, share, batch, protocol)
        missed = lone.measurement_if_infeasible(slo_s)
        if missed is not None:
            result = PointResult(share, batch, missed, lone.lone_s, lone.lone_batch_s, (),
                                 lone.seconds)
        elif point not in bounded:
            # First the cheap step; its bound may settle the point without a rate search.
            bounded.add(point)
            search.limit_throughput(share, batch, lone.bound_rps)
            continue
        elif floor_failed is None:
            result = await measure_capacity(instance, lone, slo_s, target, protocol)
        else:
            result = await measure_below_floor(instance, lone, slo_s, target, protocol,
                                               floor_failed=point in floor_failed)
        points.append(result)
        if on_point is not None:
            on_point(result)
        search.record(share, batch, result.measurement)
    return search, points


def _meets(point: PointResult, slo_s: float) -> bool:
    return point.measurement.throughput_rps > 0 and point.measurement.latency_s <= slo_s


async def profile_inference(instance: ProbedInstance, slo_s: float, *, target: float = 0.99,
                            grid: Grid = DEFAULT_GRID, protocol: Protocol = DEFAULT_PROTOCOL,
                            design_rate_rps: float | None = None,
                            on_point: Callable[[PointResult], None] | None = None) -> InferenceProfile:
    """Search `grid` live, then size: best batch, limit, request, memory (module docstring).
    `InfeasibleSlo` when no point meets the SLO even for a lone request;
    `CapacityBelowFloor` when lone requests meet it but no point carries the slowest rate
    measured below the floor."""
    started = instance.clock()
    lones: dict[tuple[float, int], LoneFigures] = {}
    search, points = await _search_grid(instance, slo_s, target, grid, protocol, lones, None,
                                        on_point)
    notes: list[str] = []
    below_floor = False
    feasible_alone = [lone for lone in lones.values() if lone.lone_s <= slo_s]
    if not any(_meets(p, slo_s) for p in points) and feasible_alone:
        # Lone requests meet the SLO but nothing carries the floor: search again below it
        # (module docstring, *Below the floor*), knowing where the floor already failed.
        below_floor = True
        failed = {(p.share, p.batch) for p in points if p.trials}
        search, points = await _search_grid(instance, slo_s, target, grid, protocol, lones,
                                            failed, on_point)
        if not any(_meets(p, slo_s) for p in points):
            fastest = min(feasible_alone, key=lambda lone: (lone.lone_s, lone.share, lone.batch))
            slowest = min(below_floor_rates(fastest.bound_rps, protocol))
            raise CapacityBelowFloor(
                slo_s, Probe(fastest.share, fastest.batch,
                             Measurement(fastest.lone_s, 1 / fastest.lone_s, fastest.memory_mib)),
                slowest, target)
        notes.append("no point carries the rate floor: capacities were measured below it "
                     "on the coarse ladder (protocol step 3)")
    choice = search.result()
    search_seconds = instance.clock() - started
    best = choice.batch

    async def lone_meets(share: float) -> bool:
        await instance.configure(share, best)
        return max(await _lone_latency(instance, best, protocol)) <= slo_s

    chosen_point = next(p for p in points if p.share == choice.share and p.batch == best)
    at_choice = round(choice.share * 100)
    if await lone_meets(choice.share):
        # Time slicing: a lone batch's latency is about inversely proportional to the share.
        guess = math.ceil(100 * choice.share * chosen_point.lone_batch_s / slo_s)
        limit = await _smallest_share(lone_meets, 0, at_choice, guess) / 100
    elif await lone_meets(1.0):
        limit = await _smallest_share(lone_meets, at_choice, 100) / 100
    else:
        limit = 1.0
        notes.append(f"a lone batch of {best} misses the SLO even on a whole GPU (it meets it "
                     "under load, when the batcher splits it): the limit is 1.0")
    chosen_capacity = choice.measurement.throughput_rps

    def cliff_rps(share: float) -> float:
        """Below this capacity a share is on the cliff (`CLIFF_FRACTION`)."""
        return CLIFF_FRACTION * chosen_capacity * share / choice.share

    async def capacity(share: float, at_least_rps: float) -> PointResult:
        """The point (share, b*) measured by the pass that chose: above the floor, or
        below it when nothing carried the floor."""
        if not below_floor:
            return await measure_point(instance, share, best, slo_s, target, protocol, at_least_rps)
        lone = await measure_lone(instance, share, best, protocol)
        missed = lone.measurement_if_infeasible(slo_s)
        if missed is not None:
            return PointResult(share, best, missed, lone.lone_s, lone.lone_batch_s, (), lone.seconds)
        return await measure_below_floor(instance, lone, slo_s, target, protocol,
                                         at_least_rps=at_least_rps)

    # Past the cliff or not is one trial; the capacity is searched only past it.
    at_limit = await capacity(limit, cliff_rps(limit))
    capacity_at_limit = at_limit.measurement.throughput_rps
    if capacity_at_limit < cliff_rps(limit):
        # A lone batch meets the SLO there, but queueing decides a stream's fate: the
        # share carries (almost) no load. The limit is raised to the next grid share at
        # b* past the cliff (the chosen share itself never is on it).
        for share in (s for s in grid.shares if limit < s <= choice.share):
            measured = next((p for p in points if p.batch == best and p.share == share and p.trials),
                            None) or await capacity(share, cliff_rps(share))
            if measured.measurement.throughput_rps >= cliff_rps(share):
                notes.append(f"at the lone-batch share {limit:.2f} no stream of "
                             f"{cliff_rps(limit):.1f} requests/s meets the SLO: the limit is "
                             f"raised to {share:.2f} ({measured.measurement.throughput_rps:.1f} "
                             "requests/s)")
                limit, capacity_at_limit = share, measured.measurement.throughput_rps
                break
    design = design_rate_rps if design_rate_rps is not None else DESIGN_FRACTION * capacity_at_limit

    async def carries(share: float) -> bool:
        await instance.configure(share, best)
        outcome = await _trial(instance, design * REQUEST_HEADROOM, slo_s, target, protocol)
        return outcome.passed(protocol.requests, target)

    efficiency = choice.efficiency
    rate_guess = math.ceil(100 * design / efficiency) if efficiency > 0 else None
    if design <= capacity_at_limit:
        request = await _smallest_share(carries, 0, round(limit * 100), rate_guess) / 100
    elif await carries(1.0):
        request = await _smallest_share(carries, round(limit * 100), 100, rate_guess) / 100
        notes.append(f"the design rate {design:.1f}/s needs more than the limit: limit raised "
                     f"to the request {request:.2f}")
    else:
        request = 1.0
        notes.append(f"one instance does not carry the design rate {design:.1f}/s even on a "
                     "whole GPU: the request is 1.0 and the function needs replicas")
    limit = max(limit, request)
    memory = await instance.configure(choice.share, best)
    return InferenceProfile(
        slo_s=slo_s, target=target, choice=choice, points=tuple(points), best_batch=best,
        limit=limit, request=request, design_rate_rps=design,
        capacity_at_limit_rps=capacity_at_limit, memory_mib=-(-memory // MIB),
        search_seconds=search_seconds, seconds=instance.clock() - started, notes=tuple(notes))


async def sweep_inference(instance: ProbedInstance, slo_s: float, *, target: float = 0.99,
                          grid: Grid = DEFAULT_GRID,
                          protocol: Protocol = DEFAULT_PROTOCOL) -> tuple[Choice, float]:
    """Every point of `grid` measured by the same protocol, chosen by the same tie rule:
    the reference a live search is judged against. Returns the choice and its seconds."""
    started = instance.clock()
    results: list[PointResult] = []
    for share in grid.shares:
        for batch in grid.batches:
            # No neighbour's capacity as a starting guess: measured (in the simulator's
            # single-instance model) that makes the sweep slower, not faster — a start just
            # below the capacity costs a full passing trial more often than one at 0.6 of
            # the bound, whose failures stop early.
            result = await measure_point(instance, share, batch, slo_s, target, protocol)
            results.append(result)
    if not any(_meets(r, slo_s) for r in results) and any(r.lone_s <= slo_s for r in results):
        # The session's rule: nothing carries the floor, so every point whose lone requests
        # meet the SLO is measured again below it.
        results = [r if r.lone_s > slo_s else await measure_below_floor(
            instance, LoneFigures(r.share, r.batch, r.lone_s, r.lone_batch_s,
                                  r.measurement.memory_mib, 0.0),
            slo_s, target, protocol, floor_failed=bool(r.trials)) for r in results]
    probes = [Probe(r.share, r.batch, r.measurement) for r in results]
    feasible = [p for p in probes if p.meets(slo_s)]
    if not feasible:
        lone_ok = [r for r in results if r.lone_s <= slo_s]
        if lone_ok:
            fastest = min(lone_ok, key=lambda r: r.lone_s)
            raise CapacityBelowFloor(slo_s, Probe(fastest.share, fastest.batch, Measurement(
                fastest.lone_s, 1 / fastest.lone_s, fastest.measurement.memory_mib)),
                min(below_floor_rates(LONE_MARGIN * fastest.batch / fastest.lone_batch_s,
                                      protocol)), target)
        raise InfeasibleSlo(slo_s, min(probes, key=lambda p: p.measurement.latency_s))
    chosen = best_with_ties(feasible)
    return (Choice(chosen.share, chosen.batch, chosen.measurement, tuple(probes)),
            instance.clock() - started)


async def _training_point(instance: ProbedInstance, share: float, batch: int,
                          protocol: Protocol) -> Measurement:
    memory = await instance.configure(share, batch)
    rate = await instance.training_rate(protocol)
    return Measurement(latency_s=1.0 / rate, throughput_rps=rate, memory_mib=-(-memory // MIB))


async def profile_training(instance: ProbedInstance, batch: int, *,
                           shares: tuple[float, ...] = DEFAULT_TRAINING_SHARES,
                           protocol: Protocol = DEFAULT_PROTOCOL) -> TrainingProfile:
    """The smallest share keeping >= 98 % of the full GPU's steps per second."""
    started = instance.clock()
    search = TrainingSearch(batch, shares)
    while (share := search.next_probe()) is not None:
        search.record(share, await _training_point(instance, share, batch, protocol))
    choice = search.result()
    return TrainingProfile(choice, choice.share, batch, choice.measurement.memory_mib,
                           instance.clock() - started)


async def sweep_training(instance: ProbedInstance, batch: int, *,
                         shares: tuple[float, ...] = DEFAULT_TRAINING_SHARES,
                         protocol: Protocol = DEFAULT_PROTOCOL, keep: float = 0.98) -> tuple[float, float]:
    """Every share measured; the smallest keeping `keep` of the full GPU's. Returns it and
    the seconds it took."""
    started = instance.clock()
    measured = {share: await _training_point(instance, share, batch, protocol) for share in shares}
    full = measured[shares[-1]].throughput_rps
    chosen = min(s for s, m in measured.items() if m.throughput_rps >= keep * full)
    return chosen, instance.clock() - started
