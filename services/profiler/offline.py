"""`dilu profile --offline`: the inference search on a bundled A100 table, beside the
exhaustive sweep of the same table. Pure: no I/O beyond reading the bundled tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.perf import SIM_MODELS
from services.profiler.search import Choice, TableMeasurer, search_inference, sweep_inference
from services.profiler.search.types import check_slo

__all__ = ["OfflineProfile", "profile_offline"]


@dataclass(frozen=True, slots=True)
class OfflineProfile:
    """The search's choice and the exhaustive optimum for one model and SLO."""

    model: str
    slo_s: float
    choice: Choice
    exhaustive: Choice
    grid_points: int

    @property
    def probes(self) -> int:
        return len(self.choice.probes)

    def to_json(self) -> dict[str, Any]:
        """`{"choice": {"share", "batch"}, "exhaustive": {"share", "batch"}, "probes"}`;
        shares are fractions of one GPU."""
        return {"choice": {"share": self.choice.share, "batch": self.choice.batch},
                "exhaustive": {"share": self.exhaustive.share, "batch": self.exhaustive.batch},
                "probes": self.probes}


def profile_offline(model: str, slo_ms: float) -> OfflineProfile:
    """Search the raw A100 table of `model` for an SLO of `slo_ms` milliseconds and sweep
    it exhaustively.

    `InvalidArgument` for an unknown model or a bad SLO; `InfeasibleSlo` (a
    `FAILED_PRECONDITION`) when no point of the table meets the SLO.
    """
    if model not in SIM_MODELS:
        raise InvalidArgument("model", f"unknown model {model!r}; known models: {', '.join(SIM_MODELS)}")
    slo_s = check_slo(slo_ms, "slo_ms") / 1e3
    table = TableMeasurer.a100(model)
    grid = table.grid
    return OfflineProfile(model=model, slo_s=slo_s, choice=search_inference(table, slo_s, grid),
                          exhaustive=sweep_inference(table, slo_s, grid), grid_points=grid.size)
