"""The serving simulation: one scenario under one system, request by request, in virtual time.

Event-driven on integer nanoseconds. What runs is production code: the system's placement
policy on the scheduler's `Ledger`, the scheduler's least-outstanding routing and replica
planning, the node agent's `NodeArbitration` (via `arbitration.py`), the worker's batching
decisions and the gate's rules (via `instances.py`). What is simulated is time, the GPU
(by the execution model of DESIGN.md) and the trip through the scheduler (a constant proxy
overhead added to every latency, measured on the live stack: see `PROXY_OVERHEAD_MS`).

A request that finds no ready instance waits in its function's queue (at most
`QUEUE_LIMIT`; beyond it a request is refused, and counts as a violation) and is routed when
an instance becomes ready; its whole wait counts. Initial instances are deployed before
the replay (ready at time 0, as the live demo waits for readiness); an instance added later
serves after its cold start. After the scenario's duration no request arrives; those in
flight finish (for at most `DRAIN_S`, the rest count as violations).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dilu.v1 import types_pb2

from services.perf import load_model
from services.scheduler.placement import (
    Assignment,
    InstanceShape,
    Ledger,
    Placement,
    PlacementBounds,
    WorkloadKind,
)
from services.scheduler.replicas import plan_replicas
from services.scheduler.routing import LeastOutstanding
from services.simulator.serving import policy as hooks
from services.simulator.serving.arrivals import scenario_arrivals
from services.simulator.serving.instances import (
    DRAINING,
    READY,
    STARTING,
    InferenceInstance,
    TrainingInstance,
)
from services.simulator.serving.scenario import Quota, Scenario, ServedFunction
from services.simulator.serving.windows import QosWindow, WindowCounter

NS = 1_000_000_000
MS = 1_000_000
QUEUE_LIMIT = 1000
DRAIN_S = 60.0
# Client → scheduler → worker → scheduler → client, beyond the worker's own latency: the
# median measured on the live stack (`bench/demo_agreement.py --proxy` measures it).
PROXY_OVERHEAD_MS = 2.0
COLD_START_BASE_S = 2.0
WEIGHT_LOAD_BYTES_PER_S = 2e9


def cold_start_s(model: str) -> float:
    """2 s plus the fp16 weights at 2 GB/s."""
    return COLD_START_BASE_S + load_model(model).weights_bytes / WEIGHT_LOAD_BYTES_PER_S


@dataclass(frozen=True, slots=True)
class Sizing:
    """What a system gives a function: replicas at the start and each instance's quota."""

    replicas: int
    request: float
    limit: float
    memory_mib: int
    max_batch: int


@dataclass(slots=True)
class FunctionRuntime:
    """One function during the replay: its routing, its queue and what it measured."""

    sim: Simulation
    spec: ServedFunction
    sizing: Sizing
    overhead_ns: int
    router: LeastOutstanding = field(default_factory=LeastOutstanding)
    instances: dict[str, InferenceInstance] = field(default_factory=dict)
    ready: list[str] = field(default_factory=list)
    pending: deque[int] = field(default_factory=deque)
    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    within_slo: int = 0
    refused: int = 0
    window: WindowCounter = field(default_factory=lambda: WindowCounter(0))
    last_window: QosWindow | None = None
    series: dict[str, list[float]] = field(default_factory=lambda: {
        "offered_rps": [], "instances": [], "share": [], "p99_ms": []})

    @property
    def slo_ns(self) -> int:
        return round(self.spec.slo_ms * MS)

    @property
    def slo_s(self) -> float:
        return self.spec.slo_ms / 1000

    def offer(self, now_ns: int) -> None:
        """A request arrives at the scheduler."""
        self.requests += 1
        self.window.arrivals += 1
        if self.ready:
            self.sim.open_requests += 1
            self._route(now_ns, now_ns)
        elif len(self.pending) < QUEUE_LIMIT:
            self.sim.open_requests += 1
            self.pending.append(now_ns)
        else:
            self.refused += 1
            self.window.refused += 1

    def _route(self, now_ns: int, client_ns: int) -> None:
        chosen = self.router.pick(self.ready)
        assert chosen is not None
        self.router.begin(chosen)
        self.instances[chosen].arrive(now_ns, client_ns)

    def answered(self, instance: InferenceInstance, now_ns: int, batch: list[int]) -> None:
        slo, overhead = self.slo_ns, self.overhead_ns
        window, own = self.window, instance.window
        for client in batch:
            latency = now_ns - client + overhead
            latency_ms = latency / MS
            self.latencies_ms.append(latency_ms)
            window.latencies_ms.append(latency_ms)
            own.latencies_ms.append(latency_ms)
            if latency <= slo:
                self.within_slo += 1
                window.within_slo += 1
                own.within_slo += 1
            self.router.end(instance.id)
        window.completed += len(batch)
        own.completed += len(batch)
        self.sim.open_requests -= len(batch)

    def became_ready(self, instance: InferenceInstance, now_ns: int) -> None:
        self.ready.append(instance.id)
        while self.pending:
            self._route(now_ns, self.pending.popleft())

    def stop_routing(self, instance: InferenceInstance) -> None:
        if instance.id in self.ready:
            self.ready.remove(instance.id)
        self.router.forget(instance.id)


