"""The scheduler's application shell: owns cluster state, reconciles replica counts with
placements on node agents, tracks nodes from heartbeats and routes invocations.

Decisions are delegated to pure pieces (validation, placement, replica planning, routing,
node liveness); this class does the I/O around them. All state changes happen under one
lock; calls to node agents are decided under it and made after it is released.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import grpc
from dilu.events.v1 import events_pb2
from dilu.v1 import (
    node_agent_pb2,
    node_agent_pb2_grpc,
    scheduler_pb2,
    types_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

from services.common import subjects
from services.common.bus import Bus, ProtoKV
from services.common.channels import ChannelPool
from services.common.errors import (
    DiluError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PeerError,
    Unavailable,
)
from services.common.timestamps import now_timestamp
from services.common.tracing import trace_metadata
from services.scheduler.nodes import NodeTracker
from services.scheduler.placement import (
    Assignment,
    InstanceShape,
    Ledger,
    Placement,
    WorkloadKind,
)
from services.scheduler.replicas import LIVE_STATES, plan_replicas
from services.scheduler.routing import LeastOutstanding
from services.scheduler.store import Store
from services.scheduler.validation import validate_spec

log = logging.getLogger(__name__)

S = types_pb2  # short alias for the many enum references below
StateValue: TypeAlias = types_pb2.InstanceState.ValueType
T = TypeVar("T")

_PLACED = frozenset({S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_READY})
# Instances that hold GPU resources in the ledger.
_HOLDING = _PLACED | {S.INSTANCE_STATE_DRAINING}
_TERMINAL = frozenset({S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_LOST, S.INSTANCE_STATE_STOPPED})
_KINDS = {
    S.FUNCTION_KIND_INFERENCE: WorkloadKind.INFERENCE,
    S.FUNCTION_KIND_LLM_INFERENCE: WorkloadKind.LLM_INFERENCE,
    S.FUNCTION_KIND_TRAINING: WorkloadKind.TRAINING,
}
# Heartbeats in a row that must omit a placed instance before it counts as gone: the
# first may have been written before the agent handled StartInstance.
_MISSING_HEARTBEATS = 2


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    node_timeout_s: float = 10.0
    reconcile_interval_s: float = 1.0
    # Minimum age of a placement before an agent's heartbeats may declare it gone.
    agent_grace_s: float = 2.0
    # Failed/lost/stopped instances stay visible this long, then are forgotten.
    terminal_retention_s: float = 30.0
    agent_timeout_s: float = 5.0
    # How long a stopping instance may take to finish its in-flight requests.
    drain_timeout_s: float = 10.0
    # Start failures back a function off exponentially, up to this long.
    max_start_backoff_s: float = 30.0


def shape_of(spec: types_pb2.FunctionSpec) -> InstanceShape:
    # max_shards stays 1: a worker runs its model on one GPU, so nothing is split here.
    res = spec.resources
    return InstanceShape(
        function=spec.name, kind=_KINDS[spec.kind], sm_request=res.sm_request,
        sm_limit=res.sm_limit, memory_mib=res.memory_mib, gpus=max(1, res.gpus_per_instance),
    )


@dataclass(slots=True)
class _AgentCall:
    """A call to a node agent decided under the lock and made after it is released."""

    kind: str  # "start" | "stop"
    node: str
    instance_id: str
    request: node_agent_pb2.StartInstanceRequest | None = None


class Scheduler:
    def __init__(self, bus: Bus, store: Store, nodes_kv: ProtoKV[types_pb2.Node],
                 placement: Placement, settings: SchedulerSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self._bus = bus
        self._store = store
        self._nodes_kv = nodes_kv
        self._placement = placement
        self._settings = settings
        self._clock = clock
        self._ledger = Ledger()
        self._nodes = NodeTracker(settings.node_timeout_s)
        self._router = LeastOutstanding()
        self._channels = ChannelPool()
        self._lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        # True while heartbeats could not be read: node liveness is not judged then.
        self._blind = False
        self._missing: dict[str, tuple[int, int]] = {}  # instance -> (heartbeats, revision)
        self._stop_sent: dict[str, float] = {}  # instance -> when StopInstance was last sent
        self._backoff: dict[str, tuple[float, float]] = {}  # function -> (until, delay)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._store.load()
        snapshot = await self._read_nodes()
        async with self._lock:
            self._apply_nodes(snapshot, self._clock(), trusted=False)
            for instance in list(self._store.instances.values()):
                if instance.state in _HOLDING and not self._recommit(instance):
                    self._fail(instance, S.INSTANCE_STATE_LOST,
                               f"node {instance.node} is gone after a scheduler restart")
            await self._store.flush()
        await self._bus.subscribe(subjects.INSTANCE_EVENTS_ALL, events_pb2.InstanceEvent,
                                  self._on_instance_event)
        self._loop_task = asyncio.create_task(self._reconcile_forever(), name="reconcile")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._settings.agent_timeout_s)
        await self._channels.close()

    def _recommit(self, instance: types_pb2.Instance) -> bool:
        function = self._store.functions.get(instance.function)
        gpus = [self._ledger.gpu(u) for u in instance.gpu_uuids]
        if (function is None or len(gpus) != shape_of(function.spec).gpus
                or not all(g is not None and g.node == instance.node for g in gpus)):
            return False  # its GPUs are gone or now answer to another node
        self._ledger.commit(instance.id, shape_of(function.spec),
                            Assignment(instance.node, tuple(instance.gpu_uuids)))
        return True

    async def _shielded(self, operation: Awaitable[T]) -> T:
        """Run a state change to completion even if the caller's RPC is cancelled, so a
        client deadline never leaves half a deploy, delete or scale behind."""
        task: asyncio.Task[T] = asyncio.ensure_future(operation)
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]
        return await asyncio.shield(task)

    # ---- RPC-facing operations -------------------------------------------------------

    async def deploy(self, spec: types_pb2.FunctionSpec) -> types_pb2.Function:
        spec = validate_spec(spec)
        return await self._shielded(self._deploy(spec))

    async def _deploy(self, spec: types_pb2.FunctionSpec) -> types_pb2.Function:
        async with self._lock:
            if spec.name in self._store.functions:
                raise InvalidArgument("function.name",
                                      f"a function named {spec.name!r} is already deployed; "
                                      "delete it first or choose another name")
            function = types_pb2.Function(spec=spec)
            function.status.desired_replicas = spec.replicas.min
            function.status.created_at.CopyFrom(now_timestamp(self._clock()))
            await self._store.put_function_now(function)
            calls = self._reconcile_function(spec.name, self._clock())
            await self._store.flush()
        log.info("deployed %s (%d replicas)", spec.name, spec.replicas.min)
        await self._run_agent_calls(calls)
        return self.get(spec.name)

    async def delete(self, name: str) -> int:
        return await self._shielded(self._delete(name))

    async def _delete(self, name: str) -> int:
        async with self._lock:
            if name not in self._store.functions:
                raise NotFound(f"no function named {name!r}")
            await self._store.delete_function_now(name)
            self._backoff.pop(name, None)
            calls = [c for i in self._store.instances_of(name) if i.state not in _TERMINAL
                     for c in self._stop(i, "function deleted")]
            await self._store.flush()
        await self._run_agent_calls(calls)
        return len(calls)

    def get(self, name: str) -> types_pb2.Function:
        stored = self._store.functions.get(name)
        if stored is None:
            raise NotFound(f"no function named {name!r}")
        function = types_pb2.Function()
        function.CopyFrom(stored)
        instances = self._store.instances_of(name)
        function.status.instances.extend(instances)
        function.status.ready_replicas = sum(
            1 for i in instances if i.state == S.INSTANCE_STATE_READY)
        return function

    def functions(self) -> list[types_pb2.Function]:
        return [self.get(name) for name in sorted(self._store.functions)]

    async def scale(self, name: str, delta: int, reason: str, source: str,
                    instance_ids: Iterable[str] = ()) -> types_pb2.Function:
        """Change the replica count by `delta`, or remove exactly `instance_ids`."""
        return await self._shielded(self._scale(name, delta, reason, source, list(instance_ids)))

    async def _scale(self, name: str, delta: int, reason: str, source: str,
                     chosen: list[str]) -> types_pb2.Function:
        async with self._lock:
            function = self._store.functions.get(name)
            if function is None:
                raise NotFound(f"no function named {name!r}")
            for instance_id in chosen:
                instance = self._store.instances.get(instance_id)
                if instance is None or instance.function != name or instance.state not in LIVE_STATES:
                    raise InvalidArgument("instance_ids",
                                          f"{instance_id!r} is not a live instance of {name}")
            if chosen:
                delta = -len(set(chosen))
            before = function.status.desired_replicas
            after = before + delta
            bounds = function.spec.replicas
            if after > bounds.max:
                raise FailedPrecondition(
                    f"{name} would have {after} replicas, above replicas.max={bounds.max}")
            if after < bounds.min:
                raise FailedPrecondition(
                    f"{name} would have {after} replicas, below replicas.min={bounds.min}")
            updated = types_pb2.Function()
            updated.CopyFrom(function)
            updated.status.desired_replicas = after
            await self._store.put_function_now(updated)
            calls = [c for i in sorted(set(chosen))
                     for c in self._stop(self._store.instances[i], reason or "scaled in")]
            calls += self._reconcile_function(name, self._clock())
            await self._store.flush()
        decision = events_pb2.ScalingDecision(
            function=name, at=now_timestamp(self._clock()),
            kind=(events_pb2.SCALING_KIND_HORIZONTAL_OUT if delta > 0
                  else events_pb2.SCALING_KIND_HORIZONTAL_IN),
            replicas_before=before, replicas_after=after, reason=reason, source=source)
        await self._bus.publish(subjects.scaling_events(name), decision)
        await self._run_agent_calls(calls)
        return self.get(name)

    async def invoke(self, request: scheduler_pb2.InvokeRequest) -> scheduler_pb2.InvokeResponse:
        function = self._store.functions.get(request.function)
        if function is None:
            raise NotFound(f"no function named {request.function!r}")
        timeout_s = (request.timeout_ms or 10 * function.spec.slo.latency_ms or 30_000) / 1000
        tried: set[str] = set()
        failure: DiluError | None = None
        # One retry on another instance when the first is unreachable (it may be dying).
        for _ in range(2):
            ready = {i.id: i.endpoint for i in self._store.instances_of(request.function)
                     if i.state == S.INSTANCE_STATE_READY and i.endpoint and i.id not in tried}
            instance_id = self._router.pick(ready)
            if instance_id is None:
                break
            self._router.begin(instance_id)
            try:
                stub = worker_pb2_grpc.WorkerServiceStub(self._channels.get(ready[instance_id]))
                answer = await stub.Infer(
                    worker_pb2.InferRequest(payload=request.payload,
                                            content_type=request.content_type),
                    timeout=timeout_s, metadata=trace_metadata())
            except grpc.aio.AioRpcError as error:
                failure = PeerError(error.code(), f"instance {instance_id}: {error.details()}")
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise failure from error
                tried.add(instance_id)
                continue
            finally:
                self._router.end(instance_id)
            return scheduler_pb2.InvokeResponse(
                payload=answer.payload, content_type=answer.content_type,
                instance_id=instance_id, worker_latency_ms=answer.latency_ms,
                batch_size=answer.batch_size)
        if failure is not None:
            raise failure
        states = [S.InstanceState.Name(i.state).removeprefix("INSTANCE_STATE_").lower()
                  for i in self._store.instances_of(request.function)]
        raise Unavailable(f"function {request.function!r} has no ready instance "
                          f"(instances: {', '.join(states) or 'none'})")

    def list_nodes(self) -> list[types_pb2.NodeView]:
        views = []
        for node in self._nodes.all():
            view = types_pb2.NodeView(node=node, state=self._nodes.state(node.id))
            for gpu in self._ledger.gpus([node.id]):
                view.allocations.add(
                    gpu_uuid=gpu.uuid, sm_requested=gpu.sm_requested, sm_limited=gpu.sm_limited,
                    memory_allocated_mib=gpu.memory_allocated_mib,
                    instance_ids=self._ledger.instances_on(gpu.uuid))
            views.append(view)
        return views

    # ---- reconciliation --------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Unavailable as error:
                log.warning("reconcile deferred: %s", error)
            except Exception:
                log.exception("reconcile pass failed")
            await asyncio.sleep(self._settings.reconcile_interval_s)

    async def reconcile_once(self) -> None:
        try:
            snapshot = await self._read_nodes()
        except Unavailable:
            self._blind = True
            raise
        async with self._lock:
            if not await self._store.flush():
                self._blind = True
                raise Unavailable("state store unreachable")
            now = self._clock()
            self._apply_nodes(snapshot, now, trusted=True)
            if self._blind:
                self._nodes.pardon(now)
                self._blind = False
            _, lost = self._nodes.sweep(now)
            for node_id in lost:
                self._on_node_lost(node_id)
            calls = self._sync_with_agents(now)
            calls += self._stop_orphaned_records()
            for name in sorted(self._store.functions):
                calls += self._reconcile_function(name, now)
            self._forget_terminal(now)
            await self._store.flush()
        await self._run_agent_calls(calls)

    async def _read_nodes(self) -> dict[str, tuple[int, types_pb2.Node]]:
        return await self._nodes_kv.items()

    def _apply_nodes(self, snapshot: dict[str, tuple[int, types_pb2.Node]], now: float, *,
                     trusted: bool) -> None:
        for revision, node in snapshot.values():
            self._nodes.observe(node, revision, now, trusted=trusted)
            if self._nodes.state(node.id) == S.NODE_STATE_LOST:
                # A lost node's record lingers for the bucket's TTL, and the agent that
                # replaced it may declare the same GPUs: a lost node declares none.
                evicted = self._ledger.remove_node(node.id)
            else:
                evicted = self._ledger.set_node(node.id, [(g.uuid, g.memory_total_mib)
                                                          for g in node.gpus])
            for instance_id in evicted:
                instance = self._store.instances.get(instance_id)
                if instance is not None:
                    self._fail(instance, S.INSTANCE_STATE_FAILED,
                               f"its GPU is no longer on node {node.id}")

    def _reconcile_function(self, name: str, now: float) -> list[_AgentCall]:
        function = self._store.functions[name]
        instances = self._store.instances_of(name)
        plan = plan_replicas(function.status.desired_replicas, instances)
        calls = [c for i in plan.stop for c in self._stop(self._store.instances[i], "scaled in")]
        until, _ = self._backoff.get(name, (0.0, 0.0))
        if now < until:
            return calls  # recent start failures: let the cause clear before trying again
        res = function.spec.resources
        for _ in range(plan.start):
            instance = types_pb2.Instance(
                id=f"{name}-{secrets.token_hex(3)}", function=name,
                state=S.INSTANCE_STATE_PENDING, created_at=now_timestamp(now),
                updated_at=now_timestamp(now),
                quota=types_pb2.Quota(sm_request=res.sm_request, sm_limit=res.sm_limit,
                                      memory_limit_mib=res.memory_mib))
            self._store.instances[instance.id] = instance
            self._store.mark_instance(instance.id)
        for instance in self._store.instances_of(name):
            if instance.state == S.INSTANCE_STATE_PENDING:
                calls += self._try_place(function.spec, instance)
        return calls

    def _try_place(self, spec: types_pb2.FunctionSpec,
                   instance: types_pb2.Instance) -> list[_AgentCall]:
        shape = shape_of(spec)
        assignment = self._placement.place(shape, self._ledger.view(self._nodes.ready()))
        if assignment is None:
            reason = (f"no ready node has {shape.gpus} GPU(s) with room for sm_request "
                      f"{shape.sm_request:g}, sm_limit {shape.sm_limit:g} and "
                      f"{shape.memory_mib} MiB")
            if instance.message != reason:
                self._set_state(instance, S.INSTANCE_STATE_PENDING, reason)
            return []
        self._ledger.commit(instance.id, shape, assignment)
        instance.node = assignment.node
        del instance.gpu_uuids[:]
        instance.gpu_uuids.extend(assignment.gpu_uuids)
        instance.quota.effective_share = shape.sm_request
        self._set_state(instance, S.INSTANCE_STATE_STARTING, f"placed on {assignment.node}")
        request = node_agent_pb2.StartInstanceRequest(
            instance_id=instance.id, function=spec, gpu_uuids=assignment.gpu_uuids,
            quota=instance.quota)
        return [_AgentCall("start", assignment.node, instance.id, request)]

    def _stop(self, instance: types_pb2.Instance, why: str) -> list[_AgentCall]:
        """Begin stopping an instance. A placed one drains and keeps its GPU share until
        its agent confirms the stop; an unplaced one is simply forgotten."""
        self._router.forget(instance.id)
        if instance.state in _PLACED and instance.node:
            self._set_state(instance, S.INSTANCE_STATE_DRAINING, why)
            self._stop_sent[instance.id] = self._clock()
            return [_AgentCall("stop", instance.node, instance.id)]
        self._store.instances.pop(instance.id, None)
        self._store.mark_instance(instance.id)
        return []

    def _stopped(self, instance: types_pb2.Instance, why: str) -> None:
        self._ledger.release(instance.id)
        self._stop_sent.pop(instance.id, None)
        self._set_state(instance, S.INSTANCE_STATE_STOPPED, why)

    def _fail(self, instance: types_pb2.Instance, state: StateValue, why: str) -> None:
        self._ledger.release(instance.id)
        self._router.forget(instance.id)
        self._missing.pop(instance.id, None)
        self._set_state(instance, state, why)
        log.warning("instance %s %s: %s", instance.id,
                    S.InstanceState.Name(state).removeprefix("INSTANCE_STATE_").lower(), why)

    def _set_state(self, instance: types_pb2.Instance, state: StateValue, message: str) -> None:
        instance.state = state
        instance.message = message
        instance.updated_at.CopyFrom(now_timestamp(self._clock()))
        self._store.mark_instance(instance.id)

    def _on_node_lost(self, node_id: str) -> None:
        log.warning("node %s lost: no heartbeat for %.1f s", node_id, self._settings.node_timeout_s)
        for instance in list(self._store.instances.values()):
            if instance.node != node_id:
                continue
            if instance.state == S.INSTANCE_STATE_DRAINING:
                self._stopped(instance, f"node {node_id} stopped heartbeating while it drained")
            elif instance.state in _PLACED:
                self._fail(instance, S.INSTANCE_STATE_LOST, f"node {node_id} stopped heartbeating")

    def _sync_with_agents(self, now: float) -> list[_AgentCall]:
        """Level-triggered repair from heartbeats: adopt states agents report, fail what an
        agent has forgotten, finish or repeat stops, stop what an agent runs unwanted."""
        calls: list[_AgentCall] = []
        for node_id in self._nodes.ready():
            node = self._nodes.node(node_id)
            assert node is not None
            revision = self._nodes.revision(node_id)
            reported = {r.instance_id: r for r in node.instances}
            for instance in list(self._store.instances.values()):
                if instance.node != node_id or instance.state not in _HOLDING:
                    continue
                report = reported.get(instance.id)
                if instance.state == S.INSTANCE_STATE_DRAINING:
                    if report is None:
                        self._stopped(instance, instance.message or "stopped")
                    elif self._stop_due(instance.id, now):
                        calls.append(_AgentCall("stop", node_id, instance.id))
                elif report is not None:
                    self._missing.pop(instance.id, None)
                    self._adopt(instance, report.state, report.endpoint, report.message)
                    self._adopt_share(instance, report.quota.effective_share)
                else:
                    self._note_missing(instance, node_id, revision, now)
            for instance_id in reported:
                known = self._store.instances.get(instance_id)
                unwanted = known is None or known.state in _TERMINAL or known.node != node_id
                if unwanted and self._stop_due(instance_id, now):
                    calls.append(_AgentCall("stop", node_id, instance_id))
        return calls

    def _stop_due(self, instance_id: str, now: float) -> bool:
        """Repeat a StopInstance at most once per agent timeout while it is not confirmed."""
        repeat_after = self._settings.drain_timeout_s + self._settings.agent_timeout_s
        if now - self._stop_sent.get(instance_id, -1e18) < repeat_after:
            return False
        self._stop_sent[instance_id] = now
        return True

    def _note_missing(self, instance: types_pb2.Instance, node_id: str, revision: int,
                      now: float) -> None:
        count, seen_revision = self._missing.get(instance.id, (0, 0))
        if revision != seen_revision:
            count += 1
        self._missing[instance.id] = (count, revision)
        age = now - instance.updated_at.ToNanoseconds() / 1e9
        if count >= _MISSING_HEARTBEATS and age > self._settings.agent_grace_s:
            self._fail(instance, S.INSTANCE_STATE_FAILED, f"node agent {node_id} no longer runs it")

    def _stop_orphaned_records(self) -> list[_AgentCall]:
        """Instances whose function is gone (e.g. a delete cut short) are stopped too."""
        return [c for i in list(self._store.instances.values())
                if i.function not in self._store.functions
                and i.state not in _TERMINAL | {S.INSTANCE_STATE_DRAINING}
                for c in self._stop(i, "function deleted")]

    def _adopt(self, instance: types_pb2.Instance, state: StateValue, endpoint: str,
               message: str) -> None:
        """Apply a state an agent reported for a placed instance."""
        if state == S.INSTANCE_STATE_READY and (
                instance.state != S.INSTANCE_STATE_READY or instance.endpoint != endpoint):
            instance.endpoint = endpoint
            self._set_state(instance, S.INSTANCE_STATE_READY, message or "serving")
        elif state in (S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_STOPPED):
            self._fail(instance, S.INSTANCE_STATE_FAILED, message or "worker exited")
        elif state == instance.state and message and message != instance.message:
            self._set_state(instance, state, message)  # the agent knows best why it waits

    def _adopt_share(self, instance: types_pb2.Instance, effective_share: float) -> None:
        """The node's arbiter owns the effective share; the scheduler shows the latest one
        (as of the last heartbeat) and never plans with it: placement uses requests."""
        if effective_share and abs(effective_share - instance.quota.effective_share) > 1e-6:
            instance.quota.effective_share = effective_share
            self._store.mark_instance(instance.id)

    async def _on_instance_event(self, _subject: str, event: events_pb2.InstanceEvent) -> None:
        states = {
            events_pb2.INSTANCE_EVENT_KIND_READY: S.INSTANCE_STATE_READY,
            events_pb2.INSTANCE_EVENT_KIND_FAILED: S.INSTANCE_STATE_FAILED,
            events_pb2.INSTANCE_EVENT_KIND_STOPPED: S.INSTANCE_STATE_STOPPED,
        }
        state = states.get(event.kind)
        async with self._lock:
            instance = self._store.instances.get(event.instance_id)
            if state is None or instance is None or instance.node != event.node:
                return
            if instance.state == S.INSTANCE_STATE_DRAINING and state == S.INSTANCE_STATE_STOPPED:
                self._stopped(instance, instance.message or "stopped")
            elif instance.state in _PLACED:
                self._adopt(instance, state, event.endpoint, event.message)
            await self._store.flush()

    def _forget_terminal(self, now: float) -> None:
        for instance in list(self._store.instances.values()):
            age = now - instance.updated_at.ToNanoseconds() / 1e9
            if instance.state in _TERMINAL and age > self._settings.terminal_retention_s:
                self._store.instances.pop(instance.id)
                self._store.mark_instance(instance.id)
                self._missing.pop(instance.id, None)

    # ---- agent calls -----------------------------------------------------------------

    async def _run_agent_calls(self, calls: list[_AgentCall]) -> None:
        if calls:
            await asyncio.gather(*(self._call_agent(c) for c in calls))

    async def _call_agent(self, call: _AgentCall) -> None:
        node = self._nodes.node(call.node)
        if node is None:
            return
        stub = node_agent_pb2_grpc.NodeAgentServiceStub(self._channels.get(node.address))
        try:
            if call.kind == "start":
                assert call.request is not None
                answer = await stub.StartInstance(call.request, timeout=self._settings.agent_timeout_s,
                                                  metadata=trace_metadata())
            else:
                await stub.StopInstance(
                    node_agent_pb2.StopInstanceRequest(
                        instance_id=call.instance_id,
                        drain_timeout_ms=round(self._settings.drain_timeout_s * 1000)),
                    timeout=self._settings.drain_timeout_s + self._settings.agent_timeout_s,
                    metadata=trace_metadata())
        except grpc.aio.AioRpcError as error:
            log.warning("%s %s on node %s failed: %s", call.kind, call.instance_id, call.node,
                        error.details())
            if call.kind == "start":
                await self._start_failed(call.instance_id, error)
            return  # a failed stop is repeated from the heartbeats
        async with self._lock:
            instance = self._store.instances.get(call.instance_id)
            if instance is None:
                return
            if call.kind == "start":
                self._backoff.pop(instance.function, None)
                if instance.state in _PLACED:
                    self._adopt(instance, answer.instance.state, answer.instance.endpoint,
                                answer.instance.message)
            elif instance.state == S.INSTANCE_STATE_DRAINING:
                self._stopped(instance, instance.message or "stopped")
            await self._store.flush()

    async def _start_failed(self, instance_id: str, error: grpc.aio.AioRpcError) -> None:
        async with self._lock:
            instance = self._store.instances.get(instance_id)
            if instance is None or instance.state not in _PLACED:
                return
            self._fail(instance, S.INSTANCE_STATE_FAILED,
                       f"node agent did not start it: {error.code().name}: {error.details()}")
            _, delay = self._backoff.get(instance.function, (0.0, 0.0))
            delay = min(max(1.0, 2 * delay), self._settings.max_start_backoff_s)
            self._backoff[instance.function] = (self._clock() + delay, delay)
            await self._store.flush()


__all__ = ["LIVE_STATES", "Scheduler", "SchedulerSettings", "shape_of"]
