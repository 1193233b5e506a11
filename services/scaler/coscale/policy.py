"""The co-scaling decision: `decide(context, state, now_s, settings) -> (actions, state)`.

Pure and deterministic: the same context, state and time give the same actions. The rules
(with worked numbers) are in this package's docstring; in order, one decision:

1. records each function's offered rate and predicts it (`forecast.py`);
2. sizes every live instance for its function's predicted rate (`sizing.py`): a busy share
   (what the instances need while they run batches), a limit (the same for a one-second
   jump of the rate) and a request (the guarantee), raised at once and lowered by at
   least `min_change` once the rate they are sized for comes down (after
   `scale_down_after_s`);
3. divides every GPU between its inference instances and the training that yields
   (`room.py`): each instance's quota, each training job's, and how far each instance
   could still grow;
4. scales out when even that growth will not carry the rate predicted a cold start ahead;
   scales in at once an instance crowding a short GPU when its function does without it,
   and lazily one whose function has carried the highest rate of the last
   `scale_in_after_s` with a wider margin; goes to zero after `keep_alive_s` without a
   request where the minimum is 0.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from services.scaler.coscale import forecast
from services.scaler.coscale.actions import (
    Action,
    ScaleIn,
    ScaleOut,
    SetInferenceQuota,
    SetMaxBatch,
    SetTrainingQuota,
)
from services.scaler.coscale.context import (
    READY,
    STARTING,
    Context,
    FunctionContext,
    InstanceContext,
    TrainingContext,
)
from services.scaler.coscale.room import (
    GpuShares,
    TrainingFloor,
    Want,
    ceil_share,
    divide,
    most_together,
)
from services.scaler.coscale.settings import MIN_SHARE, CoscaleSettings
from services.scaler.coscale.sizing import Curve, curve
from services.scaler.coscale.state import CoscaleState, FunctionMemory, InstanceMemory

DEFAULT_SETTINGS = CoscaleSettings()
# A quota that differs from the one wanted by less than this is left alone.
_SAME = 0.005


@dataclass(frozen=True, slots=True)
class _Load:
    """One function's rates this decision."""

    now_rps: float         # the last window's
    vertical_rps: float    # predicted one decision ahead, held within its noise band
    horizontal_rps: float  # predicted a cold start and two decisions ahead
    held_rps: float        # the highest of the last `scale_in_after_s`
    history_s: float       # how long the history covers
    recent_peak_rps: float  # the highest of the last `keep_alive_s`


def decide(context: Context, state: CoscaleState, now_s: float,
           settings: CoscaleSettings = DEFAULT_SETTINGS) -> tuple[list[Action], CoscaleState]:
    """One co-scaling decision over the whole context."""
    functions = {name: _remember(f, state.functions.get(name, FunctionMemory()), now_s, settings)
                 for name, f in context.functions.items()}
    loads: dict[str, _Load] = {}
    for name, f in context.functions.items():
        loads[name], functions[name] = _load(f, functions[name], now_s, settings)
    curves = {name: curve(f.profile) for name, f in context.functions.items()}

    # 2. What each live instance wants, held lazily.
    instance_memory: dict[str, InstanceMemory] = {}
    wants: dict[str, Want] = {}
    why: dict[str, str] = {}
    for name, f in context.functions.items():
        for instance, want, reason in _wants(f, loads[name], curves[name], settings):
            memory = state.instances.get(instance.id, InstanceMemory())
            held, memory = _hold(memory, want, instance, now_s, settings)
            instance_memory[instance.id] = memory
            wants[instance.id] = held
            why[instance.id] = reason

    # 3. Every GPU divided, incumbents keeping what they had first.
    before = {iid: m.granted_busy for iid, m in state.instances.items()}
    shares = _divide_gpus(context, wants, before, settings)
    granted: dict[str, Want] = {}
    most: dict[str, float] = {}
    for gpu in shares.values():
        for iid, want in gpu.inference.items():
            # an instance on several GPUs gets the smallest of its GPUs' grants
            old = granted.get(iid)
            granted[iid] = want if old is None else Want(
                min(old.request, want.request), min(old.busy, want.busy), min(old.limit, want.limit))
            most[iid] = min(most.get(iid, 1.0), gpu.most[iid])
    for iid, grant in granted.items():
        instance_memory[iid] = replace(instance_memory[iid], granted_busy=grant.busy)

    lowering: list[Action] = []
    raising: list[Action] = []
    if settings.vertical:
        _training_actions(context, shares, settings, lowering, raising, first=True)
        for name, f in context.functions.items():
            for instance in f.instances:
                if instance.id in granted:
                    _inference_actions(f, instance, granted[instance.id], curves[name],
                                       why[instance.id], lowering, raising)
        _training_actions(context, shares, settings, lowering, raising, first=False)

    # 4. Horizontal.
    horizontal: list[Action] = []
    if settings.horizontal:
        cluster = _Cluster.of(context, shares, granted, most,
                              {iid: want.busy for iid, want in wants.items()})
        for name, f in context.functions.items():
            # The keep-alive also runs from the newest instance's arrival: one just started
            # (from zero, or seen first by a restarted scaler) has had no chance to serve.
            arrived_s = max((instance_memory[i.id].since_s or now_s for i in f.instances
                             if i.id in instance_memory), default=-math.inf)
            actions, functions[name] = _horizontal(f, functions[name], loads[name], curves[name],
                                                   cluster, context, now_s, settings, arrived_s)
            horizontal += actions
    return lowering + raising + horizontal, CoscaleState(functions, instance_memory)


