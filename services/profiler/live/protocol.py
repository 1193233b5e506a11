"""The live measurement protocol: what one probe of a running instance is, as pure rules.

A live probe measures one point (share, maximum batch) of a function on the mechanism the
platform enforces (time slicing through the gate), never from the bundled tables:

1. **Lone requests.** After an idle gap (`idle_gap_s`, so the gate's bucket is full and the
   batcher's arrival estimate has decayed) one request is sent alone, `lone_repeats` times;
   the median latency is the point's lone latency. If it misses the SLO no rate can meet it
   (a trickle is a stream of lone requests): the point is infeasible, and the probe reports
   the latency of a lone *batch* (`batch` requests sent at once after an idle gap), with
   `batch / that latency` as throughput, as the `Measurer` contract asks.
2. **Capacity.** Otherwise the probe searches the highest Poisson rate at which at least
   `target` of the requests (the SLO's percentile, 99 % unless it says otherwise) finish
   within the SLO. One *trial* at rate r sends `warmup_requests` + `requests` requests at the
   times of a fixed unit-rate Poisson stream scaled by 1/r (the same stream for every trial,
   so two probes of one point see the same arrivals); the first `warmup_requests` let the
   queue reach its steady state and are not counted; the trial passes when at most
   floor((1 - target) × requests) counted requests miss (2 of 200 at 99 %), and stops as soon
   as more have missed. Rates live on a fixed ladder, rung k at `rate_step`**k requests/s
   (5 % apart), so every probe of a point lands on the same rungs. `RateSearch` walks it:
   start at `start_fraction` of the upper bound `LONE_MARGIN × batch / lone batch latency`
   (full batches back to back, a little faster than a lone one: no Poisson stream keeps up
   with that; `session.LONE_MARGIN`), gallop up by `gallop_rungs` rungs
   while trials pass and down by a growing number while they fail, then bisect between the
   highest pass and the lowest fail until they are neighbours. The capacity is the highest
   rung that passed — 0 when nothing passes down to the floor, the larger of
   `floor_fraction` of the bound and the rate at which a trial lasts `max_trial_s` (220
   requests in 20 s: 11 requests/s; a smaller capacity is not worth minutes of load) —
   and the latency
   reported is the target percentile of the counted requests of that trial.
3. **Below the floor** (only when no point of the grid carries the floor: see
   `session.profile_inference`). A point whose lone requests meet the SLO is feasible however
   little it carries — as the rate falls, a Poisson stream becomes a stream of lone
   requests — so when every such point fails at the floor, their capacity is searched
   below it on a coarse ladder, `below_floor_rungs` rungs apart (14 rungs of 1.05: a
   factor 1.98), top down from the floor, stopping at the first rung that passes, down to
   the rate at which one trial lasts `slow_trial_s` (220 requests in 120 s: 1.83
   requests/s); from the floor of 11 requests/s the rungs are 10.9, 5.5 and 2.8.
   `below_floor_rates` lists them. Cost: failing trials stop early; the one passing trial
   runs 220 / r s — 40 s at 5.5 requests/s, 80 s at 2.8 — so at most about 2 minutes per
   point, and nothing at all for a function some point of which carries the floor. The
   capacity is known to a factor of 2 only: what such a function needs is "about this
   little", and resolving it finer would cost minutes per rung.

Worked numbers (illustrative; the README's *Live profiling* has a measured
run): a point whose lone batch of 4 takes 20 ms has the bound 1.25 × 4 / 0.020 = 250
requests/s; the search starts at rung 1.05**k just below 0.6 × 250 = 150, i.e. 145.0
requests/s; a pass there sends it to 167.8, a fail back to 152.2, a pass, then 159.8: four
trials of 220 requests, about 6 s of load at those rates.

Everything here is pure: no clock, no I/O. The shells are `session.py` (drives a probe
through an instance interface) with `runner.py` (the live stack) and
`services.simulator.serving.profiled` (the simulator's single-instance model in virtual
time) behind that interface.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_PROTOCOL",
    "Protocol",
    "RateSearch",
    "TrialOutcome",
    "allowed_misses",
    "below_floor_rates",
    "floor_rung",
    "percentile_s",
    "rung",
    "rung_rate",
    "unit_arrivals",
]


@dataclass(frozen=True, slots=True)
class Protocol:
    """The protocol's parameters (see the module docstring)."""

    requests: int = 200
    warmup_requests: int = 20
    rate_step: float = 1.05
    start_fraction: float = 0.6
    gallop_rungs: int = 3
    floor_fraction: float = 0.01
    max_trial_s: float = 20.0
    below_floor_rungs: int = 14
    slow_trial_s: float = 120.0
    lone_repeats: int = 3
    idle_gap_s: float = 0.25
    seed: int = 20261206
    # Training: a share's throughput is measured over at least this many steps and seconds,
    # after `training_warmup_steps` steps at that share.
    training_steps: int = 8
    training_min_s: float = 1.5
    training_warmup_steps: int = 1

    def __post_init__(self) -> None:
        if self.requests < 1 or self.warmup_requests < 0:
            raise ValueError("a trial needs at least one counted request")
        if not self.rate_step > 1.0:
            raise ValueError(f"rate_step must exceed 1, got {self.rate_step}")
        if not 0.0 < self.start_fraction <= 1.0 or not 0.0 < self.floor_fraction < self.start_fraction:
            raise ValueError("need 0 < floor_fraction < start_fraction <= 1")
        if self.gallop_rungs < 1 or self.lone_repeats < 1 or self.below_floor_rungs < 1:
            raise ValueError("gallop_rungs, lone_repeats and below_floor_rungs must be at least 1")
        if not self.slow_trial_s >= self.max_trial_s:
            raise ValueError("slow_trial_s must be at least max_trial_s")


