"""Values the profiling searches work on, the `Measurer` they ask, and their errors.

Pure data: no I/O, no clocks. A share is a fraction of one GPU (0.1 is a tenth), as
everywhere in the API; batch sizes are request counts.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_TRAINING_SHARES",
    "CapacityBelowFloor",
    "Choice",
    "Grid",
    "InfeasibleSlo",
    "Measurement",
    "Measurer",
    "Probe",
    "TrainingChoice",
    "check_slo",
]


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one probe of one (share, batch) point found.

    `latency_s` is the latency the point was verified at, the figure compared with the
    SLO; `throughput_rps` the request rate the point sustains; `memory_mib` its GPU
    memory footprint.
    """

    latency_s: float
    throughput_rps: float
    memory_mib: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency_s) and self.latency_s > 0):
            raise ValueError(f"latency_s must be finite and positive, got {self.latency_s}")
        if not (math.isfinite(self.throughput_rps) and self.throughput_rps >= 0):
            raise ValueError(f"throughput_rps must be finite and >= 0, got {self.throughput_rps}")
        if self.memory_mib < 0:
            raise ValueError(f"memory_mib must be >= 0, got {self.memory_mib}")


class Measurer(Protocol):
    """Measures one point of the grid; the only way a search learns anything.

    Contract, the same for every implementation (a table, a simulated worker, a real one):

    - `measure(batch, share)` runs the function with `share` of one GPU and `batch` as its
      batch size (for inference: the largest batch the worker may form) and returns a
      `Measurement`. It is called at most once per point by the searches here, so a probe
      may be expensive (seconds of load on a live instance).
    - `latency_s` is the latency the point was verified at and is compared with the SLO:
      the point *meets the SLO* when `latency_s <= slo_s` and `throughput_rps > 0`.
      A table or a closed-loop run reports the time one batch takes. A live capacity
      probe reports the p99 latency at its capacity rate, or, when no rate meets the
      SLO, the latency of a lone batch (which exceeds the SLO).
    - `throughput_rps` is the rate the point sustains: `batch / latency_s` for a table,
      the capacity (the highest rate served within the SLO) for a live probe — and, where
      no rate meets the SLO, what it sustains regardless of the SLO (`batch` over the
      lone batch's latency), not 0: the search bounds other points' throughput from it.
      Efficiency is `throughput_rps / share`. A probe that reports 0 bounds nothing.
    - `memory_mib` is the footprint at that batch size.

    What the inference search assumes of the figures, and how far it tolerates them
    being off, is stated in `services.profiler.search.bounds`.
    """

    def measure(self, batch: int, share: float) -> Measurement: ...


@dataclass(frozen=True, slots=True)
class Grid:
    """The points a search may probe: every share (fractions of a GPU) × every batch size,
    both strictly increasing."""

    shares: tuple[float, ...]
    batches: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.shares or not self.batches:
            raise ValueError("a grid needs at least one share and one batch size")
        if any(not (0.0 < s <= 1.0) for s in self.shares):
            raise ValueError(f"grid shares must lie in (0, 1], got {self.shares}")
        if any(b < 1 for b in self.batches):
            raise ValueError(f"grid batch sizes must be >= 1, got {self.batches}")
        if any(a >= b for a, b in itertools.pairwise(self.shares)) or any(
                a >= b for a, b in itertools.pairwise(self.batches)):
            raise ValueError("grid shares and batch sizes must be strictly increasing")

    @property
    def size(self) -> int:
        return len(self.shares) * len(self.batches)


DEFAULT_GRID = Grid(shares=tuple(round(p / 100, 2) for p in range(10, 101, 10)),
                    batches=(1, 2, 4, 8, 16, 32))
"""SM share 10 … 100 % in steps of 10 × batch 1 … 32 in powers of two: the 60 points of
the bundled A100 tables and of the paper's search."""

