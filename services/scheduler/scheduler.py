"""The scheduler's application shell: owns cluster state, reconciles replica counts with
placements on node agents, tracks nodes from heartbeats and routes invocations.

Decisions are delegated to pure pieces (validation, placement, replica planning, routing,
node liveness); this class does the I/O around them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import grpc
from dilu.events.v1 import events_pb2
from dilu.v1 import node_agent_pb2, node_agent_pb2_grpc, scheduler_pb2, types_pb2, worker_pb2, worker_pb2_grpc

from services.common import subjects
from services.common.bus import Bus, ProtoKV
from services.common.channels import ChannelPool
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
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
_PLACED_STATES = frozenset({S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_READY})
_TERMINAL_STATES = frozenset({S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_LOST,
                              S.INSTANCE_STATE_STOPPED})
_KINDS = {
    S.FUNCTION_KIND_INFERENCE: WorkloadKind.INFERENCE,
    S.FUNCTION_KIND_LLM_INFERENCE: WorkloadKind.LLM_INFERENCE,
    S.FUNCTION_KIND_TRAINING: WorkloadKind.TRAINING,
}


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    node_timeout_s: float = 10.0
    reconcile_interval_s: float = 1.0
    # An agent that does not list an instance this long after placement has lost it.
    agent_grace_s: float = 10.0
    # Failed/lost/stopped instances stay visible this long, then are forgotten.
    terminal_retention_s: float = 30.0
    agent_timeout_s: float = 5.0


def shape_of(spec: types_pb2.FunctionSpec) -> InstanceShape:
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
        # True while heartbeats could not be read: node liveness is not judged then.
        self._blind = False

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._store.load()
        await self._refresh_nodes()
        async with self._lock:
            for instance in list(self._store.instances.values()):
                if instance.state in _PLACED_STATES and not self._recommit(instance):
                    self._set_state(instance, S.INSTANCE_STATE_LOST,
                                    f"node {instance.node} is gone after a scheduler restart")
                    await self._store.save_instance(instance.id)
        await self._bus.subscribe(subjects.INSTANCE_EVENTS_ALL, events_pb2.InstanceEvent,
                                  self._on_instance_event)
        self._loop_task = asyncio.create_task(self._reconcile_forever(), name="reconcile")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._channels.close()

    def _recommit(self, instance: types_pb2.Instance) -> bool:
        function = self._store.functions.get(instance.function)
        if function is None or not all(self._ledger.gpu(u) for u in instance.gpu_uuids):
            return False
        self._ledger.commit(instance.id, shape_of(function.spec),
                            Assignment(instance.node, tuple(instance.gpu_uuids)))
        return True

    # ---- RPC-facing operations -------------------------------------------------------

    async def deploy(self, spec: types_pb2.FunctionSpec) -> types_pb2.Function:
        spec = validate_spec(spec)
        async with self._lock:
            if spec.name in self._store.functions:
                raise InvalidArgument("function.name",
                                      f"a function named {spec.name!r} is already deployed; "
                                      "delete it first or choose another name")
            function = types_pb2.Function(spec=spec)
            function.status.desired_replicas = spec.replicas.min
            function.status.created_at.CopyFrom(now_timestamp(self._clock()))
            await self._store.put_function_now(function)
            calls = await self._reconcile_function(spec.name)
        log.info("deployed %s (%d replicas)", spec.name, spec.replicas.min)
        await self._run_agent_calls(calls)
        return self.get(spec.name)

    async def delete(self, name: str) -> int:
        async with self._lock:
            if name not in self._store.functions:
                raise NotFound(f"no function named {name!r}")
            await self._store.delete_function_now(name)
            calls: list[_AgentCall] = []
            for instance in self._store.instances_of(name):
                calls.extend(self._stop(instance, "function deleted"))
                self._store.instances.pop(instance.id, None)
                await self._store.save_instance(instance.id)
        await self._run_agent_calls(calls)
        return len([c for c in calls if c.kind == "stop"])

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

    async def scale(self, name: str, delta: int, reason: str, source: str) -> types_pb2.Function:
        async with self._lock:
            function = self._store.functions.get(name)
            if function is None:
                raise NotFound(f"no function named {name!r}")
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
            calls = await self._reconcile_function(name)
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
        ready = {i.id: i.endpoint for i in self._store.instances_of(request.function)
                 if i.state == S.INSTANCE_STATE_READY and i.endpoint}
        if not ready:
            states = [S.InstanceState.Name(i.state).removeprefix("INSTANCE_STATE_").lower()
                      for i in self._store.instances_of(request.function)]
            raise Unavailable(f"function {request.function!r} has no ready instance "
                              f"(instances: {', '.join(states) or 'none'})")
        timeout_s = (request.timeout_ms or 10 * function.spec.slo.latency_ms or 30_000) / 1000
        instance_id = self._router.pick(ready)
        assert instance_id is not None
        self._router.begin(instance_id)
        try:
            stub = worker_pb2_grpc.WorkerServiceStub(self._channels.get(ready[instance_id]))
            answer = await stub.Infer(
                worker_pb2.InferRequest(payload=request.payload,
                                        content_type=request.content_type),
                timeout=timeout_s, metadata=trace_metadata())
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"{instance_id} did not answer within {timeout_s:.3f} s") from error
            raise Unavailable(f"instance {instance_id} failed: {error.details()}") from error
        finally:
            self._router.end(instance_id)
        return scheduler_pb2.InvokeResponse(
            payload=answer.payload, content_type=answer.content_type,
            instance_id=instance_id, worker_latency_ms=answer.latency_ms)

    def list_nodes(self) -> list[types_pb2.NodeView]:
        views = []
        for node, lost in self._nodes.all():
            view = types_pb2.NodeView(
                node=node, state=S.NODE_STATE_LOST if lost else S.NODE_STATE_READY)
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
        if not await self._store.flush():
            self._blind = True
            raise Unavailable("state store unreachable")
        await self._refresh_nodes()
        now = self._clock()
        if self._blind:
            self._nodes.pardon(now)
            self._blind = False
        calls: list[_AgentCall] = []
        async with self._lock:
            _, lost = self._nodes.sweep(now)
            for node_id in lost:
                calls.extend(await self._on_node_lost(node_id))
            calls.extend(await self._sync_with_agents(now))
            for name in sorted(self._store.functions):
                calls.extend(await self._reconcile_function(name))
            await self._forget_terminal(now)
        await self._run_agent_calls(calls)

    async def _refresh_nodes(self) -> None:
        try:
            snapshot = await self._nodes_kv.items()
        except Unavailable:
            self._blind = True
            raise
        now = self._clock()
        for _, (revision, node) in snapshot.items():
            self._nodes.observe(node, revision, now)
            self._ledger.set_node(node.id, [(g.uuid, g.memory_total_mib) for g in node.gpus])

    async def _reconcile_function(self, name: str) -> list[_AgentCall]:
        function = self._store.functions[name]
        instances = self._store.instances_of(name)
        plan = plan_replicas(function.status.desired_replicas, instances)
        calls: list[_AgentCall] = []
        for instance_id in plan.stop:
            instance = self._store.instances[instance_id]
            calls.extend(self._stop(instance, "scaled in"))
            self._store.instances.pop(instance_id)
            await self._store.save_instance(instance_id)
        for _ in range(plan.start):
            instance = types_pb2.Instance(
                id=f"{name}-{secrets.token_hex(3)}", function=name,
                state=S.INSTANCE_STATE_PENDING, created_at=now_timestamp(self._clock()),
                quota=types_pb2.Quota(sm_request=function.spec.resources.sm_request,
                                      sm_limit=function.spec.resources.sm_limit,
                                      memory_limit_mib=function.spec.resources.memory_mib))
            self._store.instances[instance.id] = instance
        for instance in self._store.instances_of(name):
            if instance.state == S.INSTANCE_STATE_PENDING:
                calls.extend(self._try_place(function.spec, instance))
                await self._store.save_instance(instance.id)
        return calls

    def _try_place(self, spec: types_pb2.FunctionSpec,
                   instance: types_pb2.Instance) -> list[_AgentCall]:
        shape = shape_of(spec)
        assignment = self._placement.place(shape, self._ledger.gpus(self._nodes.ready()))
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
        instance.quota.CopyFrom(types_pb2.Quota(
            sm_request=shape.sm_request, sm_limit=shape.sm_limit,
            effective_share=shape.sm_request, memory_limit_mib=shape.memory_mib))
        self._set_state(instance, S.INSTANCE_STATE_STARTING, f"placed on {assignment.node}")
        request = node_agent_pb2.StartInstanceRequest(
            instance_id=instance.id, function=spec, gpu_uuids=assignment.gpu_uuids,
            quota=instance.quota)
        return [_AgentCall("start", assignment.node, instance.id, request)]

    def _stop(self, instance: types_pb2.Instance, why: str) -> list[_AgentCall]:
        """Release an instance's GPUs; returns the agent call that stops its worker."""
        self._ledger.release(instance.id)
        self._router.forget(instance.id)
        placed = instance.state in _PLACED_STATES and instance.node
        self._set_state(instance, S.INSTANCE_STATE_STOPPED, why)
        return [_AgentCall("stop", instance.node, instance.id)] if placed else []

    def _fail(self, instance: types_pb2.Instance, state: StateValue, why: str) -> None:
        self._ledger.release(instance.id)
        self._router.forget(instance.id)
        self._set_state(instance, state, why)
        log.warning("instance %s %s: %s", instance.id,
                    S.InstanceState.Name(state).removeprefix("INSTANCE_STATE_").lower(), why)

    def _set_state(self, instance: types_pb2.Instance, state: StateValue, message: str) -> None:
        instance.state = state
        instance.message = message
        instance.updated_at.CopyFrom(now_timestamp(self._clock()))

    async def _on_node_lost(self, node_id: str) -> list[_AgentCall]:
        log.warning("node %s lost: no heartbeat for %.1f s", node_id, self._settings.node_timeout_s)
        for instance in list(self._store.instances.values()):
            if instance.node == node_id and instance.state in _PLACED_STATES:
                self._fail(instance, S.INSTANCE_STATE_LOST, f"node {node_id} stopped heartbeating")
                await self._store.save_instance(instance.id)
        return []

    async def _sync_with_agents(self, now: float) -> list[_AgentCall]:
        """Level-triggered repair from heartbeats: adopt states agents report, fail what an
        agent has forgotten, stop what an agent runs that we do not want."""
        calls: list[_AgentCall] = []
        for node_id in self._nodes.ready():
            node = self._nodes.node(node_id)
            assert node is not None
            reported = {r.instance_id: r for r in node.instances}
            for instance in list(self._store.instances.values()):
                if instance.node != node_id or instance.state not in _PLACED_STATES:
                    continue
                report = reported.get(instance.id)
                age = now - instance.updated_at.ToNanoseconds() / 1e9
                if report is None:
                    if age > self._settings.agent_grace_s:
                        self._fail(instance, S.INSTANCE_STATE_FAILED,
                                   f"node agent {node_id} no longer runs it")
                        await self._store.save_instance(instance.id)
                    continue
                if await self._adopt(instance, report.state, report.endpoint, report.message):
                    await self._store.save_instance(instance.id)
            for instance_id in reported:
                known = self._store.instances.get(instance_id)
                if known is None or known.state in _TERMINAL_STATES or known.node != node_id:
                    calls.append(_AgentCall("stop", node_id, instance_id))
        return calls

    async def _adopt(self, instance: types_pb2.Instance, state: StateValue, endpoint: str,
                     message: str) -> bool:
        """Apply a state an agent reported; True when the instance changed."""
        if state == S.INSTANCE_STATE_READY and (
                instance.state != S.INSTANCE_STATE_READY or instance.endpoint != endpoint):
            instance.endpoint = endpoint
            self._set_state(instance, S.INSTANCE_STATE_READY, message or "serving")
            return True
        if state in (S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_STOPPED):
            self._fail(instance, S.INSTANCE_STATE_FAILED, message or "worker exited")
            return True
        if state == instance.state and message and message != instance.message:
            instance.message = message  # the agent knows best why it is still starting
            return True
        return False

    async def _on_instance_event(self, _subject: str, event: events_pb2.InstanceEvent) -> None:
        states = {
            events_pb2.INSTANCE_EVENT_KIND_READY: S.INSTANCE_STATE_READY,
            events_pb2.INSTANCE_EVENT_KIND_FAILED: S.INSTANCE_STATE_FAILED,
            events_pb2.INSTANCE_EVENT_KIND_STOPPED: S.INSTANCE_STATE_STOPPED,
        }
        state = states.get(event.kind)
        if state is None:
            return
        async with self._lock:
            instance = self._store.instances.get(event.instance_id)
            if instance is None or instance.state not in _PLACED_STATES:
                return
            if await self._adopt(instance, state, event.endpoint, event.message):
                await self._store.save_instance(instance.id)

    async def _forget_terminal(self, now: float) -> None:
        for instance in list(self._store.instances.values()):
            age = now - instance.updated_at.ToNanoseconds() / 1e9
            if instance.state in _TERMINAL_STATES and age > self._settings.terminal_retention_s:
                self._store.instances.pop(instance.id)
                await self._store.save_instance(instance.id)

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
                async with self._lock:
                    instance = self._store.instances.get(call.instance_id)
                    if instance is not None and instance.state in _PLACED_STATES and \
                            await self._adopt(instance, answer.instance.state,
                                              answer.instance.endpoint, answer.instance.message):
                        await self._store.save_instance(instance.id)
            else:
                await stub.StopInstance(node_agent_pb2.StopInstanceRequest(instance_id=call.instance_id),
                                        timeout=self._settings.agent_timeout_s,
                                        metadata=trace_metadata())
        except grpc.aio.AioRpcError as error:
            log.warning("%s %s on node %s failed: %s", call.kind, call.instance_id, call.node,
                        error.details())
            if call.kind == "start":
                async with self._lock:
                    instance = self._store.instances.get(call.instance_id)
                    if instance is not None and instance.state in _PLACED_STATES:
                        self._fail(instance, S.INSTANCE_STATE_FAILED,
                                   f"node agent refused to start it: {error.details()}")
                        await self._store.save_instance(instance.id)


__all__ = ["LIVE_STATES", "Scheduler", "SchedulerSettings", "shape_of"]
