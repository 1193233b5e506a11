"""The live scaler's adapter to the co-scaling policy: what it sees on the bus and in the
scheduler's records, turned into the policy's `Context` (pure: values in, values out).

The serving simulator's adapter (`services.simulator.serving.coscale`) is the other one;
this follows its mapping:

- functions, instances and nodes come from the scheduler (`ListFunctions`, `ListNodes`:
  its records are the store's, with every quota its agents reported adopted); an
  instance's quota is the newest of its agent's report and what this scaler applied
  itself since (`Applied`, by quota version), so a decision never undoes the previous
  one because a heartbeat had not caught up yet;
- an instance's last window is its latest `QosReport` (completed requests, violations,
  percentiles, queue), its `busy_s` the GPU time the telemetry charged it over that
  window; a function's window adds its instances' up (arrivals = completed + the growth
  of the queue);
- a GPU's bounds are its node's `PlacementBounds`; a GPU whose agent refused a raise
  (`RESOURCE_EXHAUSTED`) is shown with no room left above what it holds for a while, so
  the policy turns to horizontal scaling there (`refused`);
- a function's start quota is its spec's (the demo's quotas as deployed); training's
  deployed quota is its spec's too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dilu.events.v1 import events_pb2
from dilu.v1 import types_pb2

from services.scaler.coscale import (
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

S = types_pb2
_STATES = {S.INSTANCE_STATE_PENDING: STARTING, S.INSTANCE_STATE_STARTING: STARTING,
           S.INSTANCE_STATE_READY: READY, S.INSTANCE_STATE_DRAINING: DRAINING}
# A report older than this many windows is no longer the instance's last window.
_FRESH_WINDOWS = 2.5


@dataclass(frozen=True, slots=True)
class Applied:
    """A quota this scaler applied (`SetQuota`'s answer): request, limit, version."""

    request: float
    limit: float
    version: int


@dataclass(slots=True)
class BusView:
    """What the scaler keeps from the bus between decisions (fed by its subscriptions)."""

    qos: dict[str, tuple[float, events_pb2.QosReport]] = field(default_factory=dict)
    previous_queue: dict[str, int] = field(default_factory=dict)
    # instance → (sample end s, busy seconds) of its recent telemetry samples
    busy: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def on_qos(self, report: events_pb2.QosReport, received_s: float) -> None:
        old = self.qos.get(report.instance_id)
        self.previous_queue[report.instance_id] = old[1].queue_length if old else 0
        self.qos[report.instance_id] = (received_s, report)

    def on_telemetry(self, sample: events_pb2.GpuTelemetry) -> None:
        at = sample.at.seconds + sample.at.nanos / 1e9
        for usage in sample.instances:
            samples = self.busy.setdefault(usage.instance_id, [])
            samples.append((at, usage.busy_ns / 1e9))
            del samples[:-16]  # a few seconds at 2 Hz is all a window needs

    def forget(self, live: Iterable[str]) -> None:
        """Drop what belongs to instances that are gone."""
        keep = set(live)
        for table in (self.qos, self.previous_queue, self.busy):
            for iid in [i for i in table if i not in keep]:
                del table[iid]  # type: ignore[attr-defined]

    def window(self, instance_id: str, now_s: float) -> Window | None:
        entry = self.qos.get(instance_id)
        if entry is None:
            return None
        received, report = entry
        length = report.window_s or 1.0
        if now_s - received > _FRESH_WINDOWS * length:
            return None
        end = report.window_end.seconds + report.window_end.nanos / 1e9
        start = end - length
        growth = max(0, report.queue_length - self.previous_queue.get(instance_id, 0))
        busy = sum(b for at, b in self.busy.get(instance_id, ()) if start < at <= end + 0.25)
        completed = int(report.requests)
        return Window(start, end, completed + growth, completed,
                      max(0, completed - int(report.violations)), report.p50_ms, report.p95_ms,
                      report.p99_ms, report.queue_length, busy)


def function_window(windows: Iterable[Window]) -> Window | None:
    """A function's offered load over the last window: its instances' added up."""
    windows = list(windows)
    if not windows:
        return None
    return Window(min(w.start_s for w in windows), max(w.end_s for w in windows),
                  sum(w.arrivals for w in windows), sum(w.completed for w in windows),
                  sum(w.within_slo for w in windows),
                  max(w.p50_ms for w in windows), max(w.p95_ms for w in windows),
                  max(w.p99_ms for w in windows), sum(w.queue for w in windows),
                  sum(w.busy_s for w in windows))


@dataclass(frozen=True, slots=True)
class LiveQuota:
    """An instance's quota as the scaler sees it: its node, request, limit, effective share,
    memory limit and version."""

    node: str
    request: float
    limit: float
    share: float
    memory_mib: int
    version: int


def live_quotas(nodes: Iterable[types_pb2.NodeView],
                applied: Mapping[str, Applied]) -> dict[str, LiveQuota]:
    """Every instance's newest quota: its agent's last report, or what the scaler applied
    since (a higher or equal version)."""
    quotas: dict[str, LiveQuota] = {}
    for view in nodes:
        node = view.node
        for report in node.instances:
            q = report.quota
            live = LiveQuota(node.id, q.sm_request, q.sm_limit, q.effective_share,
                             q.memory_limit_mib, report.quota_version)
            mine = applied.get(report.instance_id)
            if mine is not None and mine.version >= live.version:
                live = LiveQuota(node.id, mine.request, mine.limit, q.effective_share,
                                 q.memory_limit_mib, mine.version)
            quotas[report.instance_id] = live
    return quotas


def gpu_bounds(nodes: Iterable[types_pb2.NodeView]) -> dict[str, GpuContext]:
    gpus = {}
    for view in nodes:
        if view.state != S.NODE_STATE_READY:
            continue
        bounds = view.node.bounds
        requested = bounds.max_requested or 1.0
        limited = bounds.max_limited or 1.5
        for gpu in view.node.gpus:
            gpus[gpu.uuid] = GpuContext(gpu.uuid, requested, limited)
    return gpus


@dataclass(frozen=True, slots=True)
class FunctionFacts:
    """What the scaler knows of a function besides the scheduler's records."""

    profile: Profile
    cold_start_s: float


def build_context(now_s: float, functions: Iterable[types_pb2.Function],
                  nodes: Iterable[types_pb2.NodeView], bus: BusView,
                  facts: Mapping[str, FunctionFacts], applied: Mapping[str, Applied],
                  refused: Mapping[str, float] | None = None) -> Context:
    """The policy's context now. Inference functions without facts (no profile yet) are
    left out: the policy neither sizes nor scales them. `refused`: GPU → until when a
    refused raise keeps it shown full."""
    nodes = list(nodes)
    quotas = live_quotas(nodes, applied)
    gpus = gpu_bounds(nodes)
    inference: dict[str, FunctionContext] = {}
    training: dict[str, TrainingContext] = {}
    for function in functions:
        spec, status = function.spec, function.status
        live = [i for i in status.instances if i.state in _STATES]
        if spec.kind == S.FUNCTION_KIND_TRAINING:
            for i in live:
                q = quotas.get(i.id)
                if q is None or not i.gpu_uuids:
                    continue
                training[i.id] = TrainingContext(
                    i.id, spec.name, tuple(i.gpu_uuids), q.request, q.limit, q.share,
                    spec.resources.sm_request, spec.resources.sm_limit or spec.resources.sm_request)
            continue
        fact = facts.get(spec.name)
        if fact is None:
            continue
        instances = []
        for i in live:
            q = quotas.get(i.id)
            if q is None:  # pending: not placed yet, or its agent has not reported it
                instances.append(InstanceContext(i.id, tuple(i.gpu_uuids), STARTING,
                                                 i.quota.sm_request, i.quota.sm_limit, 0.0,
                                                 spec.max_batch or 1, None))
                continue
            instances.append(InstanceContext(i.id, tuple(i.gpu_uuids), _STATES[i.state],
                                             q.request, q.limit, q.share, spec.max_batch or 1,
                                             bus.window(i.id, now_s)))
        windows = [i.window for i in instances if i.window is not None]
        inference[spec.name] = FunctionContext(
            name=spec.name, slo_ms=spec.slo.latency_ms, profile=fact.profile,
            cold_start_s=fact.cold_start_s, replicas_min=spec.replicas.min,
            replicas_max=spec.replicas.max, start_request=spec.resources.sm_request,
            start_limit=spec.resources.sm_limit or spec.resources.sm_request,
            start_max_batch=spec.max_batch or 1, window=function_window(windows), queued=0,
            instances=tuple(instances))
    for uuid, until in (refused or {}).items():
        if uuid in gpus and now_s < until:
            gpus[uuid] = _full(gpus[uuid], uuid, inference.values(), training.values())
    return Context(now_s, inference, gpus, training)


def _full(gpu: GpuContext, uuid: str, functions: Iterable[FunctionContext],
          training: Iterable[TrainingContext]) -> GpuContext:
    """The GPU shown with bounds at what it holds now: no room to grow on it."""
    requested = limited = 0.0
    for f in functions:
        for i in f.instances:
            if uuid in i.gpus:
                requested += i.request
                limited += i.limit
    for t in training:
        if uuid in t.gpus:
            requested += t.request
            limited += t.limit
    return GpuContext(uuid, min(gpu.max_requested, max(requested, 0.01)),
                      min(gpu.max_limited, max(limited, requested, 0.01)))


def headroom(context: Context, function: str) -> tuple[float, float]:
    """(request, limit) room on the GPUs `function`'s instances hold, summed."""
    f = context.functions.get(function)
    if f is None:
        return 0.0, 0.0
    held = {g for i in f.instances for g in i.gpus}
    request_room = limit_room = 0.0
    for uuid in held:
        gpu = context.gpus.get(uuid)
        if gpu is None:
            continue
        requests = limits = 0.0
        for other in context.functions.values():
            for i in other.instances:
                if uuid in i.gpus:
                    requests += i.request
                    limits += i.limit
        for t in context.training.values():
            if uuid in t.gpus:
                requests += t.request
                limits += t.limit
        request_room += max(0.0, gpu.max_requested - requests)
        limit_room += max(0.0, gpu.max_limited - limits)
    return request_room, limit_room
