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
    Measurer,
    Probe,
    TrainingChoice,
)

__all__ = ["KEEP", "search_training"]

KEEP = 0.98
"""The fraction of the full GPU's throughput a training share must keep."""


def search_training(measurer: Measurer, batch: int,
                    shares: tuple[float, ...] = DEFAULT_TRAINING_SHARES,
                    keep: float = KEEP) -> TrainingChoice:
    """The smallest of `shares` (increasing, ending at 1.0) whose throughput at `batch` is
    at least `keep` × the throughput at 1.0."""
    _check_shares(shares)
    probes: list[Probe] = []

    def measure(index: int) -> Probe:
        probe = Probe(shares[index], batch, measurer.measure(batch, shares[index]))
        probes.append(probe)
        return probe

    full = measure(len(shares) - 1)
    target = keep * full.measurement.throughput_rps
    short, enough = -1, len(shares) - 1  # shares[short] falls short (-1: none known yet)
    chosen = full
    while enough - short > 1:
        middle = (short + enough) // 2
        probe = measure(middle)
        if probe.measurement.throughput_rps >= target:
            enough, chosen = middle, probe
        else:
            short = middle
    return TrainingChoice(share=chosen.share, batch=batch, measurement=chosen.measurement,
                          full_gpu=full.measurement, probes=tuple(probes))


def _check_shares(shares: tuple[float, ...]) -> None:
    if not shares or not math.isclose(shares[-1], 1.0):
        raise ValueError("training shares must end at the full GPU (1.0)")
    if shares[0] <= 0 or any(not a < b for a, b in itertools.pairwise(shares)):
        raise ValueError(f"training shares must be positive and increasing, got {shares}")