DEFAULT_TRAINING_SHARES: tuple[float, ...] = tuple(round(p / 100, 2) for p in range(5, 101, 5))
"""Training shares 5 … 100 % in steps of 5, the granularity of the reference bisection."""


@dataclass(frozen=True, slots=True)
class Probe:
    """One point a search measured, in the order it measured them."""

    share: float
    batch: int
    measurement: Measurement

    @property
    def efficiency(self) -> float:
        """TE: throughput per unit of share (requests/s per whole GPU)."""
        return self.measurement.throughput_rps / self.share

    def meets(self, slo_s: float) -> bool:
        return self.measurement.latency_s <= slo_s and self.measurement.throughput_rps > 0


@dataclass(frozen=True, slots=True)
class Choice:
    """An inference search's answer: the chosen point, as measured, and every probe made."""

    share: float
    batch: int
    measurement: Measurement
    probes: tuple[Probe, ...]

    @property
    def efficiency(self) -> float:
        return self.measurement.throughput_rps / self.share


@dataclass(frozen=True, slots=True)
class TrainingChoice:
    """A training search's answer: the chosen share, what it keeps of the full GPU's
    throughput, and every probe made."""

    share: float
    batch: int
    measurement: Measurement
    full_gpu: Measurement
    probes: tuple[Probe, ...]

    @property
    def kept(self) -> float:
        """Throughput at the chosen share as a fraction of the full GPU's."""
        return self.measurement.throughput_rps / self.full_gpu.throughput_rps


class InfeasibleSlo(FailedPrecondition):
    """No share of the grid meets the SLO, even at its smallest batch.

    `fastest_latency_s` is the fastest latency measured, at `fastest_share` and
    `fastest_batch` (the search always measures the grid's largest share at its smallest
    batch before it gives up), so the caller can say what SLO would be feasible.
    Picklable (a process pool passes it back whole).
    """

    def __init__(self, slo_s: float, fastest: Probe) -> None:
        super().__init__(self._describe(slo_s, fastest))
        self.slo_s = slo_s
        self.fastest = fastest
        self.fastest_latency_s = fastest.measurement.latency_s
        self.fastest_share = fastest.share
        self.fastest_batch = fastest.batch

    def _describe(self, slo_s: float, fastest: Probe) -> str:
        return (f"no share meets the latency SLO of {slo_s * 1e3:.1f} ms: the fastest latency "
                f"measured is {fastest.measurement.latency_s * 1e3:.1f} ms (share "
                f"{fastest.share:.2f}, batch {fastest.batch})")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.slo_s, self.fastest))


class CapacityBelowFloor(InfeasibleSlo):
    """A lone request meets the SLO, but no point of the grid carries `floor_rps` (the
    slowest rate the live protocol measures) with the SLO's percentile within it: the SLO
    is met only by a trickle. `fastest` is the fastest lone request measured (within the
    SLO, unlike `InfeasibleSlo`'s), so the caller sees how close to the SLO it runs."""

    def __init__(self, slo_s: float, fastest: Probe, floor_rps: float, target: float) -> None:
        self.floor_rps = floor_rps
        self.target = target
        super().__init__(slo_s, fastest)

    def _describe(self, slo_s: float, fastest: Probe) -> str:
        return (f"a lone request meets the latency SLO of {slo_s * 1e3:.1f} ms (fastest "
                f"{fastest.measurement.latency_s * 1e3:.1f} ms at share {fastest.share:.2f}, "
                f"batch {fastest.batch}) but no share carries {self.floor_rps:.2f} requests/s "
                f"with {self.target:.0%} of requests within it")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.slo_s, self.fastest, self.floor_rps, self.target))


def check_slo(slo_s: float, field: str = "slo_s") -> float:
    """`slo_s` if it is a finite positive latency in seconds; `InvalidArgument` otherwise."""
    if not (math.isfinite(slo_s) and slo_s > 0):
        raise InvalidArgument(field, f"must be a finite positive latency, got {slo_s}")
    return slo_s
