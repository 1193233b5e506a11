"""The exhaustive sweep: every point of the grid measured, the tie rule applied to all of
them. The reference every search is judged against, and `dilu profile`'s "optimum"."""

from __future__ import annotations

from services.profiler.search.inference import best_with_ties
from services.profiler.search.types import (
    DEFAULT_GRID,
    Choice,
    Grid,
    InfeasibleSlo,
    Measurer,
    Probe,
    check_slo,
)

__all__ = ["sweep_inference"]


def sweep_inference(measurer: Measurer, slo_s: float, grid: Grid = DEFAULT_GRID) -> Choice:
    """Measure all of `grid` and choose as the search does; `InfeasibleSlo` when no point
    meets `slo_s`."""
    check_slo(slo_s)
    probes = [Probe(share, batch, measurer.measure(batch, share))
              for share in grid.shares for batch in grid.batches]
    feasible = [p for p in probes if p.meets(slo_s)]
    if not feasible:
        raise InfeasibleSlo(slo_s, min(probes, key=lambda p: p.measurement.latency_s))
    chosen = best_with_ties(feasible)
    return Choice(share=chosen.share, batch=chosen.batch, measurement=chosen.measurement,
                  probes=tuple(probes))
