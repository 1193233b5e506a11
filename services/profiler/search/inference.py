"""The inference profiling search: the (share, batch) of highest efficiency that meets a
latency SLO, found with few probes.

Efficiency is TE = throughput / share (requests/s per whole GPU). The answer is the point
of highest TE among those that meet the SLO; points within `TIE` (2 %) of the best TE
count as equal, and among them the smaller share wins, then the smaller batch.

How it searches
---------------
Every probe bounds every other point (see `bounds`): a lower and an upper bound on its
latency and on its throughput. A point is **settled** when it was probed, when its
latency lower bound exceeds the SLO (it cannot meet it), or when its TE upper bound does
not exceed the best TE measured so far among points that meet the SLO (it cannot win).
The search probes until every point is settled, then answers from what it measured.

1. The first probe is the smallest share at the smallest batch: the highest TE its
   batch can have, and the paper's starting point. Under time slicing (live probes,
   `Tolerances(sharing=TEMPORAL)`, see `bounds`), where efficiency grows with share and
   batch, it is the largest share at the largest batch instead.
2. Every later probe is chosen by one step of look-ahead: for each unsettled point, take
   its predicted latency and throughput (between its bounds, in log scale: 0.45 of the way
   from the lower latency bound to the upper one, and the mirror image for throughput),
   and count the points that would stay unsettled had the probe returned exactly that.
   The probe that would leave the fewest is made; ties go to the higher predicted TE
   among points predicted to meet the SLO, then the smaller share, then the smaller batch.
3. If nothing measured meets the SLO when all is settled, the grid's largest share at
   its smallest batch (the fastest point) is measured if it was not yet; if it misses
   too, the search raises `InfeasibleSlo` naming the fastest latency measured.

Worked numbers (roberta-large at 60 ms on the raw A100 table; shares as fractions; TE in
requests/s per whole GPU). (0.1, 1) measures 31.1 ms, TE 321: it meets the SLO, and 51
of the other 59 points stay unsettled. (0.4, 16) misses at 103.6 ms: nothing with share
<= 0.4 at batch >= 16 can meet the SLO (L1, L2), nor (0.5, 16) (L3 over one step:
>= 103.6 × 0.4 / 0.5 / 1.13 = 73 ms) nor (0.6, 16) (>= 69 ms); (0.7, 16) could (59 ms),
so it stays open — 39 left. (0.1, 4) misses (103.2 ms): 37 left. (0.4, 8) meets at 56.4 ms,
TE 355, the best so far; every point it bounds below that is settled, e.g. (0.6, 4), whose
TE is at most 355 × (0.6 / 0.4) × 0.4 / 0.6 = 355 by T4 and T1 — 19 left. Then (0.2, 4)
meets, TE 346; (1.0, 16) meets, TE 279; (0.7, 32) misses; (0.1, 2) meets, TE 350; (0.3, 8)
misses at 64.8 ms, which rules out (0.2, 8) (>= 64.8 / 1.05 = 61.7 ms by L1); (0.5, 8)
meets, TE 355; and (0.3, 4) — open only because one share step may be 13 % faster than
proportional — measures 34.2 ms, TE 390. Nothing is left: 11 probes of 60, and the answer
(0.3, 4) is the exhaustive optimum. HGSS, walking up from (0.1, 1), stops after 6 probes
at (0.2, 4), TE 346 (11 % less).

What holds whatever the data
----------------------------
- The answer is always a point the search measured and saw meet the SLO: on the
  measured values, no choice ever violates the SLO, however noisy they are.
- No point is measured twice, so the search makes at most `grid.size` probes.
- When the figures obey the assumptions of `bounds` (within its tolerances), every
  settled point is truly infeasible or no better than the best measured, so the answer's
  TE is the highest TE of any feasible point of the grid (and the answer is within the
  tie rule of the exhaustive optimum).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from services.profiler.search.bounds import TEMPORAL, Tolerances, bound_factors
from services.profiler.search.types import (
    DEFAULT_GRID,
    Choice,
    Grid,
    InfeasibleSlo,
    Measurement,
    Measurer,
    Probe,
    check_slo,
)

__all__ = ["PREDICTION_WEIGHT", "TIE", "InferenceSearch", "best_with_ties", "search_inference"]

TIE = 0.02
"""Points whose TE is within this fraction of the best are equal: the smaller share wins,
then the smaller batch."""

PREDICTION_WEIGHT = 0.45
"""Where between its bounds a point's latency is predicted, in log scale: 0 is the lower
bound, 1 the upper. Leaning to the optimistic side makes the search try promising points
early; the look-ahead's counts then do the rest."""

Vector = npt.NDArray[np.float64]

# A bound equal to the best TE up to float rounding settles a point: the points a probe
# bounds by its own TE (less share, smaller batch) would otherwise stay open by one ulp.
_ROUNDING = 1.0 + 1e-9


