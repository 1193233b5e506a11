"""Dilu's co-scaling policy: a pure core, `decide(context, state, now_s, settings) ->
(actions, state)`, no I/O and no clock of its own (the adapter passes `now_s`).

The adapters build a `Context` (per function: SLO, profile, cold start, replica bounds,
the start shape, the last QoS window of the function and of each instance with its
quota and effective share; per GPU: its placement bounds; per training job: its quota now
and as deployed) and apply the actions in the order given, lowerings first. The serving
simulator's adapter is `services.simulator.serving.coscale`; the live scaler is the other.
`CoscaleState` is what one decision hands the next (rate histories, what each instance
was sized for and since when, instances asked for and not seen yet).

One decision (`policy.py`), every `interval_s`:

1. **Rates** (`forecast.py`): each function's level is the mean of the last
   `rate_window_s` plus one standard error, a window `noise_sigmas` Poisson deviations
   above it is a jump taken at once, and a rising trend that stands out of the noise is
   extrapolated (never a falling one). The rate quotas are sized for moves only when the
   prediction leaves its noise band: up at once, down once every prediction of the last
   `scale_down_after_s` was below it. So a steady Poisson load converges to one size.
2. **Vertical first, in one step** (`sizing.py`): every live instance is sized from the
   profile for its part of the predicted rate × (1 + `capacity_headroom`) with at most
   1 − `slo_target` of requests late, pooled behind the least-outstanding router (M/M/n
   with the slack a lone batch leaves): a *busy share*; a limit for a jump of
   `burst_headroom` (or the last keep-alive's peak); a request of at least the share at
   which a lone request meets the SLO. A rise is taken at once (to the computed size, not
   by a step); a lowering only by at least `min_change` and after `scale_down_after_s`.
   Over-provisioned requests are lowered this way, so placement can pack.
3. **Dividing each GPU** (`room.py`): Σ inference busy shares + Σ training requests ≤ 1
   and Σ limits ≤ `max_limited`; incumbents keep what they had before a newcomer grows;
   training yields, as in the reference, but only down to its floors.
4. **Horizontal when vertical cannot cover it**: a scale-out when the busy shares the
   GPUs leave every instance will not carry the rate predicted a cold start (plus one
   decision) ahead (what they can have at once: instances on one GPU share its free room,
   here as for a scale-in); one wave at a time, as many instances as that rate needs, none when
   no GPU would take one. **Scale-in** is lazy: one decision at most every
   `scale_down_after_s`, not within `scale_in_after_s` of a scale-out, and only while the
   instances left carry the highest rate of the last `scale_in_after_s` ×
   (1 + `scale_in_headroom`), wider than a scale-out's margin, so a scale-in at a load is
   never followed by a scale-out at the same load (hysteresis, no flapping). Never below
   `replicas.min`; a function whose minimum is 0 goes to zero after `keep_alive_s`
   without a request and comes back on the first one.

**Training floors** (`training_request_floor`, `training_limit_floor`, fractions of the
deployed request): training is throughput-bound and yields to inference, but not to the
reference's 1 %: its request goes down to half its deployed request and its limit to its
deployed request, so when inference idles a job still runs at its deployed guarantee, and
a gang (whose step is as slow as its slowest member) never loses more than half its
guarantee to one busy neighbour. Worked numbers are in each module's docstring; the
parameters, with units and why each default, in `settings.py`.
"""

from services.scaler.coscale.actions import (
    Action,
    ScaleIn,
    ScaleOut,
    SetInferenceQuota,
    SetMaxBatch,
    SetTrainingQuota,
)
from services.scaler.coscale.context import (
    DRAINING,
    READY,
    STARTING,
    Context,
    FunctionContext,
    GpuContext,
    InstanceContext,
    Profile,
    TrainingContext,
    Window,
)
from services.scaler.coscale.policy import DEFAULT_SETTINGS, decide
from services.scaler.coscale.settings import MIN_SHARE, CoscaleSettings
from services.scaler.coscale.state import CoscaleState, FunctionMemory, InstanceMemory

__all__ = [
    "DEFAULT_SETTINGS",
    "DRAINING",
    "MIN_SHARE",
    "READY",
    "STARTING",
    "Action",
    "Context",
    "CoscaleSettings",
    "CoscaleState",
    "FunctionContext",
    "FunctionMemory",
    "GpuContext",
    "InstanceContext",
    "InstanceMemory",
    "Profile",
    "ScaleIn",
    "ScaleOut",
    "SetInferenceQuota",
    "SetMaxBatch",
    "SetTrainingQuota",
    "TrainingContext",
    "Window",
    "decide",
]