@dataclass(slots=True)
class Counters:
    cold_starts: int = 0
    vertical_actions: int = 0
    horizontal_actions: int = 0
    refused_actions: int = 0
    unplaced: list[str] = field(default_factory=list)
    share_changes: list[tuple[int, str, float]] = field(default_factory=list)


class Simulation:
    """Build with a scenario and a system (see `systems.py`), then `run()`."""

    def __init__(self, scenario: Scenario, system: Any, profiles: dict[str, Any], *,
                 overhead_ms: float = PROXY_OVERHEAD_MS, ticked: bool = False,
                 record_shares: bool = False) -> None:
        self.scenario = scenario
        self.system = system
        self.profiles = profiles
        self.now_ns = 0
        self.duration_ns = round(scenario.duration_s * NS)
        self.open_requests = 0
        self.counters = Counters()
        self._heap: list[tuple[int, int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        cluster = scenario.cluster
        self.bounds = PlacementBounds(cluster.max_requested, cluster.max_limited)
        self.placement: Placement = system.placement(self.bounds)
        self.ledger = Ledger()
        self.nodes: dict[str, Any] = {}
        make_arbitration = system.arbitration()
        for n in range(cluster.nodes):
            node = f"node-{n:03d}"
            gpus = [f"{node}-gpu{g}" for g in range(cluster.gpus_per_node)]
            self.ledger.set_node(node, [(uuid, cluster.gpu_memory_mib) for uuid in gpus])
            self.nodes[node] = make_arbitration(
                self.schedule, node, gpus, ticked=ticked,
                on_shares=self._record_shares if record_shares else None)
        self.gpu_busy_ns: dict[str, int] = dict.fromkeys(self.ledger.view().uuids, 0)
        self._window_busy_ns: dict[str, int] = dict.fromkeys(self.gpu_busy_ns, 0)
        self._last_busy_s: dict[str, float] = {}
        self.functions = {f.name: FunctionRuntime(self, f, system.sizing(f, profiles.get(f.name)),
                                                  round(overhead_ms * MS))
                          for f in scenario.functions}
        self._function_list = [self.functions[f.name] for f in scenario.functions]
        self.training: dict[str, TrainingInstance] = {}
        self._instance_numbers = itertools.count()
        self._where: dict[str, str] = {}  # instance -> node
        self._pending_starts: list[hooks.ScaleOut] = []
        self.policy = system.policy(scenario, profiles)
        # Accounting of held GPUs and reserved shares over time.
        self._holders: dict[str, int] = {}
        self._reserved = 0.0
        self._accounted_ns = 0
        self.gpu_ns = 0.0
        self.reserved_ns = 0.0
        self.series: dict[str, list[float]] = {"gpus": [], "attainment": [], "offered_rps": []}
        self.replay_s = 0.0

    # ---- events ----------------------------------------------------------------------

    def schedule(self, at_ns: int, action: Callable[..., None], *args: Any, first: bool = False) -> None:
        """Run `action(at_ns, *args)` at `at_ns`; `first` goes before other events of the
        same instant (the arbiter's periods: a period boundary is seen before work there)."""
        heapq.heappush(self._heap, (at_ns, 0 if first else 1, next(self._seq), action, args))

    def run(self) -> Simulation:
        began = time.perf_counter()
        self._deploy()
        for driver in self.nodes.values():
            driver.start(0)
        self.schedule(NS, self._close_windows)
        if self.policy is not None:
            self.schedule(round(self.policy.interval_s * NS), self._policy_tick)
        times, which = scenario_arrivals(self.scenario)
        self._replay(times.tolist(), which.tolist())
        self._account(self.duration_ns)
        self.replay_s = time.perf_counter() - began
        return self

    def _replay(self, times: list[int], which: list[int]) -> None:
        heap, pop, functions = self._heap, heapq.heappop, self._function_list
        i, n = 0, len(times)
        end = self.duration_ns
        limit = end + round(DRAIN_S * NS)
        while True:
            upcoming = times[i] if i < n else math.inf
            if heap and heap[0][0] <= upcoming:
                at = heap[0][0]
                if at >= end and (self.open_requests <= 0 or at > limit):
                    break
                _, _, _, action, args = pop(heap)
                self.now_ns = at
                action(at, *args)
            elif i < n:
                self.now_ns = times[i]
                functions[which[i]].offer(times[i])
                i += 1
            else:
                break

    # ---- deployment and lifecycle ----------------------------------------------------

    def _deploy(self) -> None:
        trainings = {t.name: t for t in self.scenario.training}
        for name in self.scenario.deploy_order():
            if name in trainings:
                self._start_training(trainings[name])
            else:
                function = self.functions[name]
                if self._start_instance(function, function.sizing.request, function.sizing.limit,
                                        function.sizing.max_batch, cold=False) is None:
                    self.counters.unplaced.append(name)

    def _place(self, instance_id: str, shape: InstanceShape) -> tuple[str, tuple[str, ...]] | None:
        assignment = self.placement.place(shape, self.ledger.view())
        if assignment is None:
            return None
        self._account(self.now_ns)
        self.ledger.commit(instance_id, shape, assignment)
        for uuid in assignment.gpu_uuids:
            self._holders[uuid] = self._holders.get(uuid, 0) + 1
        self._reserved += shape.sm_request * len(assignment.gpu_uuids)
        self._where[instance_id] = assignment.node
        return assignment.node, tuple(assignment.gpu_uuids)

    def _release(self, instance_id: str, request: float, gpus: tuple[str, ...]) -> None:
        self._account(self.now_ns)
        self.ledger.release(instance_id)
        for uuid in gpus:
            self._holders[uuid] -= 1
            if not self._holders[uuid]:
                del self._holders[uuid]
        self._reserved -= request * len(gpus)
        self._where.pop(instance_id, None)

    def _account(self, now_ns: int) -> None:
        until = min(now_ns, self.duration_ns)
        if until > self._accounted_ns:
            span = until - self._accounted_ns
            self.gpu_ns += len(self._holders) * span
            self.reserved_ns += self._reserved * span
            self._accounted_ns = until

    def _start_training(self, job: Any) -> None:
        instance_id = f"{job.name}-{next(self._instance_numbers)}"
        shape = InstanceShape(job.name, WorkloadKind.TRAINING, job.quota.request, job.quota.limit,
                              job.quota.memory_mib, job.gpus)
        placed = self._place(instance_id, shape)
        if placed is None:
            self.counters.unplaced.append(job.name)
            return
        node, gpus = placed
        instance = TrainingInstance(self, job, instance_id, node, gpus, load_model(job.model),
                                    self.now_ns)
        self.training[instance_id] = instance
        self.nodes[node].attach(instance, self.now_ns)
        instance.begin(self.now_ns)

    def _start_instance(self, function: FunctionRuntime, request: float, limit: float,
                        max_batch: int, cold: bool) -> InferenceInstance | None:
        instance_id = f"{function.spec.name}-{next(self._instance_numbers)}"
        memory = function.sizing.memory_mib
        shape = InstanceShape(function.spec.name, WorkloadKind.INFERENCE, request, limit, memory)
        placed = self._place(instance_id, shape)
        if placed is None:
            return None
        node, gpus = placed
        instance = InferenceInstance(self, function, instance_id, node, gpus, request, limit,
                                     memory, max_batch, load_model(function.spec.model), self.now_ns)
        function.instances[instance_id] = instance
        self.nodes[node].attach(instance, self.now_ns)
        if cold:
            self.counters.cold_starts += 1
            self.schedule(self.now_ns + round(cold_start_s(function.spec.model) * NS),
                          self._ready, instance)
        else:
            self._ready(self.now_ns, instance)
        return instance

    def _ready(self, now_ns: int, instance: InferenceInstance) -> None:
        if instance.state != STARTING:
            return
        instance.state = READY
        instance.function.became_ready(instance, now_ns)

    def _drain(self, instance: InferenceInstance, now_ns: int) -> None:
        if instance.state == STARTING:
            instance.state = DRAINING
            instance.function.stop_routing(instance)
            self.drained(instance, now_ns)
            return
        instance.state = DRAINING
        instance.function.stop_routing(instance)
        self.nodes[instance.node].update(instance, now_ns, draining=True)
        if instance.run is None and not len(instance.queue):
            self.drained(instance, now_ns)

    def drained(self, instance: InferenceInstance, now_ns: int) -> None:
        """A draining instance has answered everything: its resources go back."""
        instance.state = "stopped"
        instance.version += 1
        instance.function.instances.pop(instance.id, None)
        self.nodes[instance.node].detach(instance, now_ns)
        self._release(instance.id, instance.request, instance.gpus)

    # ---- windows and the scaling policy ----------------------------------------------

    def _close_windows(self, now_ns: int) -> None:
        offered = within = completed = 0
        for function in self._function_list:
            shares = 0.0
            for instance in function.instances.values():
                instance.close_window(now_ns)
                shares += instance.page_share
            window = function.last_window = function.window.close(now_ns, len(function.pending))
            function.series["offered_rps"].append(window.rps)
            function.series["instances"].append(len(function.instances))
            function.series["share"].append(shares)
            function.series["p99_ms"].append(window.p99_ms)
            offered += window.arrivals
            within += window.within_slo
            completed += window.arrivals
        self._last_busy_s = {u: ns / NS for u, ns in self._window_busy_ns.items()}
        self._window_busy_ns = dict.fromkeys(self._window_busy_ns, 0)
        self.series["gpus"].append(len(self._holders))
        self.series["offered_rps"].append(offered)
        self.series["attainment"].append(within / completed if completed else 1.0)
        if now_ns + NS <= self.duration_ns:
            self.schedule(now_ns + NS, self._close_windows)

    def view(self) -> hooks.ClusterView:
        """What a scaling policy sees now."""
        functions = {}
        for name, function in self.functions.items():
            instances = tuple(hooks.InstanceView(
                i.id, name, i.node, i.gpus, i.state, i.request, i.limit, i.page_share,
                i.max_batch, i.last_window) for i in function.instances.values())
            spec = function.spec
            functions[name] = hooks.FunctionView(
                name, spec.model, spec.slo_ms, spec.replicas_min, spec.replicas_max,
                function.last_window, len(function.pending), instances)
        gpus = {}
        for slot in self.ledger.gpus():
            gpus[slot.uuid] = hooks.GpuView(
                slot.uuid, slot.node, slot.memory_total_mib, slot.sm_requested, slot.sm_limited,
                slot.memory_allocated_mib, tuple(self.ledger.instances_on(slot.uuid)),
                self._last_busy_s.get(slot.uuid, 0.0))
        return hooks.ClusterView(self.now_ns / NS, self.bounds.max_requested,
                                 self.bounds.max_limited, functions, gpus)

    def _policy_tick(self, now_ns: int) -> None:
        assert self.policy is not None
        self._retry_pending(now_ns)
        for action in self.policy.decide(self.view()):
            self.apply(action, now_ns)
        next_tick = now_ns + round(self.policy.interval_s * NS)
        if next_tick < self.duration_ns:
            self.schedule(next_tick, self._policy_tick)

    def apply(self, action: hooks.Action, now_ns: int) -> bool:
        """Apply one policy action with the live platform's semantics; False if refused."""
        if isinstance(action, hooks.SetQuota):
            return self._set_quota(action, now_ns)
        if isinstance(action, hooks.SetMaxBatch):
            instance = self._inference(action.instance_id)
            if instance is None or action.max_batch < 1:
                self.counters.refused_actions += 1
                return False
            instance.set_max_batch(action.max_batch)
            return True
        if isinstance(action, hooks.ScaleOut):
            return self._scale_out(action, now_ns)
        return self._scale_in(action, now_ns)

    def _inference(self, instance_id: str) -> InferenceInstance | None:
        for function in self._function_list:
            if instance_id in function.instances:
                return function.instances[instance_id]
        return None

    def _set_quota(self, action: hooks.SetQuota, now_ns: int) -> bool:
        instance = self._inference(action.instance_id)
        ok = (instance is not None and instance.state != DRAINING
              and 0.01 <= action.request <= action.limit <= 1.0)
        if ok:
            assert instance is not None
            for uuid in instance.gpus:
                slot = self.ledger.gpu(uuid)
                assert slot is not None
                requested = slot.sm_requested - instance.request + action.request
                limited = slot.sm_limited - instance.limit + action.limit
                if (requested > self.bounds.max_requested + 1e-9
                        or limited > self.bounds.max_limited + 1e-9):
                    ok = False
        if not ok:
            self.counters.refused_actions += 1
            return False
        assert instance is not None
        self._account(now_ns)
        shape = InstanceShape(instance.function.spec.name, WorkloadKind.INFERENCE, action.request,
                              action.limit, instance.memory_mib)
        # The ledger records the new quota in place (release and commit at the same GPUs).
        self.ledger.release(instance.id)
        self.ledger.commit(instance.id, shape, Assignment(instance.node, instance.gpus))
        self._reserved += (action.request - instance.request) * len(instance.gpus)
        instance.request, instance.limit = action.request, action.limit
        self.nodes[instance.node].update(instance, now_ns)
        self.counters.vertical_actions += 1
        return True

    def _scale_out(self, action: hooks.ScaleOut, now_ns: int) -> bool:
        function = self.functions.get(action.function)
        if function is None or action.count < 1:
            self.counters.refused_actions += 1
            return False
        live = sum(1 for i in function.instances.values() if i.state != DRAINING)
        if live + action.count > function.spec.replicas_max:
            self.counters.refused_actions += 1
            return False
        for _ in range(action.count):
            self.counters.horizontal_actions += 1
            if self._start_from(action, now_ns) is None:
                self._pending_starts.append(action)
        return True

    def _start_from(self, action: hooks.ScaleOut, now_ns: int) -> InferenceInstance | None:
        function = self.functions[action.function]
        request = action.request if action.request is not None else function.sizing.request
        limit = action.limit if action.limit is not None else function.sizing.limit
        batch = action.max_batch or function.sizing.max_batch
        return self._start_instance(function, request, max(limit, request), batch, cold=True)

    def _retry_pending(self, now_ns: int) -> None:
        waiting, self._pending_starts = self._pending_starts, []
        for action in waiting:
            if self._start_from(action, now_ns) is None:
                self._pending_starts.append(action)

    def _scale_in(self, action: hooks.ScaleIn, now_ns: int) -> bool:
        function = self.functions.get(action.function)
        live = [] if function is None else [i for i in function.instances.values()
                                            if i.state != DRAINING]
        if function is None or len(live) - 1 < function.spec.replicas_min:
            self.counters.refused_actions += 1
            return False
        chosen = action.instance_id
        if chosen is None:
            chosen = _planned_stop(live)
        instance = function.instances.get(chosen)
        if instance is None or instance.state == DRAINING:
            self.counters.refused_actions += 1
            return False
        self.counters.horizontal_actions += 1
        self._drain(instance, now_ns)
        return True

    def _record_shares(self, tick: int, changed: dict[str, float]) -> None:
        for instance_id, share in sorted(changed.items()):
            self.counters.share_changes.append((tick, instance_id, share))

    # ---- results ---------------------------------------------------------------------

    def training_progress(self) -> dict[str, tuple[float, float]]:
        """Per training job: (steps done by the end, steps per second at saturation)."""
        done: dict[str, tuple[float, float]] = {}
        for instance in self.training.values():
            steps, saturated = done.get(instance.job.name, (0.0, instance.job.saturated_steps_per_s))
            done[instance.job.name] = (steps + instance.progress(self.duration_ns), saturated)
        return done

    def add_busy(self, gpus: tuple[str, ...], work_ns: int) -> None:
        """An instance's batch or step used `work_ns` of whole-GPU time on each of `gpus`."""
        for uuid in gpus:
            self.gpu_busy_ns[uuid] += work_ns
            self._window_busy_ns[uuid] += work_ns


def _planned_stop(live: Sequence[InferenceInstance]) -> str:
    """The scheduler's choice of the instance to stop (`plan_replicas`)."""
    states = {STARTING: types_pb2.INSTANCE_STATE_STARTING, READY: types_pb2.INSTANCE_STATE_READY}
    records = []
    for order, instance in enumerate(live):
        record = types_pb2.Instance(id=instance.id, state=states.get(instance.state,
                                                                     types_pb2.INSTANCE_STATE_READY))
        record.created_at.FromNanoseconds(order)
        records.append(record)
    return plan_replicas(len(live) - 1, records).stop[0]


__all__ = ["PROXY_OVERHEAD_MS", "QUEUE_LIMIT", "Quota", "Simulation", "Sizing", "cold_start_s"]