# ---- rates ------------------------------------------------------------------------------


def _history_s(settings: CoscaleSettings) -> float:
    return max(settings.scale_in_after_s, settings.keep_alive_s, settings.rate_window_s,
               settings.trend_window_s) + settings.interval_s


def _remember(f: FunctionContext, memory: FunctionMemory, now_s: float,
              settings: CoscaleSettings) -> FunctionMemory:
    rates = memory.rates
    window = f.window
    if window is not None and (not rates or window.end_s > rates[-1][0] + 1e-9):
        keep_after = now_s - _history_s(settings)
        rates = (*(r for r in rates if r[0] > keep_after), (window.end_s, window.rps))
    last_request = memory.last_request_s
    if f.queued > 0 or (window is not None and window.arrivals > 0):
        last_request = now_s
    # Instances asked for: each new one seen settles one; a request the scheduler could
    # not place within a cold start (plus patience) is forgotten and may be asked again.
    seen = frozenset(i.id for i in f.instances)
    asked = max(0, memory.asked - len(seen - memory.known))
    if asked and now_s - memory.asked_s > f.cold_start_s + settings.scale_out_patience_s:
        asked = 0
    return replace(memory, rates=rates, last_request_s=last_request, asked=asked, known=seen)


def _load(f: FunctionContext, memory: FunctionMemory, now_s: float,
          settings: CoscaleSettings) -> tuple[_Load, FunctionMemory]:
    """The rates to size for. The rate the quotas are sized for moves only when the
    prediction leaves its noise band (`noise_sigmas` standard errors of a
    `rate_window_s` mean): at once upwards; downwards once every prediction of the last
    `scale_down_after_s` was below the band, to the highest of the last `rate_window_s`.
    So a steady Poisson load converges to one size."""
    rates = memory.rates
    now_rps = rates[-1][1] if rates else 0.0
    # A queue waiting for a ready instance is load that arrived and is not served yet.
    backlog = f.queued / settings.interval_s

    def ahead(horizon_s: float) -> float:
        return forecast.predict(rates, now_s, horizon_s, settings.rate_window_s,
                                settings.trend_window_s, settings.noise_sigmas) + backlog

    predicted = ahead(settings.interval_s)
    recent = tuple(p for p in memory.predicted if p[0] > now_s - settings.scale_down_after_s + 1e-6)
    recent += ((now_s, predicted),)
    sized = memory.sized_rps
    windows = max(1.0, settings.rate_window_s / settings.interval_s)
    band = settings.noise_sigmas * math.sqrt(max(sized or 0.0, 1.0) / windows)
    if sized is None or predicted > sized + band:
        sized = predicted
    elif max(p for _, p in recent) < sized - band:
        # Lower for `scale_down_after_s` now: to where it settled (the last rate window).
        sized = max(p for t, p in recent if t > now_s - settings.rate_window_s + 1e-6)
    covered = now_s - rates[0][0] + settings.interval_s if rates else 0.0
    # A scale-out is confirmed over two decisions (`_horizontal`): the horizon covers
    # the cold start and both.
    load = _Load(now_rps, sized, max(sized, ahead(f.cold_start_s + 2 * settings.interval_s)),
                 forecast.highest(rates, now_s, settings.scale_in_after_s) + backlog, covered,
                 forecast.highest(rates, now_s, settings.keep_alive_s))
    return load, replace(memory, predicted=recent, sized_rps=sized)


