"""The profiling searches: pure cores behind the `Measurer` interface.

`InferenceSearch` and `TrainingSearch` are state machines (ask `next_probe()`, measure,
`record()`, then `result()`) so an asynchronous shell can await each probe;
`search_inference` and `search_training` drive them synchronously with a `Measurer`.

`search_inference` (the pruning search), `search_training` (bisection from both sides),
`hgss_inference` / `hgss_training` (the paper's reference rules, the baseline) and
`sweep_inference` (the exhaustive reference) all ask only a `Measurer`, so the same code
runs against the bundled tables (`TableMeasurer`), a simulated worker or a real one.
"""

from services.profiler.search.bounds import Tolerances
from services.profiler.search.exhaustive import sweep_inference
from services.profiler.search.hgss import hgss_inference, hgss_training
from services.profiler.search.inference import TIE, InferenceSearch, best_with_ties, search_inference
from services.profiler.search.table import TableMeasurer
from services.profiler.search.training import KEEP, TrainingSearch, search_training
from services.profiler.search.types import (
    DEFAULT_GRID,
    DEFAULT_TRAINING_SHARES,
    CapacityBelowFloor,
    Choice,
    Grid,
    InfeasibleSlo,
    Measurement,
    Measurer,
    Probe,
    TrainingChoice,
)

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_TRAINING_SHARES",
    "KEEP",
    "TIE",
    "CapacityBelowFloor",
    "Choice",
    "Grid",
    "InfeasibleSlo",
    "InferenceSearch",
    "Measurement",
    "Measurer",
    "Probe",
    "TableMeasurer",
    "Tolerances",
    "TrainingChoice",
    "TrainingSearch",
    "best_with_ties",
    "hgss_inference",
    "hgss_training",
    "search_inference",
    "search_training",
    "sweep_inference",
]
