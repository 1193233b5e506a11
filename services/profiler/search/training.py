"""The training profiling search: the smallest share that keeps at least 98 % of the
throughput a whole GPU gives.

Training has no SLO; past some share its step is bound by its host part (data loading,
all-reduce: step time = max(GPU part / share, host part)) and more share buys nothing.
The search measures the full GPU, then bisects the share grid keeping a bracket closed
from both sides — the largest share known to fall short below, the smallest share known
to qualify above — until the two are neighbours, and answers the one above. It assumes
throughput does not fall with share; the answer is always a measured share that
qualified (or the full GPU).

Worked numbers, on the 5 % grid (20 shares): a job whose throughput is 100 steps/s on a
whole GPU and flat from 30 % up (98 steps/s needed) is measured at 100 %, then 50 %
(qualifies), 25 % (falls short), 35 % (qualifies), 30 % (qualifies), 25 % is known, so
the bracket is (25 %, 30 %]: the answer is 30 % after 5 probes. The reference bisection
(`hgss.hgss_training`) returns its first qualifying midpoint, 50 %.
"""

from __future__ import annotations

import itertools
import math

from services.profiler.search.types import (
    DEFAULT_TRAINING_SHARES,
    Measurement,
    Measurer,
    Probe,
    TrainingChoice,
)

__all__ = ["KEEP", "TrainingSearch", "search_training"]

KEEP = 0.98
"""The fraction of the full GPU's throughput a training share must keep."""


def search_training(measurer: Measurer, batch: int,
                    shares: tuple[float, ...] = DEFAULT_TRAINING_SHARES,
                    keep: float = KEEP) -> TrainingChoice:
    """The smallest of `shares` (increasing, ending at 1.0) whose throughput at `batch` is
    at least `keep` × the throughput at 1.0: the synchronous driver of `TrainingSearch`."""
    search = TrainingSearch(batch, shares, keep)
    while (share := search.next_probe()) is not None:
        search.record(share, measurer.measure(batch, share))
    return search.result()


class TrainingSearch:
    """The bisection as a pure state machine: `next_probe()` gives the share to measure
    (None when done), `record()` takes what was measured, `result()` the answer."""

    def __init__(self, batch: int, shares: tuple[float, ...] = DEFAULT_TRAINING_SHARES,
                 keep: float = KEEP) -> None:
        _check_shares(shares)
        if not 0 < keep <= 1:
            raise ValueError(f"keep must lie in (0, 1], got {keep}")
        self.batch, self.shares, self.keep = batch, shares, keep
        self._probes: list[Probe] = []
        self._full: Probe | None = None
        self._chosen: Probe | None = None
        # shares[short] falls short (-1: none known yet); shares[enough] qualifies.
        self._short, self._enough = -1, len(shares) - 1

    @property
    def probes(self) -> tuple[Probe, ...]:
        return tuple(self._probes)

    def next_probe(self) -> float | None:
        if self._full is None:
            return self.shares[-1]
        if self._enough - self._short > 1:
            return self.shares[(self._short + self._enough) // 2]
        return None

    def record(self, share: float, measurement: Measurement) -> None:
        """What measuring the share `next_probe()` gave found (`ValueError` for another)."""
        expected = self.next_probe()
        if expected is None or not math.isclose(share, expected):
            raise ValueError(f"share {share:g} was not asked for (next: {expected})")
        probe = Probe(expected, self.batch, measurement)
        self._probes.append(probe)
        if self._full is None:
            self._full = self._chosen = probe
            return
        middle = (self._short + self._enough) // 2
        if measurement.throughput_rps >= self.keep * self._full.measurement.throughput_rps:
            self._enough, self._chosen = middle, probe
        else:
            self._short = middle

    def result(self) -> TrainingChoice:
        if self.next_probe() is not None or self._full is None or self._chosen is None:
            raise RuntimeError("the search is not finished: call next_probe() and record() first")
        return TrainingChoice(share=self._chosen.share, batch=self.batch,
                              measurement=self._chosen.measurement, full_gpu=self._full.measurement,
                              probes=tuple(self._probes))


def _check_shares(shares: tuple[float, ...]) -> None:
    if not shares or not math.isclose(shares[-1], 1.0):
        raise ValueError("training shares must end at the full GPU (1.0)")
    if shares[0] <= 0 or any(not a < b for a, b in itertools.pairwise(shares)):
        raise ValueError(f"training shares must be positive and increasing, got {shares}")