# ---- vertical ---------------------------------------------------------------------------


def _wants(f: FunctionContext, load: _Load, c: Curve,
           settings: CoscaleSettings) -> Iterable[tuple[InstanceContext, Want, str]]:
    """Each live instance's size for its part of the predicted rate (the ready ones carry
    it now; one still starting is sized for its part once all are ready)."""
    live = [i for i in f.instances if i.state in (READY, STARTING)]
    ready = [i for i in live if i.state == READY]
    miss = 1 - settings.slo_target
    sized: dict[int, tuple[Want, str]] = {}
    for instance in live:
        if not settings.vertical:
            yield instance, Want(instance.request, instance.limit, instance.limit), ""
            continue
        carriers = max(1, len(ready) if instance.state == READY else len(live))
        if carriers not in sized:
            sized[carriers] = _size(f, load, c, carriers, miss, settings)
        want, reason = sized[carriers]
        yield instance, want, reason


def _size(f: FunctionContext, load: _Load, c: Curve, carriers: int, miss: float,
          settings: CoscaleSettings) -> tuple[Want, str]:
    steady = load.vertical_rps * (1 + settings.capacity_headroom)
    # The limit costs nothing while the instance idles: it also carries the highest rate
    # of the last keep-alive, so a sporadic function's next burst finds it.
    burst = max(load.vertical_rps * (1 + settings.burst_headroom),
                load.recent_peak_rps * (1 + settings.capacity_headroom))
    busy = c.pool_share_for(steady, carriers, miss) or 1.0
    limit = max(busy, c.pool_share_for(burst, carriers, miss) or 1.0)
    long_run = c.long_run_share(steady / carriers, busy)
    request = min(busy, max(c.lone_share, ceil_share(long_run)))
    reason = (f"{f.name}: {load.vertical_rps:.1f} req/s predicted over {carriers} instance(s): "
              f"busy share {busy:.2f} carries {steady:.1f} (×{1 + settings.capacity_headroom:.2f}),"
              f" limit {limit:.2f} carries {burst:.1f} (a jump ×{1 + settings.burst_headroom:.2f}"
              f" or the last {settings.keep_alive_s:.0f} s' peak); "
              f"request {request:.2f} (a lone request needs {c.lone_share:.2f}, the long-run "
              f"load {long_run:.2f})")
    return Want(max(MIN_SHARE, request), max(MIN_SHARE, busy), max(MIN_SHARE, limit)), reason


def _hold(memory: InstanceMemory, want: Want, instance: InstanceContext, now_s: float,
          settings: CoscaleSettings) -> tuple[Want, InstanceMemory]:
    """Each of request, busy share and limit rises at once (by more than half
    `min_change`: less is noise) and comes down only by at least `min_change`, and not
    before the instance has been watched for `scale_down_after_s` (the rate it is sized
    for already waits that long before it comes down, `_load`)."""
    if not settings.vertical:
        return want, memory
    since = now_s if memory.since_s is None else memory.since_s
    watched = now_s - since >= settings.scale_down_after_s - 1e-6
    before = memory.held or (instance.request, instance.limit, instance.limit)

    def lazy(wanted: float, held: float) -> float:
        if wanted > held + settings.min_change / 2 - 1e-9:
            return wanted
        return wanted if watched and held - wanted >= settings.min_change - 1e-9 else held

    busy = lazy(want.busy, before[1])
    limit = max(busy, lazy(want.limit, before[2]))
    request = min(busy, lazy(want.request, before[0]))
    return Want(request, busy, limit), replace(memory, held=(request, busy, limit), since_s=since)


