"""The baseline systems Dilu is measured against in the serving simulator, each built from
its published rules and defaults and printing them beside its results:

- `exclusive-kpa` and `static-kpa` (`knative.py`): Knative's KPA (`kpa.py`) over a whole
  GPU per instance, or over fixed fractional shares placed best fit; no lending
  (`fixed_share.py`).
- `has-gpu` (`hasgpu.py`, its placement in `has_placement.py`): HAS-GPU's Kalman-predicted
  hybrid vertical/horizontal scaling of quotas, no lending.
- `dilu-paper` (`dilu_paper.py`): the Dilu paper's placement, its RCKM arbitration
  (`rckm.py`) and its lazy horizontal scaling.

Each is a `System` (see `services.simulator.serving.systems`), registered there.
"""

from services.simulator.serving.baselines.dilu_paper import DiluPaper
from services.simulator.serving.baselines.hasgpu import HasGpu
from services.simulator.serving.baselines.knative import ExclusiveKpa, StaticKpa

__all__ = ["DiluPaper", "ExclusiveKpa", "HasGpu", "StaticKpa"]