DEFAULT_PROTOCOL = Protocol()


def allowed_misses(requests: int, target: float) -> int:
    """How many counted requests a passing trial may lose: floor((1 - target) × requests),
    with a little slack for float rounding (0.99 × 200 is 198.00000000000003)."""
    return math.floor((1.0 - target) * requests + 1e-9)


@functools.lru_cache(maxsize=8)
def _unit(seed: int, count: int) -> tuple[float, ...]:
    gaps = np.random.default_rng(seed).exponential(1.0, count)
    return tuple(float(t) for t in np.cumsum(gaps))


def unit_arrivals(protocol: Protocol) -> tuple[float, ...]:
    """Arrival times (seconds from the trial's start) of a rate-1 Poisson stream, warm-up
    and counted requests together; divide by the rate for a trial at that rate."""
    return _unit(protocol.seed, protocol.warmup_requests + protocol.requests)


def rung(rate_rps: float, step: float) -> int:
    """The highest ladder rung at or below `rate_rps`."""
    return math.floor(math.log(rate_rps) / math.log(step) + 1e-9)


def rung_rate(k: int, step: float) -> float:
    return float(step**k)


def floor_rung(bound_rps: float, protocol: Protocol) -> int:
    """The lowest rung a rate search tries at a point of upper bound `bound_rps`: the larger
    of `floor_fraction` of the bound and the rate at which a trial lasts `max_trial_s`."""
    slowest = (protocol.warmup_requests + protocol.requests) / protocol.max_trial_s
    return rung(max(bound_rps * protocol.floor_fraction, slowest), protocol.rate_step)


