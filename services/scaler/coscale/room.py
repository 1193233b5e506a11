"""Dividing each GPU between the inference instances on it and the training that yields.

The node agent's arbiter guarantees requests and lends what nobody requested to hungry
inference first (up to limits), then to training; an instance is hungry while its gate
keeps waiting for credit, which under time slicing is whenever it runs a batch. So several
busy inference instances on one GPU split its unrequested time, and each reaches its
*busy share* only when the GPU's guarantees leave room for all of them at once:

    Σ inference busy shares + Σ training requests ≤ 1          (the busy rule)

Training is throughput-bound and yields: its request goes down (to its floor) only as far
as the busy rule needs, its limit (to its limit floor) only as far as the placement bound
Σ limits ≤ max_limited needs. The room inference can have on a GPU is therefore

    cap = min(1 − Σ training request floors − Σ requests of draining instances,
              max_limited − Σ training limit floors − Σ limits of draining instances)

and when the busy shares wanted add up to more, they are water-filled (equal increments,
none above its want): the GPU is *short*, and each instance's `most` (what it would get if
it wanted everything) tells the horizontal rules how far vertical can go. Limits (the
burst share, above the busy share) are what is left of the limit bound, water-filled the
same way; a limit costs nothing while the instance idles, and on a GPU full of limits
placement puts no newcomer. Requests (the guarantee) never exceed the busy share.

Worked numbers: a GPU with a training job deployed at 0.30/0.90 (floors 0.02/0.30) and an
inference instance wanting busy 0.60, limit 0.80: cap = 1 − 0.02 = 0.98; it gets busy 0.60
and limit 0.80 (0.80 + 0.30 ≤ 1.5); training keeps request min(0.30, 1 − 0.60) = 0.30 and
limit min(0.90, 1.5 − 0.80) = 0.70. A second instance there wanting busy 0.60: 1.20 > 0.98,
so the two get 0.49 each and training its request floor 0.02.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from services.scaler.coscale.settings import MIN_SHARE

_EPS = 1e-9


def floor_share(x: float) -> float:
    return math.floor(x * 100 + 1e-6) / 100


def ceil_share(x: float) -> float:
    return math.ceil(x * 100 - 1e-6) / 100


@dataclass(frozen=True, slots=True)
class Want:
    """An inference instance's quota: request ≤ busy ≤ limit. `busy` is the share it must
    reach while busy (what the busy rule guarantees); it is not sent to the agent."""

    request: float
    busy: float
    limit: float


@dataclass(frozen=True, slots=True)
class TrainingFloor:
    deployed_request: float
    deployed_limit: float
    request_floor: float
    limit_floor: float


@dataclass(frozen=True, slots=True)
class GpuShares:
    """One GPU's division: each inference instance's quota, what each training instance may
    keep (request, limit), and the most busy share each inference instance could have."""

    inference: dict[str, Want]
    training: dict[str, tuple[float, float]]
    most: dict[str, float]
    cap: float          # the most Σ busy shares may be (training at its request floors)
    wanted: float       # Σ busy shares wanted

    @property
    def short(self) -> bool:
        """The instances on it want more than it has."""
        return self.wanted > self.cap + 1e-6

    @property
    def free(self) -> float:
        """Busy room nobody has: what a newcomer could be given."""
        return max(0.0, self.cap - sum(w.busy for w in self.inference.values()))


def divide(max_requested: float, max_limited: float, wants: Mapping[str, Want],
           fixed: Sequence[Want], training: Mapping[str, TrainingFloor],
           held: Mapping[str, float] | None = None) -> GpuShares:
    """Divide one GPU. `wants`: inference instances that are sized; `held`: the busy share
    each was given at the last decision (incumbents keep up to that before anyone grows);
    `fixed`: instances that keep their quota (draining); `training`: the training
    instances on it."""
    held = held or {}
    guaranteed = min(1.0, max_requested)
    fixed_requests = sum(f.request for f in fixed)
    fixed_limits = sum(f.limit for f in fixed)
    # A busy share is at most the instance's limit, so it needs room under both bounds.
    cap = max(0.0, min(guaranteed - sum(t.request_floor for t in training.values()) - fixed_requests,
                       max_limited - sum(t.limit_floor for t in training.values()) - fixed_limits))
    # Incumbents first: what each already had (up to its want), then the rest of the room
    # water-filled over what they want beyond it.
    base = {i: min(w.busy, held.get(i, 0.0)) for i, w in wants.items()}
    if sum(base.values()) > cap + _EPS:
        scale = cap / sum(base.values())
        base = {i: floor_share(b * scale) for i, b in base.items()}
    extra = _water_fill(cap - sum(base.values()),
                        {i: max(0.0, w.busy - base[i]) for i, w in wants.items()})
    busy = {i: base[i] + extra[i] for i in wants}
    used = sum(busy.values())
    most = {i: min(1.0, floor_share(busy[i] + cap - used)) for i in wants}
    # Limits: the busy share, then the burst above it while the limit bound has room
    # (training keeping at least its limit floor).
    limit_room = max(0.0, max_limited - sum(t.limit_floor for t in training.values())
                     - fixed_limits - used)
    burst = _water_fill(limit_room, {i: max(0.0, w.limit - busy[i]) for i, w in wants.items()})
    # Requests: against inference neighbours (who take the unrequested time by equal
    # increments) only a request keeps the busy share; an instance alone beside training
    # needs only its own floor, and training borrows the rest while it idles.
    alone = len(wants) + len(fixed) == 1 and bool(training)
    granted = {i: Want(min(w.request, busy[i]) if alone else busy[i], busy[i],
                       min(1.0, busy[i] + burst[i]))
               for i, w in wants.items()}
    # What training may keep: each its floors, and what is left above them shared in
    # proportion to what each gives up from its deployed quota.
    request_room = guaranteed - used - fixed_requests
    limit_left = max_limited - sum(g.limit for g in granted.values()) - fixed_limits
    requests = _share_out(request_room, {tid: (t.request_floor, t.deployed_request)
                                         for tid, t in training.items()})
    limits = _share_out(limit_left, {tid: (t.limit_floor, t.deployed_limit)
                                     for tid, t in training.items()})
    kept = {tid: (requests[tid], max(requests[tid], limits[tid])) for tid in training}
    return GpuShares(granted, kept, most, cap, sum(w.busy for w in wants.values()))


def most_together(gpu: GpuShares, wanted: Mapping[str, float], growing: Collection[str],
                  gone: Collection[str] = ()) -> dict[str, float]:
    """The most busy share each of `growing` (instances on this GPU) could have at once,
    once `gone` have left: the room nobody holds water-filled, as `divide` fills it at the
    next decision from what each has now, over what they could take (up to a whole GPU
    each) and what the other instances want beyond what they have (`wanted`: each
    instance's busy share wanted). For one instance and nobody gone it is its `most`; for
    several, the GPU's free room is counted once, not once for each."""
    has = {i: w.busy for i, w in gpu.inference.items() if i not in gone}
    more = {i: max(0.0, (1.0 if i in growing else wanted.get(i, busy)) - busy)
            for i, busy in has.items()}
    extra = _water_fill(max(0.0, gpu.cap - sum(has.values())), more)
    return {i: min(1.0, floor_share(has[i] + extra[i])) for i in growing if i in has}


def _share_out(room: float, spans: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Each (floor, top) gets its floor, then the rest of `room` in proportion to
    top − floor, never above its top (to 0.01 below)."""
    floors = sum(low for low, _ in spans.values())
    extra = sum(high - low for low, high in spans.values())
    if floors + extra <= room + _EPS:
        return {i: high for i, (_, high) in spans.items()}
    part = max(0.0, room - floors) / extra if extra > _EPS else 0.0
    return {i: max(low, floor_share(low + part * (high - low))) for i, (low, high) in spans.items()}


def _water_fill(room: float, wants: Mapping[str, float]) -> dict[str, float]:
    """Each its want when they fit; else equal increments up to the wants (to 0.01 below)."""
    if sum(wants.values()) <= room + _EPS:
        return dict(wants)
    given = dict.fromkeys(wants, 0.0)
    open_ids = sorted(i for i in wants if wants[i] > _EPS)
    left = room
    while left > _EPS and open_ids:
        each = left / len(open_ids)
        still = []
        for i in open_ids:
            grant = min(each, wants[i] - given[i])
            given[i] += grant
            left -= grant
            if wants[i] - given[i] > _EPS:
                still.append(i)
        open_ids = still
    return {i: floor_share(v) if wants[i] > _EPS else 0.0 for i, v in given.items()}


__all__ = ["MIN_SHARE", "GpuShares", "TrainingFloor", "Want", "ceil_share", "divide", "floor_share",
           "most_together"]