def _divide_gpus(context: Context, wants: Mapping[str, Want], before: Mapping[str, float],
                 settings: CoscaleSettings) -> dict[str, GpuShares]:
    sized: dict[str, dict[str, Want]] = {uuid: {} for uuid in context.gpus}
    fixed: dict[str, list[Want]] = {uuid: [] for uuid in context.gpus}
    training: dict[str, dict[str, TrainingFloor]] = {uuid: {} for uuid in context.gpus}
    for f in context.functions.values():
        for instance in f.instances:
            for uuid in instance.gpus:
                if uuid not in sized:
                    continue
                if instance.id in wants:
                    sized[uuid][instance.id] = wants[instance.id]
                else:
                    fixed[uuid].append(Want(instance.request, instance.request, instance.limit))
    for job in context.training.values():
        floor = _floors(job, settings)
        for uuid in job.gpus:
            if uuid in training:
                training[uuid][job.id] = floor
    return {uuid: divide(gpu.max_requested, gpu.max_limited, sized[uuid], fixed[uuid],
                         training[uuid], before) for uuid, gpu in context.gpus.items()}


def _floors(job: TrainingContext, settings: CoscaleSettings) -> TrainingFloor:
    if not settings.vertical:
        return TrainingFloor(job.request, job.limit, job.request, job.limit)
    request_floor = max(MIN_SHARE, ceil_share(settings.training_request_floor * job.deployed_request))
    limit_floor = max(request_floor, ceil_share(settings.training_limit_floor * job.deployed_request))
    return TrainingFloor(job.deployed_request, job.deployed_limit,
                         min(request_floor, job.deployed_request), min(limit_floor, job.deployed_limit))


def _inference_actions(f: FunctionContext, instance: InstanceContext, grant: Want, c: Curve,
                       reason: str, lowering: list[Action], raising: list[Action]) -> None:
    request, limit = max(MIN_SHARE, grant.request), max(MIN_SHARE, grant.limit)
    if abs(request - instance.request) >= _SAME or abs(limit - instance.limit) >= _SAME:
        down = (min(request, instance.request), min(limit, instance.limit))
        if down[0] < instance.request - _SAME / 2 or down[1] < instance.limit - _SAME / 2:
            lowering.append(SetInferenceQuota(instance.id, f.name, down[0], down[1],
                                              f"lower to {down[0]:.2f}/{down[1]:.2f}: {reason}"))
        if (request, limit) != down:
            raising.append(SetInferenceQuota(instance.id, f.name, request, limit,
                                             f"raise to {request:.2f}/{limit:.2f}: {reason}"))
    batch = c.batch_at(grant.busy)
    if batch != instance.max_batch:
        raising.append(SetMaxBatch(instance.id, f.name, batch,
                                   f"{f.name}: the best maximum batch at share {grant.busy:.2f}"))


