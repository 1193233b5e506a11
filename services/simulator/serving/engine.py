"""The serving simulation: one scenario under one system, request by request, in virtual time.

Event-driven on integer nanoseconds. What runs is production code: the scheduler's pure
core (`services.scheduler.core.SchedulerCore`: deploys, replica planning, placement with
the system's placement policy on its `Ledger`, instance lifecycle, quota changes, and the
least-outstanding `router` every request is routed by), the node agent's
`NodeArbitration` (via `arbitration.py`), the worker's batching decisions and the gate's
rules (via `instances.py`), and each node agent's own admission (`NodeBudget`: starts and
quota changes against the bounds the node announces). What is simulated is time, the rest
of the node agents (they report instances ready after their cold start), the GPU (the execution model of
DESIGN.md) and the trip through the scheduler (a constant proxy overhead added to every
latency, measured on the live stack: `PROXY_OVERHEAD_MS`).

A request that finds no ready instance waits in its function's queue (at most
`QUEUE_LIMIT`; beyond it a request is refused, and counts as a violation) and is routed when
an instance becomes ready; its whole wait counts. The initial instances are deployed in
the scenario's order before the replay and are ready at time 0 (as the live demo waits for
readiness); an instance started later serves after its cold start. After the scenario's
duration no request arrives; those in flight finish (for at most `DRAIN_S`; the rest count
as violations).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dilu.v1 import types_pb2

from services.common.errors import DiluError
from services.node_agent.budget import Hold, NodeBudget, NoRoom
from services.perf import load_model
from services.scheduler.core import (
    CallFailed,
    CallSucceeded,
    Outcome,
    Refusal,
    SchedulerCore,
    SetQuota,
    StartInstance,
    StopInstance,
)
from services.scheduler.placement import PlacementBounds
from services.scheduler.routing import LeastOutstanding
from services.simulator.serving import policy as hooks
from services.simulator.serving.arrivals import scenario_arrivals
from services.simulator.serving.instances import (
    DRAINING,
    READY,
    STARTING,
    STOPPED,
    InferenceInstance,
    TrainingInstance,
)
from services.simulator.serving.scenario import Scenario, ServedFunction, TrainingJob
from services.simulator.serving.windows import QosWindow, WindowCounter

S = types_pb2
NS = 1_000_000_000
MS = 1_000_000
QUEUE_LIMIT = 1000
DRAIN_S = 60.0
# Client → scheduler → worker → scheduler → client, beyond the worker's own latency: the
# median measured on the live stack: 3.7-4.3 ms over four demo runs on this 2-core
# machine (`bench/demo_agreement.py` measures it).
PROXY_OVERHEAD_MS = 4.0
COLD_START_BASE_S = 2.0
WEIGHT_LOAD_BYTES_PER_S = 2e9
RECONCILE_S = 1.0  # the scheduler shell ticks its core this often


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
    """One function during the replay: its routes, its queue and what it measured."""

    sim: Simulation
    spec: ServedFunction
    sizing: Sizing
    overhead_ns: int
    router: LeastOutstanding
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
        # The scheduler core's router, over the instances its records say are ready.
        chosen = self.router.pick(self.ready)
        assert chosen is not None
        self.router.begin(chosen)
        self.instances[chosen].arrive(now_ns, client_ns)

    def set_routes(self, ready: list[str], now_ns: int) -> None:
        self.ready = [i for i in ready if i in self.instances]
        while self.ready and self.pending:
            self._route(now_ns, self.pending.popleft())

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


@dataclass(slots=True)
class Counters:
    cold_starts: int = 0
    vertical_actions: int = 0
    horizontal_actions: int = 0
    refused_actions: int = 0
    unplaced: list[str] = field(default_factory=list)
    share_changes: list[tuple[int, str, float]] = field(default_factory=list)


class Simulation:
    """Build with a scenario, a system (see `systems.py`) and the stand-in profiles of its
    functions (by function name), then `run()`. `sizings` (by function name) replaces the
    system's own sizing of those functions at the start (`--sizing profiler`: the profiler's
    rules, `profiled.profiler_sizings`)."""

    def __init__(self, scenario: Scenario, system: Any, profiles: dict[str, Any], *,
                 overhead_ms: float = PROXY_OVERHEAD_MS, ticked: bool = False,
                 record_shares: bool = False, sizings: dict[str, Sizing] | None = None) -> None:
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
        self._numbers = itertools.count()
        self.core = SchedulerCore(system.placement(self.bounds),
                                  new_id=lambda name: f"{name}-{next(self._numbers)}")
        self.nodes: dict[str, Any] = {}
        self.budgets: dict[str, NodeBudget] = {}  # each simulated agent's admission
        self.memory_mib: dict[str, int] = {}
        make_arbitration = system.arbitration()
        snapshot = {}
        for n in range(cluster.nodes):
            node = f"node-{n:03d}"
            gpus = [f"{node}-gpu{g}" for g in range(cluster.gpus_per_node)]
            snapshot[node] = (1, S.Node(
                id=node, address=node, gpu_backend="sim", bounds=self.bounds.to_proto(),
                gpus=[S.Gpu(uuid=uuid, index=g, model="A100-40GB (simulated)",
                            memory_total_mib=cluster.gpu_memory_mib)
                      for g, uuid in enumerate(gpus)]))
            self.memory_mib.update(dict.fromkeys(gpus, cluster.gpu_memory_mib))
            self.budgets[node] = NodeBudget(node, dict.fromkeys(gpus, cluster.gpu_memory_mib),
                                            self.bounds)
            self.nodes[node] = make_arbitration(
                self.schedule, node, gpus, ticked=ticked,
                on_shares=self._record_shares if record_shares else None)
        sizings = sizings or {}
        self.functions = {f.name: FunctionRuntime(
            self, f, sizings.get(f.name) or system.sizing(f, profiles.get(f.name)),
            round(overhead_ms * MS), self.core.router) for f in scenario.functions}
        self._function_list = [self.functions[f.name] for f in scenario.functions]
        self._jobs: dict[str, TrainingJob] = {t.name: t for t in scenario.training}
        # The simulated node agents' truth: what runs on each GPU.
        self.instances: dict[str, InferenceInstance | TrainingInstance] = {}
        self.training: dict[str, TrainingInstance] = {}
        self._on_gpu: dict[str, set[str]] = {u: set() for u in self.memory_mib}
        self._stop_calls: dict[str, StopInstance] = {}
        self.gpu_busy_ns: dict[str, int] = dict.fromkeys(self.memory_mib, 0)
        self._window_busy_ns: dict[str, int] = dict.fromkeys(self.memory_mib, 0)
        self._last_busy_s: dict[str, float] = {}
        self.policy = system.policy(scenario, profiles)
        self._deploying = True
        # GPUs held and shares reserved, integrated over time.
        self._reserved = 0.0
        self._accounted_ns = 0
        self.gpu_ns = 0.0
        self.reserved_ns = 0.0
        self.series: dict[str, list[float]] = {"gpus": [], "attainment": [], "offered_rps": []}
        self.replay_s = 0.0
        self._outcome(self.core.observe_nodes(snapshot, 0.0), 0)

    # ---- events ----------------------------------------------------------------------

    def schedule(self, at_ns: int, action: Callable[..., None], *args: Any, first: bool = False) -> None:
        """Run `action(at_ns, *args)` at `at_ns`; `first` goes before other events of the
        same instant (the arbiter's periods: a period boundary is seen before work there)."""
        heapq.heappush(self._heap, (at_ns, 0 if first else 1, next(self._seq), action, args))

    def run(self) -> Simulation:
        began = time.perf_counter()
        self._deploy()
        self._deploying = False
        for driver in self.nodes.values():
            driver.start(0)
        self.schedule(NS, self._close_windows)
        self.schedule(round(RECONCILE_S * NS), self._reconcile)
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

    # ---- the scheduler core, and the calls it asks the agents for ----------------------

    def _spec(self, name: str) -> types_pb2.FunctionSpec:
        if name in self._jobs:
            job = self._jobs[name]
            return S.FunctionSpec(
                name=name, kind=S.FUNCTION_KIND_TRAINING, runtime=S.RUNTIME_SIM, model=job.model,
                resources=S.Resources(sm_request=job.quota.request, sm_limit=job.quota.limit,
                                      memory_mib=job.quota.memory_mib, gpus_per_instance=job.gpus),
                replicas=S.Replicas(min=1, max=1),
                runtime_options={"host_ms": f"{job.host_ms:g}", "batch": str(job.batch),
                                 "slowdown": f"{job.slowdown:g}"})
        function = self.functions[name]
        sizing, spec = function.sizing, function.spec
        return S.FunctionSpec(
            name=name, kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM, model=spec.model,
            slo=S.Slo(latency_ms=spec.slo_ms),
            resources=S.Resources(sm_request=sizing.request, sm_limit=sizing.limit,
                                  memory_mib=sizing.memory_mib),
            replicas=S.Replicas(min=spec.replicas_min, max=spec.replicas_max),
            max_batch=sizing.max_batch, runtime_options={"slowdown": f"{spec.slowdown:g}"})

    def _deploy(self) -> None:
        """Deploy in the scenario's order: the first mention of a function deploys it with
        its minimum replicas, each further one scales it out by one."""
        seen: dict[str, int] = {}
        for name in self.scenario.deploy_order():
            seen[name] = seen.get(name, 0) + 1
            minimum = self.functions[name].spec.replicas_min if name in self.functions else 1
            if seen[name] == 1:
                change = self.core.deploy(self._spec(name), 0.0)
            elif seen[name] > minimum:
                change = self.core.scale(name, 1, 0.0, reason="initial replicas", source="scenario")
            else:
                continue
            self._outcome(self.core.apply(change, 0.0), 0)
        for function in self._function_list:
            placed = sum(1 for i in self.core.state.instances_of(function.spec.name)
                         if i.state == S.INSTANCE_STATE_READY)
            self.counters.unplaced += [function.spec.name] * (function.sizing.replicas - placed)
        for name in self._jobs:
            if not any(i.job.name == name for i in self.training.values()):
                self.counters.unplaced.append(name)

    def _outcome(self, outcome: Outcome, now_ns: int) -> None:
        for call in outcome.calls:
            if isinstance(call, StartInstance):
                self._agent_start(call, now_ns)
            elif isinstance(call, StopInstance):
                self._agent_stop(call, now_ns)
            elif isinstance(call, SetQuota):
                self._agent_set_quota(call, now_ns)
        touched = {self.core.state.instances[i].function for i in outcome.instances
                   if i in self.core.state.instances} | {
            name for name in outcome.functions if name in self.functions}
        for name in touched:
            if name in self.functions:
                ready = [i.id for i in self.core.state.instances_of(name)
                         if i.state == S.INSTANCE_STATE_READY and i.endpoint]
                self.functions[name].set_routes(ready, now_ns)

    def _agent_start(self, call: StartInstance, now_ns: int) -> None:
        quota = call.quota
        gpus = tuple(call.gpu_uuids)
        try:  # the agent's own admission, against its bounds
            self.budgets[call.node].start(call.instance_id, gpus, Hold.of(quota))
        except NoRoom as refusal:
            self._outcome(self.core.call_done(call, CallFailed(Refusal.NO_ROOM, refusal.message),
                                              now_ns / NS), now_ns)
            return
        spec = call.spec
        self._account(now_ns)
        instance: InferenceInstance | TrainingInstance
        if spec.kind == S.FUNCTION_KIND_TRAINING:
            instance = TrainingInstance(self, self._jobs[spec.name], call.instance_id, call.node,
                                        gpus, load_model(spec.model), now_ns)
            self.training[instance.id] = instance
        else:
            function = self.functions[spec.name]
            instance = InferenceInstance(
                self, function, call.instance_id, call.node, gpus, quota.sm_request,
                quota.sm_limit, quota.memory_limit_mib, spec.max_batch, load_model(spec.model),
                now_ns, slowdown=function.spec.slowdown)
            function.instances[instance.id] = instance
        self.instances[instance.id] = instance
        for uuid in gpus:
            self._on_gpu[uuid].add(instance.id)
        self._reserved += instance.request * len(gpus)
        self.nodes[call.node].attach(instance, now_ns)
        cold = not self._deploying and not instance.training
        report = S.InstanceReport(instance_id=instance.id, function=spec.name,
                                  state=S.INSTANCE_STATE_STARTING, quota=quota)
        if cold:
            self.counters.cold_starts += 1
            self.schedule(now_ns + round(cold_start_s(spec.model) * NS), self._agent_ready, instance)
        else:
            instance.state = READY
            report.state, report.endpoint = S.INSTANCE_STATE_READY, f"sim://{instance.id}"
            if isinstance(instance, TrainingInstance):
                instance.begin(now_ns)
        self._outcome(self.core.call_done(call, CallSucceeded(report=report), now_ns / NS), now_ns)

    def _agent_ready(self, now_ns: int, instance: InferenceInstance) -> None:
        if instance.state != STARTING:
            return
        instance.state = READY
        report = S.InstanceReport(instance_id=instance.id, function=instance.function.spec.name,
                                  state=S.INSTANCE_STATE_READY, endpoint=f"sim://{instance.id}")
        self._outcome(self.core.instance_reported(instance.node, report, now_ns / NS), now_ns)

    def _agent_stop(self, call: StopInstance, now_ns: int) -> None:
        instance = self.instances.get(call.instance_id)
        if instance is None:
            self._outcome(self.core.call_done(call, CallSucceeded(), now_ns / NS), now_ns)
            return
        self._stop_calls[instance.id] = call
        if isinstance(instance, TrainingInstance) or instance.state == STARTING:
            self.drained(instance, now_ns)
            return
        instance.state = DRAINING
        self.nodes[instance.node].update(instance, now_ns, draining=True)
        if instance.run is None and not len(instance.queue):
            self.drained(instance, now_ns)

    def drained(self, instance: InferenceInstance | TrainingInstance, now_ns: int) -> None:
        """A stopping instance has answered everything: its resources go back."""
        self._account(now_ns)
        instance.state = STOPPED
        instance.version += 1
        self.instances.pop(instance.id, None)
        if isinstance(instance, InferenceInstance):
            instance.function.instances.pop(instance.id, None)
        for uuid in instance.gpus:
            self._on_gpu[uuid].discard(instance.id)
        self.budgets[instance.node].release(instance.id)
        self._reserved -= instance.request * len(instance.gpus)
        self.nodes[instance.node].detach(instance, now_ns)
        call = self._stop_calls.pop(instance.id, None)
        if call is not None:
            self._outcome(self.core.call_done(call, CallSucceeded(), now_ns / NS), now_ns)

    def _agent_set_quota(self, call: SetQuota, now_ns: int) -> None:
        instance = self.instances.get(call.instance_id)
        quota = call.quota
        why = ""
        if instance is None or instance.state in (DRAINING, STOPPED):
            why = "no such instance"
        else:
            try:  # the agent's own admission, against its bounds
                self.budgets[instance.node].resize(instance.id, Hold(
                    quota.sm_request, quota.sm_limit, quota.memory_limit_mib or instance.memory_mib))
            except NoRoom as refusal:
                why = refusal.message
        if why or instance is None:
            self.counters.refused_actions += 1
            self._outcome(self.core.call_done(call, CallFailed(Refusal.NO_ROOM, why), now_ns / NS),
                          now_ns)
            return
        self._account(now_ns)
        self._reserved += (quota.sm_request - instance.request) * len(instance.gpus)
        instance.request, instance.limit = quota.sm_request, quota.sm_limit
        self.nodes[instance.node].update(instance, now_ns)
        self.counters.vertical_actions += 1
        applied = S.Quota(sm_request=quota.sm_request, sm_limit=quota.sm_limit,
                          memory_limit_mib=instance.memory_mib, effective_share=instance.share)
        self._outcome(self.core.call_done(call, CallSucceeded(quota=applied), now_ns / NS), now_ns)

    def _account(self, now_ns: int) -> None:
        until = min(now_ns, self.duration_ns)
        if until > self._accounted_ns:
            span = until - self._accounted_ns
            self.gpu_ns += sum(1 for held in self._on_gpu.values() if held) * span
            self.reserved_ns += self._reserved * span
            self._accounted_ns = until

    def _reconcile(self, now_ns: int) -> None:
        """The scheduler shell's periodic tick: pending instances are placed when room
        appears."""
        self._outcome(self.core.tick(now_ns / NS), now_ns)
        if now_ns + RECONCILE_S * NS <= self.duration_ns:
            self.schedule(now_ns + round(RECONCILE_S * NS), self._reconcile)

    # ---- windows and the scaling policy ----------------------------------------------

    def _close_windows(self, now_ns: int) -> None:
        offered = within = completed = 0
        for function in self._function_list:
            shares = sum(i.close_window(now_ns).mean_share for i in function.instances.values())
            window = function.last_window = function.window.close(now_ns, len(function.pending))
            function.series["offered_rps"].append(window.rps)
            function.series["instances"].append(len(function.instances))
            function.series["share"].append(shares)
            # No answer in the second: no p99 (a gap in the plot, not a zero).
            function.series["p99_ms"].append(window.p99_ms if window.completed else math.nan)
            offered += window.arrivals
            within += window.within_slo
            completed += window.completed
        self._last_busy_s = {u: ns / NS for u, ns in self._window_busy_ns.items()}
        self._window_busy_ns = dict.fromkeys(self._window_busy_ns, 0)
        self.series["gpus"].append(sum(1 for held in self._on_gpu.values() if held))
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
        for slot in self.core.ledger.gpus():
            gpus[slot.uuid] = hooks.GpuView(
                slot.uuid, slot.node, slot.memory_total_mib, slot.sm_requested, slot.sm_limited,
                slot.memory_allocated_mib, tuple(self.core.ledger.instances_on(slot.uuid)),
                self._last_busy_s.get(slot.uuid, 0.0))
        training = {i.id: hooks.TrainingView(i.id, i.job.name, i.node, i.gpus, i.request, i.limit,
                                             i.page_share)
                    for i in self.training.values() if i.state != STOPPED}
        return hooks.ClusterView(self.now_ns / NS, self.bounds.max_requested,
                                 self.bounds.max_limited, functions, gpus, training)

    def _policy_tick(self, now_ns: int) -> None:
        assert self.policy is not None
        for action in self.policy.decide(self.view()):
            self.apply(action, now_ns)
        next_tick = now_ns + round(self.policy.interval_s * NS)
        if next_tick < self.duration_ns:
            self.schedule(next_tick, self._policy_tick)

    def apply(self, action: hooks.Action, now_ns: int) -> bool:
        """Apply one policy action through the scheduler core (and the agents it calls),
        with the live platform's semantics; False when it is refused."""
        now = now_ns / NS
        try:
            if isinstance(action, hooks.SetMaxBatch):
                instance = self.instances.get(action.instance_id)
                if not isinstance(instance, InferenceInstance) or action.max_batch < 1:
                    raise KeyError(action.instance_id)
                instance.set_max_batch(action.max_batch)
                return True
            if isinstance(action, hooks.SetQuota):
                refused = self.counters.refused_actions
                self._outcome(self.core.set_quota(action.instance_id, S.Quota(
                    sm_request=action.request, sm_limit=action.limit), now), now_ns)
                return self.counters.refused_actions == refused
            if isinstance(action, hooks.ScaleOut):
                change = self.core.scale(action.function, action.count, now,
                                         reason=action.reason, source=self.system.name)
                self.counters.horizontal_actions += action.count
            else:
                chosen = () if action.instance_id is None else (action.instance_id,)
                change = self.core.scale(action.function, -1, now, reason=action.reason,
                                         source=self.system.name, instance_ids=chosen)
                self.counters.horizontal_actions += 1
            self._outcome(self.core.apply(change, now), now_ns)
            return True
        except (DiluError, KeyError):
            self.counters.refused_actions += 1
            return False

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
        for name, job in self._jobs.items():
            done.setdefault(name, (0.0, job.saturated_steps_per_s))
        return done

    def add_busy(self, gpus: tuple[str, ...], work_ns: int) -> None:
        """An instance's batch or step used `work_ns` of whole-GPU time on each of `gpus`."""
        for uuid in gpus:
            self.gpu_busy_ns[uuid] += work_ns
            self._window_busy_ns[uuid] += work_ns


__all__ = ["PROXY_OVERHEAD_MS", "QUEUE_LIMIT", "FunctionRuntime", "Simulation", "Sizing",
           "cold_start_s"]