def search_inference(measurer: Measurer, slo_s: float, grid: Grid = DEFAULT_GRID,
                     tolerances: Tolerances | None = None) -> Choice:
    """Search `grid` for the most efficient point that meets `slo_s` (seconds), asking
    `measurer` for each probe: the synchronous driver of `InferenceSearch`.

    Raises `InfeasibleSlo` when no point measured meets it, after measuring the fastest
    point of the grid. See the module docstring for the rules.
    """
    search = InferenceSearch(slo_s, grid, tolerances)
    while (point := search.next_probe()) is not None:
        share, batch = point
        search.record(share, batch, measurer.measure(batch, share))
    return search.result()


def best_with_ties(candidates: list[Probe]) -> Probe:
    """The tie rule: the highest TE, where TE within `TIE` of the best counts as equal
    and the smaller share, then the smaller batch, wins among equals."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    best = max(p.efficiency for p in candidates)
    return min((p for p in candidates if p.efficiency >= (1.0 - TIE) * best),
               key=lambda p: (p.share, p.batch))


class InferenceSearch:
    """The search as a pure state machine, for shells that measure asynchronously (a
    live profiler awaits each probe): ask `next_probe()` for the (share, batch) to measure,
    `record()` what was measured, repeat until `next_probe()` returns None, then take
    `result()`. It never asks for a point twice and asks at most `grid.size` times.

    `exact_ties`: keep measuring every point that could still *tie* with the best (TE
    within `TIE`) and would win the tie (smaller share, then batch) — not only those that
    could beat it — so that, on figures that obey the bounds, the answer is the very point
    the exhaustive sweep chooses rather than one within the tie rule of it. The live
    profiler asks for it (its bench compares choices); offline the rule of the paper's
    comparison, TE within 2 %, is the target and the search stops earlier.
    """

    def __init__(self, slo_s: float, grid: Grid = DEFAULT_GRID, tolerances: Tolerances | None = None,
                 *, exact_ties: bool = False) -> None:
        self.slo_s = check_slo(slo_s)
        self.exact_ties = exact_ties
        self.grid = grid
        self._tolerances = tolerances or Tolerances()
        self._factors = bound_factors(grid, self._tolerances)
        nb = len(grid.batches)
        count = grid.size
        self._shares = np.array([grid.shares[p // nb] for p in range(count)])
        self._probed = np.zeros(count, dtype=bool)
        self._latency_low: Vector = np.zeros(count)
        self._latency_high: Vector = np.full(count, np.inf)
        self._throughput_low: Vector = np.zeros(count)
        self._throughput_high: Vector = np.full(count, np.inf)
        self._best_efficiency = 0.0
        self._answer = count  # the point the tie rule chooses now (count: none yet)
        self._probes: list[Probe] = []
        self._index = np.arange(count)

    @property
    def probes(self) -> tuple[Probe, ...]:
        """Every measurement recorded, in order."""
        return tuple(self._probes)

    def next_probe(self) -> tuple[float, int] | None:
        """The (share, batch) to measure next, or None when the search is done."""
        point = self._next_point()
        if point is None:
            return None
        nb = len(self.grid.batches)
        return self.grid.shares[point // nb], self.grid.batches[point % nb]

    def record(self, share: float, batch: int, measurement: Measurement) -> None:
        """What measuring (share, batch) found. `ValueError` for a point off the grid or
        one already recorded."""
        point = self._point(share, batch)
        if self._probed[point]:
            raise ValueError(f"share {share:g}, batch {batch} was already measured")
        measured = Probe(self.grid.shares[point // len(self.grid.batches)], batch, measurement)
        self._probes.append(measured)
        self._probed[point] = True
        latency, throughput = measurement.latency_s, measurement.throughput_rps
        f = self._factors
        self._latency_low = np.maximum(self._latency_low, latency * f.latency_low[:, point])
        self._latency_high = np.minimum(self._latency_high, latency * f.latency_high[:, point])
        if throughput > 0:  # a zero says the point did not run, not how fast others run
            self._throughput_low = np.maximum(self._throughput_low, throughput * f.throughput_low[:, point])
            self._throughput_high = np.minimum(self._throughput_high,
                                               throughput * f.throughput_high[:, point])
        if measured.meets(self.slo_s):
            self._best_efficiency = max(self._best_efficiency, measured.efficiency)
            chosen = best_with_ties([p for p in self._probes if p.meets(self.slo_s)])
            self._answer = self._point(chosen.share, chosen.batch)

    def limit_throughput(self, share: float, batch: int, high: float) -> None:
        """A bound on one point's throughput learnt without probing it (a live probe's
        cheap first step: `batch` over a lone batch's latency bounds what back-to-back
        batches could sustain); it may settle the point, which is then never asked for."""
        point = self._point(share, batch)
        self._throughput_high[point] = min(self._throughput_high[point], high)

    def throughput_bounds(self, share: float, batch: int) -> tuple[float, float]:
        """What the probes so far say about a point's throughput: (low, high); high is
        inf where nothing bounds it. A live probe starts its rate search from them."""
        point = self._point(share, batch)
        return float(self._throughput_low[point]), float(self._throughput_high[point])

    def result(self) -> Choice:
        """The answer once `next_probe()` returned None; `InfeasibleSlo` when nothing
        measured met the SLO."""
        if self._next_point() is not None:
            raise RuntimeError("the search is not finished: call next_probe() and record() first")
        feasible = [p for p in self._probes if p.meets(self.slo_s)]
        if not feasible:
            raise InfeasibleSlo(self.slo_s, min(self._probes, key=lambda p: p.measurement.latency_s))
        chosen = best_with_ties(feasible)
        return Choice(share=chosen.share, batch=chosen.batch, measurement=chosen.measurement,
                      probes=tuple(self._probes))

    def _point(self, share: float, batch: int) -> int:
        for i, grid_share in enumerate(self.grid.shares):
            if math.isclose(grid_share, share, rel_tol=1e-9) and batch in self.grid.batches:
                return i * len(self.grid.batches) + self.grid.batches.index(batch)
        raise ValueError(f"share {share:g}, batch {batch} is not a point of the grid")

    def _next_point(self) -> int | None:
        if not self._probes:
            if self._tolerances.sharing == TEMPORAL:
                # Efficiency grows with share and batch: the top share at the largest batch
                # bounds every other point from above.
                return len(self._probed) - 1
            return 0
        candidates = np.flatnonzero(self._unsettled())
        if candidates.size:
            return self._look_ahead(candidates)
        fastest = (len(self.grid.shares) - 1) * len(self.grid.batches)
        if self._best_efficiency == 0 and not self._probed[fastest]:
            # Nothing met the SLO on inference alone; measure the fastest point before
            # declaring the SLO infeasible, so the error names a measured figure.
            return fastest
        return None

    def _unsettled(self) -> npt.NDArray[np.bool_]:
        efficiency_high = self._throughput_high / self._shares
        could_win = efficiency_high > self._best_efficiency * _ROUNDING
        if self.exact_ties:
            could_win |= ((efficiency_high * _ROUNDING >= (1.0 - TIE) * self._best_efficiency)
                          & (self._index < self._answer))
        return ~self._probed & (self._latency_low <= self.slo_s) & could_win

    def _look_ahead(self, candidates: npt.NDArray[np.intp]) -> int:
        """The candidate whose predicted outcome leaves the fewest points unsettled."""
        f = self._factors
        w = PREDICTION_WEIGHT
        latency = self._latency_low[candidates] ** (1 - w) * self._latency_high[candidates] ** w
        # No upper bound yet (only zero throughputs measured): predict none, not inf × 0.
        high = self._throughput_high[candidates]
        throughput = np.where(np.isfinite(high), high, 0.0) ** (1 - w) * self._throughput_low[candidates] ** w
        efficiency = throughput / self._shares[candidates]
        meets = (latency <= self.slo_s) & (throughput > 0)
        best = np.maximum(self._best_efficiency, np.where(meets, efficiency, 0.0))
        # Row c: the bounds on every point had candidate c measured its prediction.
        latency_low = np.maximum(self._latency_low[None, :],
                                 latency[:, None] * f.latency_low[:, candidates].T)
        # fmin: a zero prediction times an unbounded factor (nan) bounds nothing.
        with np.errstate(invalid="ignore"):
            throughput_high = np.fmin(self._throughput_high[None, :],
                                      throughput[:, None] * f.throughput_high[:, candidates].T)
        efficiency_high = throughput_high / self._shares[None, :]
        could_win = efficiency_high > best[:, None] * _ROUNDING
        if self.exact_ties:
            # The answer each row would lead to: the candidate, when it would be at least
            # tied with the best and come first in the tie order; else today's.
            answer = np.where(meets & (efficiency >= (1.0 - TIE) * best) & (candidates < self._answer),
                              candidates, self._answer)
            could_win |= ((efficiency_high * _ROUNDING >= (1.0 - TIE) * best[:, None])
                          & (self._index[None, :] < answer[:, None]))
        still_open = (latency_low <= self.slo_s) & could_win & ~self._probed[None, :]
        still_open[np.arange(candidates.size), candidates] = False
        remaining = still_open.sum(axis=1)
        # np.lexsort sorts by its last key first: fewest remaining, then highest predicted
        # TE among predicted feasible points, then the lowest point number (smaller share,
        # then smaller batch).
        order = np.lexsort((candidates, -np.where(meets, efficiency, 0.0), remaining))
        return int(candidates[order[0]])