def _training_actions(context: Context, shares: Mapping[str, GpuShares],
                      settings: CoscaleSettings, lowering: list[Action], raising: list[Action],
                      *, first: bool) -> None:
    """Training gives room at once (`first`: before inference rises) and takes it back
    after inference has come down, by at least `min_change` or all the way."""
    for job in context.training.values():
        kept = [shares[uuid].training[job.id] for uuid in job.gpus if uuid in shares]
        if not kept:
            continue
        request = min(r for r, _ in kept)
        limit = max(request, min(lim for _, lim in kept))
        if first:
            down = (min(request, job.request), min(limit, job.limit))
            if down[0] < job.request - _SAME / 2 or down[1] < job.limit - _SAME / 2:
                lowering.append(SetTrainingQuota(
                    job.id, job.job, down[0], down[1],
                    f"{job.job} yields to inference on its GPUs: request {down[0]:.2f}, "
                    f"limit {down[1]:.2f} (deployed {job.deployed_request:.2f}/"
                    f"{job.deployed_limit:.2f})"))
            continue
        base = (min(request, job.request), min(limit, job.limit))

        def back(now: float, target: float, deployed: float) -> float:
            if target >= now + settings.min_change - 1e-9 or (
                    target >= deployed - 1e-9 and target > now + _SAME / 2):
                return target
            return now

        up_request = back(base[0], request, job.deployed_request)
        up = (up_request, max(up_request, back(base[1], limit, job.deployed_limit)))
        if up[0] > base[0] + _SAME / 2 or up[1] > base[1] + _SAME / 2:
            raising.append(SetTrainingQuota(
                job.id, job.job, up[0], up[1],
                f"{job.job} takes room back: request {up[0]:.2f}, limit {up[1]:.2f} "
                f"(deployed {job.deployed_request:.2f}/{job.deployed_limit:.2f})"))


# ---- horizontal -------------------------------------------------------------------------


@dataclass(slots=True)
class _Cluster:
    """What the horizontal rules need to know about the GPUs after this decision's quotas.
    `free` is used up as this decision's scale-outs are expected to land."""

    most: Mapping[str, float]              # instance -> the largest busy share it could have
    shares: Mapping[str, GpuShares]        # GPU -> its division
    requested: dict[str, float]            # GPU -> Σ requests, as planned
    limited: dict[str, float]              # GPU -> Σ limits, as planned
    holders: dict[str, int]                # GPU -> instances and training instances on it
    trained: frozenset[str]                # GPUs with training
    free: dict[str, float]                 # GPU -> busy room nobody has
    wanted: Mapping[str, float]            # instance -> the busy share it wants

    @classmethod
    def of(cls, context: Context, shares: Mapping[str, GpuShares], granted: Mapping[str, Want],
           most: Mapping[str, float], wanted: Mapping[str, float]) -> _Cluster:
        requested = dict.fromkeys(context.gpus, 0.0)
        limited = dict.fromkeys(context.gpus, 0.0)
        holders = dict.fromkeys(context.gpus, 0)
        for f in context.functions.values():
            for i in f.instances:
                grant = granted.get(i.id)
                request, limit = (grant.request, grant.limit) if grant else (i.request, i.limit)
                for uuid in i.gpus:
                    if uuid in requested:
                        requested[uuid] += request
                        limited[uuid] += limit
                        holders[uuid] += 1
        for job in context.training.values():
            for uuid in job.gpus:
                if uuid in requested:
                    request, limit = shares[uuid].training.get(job.id, (job.request, job.limit))
                    requested[uuid] += request
                    limited[uuid] += limit
                    holders[uuid] += 1
        trained = frozenset(uuid for job in context.training.values() for uuid in job.gpus)
        free = {uuid: gpu.free for uuid, gpu in shares.items()}
        return cls(most, shares, requested, limited, holders, trained, free, wanted)

    def reach(self, instances: Sequence[InstanceContext],
              gone: Collection[str] = ()) -> list[float]:
        """The largest busy share each of `instances` could have, all at once, once the
        instances in `gone` have left: instances on one GPU share its free room (each
        one's `most` counts all of it), an instance on several GPUs gets the least of
        them, and one on no GPU divided here keeps its limit."""
        growing = {i.id for i in instances}
        most: dict[str, float] = {}
        for uuid in sorted({u for i in instances for u in i.gpus if u in self.shares}):
            for iid, share in most_together(self.shares[uuid], self.wanted, growing, gone).items():
                most[iid] = min(most.get(iid, 1.0), share)
        return [most.get(i.id, i.limit) for i in instances]

    def land(self, context: Context, f: FunctionContext, want: float) -> float:
        """Where a new instance of `f` is expected to land, and the busy share it finds
        there: placement puts it on a GPU in use that admits its starting shape when there
        is one (taken here as the one with the most free busy room), else on an idle GPU
        (all of it), else nowhere (0). What it takes is no longer free."""
        best: str | None = None
        idle: str | None = None
        for uuid in sorted(context.gpus):
            gpu = context.gpus[uuid]
            if not self.holders.get(uuid):
                idle = idle or uuid
                continue
            if (self.requested[uuid] + f.start_request <= gpu.max_requested + 1e-9
                    and self.limited[uuid] + f.start_limit <= gpu.max_limited + 1e-9
                    and (best is None or self.free[uuid] > self.free[best] + 1e-9)):
                best = uuid
        chosen = best if best is not None else idle
        if chosen is None:
            return 0.0
        share = min(1.0, self.free[chosen]) if best is not None else 1.0
        if best is None:
            self.free[chosen] = self.shares[chosen].cap
        self.free[chosen] = max(0.0, self.free[chosen] - want)
        self.requested[chosen] += f.start_request
        self.limited[chosen] += f.start_limit
        self.holders[chosen] = self.holders.get(chosen, 0) + 1
        return share


