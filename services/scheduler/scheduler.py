"""The scheduler's shell: the I/O around `SchedulerCore`.

Every decision is the core's (`services.scheduler.core`); this class feeds it — RPC
intents, reads of the node registry, instance events from the bus, the results of agent
calls, a tick per `reconcile_interval_s` — and carries out what it returns: KV writes,
scaling events on the bus, gRPC calls to node agents and the routing of `Invoke` to
workers. Core calls happen under one lock; the agent calls they return are made after
it is released, and their results go back to the core under it.

Profiles: each reconcile pass reads, for every function waiting for its profile, the
profile's record in the profiles bucket (`dilu-profiles`, the profiler's): none yet — it
asks for one by creating the record in state WANTED, which the profiler picks up; ready —
the core sizes the function (`sized`) and it is placed; otherwise the core shows the
profile's progress, or its failure, on the function. The profiler's hidden instances
(`start_profiling` and friends) are functions of the core that no user listing shows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import grpc
from dilu.events.v1 import events_pb2
from dilu.v1 import (
    node_agent_pb2,
    node_agent_pb2_grpc,
    profiler_pb2,
    scheduler_pb2,
    types_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

from services.common import subjects
from services.common.attribution import SCHEDULER
from services.common.bus import Bus, ProtoKV
from services.common.channels import ChannelPool
from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import DiluError, PeerError, Unavailable
from services.common.loops import every
from services.common.profiling import is_profiling, key_id
from services.common.security.identity import node_agent_identity, worker_identity
from services.common.security.tls import TlsFiles
from services.common.timestamps import now_timestamp
from services.common.tracing import trace_metadata
from services.scheduler.activator import HoldQueue, HoldSettings
from services.scheduler.core import (
    AgentCall,
    CallFailed,
    CallResult,
    CallSucceeded,
    FunctionChange,
    Outcome,
    Refusal,
    SchedulerCore,
    SchedulerSettings,
    SetQuota,
    StartInstance,
    shape_of,
)
from services.scheduler.decisions import vertical_decision
from services.scheduler.placement import Placement
from services.scheduler.replicas import LIVE_STATES
from services.scheduler.store import Store
from services.scheduler.validation import validate_spec

log = logging.getLogger(__name__)

S = types_pb2
T = TypeVar("T")

# Instance events as the state they report; a quota change reports none (its quota is
# what counts); other kinds (starting) change nothing.
_EVENT_STATES = {
    events_pb2.INSTANCE_EVENT_KIND_READY: S.INSTANCE_STATE_READY,
    events_pb2.INSTANCE_EVENT_KIND_FAILED: S.INSTANCE_STATE_FAILED,
    events_pb2.INSTANCE_EVENT_KIND_STOPPED: S.INSTANCE_STATE_STOPPED,
    events_pb2.INSTANCE_EVENT_KIND_QUOTA_CHANGED: S.INSTANCE_STATE_UNSPECIFIED,
}
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def refusal_of(code: grpc.StatusCode) -> Refusal:
    """An agent's status code in the terms the core decides on."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Refusal.NO_ROOM
    return Refusal.UNREACHABLE if code in _UNREACHABLE else Refusal.ERROR


