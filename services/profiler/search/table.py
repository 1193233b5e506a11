"""A `Measurer` that reads a latency table instead of running anything.

`TableMeasurer.a100(model)` serves the bundled A100-40GB profiles of `services.perf` **as
measured** (`PerfModel.raw_latency`, not the cleaned monotone table the sim runtime
interpolates), so a search is judged on the same noisy, slightly non-monotone data the
paper's search was. Throughput is `batch / latency`, as the CSVs' throughput column has
it for resnet152, bert-base, roberta-large and gpt2-large; for llama2-7b that column is
`batch / (32 × latency)` (apparently per generated token, see `services/perf/data/ORIGIN.md`).
The factor is the same at every point, so it changes no TE ranking and no choice of the
search here; HGSS's absolute TE threshold is the one place it could matter (see `hgss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.perf import BATCHES, SIM_MODELS, SM_PERCENTS, load_model
from services.profiler.search.types import Grid, Measurement

__all__ = ["TableMeasurer"]


@dataclass(frozen=True)
class TableMeasurer:
    """Measures a point by looking its latency up in `latency_s[(share_percent, batch)]`.

    Shares are fractions of a GPU; a share is looked up at the nearest whole per cent and
    must be in the table (`ValueError` otherwise: a table cannot be interpolated without
    an assumption, and a search on it must only ask for its points).
    """

    latency_s: Mapping[tuple[int, int], float]
    memory_mib: Callable[[int], int] = field(default=lambda batch: 0)
    name: str = "table"

    @classmethod
    def a100(cls, model: str) -> TableMeasurer:
        """The raw A100 profile of `model`, one of `services.perf.SIM_MODELS`."""
        if model not in SIM_MODELS:
            raise ValueError(f"unknown model {model!r}; known models: {', '.join(SIM_MODELS)}")
        perf = load_model(model)
        table = {(percent, batch): perf.raw_latency[i][j]
                 for i, batch in enumerate(BATCHES) for j, percent in enumerate(SM_PERCENTS)}
        return cls(latency_s=table, memory_mib=perf.memory_mib, name=model)

    @property
    def grid(self) -> Grid:
        """Every point of the table (it must be a full grid)."""
        percents = sorted({p for p, _ in self.latency_s})
        batches = sorted({b for _, b in self.latency_s})
        if len(self.latency_s) != len(percents) * len(batches):
            raise ValueError(f"{self.name}: the table is not a full share x batch grid")
        return Grid(shares=tuple(p / 100 for p in percents), batches=tuple(batches))

    def measure(self, batch: int, share: float) -> Measurement:
        percent = round(share * 100)
        if not math.isclose(percent, share * 100, abs_tol=1e-6):
            raise ValueError(f"{self.name}: share {share} is not a whole per cent")
        try:
            latency = self.latency_s[percent, batch]
        except KeyError:
            raise ValueError(f"{self.name}: no measurement at share {share:g}, batch {batch}") from None
        return Measurement(latency_s=latency, throughput_rps=batch / latency,
                           memory_mib=self.memory_mib(batch))

    def fastest_latency_s(self) -> float:
        """The fastest latency anywhere in the table."""
        return min(self.latency_s.values())