def _horizontal(f: FunctionContext, memory: FunctionMemory, load: _Load, c: Curve,
                cluster: _Cluster, context: Context, now_s: float,
                settings: CoscaleSettings,
                arrived_s: float = -math.inf) -> tuple[list[Action], FunctionMemory]:
    live = [i for i in f.instances if i.state in (READY, STARTING)]
    count = len(live) + memory.asked
    miss = 1 - settings.slo_target

    def reach(instances: Sequence[InstanceContext], gone: Collection[str] = ()) -> list[float]:
        """The largest busy shares their GPUs leave the instances together (the scale-out
        and the scale-in rules see the same room: at the same load a scale-in cannot be
        followed by a scale-out)."""
        if not settings.vertical:
            return [i.limit for i in instances]
        return cluster.reach(instances, gone)

    # Asked-for instances not seen yet count at what a newcomer is expected to find.
    expected = 1.0 if settings.vertical else f.start_limit
    shares = reach(live) + [expected] * memory.asked
    capacity = c.pool_capacity(shares, miss)

    # To zero after the keep-alive, and back from it.
    if f.replicas_min == 0:
        last_request = memory.last_request_s if memory.last_request_s is not None else -math.inf
        idle_for = now_s - max(last_request, arrived_s)
        if live and idle_for >= settings.keep_alive_s and load.held_rps == 0 and f.queued == 0:
            return ([ScaleIn(f.name, i.id, f"{f.name}: no request for {idle_for:.0f} s "
                             f"(keep-alive {settings.keep_alive_s:.0f} s): to zero")
                     for i in live], replace(memory, last_scale_in_s=now_s))
        if count == 0 and (load.now_rps > 0 or f.queued > 0):
            if cluster.land(context, f, f.start_request) <= 0:
                return [], memory  # no GPU would take it: it would stay pending
            return ([ScaleOut(f.name, 1, f"{f.name}: a request at zero instances")],
                    replace(memory, asked=1, asked_s=now_s, last_scale_out_s=now_s))

    need = load.horizontal_rps * (1 + settings.capacity_headroom)
    # One wave at a time: while instances are asked for or starting, what they will carry
    # is not known yet (they count at a whole GPU), so no more are asked for until they
    # serve. A wave is as large as the predicted rate needs. The need must stand above
    # the capacity at two decisions in a row: one noisy window (a Poisson count, a queue
    # at its end) predicts a peak a steady load does not have, and an instance added for
    # it would be scaled in again (the horizon is one decision longer for that, `_load`).
    waiting = memory.asked > 0 or any(i.state == STARTING for i in live)
    over = memory.over + 1 if need > capacity + 1e-9 and not waiting else 0
    memory = replace(memory, over=over)
    if count < f.replicas_min or (over >= 2 and count < f.replicas_max):
        added: list[float] = []
        while count + len(added) < f.replicas_max and (
                count + len(added) < f.replicas_min
                or c.pool_capacity(shares + added, miss) < need - 1e-9):
            # A newcomer is sized like the others once placed (vertical first), so it is
            # counted at the busy share the function's instances want then.
            want = c.pool_share_for(need, len(live) + len(added) + 1, miss) or 1.0
            found = cluster.land(context, f, want) if settings.vertical else f.start_limit
            if found <= 0:
                break  # no GPU would take it: it would stay pending
            added.append(max(f.start_request, want) if settings.vertical else found)
        if added:
            k = len(added)
            reason = (f"{f.name}: {load.horizontal_rps:.1f} req/s predicted a cold start "
                      f"({f.cold_start_s:.1f} s) and two decisions ahead, "
                      f"×{1 + settings.capacity_headroom:.2f} = {need:.1f} at {over} decisions "
                      f"in a row; {count} instance(s) carry at most {capacity:.1f} with every "
                      f"busy share at its room: +{k} (expected to find "
                      f"{', '.join(f'{s:.2f}' for s in added)})")
            return [ScaleOut(f.name, k, reason)], replace(
                memory, asked=memory.asked + k, asked_s=now_s, last_scale_out_s=now_s, over=0)

    # Scale-in waits `scale_in_after_s` after a scale-out (hysteresis: what was added is
    # watched serving before anything goes), and for every instance to serve.
    if (len(live) <= max(1, f.replicas_min) or waiting
            or now_s - memory.last_scale_out_s < settings.scale_in_after_s):
        return [], memory
    # Never below what a scale-out sizes for: at the same load a scale-in cannot be
    # followed by a scale-out (scale_in_headroom > capacity_headroom).
    held = max(load.held_rps, load.horizontal_rps) * (1 + settings.scale_in_headroom)

    # Lazy scale-in: one instance at a time, when the rest carry the highest rate of the
    # last `scale_in_after_s` with the wider margin, nothing is starting or asked for,
    # and the last horizontal change is that long ago (its effect is seen).
    if (load.history_s < settings.scale_in_after_s
            or now_s - memory.last_scale_in_s < settings.scale_down_after_s):
        return [], memory
    # As many as the rest can do without, first in `_scale_in_order`.
    going: list[InstanceContext] = []
    for candidate in _scale_in_order(live, cluster, c.lone_share):
        if len(live) - len(going) <= max(1, f.replicas_min):
            break
        leaving = {i.id for i in going} | {candidate.id}
        staying = reach([i for i in live if i.id not in leaving], leaving)
        if c.pool_capacity(staying, miss) >= held - 1e-9:
            going.append(candidate)
    if not going:
        return [], memory
    gone = {i.id for i in going}
    left = c.pool_capacity(reach([i for i in live if i.id not in gone], gone), miss)
    reason = (f"{f.name}: at most {max(load.held_rps, load.horizontal_rps):.1f} req/s over the "
              f"last {settings.scale_in_after_s:.0f} s, ×{1 + settings.scale_in_headroom:.2f} = "
              f"{held:.1f}; the other {len(live) - len(going)} instance(s) carry {left:.1f}")
    return ([ScaleIn(f.name, i.id, f"{reason}: {i.id} goes") for i in going],
            replace(memory, last_scale_in_s=now_s))


def _scale_in_order(live: list[InstanceContext], cluster: _Cluster,
                    lone_share: float) -> list[InstanceContext]:
    """Which instance goes first: one whose GPUs leave it too little for a lone request
    (it only slows the requests routed to it), then one on a GPU whose tenants want more
    than it has (they get its room), then one whose GPUs it has to itself (a GPU is given
    back), then one beside training (training gets its share back), then the one that
    could carry least."""
    def key(i: InstanceContext) -> tuple[int, int, int, int, float, str]:
        most = cluster.most.get(i.id, i.limit)
        short = any(cluster.shares[u].short for u in i.gpus if u in cluster.shares)
        alone = all(cluster.holders.get(uuid, 0) == 1 for uuid in i.gpus)
        beside_training = any(uuid in cluster.trained for uuid in i.gpus)
        return (0 if most < lone_share else 1, 0 if short else 1, 0 if alone else 1,
                0 if beside_training else 1, most, i.id)

    return sorted(live, key=key)


__all__ = ["DEFAULT_SETTINGS", "decide"]