class Scheduler:
    """The scheduler service's state and behaviour behind its gRPC servicer: `deploy`,
    `delete`, `scale`, `invoke`, reads, and a reconcile pass every
    `reconcile_interval_s` (`start()` begins it, `close()` ends it)."""

    def __init__(self, bus: Bus, store: Store, nodes_kv: ProtoKV[types_pb2.Node],
                 placement: Placement, settings: SchedulerSettings,
                 clock: Clock = SYSTEM_CLOCK, hold: HoldSettings | None = None,
                 tls: TlsFiles | None = None,
                 profiles_kv: ProtoKV[profiler_pb2.Profile] | None = None) -> None:
        self._bus = bus
        self._store = store
        self._nodes_kv = nodes_kv
        self._profiles_kv = profiles_kv
        self._settings = settings
        self._clock = clock
        self.core = SchedulerCore(placement, settings)
        # Secure mode: agents and workers are called over mutual TLS, each proving its
        # identity (the node's agent, the node's workers).
        self._channels = ChannelPool(tls)
        self._lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self.holds = HoldQueue(hold or HoldSettings())

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        functions, instances = await self._store.load()
        snapshot = await self._nodes_kv.items()
        async with self._lock:
            self._done(self.core.recover(functions, instances, snapshot, self._clock.time()))
            await self._store.flush(self.core.state)
        await self._bus.subscribe(subjects.INSTANCE_EVENTS_ALL, events_pb2.InstanceEvent,
                                  self._on_instance_event)
        self._loop_task = asyncio.create_task(
            every(self._settings.reconcile_interval_s, self.reconcile_once, clock=self._clock,
                  name="reconcile", first_after_s=0), name="reconcile")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._settings.agent_timeout_s)
        await self._channels.close()

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
        await self._shielded(self._change(lambda now: self.core.deploy(spec, now)))
        log.info("deployed %s (%d replicas)", spec.name, spec.replicas.min)
        return self.get(spec.name)

    async def delete(self, name: str) -> int:
        outcome = await self._shielded(self._change(lambda now: self.core.delete(name, now)))
        return len(outcome.stops())

    def get(self, name: str) -> types_pb2.Function:
        return self.core.function(name)

    def functions(self) -> list[types_pb2.Function]:
        return self.core.functions()

    async def scale(self, name: str, delta: int, reason: str, source: str,
                    instance_ids: Iterable[str] = ()) -> types_pb2.Function:
        """Change the replica count by `delta`, or remove exactly `instance_ids`."""
        chosen = list(instance_ids)
        await self._shielded(self._change(lambda now: self.core.scale(
            name, delta, now, reason=reason, source=source, instance_ids=chosen)))
        return self.get(name)

    async def _change(self, decide: Callable[[float], FunctionChange]) -> Outcome:
        """Decide a function change, make its record durable, then let the core apply it
        and carry out what that implies. A store that cannot be reached raises
        Unavailable and nothing changes."""
        outcome = await self._change_or_none(decide)
        assert outcome is not None
        return outcome

    async def _change_or_none(self, decide: Callable[[float], FunctionChange | None]) -> Outcome | None:
        """`_change` for decisions that may find nothing to do (idempotent calls): None."""
        async with self._lock:
            change = decide(self._clock.time())
            if change is None:
                return None
            if change.record is None:
                await self._store.delete_function_now(change.name)
            else:
                await self._store.put_function_now(change.record)
            outcome = self._done(self.core.apply(change, self._clock.time()))
            await self._store.flush(self.core.state)
        for decision in outcome.scaling:
            await self._bus.publish(subjects.scaling_events(decision.function), decision)
        await self._run_agent_calls(outcome.calls)
        return outcome

    async def invoke(self, request: scheduler_pb2.InvokeRequest) -> scheduler_pb2.InvokeResponse:
        spec = self.core.spec(request.function)  # NotFound before anything else
        timeout_s = (request.timeout_ms or 10 * spec.slo.latency_ms or 30_000) / 1000
        tried: set[str] = set()
        failure: DiluError | None = None
        # One retry on another instance when the first is unreachable (it may be dying).
        for _ in range(2):
            try:
                instance_id, endpoint = self.core.route(request.function, tried)
            except Unavailable:
                if failure is not None:
                    raise failure from None
                if is_profiling(request.function):
                    # A hidden function's instances are the profiler's: no hold, no scale
                    # from zero; this UNAVAILABLE is how the profiler learns of a crash.
                    raise
                instance_id, endpoint = await self._hold(request.function, timeout_s)
            self.core.router.begin(instance_id)
            try:
                worker = worker_identity(self.core.node_of(instance_id) or "unplaced")
                stub = worker_pb2_grpc.WorkerServiceStub(self._channels.get(endpoint, worker))
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
                self.core.router.end(instance_id)
            return scheduler_pb2.InvokeResponse(
                payload=answer.payload, content_type=answer.content_type,
                instance_id=instance_id, worker_latency_ms=answer.latency_ms,
                batch_size=answer.batch_size)
        assert failure is not None
        raise failure

    async def _hold(self, name: str, timeout_s: float) -> tuple[str, str]:
        """No ready instance: wait for one (activator.py), asking for one at zero."""
        def wanted() -> int:
            return self.core.function(name).status.desired_replicas

        return await self.holds.hold(
            name, timeout_s, lambda: self.core.route(name),
            wanted, lambda: self.scale(name, 1, "a request arrived with no instance "
                                       "(scale from zero)", source=SCHEDULER))

    def list_nodes(self) -> list[types_pb2.NodeView]:
        return self.core.node_views()

    # ---- profiling instances (the profiler's) ----------------------------------------

    async def start_profiling(self, spec: types_pb2.FunctionSpec,
                              gpu_model: str) -> types_pb2.Function:
        spec = validate_spec(spec)
        await self._shielded(self._change_or_none(
            lambda now: self.core.start_profiling(spec, gpu_model, now)))
        return self._profiling(spec.name)

    async def stop_profiling(self, name: str) -> int:
        outcome = await self._shielded(self._change_or_none(lambda now: self.core.stop_profiling(name, now)))
        return len(outcome.stops()) if outcome is not None else 0

    def profiling_functions(self) -> list[types_pb2.Function]:
        return self.core.profiling_functions()

    def _profiling(self, name: str) -> types_pb2.Function:
        for function in self.core.profiling_functions():
            if function.spec.name == name:
                return function
        raise Unavailable(f"profiling instance {name!r} vanished while it started")

    # ---- reconciliation --------------------------------------------------------------

    async def reconcile_once(self) -> None:
        """Read the node registry and tick the core; raises Unavailable (and judges no
        node) while the registry or the store cannot be reached."""
        try:
            snapshot = await self._nodes_kv.items()
        except Unavailable:
            self.core.nodes_unreadable()
            raise
        async with self._lock:
            if not await self._store.flush(self.core.state):
                self.core.nodes_unreadable()
                raise Unavailable("state store unreachable")
            now = self._clock.time()
            calls = self._done(self.core.observe_nodes(snapshot, now)).calls
            calls += self._done(self.core.tick(now)).calls
            waiting = self.core.awaiting_profiles()
            await self._store.flush(self.core.state)
        await self._run_agent_calls(calls)
        if waiting and self._profiles_kv is not None:
            await self._profiles_pass(waiting)

    def _sized(self, name: str, profile: profiler_pb2.Profile, now: float) -> FunctionChange:
        return self.core.sized(name, profile, now)

    async def _profiles_pass(self, waiting: list[tuple[str, profiler_pb2.ProfileKey]]) -> None:
        """For each function waiting for its profile: ask for it, follow it, size by it."""
        assert self._profiles_kv is not None
        for name, key in waiting:
            try:
                profile = await self._profiles_kv.get(key_id(key))
                if profile is None:
                    await self._profiles_kv.create(key_id(key), profiler_pb2.Profile(
                        function=name, model=key.model, key=key, key_id=key_id(key),
                        state=profiler_pb2.PROFILE_STATE_WANTED,
                        message="asked for by the scheduler to size a Deploy",
                        requested_at=now_timestamp(self._clock.time())))
            except Unavailable as error:
                log.warning("profile of %s not readable now: %s", name, error)
                continue
            if profile is not None and profile.state == profiler_pb2.PROFILE_STATE_READY:
                try:
                    await self._change(functools.partial(self._sized, name, profile))
                    log.info("sized %s from profile %s", name, profile.key_id)
                except DiluError as error:
                    # e.g. a memory the spec set that no batch of the model fits
                    async with self._lock:
                        failed = profiler_pb2.Profile()
                        failed.CopyFrom(profile)
                        failed.state = profiler_pb2.PROFILE_STATE_FAILED
                        failed.message = f"its figures do not fit the spec: {error.message}"
                        self._done(self.core.profile_progress(name, failed, self._clock.time()))
                        await self._store.flush(self.core.state)
                continue
            async with self._lock:
                self._done(self.core.profile_progress(name, profile, self._clock.time()))
                await self._store.flush(self.core.state)

    async def _on_instance_event(self, subject: str, event: events_pb2.InstanceEvent) -> None:
        state = _EVENT_STATES.get(event.kind)
        if state is None:
            return
        # The subject names the publishing node (NATS permissions vouch for it in secure
        # mode); an event about another node's instance is not this agent's to report.
        if subjects.node_of(subject) != event.node:
            log.warning("dropping an instance event on %s that names node %r", subject,
                        event.node[:80])
            return
        report = types_pb2.InstanceReport(instance_id=event.instance_id, function=event.function,
                                          state=state, endpoint=event.endpoint,
                                          message=event.message,
                                          quota_version=event.quota_version)
        if event.HasField("quota"):
            report.quota.CopyFrom(event.quota)
        async with self._lock:
            on_node = self.core.placed_on(event.instance_id, event.node)
            self._done(self.core.instance_reported(event.node, report, self._clock.time()))
            await self._store.flush(self.core.state)
        if event.kind == events_pb2.INSTANCE_EVENT_KIND_QUOTA_CHANGED and on_node:
            decision = vertical_decision(event)
            await self._bus.publish(subjects.scaling_events(decision.function), decision)

    def _done(self, outcome: Outcome) -> Outcome:
        """Mark what the core changed for the next flush."""
        self._store.mark(outcome.functions, outcome.instances)
        return outcome

    # ---- agent calls -----------------------------------------------------------------

    async def _run_agent_calls(self, calls: Iterable[AgentCall]) -> None:
        """Make the calls concurrently; each result goes back to the core as soon as it
        comes, and what the core then asks for (a start refused for room, placed
        elsewhere) is made in turn."""
        await asyncio.gather(*(self._call_and_report(c) for c in calls))

    async def _call_and_report(self, call: AgentCall) -> None:
        result = await self._call_agent(call)
        if result is None:
            return
        async with self._lock:
            follow = self._done(self.core.call_done(call, result, self._clock.time())).calls
            await self._store.flush(self.core.state)
        await self._run_agent_calls(follow)

    async def _call_agent(self, call: AgentCall) -> CallResult | None:
        """Make one call; None when its node is unknown (nothing to report)."""
        address = self.core.node_address(call.node, peer=self._channels.secure)
        if address is None:
            return None
        stub = node_agent_pb2_grpc.NodeAgentServiceStub(
            self._channels.get(address, node_agent_identity(call.node)))
        try:
            if isinstance(call, StartInstance):
                answer = await stub.StartInstance(
                    node_agent_pb2.StartInstanceRequest(
                        instance_id=call.instance_id, function=call.spec,
                        gpu_uuids=call.gpu_uuids, quota=call.quota),
                    timeout=self._settings.agent_timeout_s, metadata=trace_metadata())
                return CallSucceeded(report=answer.instance)
            if isinstance(call, SetQuota):
                applied = await stub.SetQuota(
                    node_agent_pb2.SetQuotaRequest(instance_id=call.instance_id, quota=call.quota,
                                                   source="scheduler"),
                    timeout=self._settings.agent_timeout_s, metadata=trace_metadata())
                return CallSucceeded(quota=applied.quota, quota_version=applied.quota_version)
            await stub.StopInstance(
                node_agent_pb2.StopInstanceRequest(
                    instance_id=call.instance_id,
                    drain_timeout_ms=round(call.drain_timeout_s * 1000)),
                timeout=call.drain_timeout_s + self._settings.agent_timeout_s,
                metadata=trace_metadata())
            return CallSucceeded()
        except grpc.aio.AioRpcError as error:
            kind = type(call).__name__
            log.warning("%s %s on node %s failed: %s", kind, call.instance_id, call.node,
                        error.details())
            return CallFailed(refusal_of(error.code()), f"{error.code().name}: {error.details()}")


__all__ = ["LIVE_STATES", "Scheduler", "SchedulerSettings", "refusal_of", "shape_of"]