def below_floor_rates(bound_rps: float, protocol: Protocol, *,
                      floor_failed: bool = False) -> tuple[float, ...]:
    """The coarse ladder below the floor (module docstring, step 3), highest first: the
    floor itself (left out when `floor_failed`: a trial there already failed), then every
    `below_floor_rungs` rungs down while a trial lasts at most `slow_trial_s`."""
    top = floor_rung(bound_rps, protocol)
    slowest = (protocol.warmup_requests + protocol.requests) / protocol.slow_trial_s
    ks = itertools.takewhile(lambda k: rung_rate(k, protocol.rate_step) >= slowest * (1 - 1e-9),
                             itertools.count(top, -protocol.below_floor_rungs))
    rates = tuple(rung_rate(k, protocol.rate_step) for k in ks)
    return rates[1:] if floor_failed else rates


def percentile_s(latencies_s: list[float], percentile: float) -> float:
    """The nearest-rank `percentile` (0-100] of some latencies (0.0 for none)."""
    if not latencies_s:
        return 0.0
    ordered = sorted(latencies_s)
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    """What one trial at `rate_rps` found: counted requests, those within the SLO, the
    target percentile of their latencies, whether it stopped early, and how long it took."""

    rate_rps: float
    counted: int
    within: int
    latency_s: float
    duration_s: float
    stopped_early: bool = False

    def passed(self, requests: int, target: float) -> bool:
        return (not self.stopped_early and self.counted >= requests
                and self.counted - self.within <= allowed_misses(requests, target))


class RateSearch:
    """The search on rate for one point, as a state machine: `next_rate()` (None when
    done), `record(outcome, passed)`, then `capacity_rps` and `latency_s`."""

    def __init__(self, bound_rps: float, protocol: Protocol, at_least_rps: float | None = None) -> None:
        if not (math.isfinite(bound_rps) and bound_rps > 0):
            raise ValueError(f"bound_rps must be finite and positive, got {bound_rps}")
        self._step = protocol.rate_step
        self._gallop = protocol.gallop_rungs
        # The bound itself is never sustained (full batches back to back, no slack).
        self._fail = rung(bound_rps, self._step) + 1
        # Below the floor a trial would take longer than `max_trial_s`, or the rate is a
        # sliver of the bound: such a capacity is reported as none.
        self._floor = floor_rung(bound_rps, protocol)
        if at_least_rps is not None:
            # Only a capacity of at least this much is of interest: a failure there ends the
            # search (capacity 0).
            self._floor = max(self._floor, rung(at_least_rps, self._step))
        start = rung(protocol.start_fraction * bound_rps, self._step)
        self._next: int | None = min(max(start, self._floor), self._fail - 1)
        self._pass: int | None = None
        self._down = self._gallop
        self._passed_latency_s = 0.0
        self.trials: list[TrialOutcome] = []
        self._verdicts: list[bool] = []

    def next_rate(self) -> float | None:
        return None if self._next is None else rung_rate(self._next, self._step)

    def record(self, outcome: TrialOutcome, passed: bool) -> None:
        if self._next is None:
            raise RuntimeError("the rate search is finished")
        k = self._next
        self.trials.append(outcome)
        self._verdicts.append(passed)
        if passed:
            self._pass, self._passed_latency_s = k, outcome.latency_s
        else:
            self._fail = k
        self._next = self._choose()

    def _choose(self) -> int | None:
        if self._pass is None and self.trials and rung(self.trials[-1].rate_rps, self._step) <= self._floor:
            return None  # failed at the floor: nothing of interest
        if self._pass is None:
            # Only failures so far: further down, each step twice the last, the floor last.
            k = max(self._fail - self._down, self._floor)
            self._down *= 2
            return k
        if self._fail - self._pass <= 1:
            return None
        if not any(not passed for passed in self._verdicts):
            return min(self._pass + self._gallop, self._fail - 1)  # no failure yet: gallop up
        return (self._pass + self._fail) // 2

    @property
    def done(self) -> bool:
        return self._next is None

    @property
    def capacity_rps(self) -> float:
        """The highest rung that passed; 0.0 when none did."""
        return 0.0 if self._pass is None else rung_rate(self._pass, self._step)

    @property
    def latency_s(self) -> float:
        """The target-percentile latency of the trial at the capacity."""
        return self._passed_latency_s
