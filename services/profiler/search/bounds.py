"""What one probe says about the points it did not measure.

The inference search prunes with bounds that follow from how latency and throughput move
across the grid. Each probe q, measured at share s_q and batch b_q, bounds every other
point p = (s_p, b_p) through these assumptions (the tolerances are `Tolerances`):

=====  ===================================================  ==========================
name   assumption                                           tolerance
=====  ===================================================  ==========================
L1     more share is never slower: L(s', b) <= L(s, b) for  measurement noise `noise`
       s' > s
L2     a bigger batch is never faster: L(s, b') >= L(s, b)  none
       for b' > b
L3     more share speeds a batch up at most in proportion:  `superlinear` for one grid
       L(s', b) * s' >= L(s, b) * s for s' > s              step, none beyond
L4     a bigger batch takes at most proportionally longer:  none
       L(s, b') / b' <= L(s, b) / b for b' > b
=====  ===================================================  ==========================

and the same four for throughput T: T1 throughput does not fall with batch, T2 grows at
most in proportion to batch, T3 does not fall with share (within `noise`), T4 grows at
most in proportion to share (within `superlinear` for one step) — efficiency
TE = T / s does not grow with share. For a table, T = b / L and T1–T4 are L4, L2, L1,
L3 restated; for a live capacity probe they are assumptions about capacity in their own
right, and the latency bounds matter only from probes that miss the SLO, whose latency
is that of a lone batch (a feasible probe's bounds never exceed its own latency, so they
never rule a point out).

**Time slicing** (`Tolerances.sharing == TEMPORAL`, what live probes measure on the gate
today) breaks T4: a share of a GPU's *time* makes every batch faster, so a higher share
can form bigger batches within the SLO and queues less per unit of share — capacity per
share grows with share (measured on the simulator's single-instance model, bert-base at a
60 ms SLO and batch 1: 9.6, 10.2, 11.0, 12.6 requests/s per whole GPU at 0.7, 0.8, 0.9,
1.0). For live capacity probes the throughput rules are then

=====  ===================================================  ==========================
T1     capacity does not fall with the maximum batch         `noise` (the rate ladder's
                                                             step, measurement noise)
T3'    capacity per share does not fall with share: C(s') / `noise`
       s' >= C(s) / s for s' > s
=====  ===================================================  ==========================

T2 does not hold for capacity: a bigger maximum batch also lets the batcher clear a
Poisson backlog in one batch, and can more than double what a point sustains (llama2-7b
at a 200 ms SLO, share 0.9, 1.3 times slower than the tables: 225 requests/s with batches
of at most 16, 491 with 32).

so a probe bounds the throughput of points with *less* share or a smaller batch from
above and of points with *more* share or a bigger batch from below, never the other way
round: the search settles high shares and big batches only by measuring them. The
latency rules stay, for the lone batches that infeasible probes report, with L3's
`superlinear` tolerance across any number of share steps (the gate's burst lets the first
period after an idle gap run at full speed, which helps small shares less).

Chaining a share step and a batch step gives, for every pair (p, q), a factor f with
L(p) >= f * L(q), and likewise an upper factor, and the two factors for T. The factors
depend only on the grid and the tolerances, so they are computed once per grid.

Worked numbers (roberta-large, raw A100 table): the probe q = (0.2, 4) measured 57.7 ms.
For p = (0.1, 8): L1 and L2 give L(p) >= 57.7 / 1.05 = 55.0 ms. For p = (0.4, 2): L3
across two steps gives 57.7 * 0.2 / 0.4 = 28.9 ms, then L4 halves it for half the batch:
L(p) >= 14.4 ms. For p = (0.3, 4), one step up: 57.7 * (0.2 / 0.3) / 1.13 = 34.0 ms —
and the table says 34.2 ms: that step was 12.5 % faster than proportional, which is why
`superlinear` is 0.13 and not 0.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.profiler.search.types import Grid

__all__ = ["SPATIAL", "TEMPORAL", "BoundFactors", "Tolerances", "bound_factors"]

SPATIAL = "spatial"
"""Shares as MPS partitions (the bundled tables): efficiency does not grow with share."""
TEMPORAL = "temporal"
"""Shares as slices of time (the gate, live probes): efficiency does not fall with share."""

Matrix = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Tolerances:
    """How far the search trusts the assumptions above.

    `noise`: a relative measurement error tolerated on "more share is never slower"
    (the raw A100 tables break it by a few per cent in flat regions, e.g. resnet152 at
    batch 16: 27.1 ms at 50 % and 28.4 ms at 60 %). `superlinear`: how much faster than
    proportional one step up the share grid may make a point (MPS partitions come in
    whole TPCs; the largest such step in the tables, roberta-large 20 → 30 % at batch 4,
    is 12.5 %). Over two steps or more the search assumes at most proportional speed-up.
    """

    noise: float = 0.05
    superlinear: float = 0.13
    sharing: str = SPATIAL

    def __post_init__(self) -> None:
        for name in ("noise", "superlinear"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise ValueError(f"{name} must lie in [0, 1), got {value}")
        if self.sharing not in (SPATIAL, TEMPORAL):
            raise ValueError(f"sharing must be {SPATIAL!r} or {TEMPORAL!r}, got {self.sharing!r}")


@dataclass(frozen=True, slots=True)
class BoundFactors:
    """`[p, q]` is the factor probe q's figure is multiplied by to bound point p.

    Points are numbered `share_index * len(batches) + batch_index`.
    """

    latency_low: Matrix
    latency_high: Matrix
    throughput_low: Matrix
    throughput_high: Matrix


@functools.lru_cache(maxsize=32)
def bound_factors(grid: Grid, tolerances: Tolerances) -> BoundFactors:
    """The bound factors of every pair of points of `grid` (cached: grids are few)."""
    nb = len(grid.batches)
    count = grid.size
    shares = np.array([grid.shares[p // nb] for p in range(count)])
    batches = np.array([float(grid.batches[p % nb]) for p in range(count)])
    steps = np.array([p // nb for p in range(count)])

    s_p, s_q = shares[:, None], shares[None, :]
    b_p, b_q = batches[:, None], batches[None, :]
    noise = 1.0 + tolerances.noise
    up, down = s_p > s_q, s_p < s_q  # p has more / less share than q
    bigger, smaller = b_p > b_q, b_p < b_q
    if tolerances.sharing == TEMPORAL:
        return _temporal(s_p, s_q, b_p, b_q, up, down, bigger, smaller, noise,
                         1.0 + tolerances.superlinear)
    # Superlinear slack applies to a single step up the share grid only.
    slack = 1.0 + np.where(np.abs(steps[:, None] - steps[None, :]) == 1, tolerances.superlinear, 0.0)

    # Latency at p from below: L1 (less share: no faster, within noise) and L3 (more
    # share: at most proportionally faster); L2 (bigger batch: no faster) and L4 (smaller
    # batch: at most proportionally faster).
    latency_low = (np.where(down, 1.0 / noise, np.where(up, (s_q / s_p) / slack, 1.0))
                   * np.where(smaller, b_p / b_q, 1.0))
    # From above: L1 with more share, L3 with less; L2 with a smaller batch, L4 bigger.
    latency_high = (np.where(up, noise, np.where(down, (s_q / s_p) * slack, 1.0))
                    * np.where(bigger, b_p / b_q, 1.0))
    # Throughput at p from above: T4 (more share: at most proportionally more) and T3
    # (less share: no more, within noise); T2 (bigger batch: at most proportionally
    # more) and T1 (smaller batch: no more).
    throughput_high = (np.where(up, (s_p / s_q) * slack, np.where(down, noise, 1.0))
                       * np.where(bigger, b_p / b_q, 1.0))
    # From below: T3 with more share, T4 with less; T1 with a bigger batch, T2 smaller.
    throughput_low = (np.where(up, 1.0 / noise, np.where(down, (s_p / s_q) / slack, 1.0))
                      * np.where(smaller, b_p / b_q, 1.0))
    return BoundFactors(latency_low=latency_low, latency_high=latency_high,
                        throughput_low=throughput_low, throughput_high=throughput_high)


def _temporal(s_p: Matrix, s_q: Matrix, b_p: Matrix, b_q: Matrix, up: Mask, down: Mask,
              bigger: Mask, smaller: Mask, noise: float, slack: float) -> BoundFactors:
    """The factors under time slicing (T1, T3' and L1-L4; see the module docstring)."""
    latency_low = (np.where(down, 1.0 / noise, np.where(up, (s_q / s_p) / slack, 1.0))
                   * np.where(smaller, b_p / b_q, 1.0))
    latency_high = (np.where(up, noise, np.where(down, (s_q / s_p) * slack, 1.0))
                    * np.where(bigger, b_p / b_q, 1.0))
    # T3': less share is bounded from above (efficiency no higher), more share from below;
    # T1: a smaller batch from above, a bigger one from below (both within noise).
    throughput_high = (np.where(down, (s_p / s_q) * noise, np.where(up, np.inf, 1.0))
                       * np.where(smaller, noise, np.where(bigger, np.inf, 1.0)))
    throughput_low = (np.where(up, (s_p / s_q) / noise, np.where(down, 0.0, 1.0))
                      * np.where(bigger, 1.0 / noise, np.where(smaller, 0.0, 1.0)))
    return BoundFactors(latency_low=latency_low, latency_high=latency_high,
                        throughput_low=throughput_low, throughput_high=throughput_high)
