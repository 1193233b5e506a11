"""`SchedulerCore`: the scheduler's decisions without I/O.

Each input — an RPC intent, a read of the nodes' heartbeats, an instance event, an agent
call's result, a tick — changes the records in `state` and returns an `Outcome`: the
agent calls to make, the scaling decisions to publish and what changed. The shell
(`services.scheduler.scheduler`) makes the calls and feeds their results back through
`call_done`; a simulator does the same in virtual time. Time is always an argument
(`now`, wall seconds); the core never reads a clock and never waits.

RPC intents that change a function are two-step, so that a change the store refuses
changes nothing: `deploy` / `delete` / `scale` check the request and return a
`FunctionChange` (raising `InvalidArgument`, `NotFound` or `FailedPrecondition`), the
shell makes its record durable, then `apply` carries it out.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from dilu.events.v1 import events_pb2
from dilu.v1 import profiler_pb2, types_pb2

from services.common.errors import InvalidArgument, NotFound
from services.common.profiling import (
    PROFILING_PREFIX,
    is_profiling,
    key_id,
    most_common_gpu_model,
    profile_key,
)
from services.common.timestamps import now_timestamp
from services.scheduler.core import backoff, intents, views
from services.scheduler.core.calls import (
    AgentCall,
    CallFailed,
    CallResult,
    FunctionChange,
    Outcome,
    Refusal,
    SetQuota,
    StartInstance,
    StopInstance,
)
from services.scheduler.core.heartbeats import Heartbeats, NodeSnapshot, genuine
from services.scheduler.core.lifecycle import Lifecycle
from services.scheduler.core.records import (
    HOLDING,
    LIVE,
    PLACED,
    TERMINAL,
    ClusterState,
    seconds,
)
from services.scheduler.core.settings import SchedulerSettings
from services.scheduler.core.shapes import held_shape
from services.scheduler.core.sizing import size_spec
from services.scheduler.placement import Assignment, Ledger, Placement
from services.scheduler.replicas import plan_replicas
from services.scheduler.routing import LeastOutstanding
from services.scheduler.validation import needs_profile

S = types_pb2
P = profiler_pb2
# Where a profiling instance may go: the label its hidden function carries.
GPU_MODEL_LABEL = "dilu.profiling/gpu-model"


def random_instance_id(function: str) -> str:
    return f"{function}-{secrets.token_hex(3)}"


class SchedulerCore:
    """Replica planning, placement and instance lifecycle for one cluster.

    Owns the records (`state`), the committed allocations (`ledger`), node liveness and
    the invocation router (`router`: the shell counts requests in flight on it).
    `new_id(function)` names new instances; pass a deterministic one for replays.
    """

    def __init__(self, placement: Placement, settings: SchedulerSettings | None = None, *,
                 new_id: Callable[[str], str] = random_instance_id) -> None:
        self.settings = settings or SchedulerSettings()
        self.placement = placement
        self.state = ClusterState()
        self.ledger = Ledger()
        self.router = LeastOutstanding()
        self._new_id = new_id
        self._lifecycle = Lifecycle(self.state, self.ledger, placement, self.router,
                                    self.settings, new_id)
        self._heartbeats = Heartbeats(self.state, self.ledger, self._lifecycle, self.settings)
        # The latest `now` seen: time never goes back inside the core (a wall clock may
        # be stepped back), so records are stamped in the order things happened.
        self._now = float("-inf")

    # ---- start-up ----------------------------------------------------------------------

    def recover(self, functions: Iterable[types_pb2.Function],
                instances: Iterable[types_pb2.Instance], nodes: NodeSnapshot,
                now: float) -> Outcome:
        """Take over the stored records after a (re)start. Instances that held GPUs take
        them again where their node still declares them, at the quota their agent
        reports (it may have changed while the scheduler was down); the others were
        lost."""
        self.state.load(functions, instances)
        now = self._advance(now)
        nodes = genuine(nodes)
        self._heartbeats.declare(nodes, now, trusted=False)
        for instance in sorted(self.state.instances.values(), key=lambda i: i.id):
            if instance.state not in HOLDING:
                continue
            why = self._recommit(instance)
            if why:
                self._lifecycle.fail(instance, S.INSTANCE_STATE_LOST, why, now, counts=False)
            elif instance.state == S.INSTANCE_STATE_READY:
                self._lifecycle.ready_since[instance.id] = seconds(instance.updated_at)
        self._heartbeats.adopt_quotas(nodes)
        return self._outcome([])

    def _recommit(self, instance: types_pb2.Instance) -> str:
        """Commit a recovered placement to the ledger; returns why it cannot be, or ''."""
        function = self.state.functions.get(instance.function)
        if function is None or not self.state.belongs(instance):
            return "its function was deleted while the scheduler was down"
        gpus = [self.ledger.gpu(u) for u in instance.gpu_uuids]
        if not gpus or not all(g is not None and g.node == instance.node for g in gpus):
            return f"node {instance.node} is gone after a scheduler restart"
        self.ledger.commit(instance.id, held_shape(function.spec, instance),
                           Assignment(instance.node, tuple(instance.gpu_uuids)))
        return ""

    # ---- RPC intents -------------------------------------------------------------------

    def deploy(self, spec: types_pb2.FunctionSpec, now: float) -> FunctionChange:
        """A new function from a validated spec, with `replicas.min` replicas. A spec that
        leaves its share or memory to the profile waits for it (`awaiting_profile`): its
        instances stay pending until `sized` gives it the profile's figures."""
        if is_profiling(spec.name):
            raise InvalidArgument("function.name", f"names starting with {PROFILING_PREFIX!r} "
                                                   "are the profiler's (its hidden instances)")
        change = intents.deploy(self.state, spec, self._advance(now))
        if change.record is not None and needs_profile(spec):
            status = change.record.status
            status.awaiting_profile = True
            status.state = S.FUNCTION_STATE_PROFILING
            key = self._profile_key(spec)
            if key is not None:
                status.profile_key_id = key_id(key)
        return change

    # ---- profiles (Deploys left to them) and profiling instances -----------------------

    def _profile_key(self, spec: types_pb2.FunctionSpec) -> profiler_pb2.ProfileKey | None:
        """The key of the profile that sizes `spec`: on the GPU model most GPUs of the
        ready nodes have (None while no node is ready)."""
        nodes = [n for n in (self._heartbeats.nodes.node(i) for i in self._heartbeats.nodes.ready())
                 if n is not None]
        gpu_model = most_common_gpu_model(nodes)
        return profile_key(spec, gpu_model) if gpu_model else None

    def awaiting_profiles(self) -> list[tuple[str, profiler_pb2.ProfileKey]]:
        """The functions waiting for their profile, with its key (those whose key is not
        known yet — no node is ready — are left out)."""
        waiting = []
        for name in sorted(self.state.functions):
            function = self.state.functions[name]
            if not function.status.awaiting_profile:
                continue
            key = self._profile_key(function.spec)
            if key is None:
                continue
            if function.status.profile_key_id != key_id(key):
                function.status.profile_key_id = key_id(key)
                self.state.function_touched(name)
            waiting.append((name, key))
        return waiting

    def profile_progress(self, name: str, profile: profiler_pb2.Profile | None,
                         now: float) -> Outcome:
        """The profile a function waits for is not ready: its pending instances say how
        far it got, and a failed profile marks the function (not retried by itself)."""
        now = self._advance(now)
        function = self.state.functions.get(name)
        if function is None or not function.status.awaiting_profile:
            return self._outcome([])
        status = function.status
        if profile is not None and profile.state == P.PROFILE_STATE_FAILED:
            message = f"profiling failed: {profile.message}"
            if (status.state, status.last_error) != (S.FUNCTION_STATE_PROFILE_FAILED, message):
                status.state = S.FUNCTION_STATE_PROFILE_FAILED
                status.last_error = message
                self.state.function_touched(name)
        else:
            message = "profiling" + (f": {profile.message}" if profile is not None and profile.message
                                     else ": waiting for the profiler")
            if status.state != S.FUNCTION_STATE_PROFILING:
                status.state = S.FUNCTION_STATE_PROFILING
                status.last_error = ""
                self.state.function_touched(name)
        for instance in self.state.instances_of(name):
            if instance.state == S.INSTANCE_STATE_PENDING and instance.message != message:
                self.state.set_state(instance, S.INSTANCE_STATE_PENDING, message, now)
        return self._outcome([])

    def sized(self, name: str, profile: profiler_pb2.Profile, now: float) -> FunctionChange:
        """A function's profile is ready: its record with the profile's figures for what
        the spec left unset (`sizing.size_spec`); apply it and its instances are placed.
        NotFound when the function no longer waits for a profile."""
        self._advance(now)
        function = self.state.functions.get(name)
        if function is None or not function.status.awaiting_profile:
            raise NotFound(f"function {name!r} does not wait for a profile")
        updated = types_pb2.Function()
        updated.CopyFrom(function)
        updated.spec.CopyFrom(size_spec(function.spec, profile))
        updated.status.awaiting_profile = False
        updated.status.profile_key_id = profile.key_id
        if updated.status.state in (S.FUNCTION_STATE_PROFILING, S.FUNCTION_STATE_PROFILE_FAILED):
            updated.status.state = S.FUNCTION_STATE_OK
            updated.status.last_error = ""
        return FunctionChange(name, updated, reason="sized by its profile")

    def start_profiling(self, spec: types_pb2.FunctionSpec, gpu_model: str,
                        now: float) -> FunctionChange | None:
        """The profiler's hidden instance of a validated spec named `profiling-…`: one
        replica on a whole free GPU (request = limit = 1.0), of `gpu_model` when one is
        named. None when it exists already (idempotent)."""
        if not is_profiling(spec.name):
            raise InvalidArgument("function.name", f"a profiling instance's name starts with "
                                                   f"{PROFILING_PREFIX!r}")
        if spec.name in self.state.functions:
            return None
        hidden = types_pb2.FunctionSpec()
        hidden.CopyFrom(spec)
        hidden.resources.sm_request = hidden.resources.sm_limit = 1.0
        hidden.resources.gpus_per_instance = 1
        hidden.replicas.min = hidden.replicas.max = 1
        if gpu_model:
            hidden.labels[GPU_MODEL_LABEL] = gpu_model
        else:
            hidden.labels.pop(GPU_MODEL_LABEL, None)
        return intents.deploy(self.state, hidden, self._advance(now))

    def stop_profiling(self, name: str, now: float) -> FunctionChange | None:
        """Stop and forget a profiling instance; None when there is none."""
        if not is_profiling(name) or name not in self.state.functions:
            return None
        self._advance(now)
        return FunctionChange(name, None, reason="profiling finished")

    def profiling_functions(self) -> list[types_pb2.Function]:
        """The profiler's hidden functions, with their instances."""
        return [views.function(self.state, name) for name in sorted(self.state.functions)
                if is_profiling(name)]

    def delete(self, name: str, now: float) -> FunctionChange:
        self._advance(now)
        _visible(name)
        return intents.delete(self.state, name)

    def scale(self, name: str, delta: int, now: float, *, reason: str = "", source: str = "",
              instance_ids: Iterable[str] = ()) -> FunctionChange:
        """Change the replica count by `delta` within the function's bounds, or remove
        exactly `instance_ids` (then `delta` is their number, negated)."""
        _visible(name)
        return intents.scale(self.state, name, delta, self._advance(now), reason=reason,
                             source=source, instance_ids=instance_ids)

    def apply(self, change: FunctionChange, now: float) -> Outcome:
        """Carry out a change whose record the shell has made durable."""
        now = self._advance(now)
        calls: list[AgentCall] = []
        if change.record is None:
            self.state.drop_function(change.name)
            for instance in self.state.all_of(change.name):
                if instance.state in TERMINAL:
                    self._forget(instance.id)  # a later deployment starts with a clean slate
                elif instance.state != S.INSTANCE_STATE_DRAINING:
                    calls += self._lifecycle.stop(instance, change.reason, now)
            return self._outcome(calls)
        self.state.put_function(change.record)
        for instance_id in change.stop:
            chosen = self.state.instances.get(instance_id)
            if chosen is not None and chosen.state in LIVE:
                calls += self._lifecycle.stop(chosen, change.reason, now)
        calls += self._reconcile_function(change.name, now)
        scaling = (change.scaling,) if change.scaling is not None else ()
        return self._outcome(calls, scaling)

    def set_quota(self, instance_id: str, quota: types_pb2.Quota, now: float) -> Outcome:
        """Ask an instance's agent for a new quota; the records change only once the
        agent has applied it (`call_done`)."""
        self._advance(now)
        instance = self.state.instances.get(instance_id)
        if instance is None or instance.state not in PLACED:
            raise NotFound(f"no placed instance {instance_id!r}")
        wanted = types_pb2.Quota()
        wanted.CopyFrom(quota)
        return self._outcome([SetQuota(instance.node, instance_id, wanted)])

    # ---- what the nodes say ------------------------------------------------------------

    def observe_nodes(self, snapshot: NodeSnapshot, now: float) -> Outcome:
        """A fresh read of the node registry (every agent's latest heartbeat)."""
        now = self._advance(now)
        return self._outcome(self._heartbeats.observe(genuine(snapshot), now))

    def nodes_unreadable(self) -> None:
        """The registry could not be read: node liveness is not judged until it can."""
        self._heartbeats.unreadable()

    def instance_reported(self, node: str, report: types_pb2.InstanceReport,
                          now: float) -> Outcome:
        """An agent's event for one instance: a lifecycle state (ready, failed, stopped)
        and, when `report.quota` is set, its quota as of `report.quota_version` (a
        quota change reports state UNSPECIFIED: no transition)."""
        now = self._advance(now)
        instance = self.state.instances.get(report.instance_id)
        if instance is None or instance.node != node:
            return self._outcome([])
        if report.HasField("quota") and instance.state in HOLDING:
            self._lifecycle.adopt_quota(instance, report.quota, report.quota_version)
        if instance.state == S.INSTANCE_STATE_DRAINING and report.state == S.INSTANCE_STATE_STOPPED:
            self._lifecycle.stopped(instance, instance.message or "stopped", now)
        elif instance.state in PLACED:
            self._lifecycle.adopt(instance, report.state, report.endpoint, report.message, now)
        return self._outcome([])

    def placed_on(self, instance_id: str, node: str) -> bool:
        """Whether the instance is known and placed on `node` (what an agent may report
        about)."""
        instance = self.state.instances.get(instance_id)
        return instance is not None and bool(node) and instance.node == node

    def call_done(self, call: AgentCall, result: CallResult, now: float) -> Outcome:
        """The result of an agent call the core asked for."""
        now = self._advance(now)
        instance = self.state.instances.get(call.instance_id)
        if instance is None or instance.node != call.node:
            return self._outcome([])
        calls: list[AgentCall] = []
        if isinstance(call, StartInstance):
            calls = self._start_done(instance, call, result, now)
        elif isinstance(call, StopInstance):
            if not isinstance(result, CallFailed) and instance.state == S.INSTANCE_STATE_DRAINING:
                self._lifecycle.stopped(instance, instance.message or "stopped", now)
            # A failed stop is repeated from the heartbeats.
        elif (not isinstance(result, CallFailed) and result.quota is not None
              and instance.state in HOLDING):
            self._lifecycle.adopt_quota(instance, result.quota, result.quota_version)
        return self._outcome(calls)

    def _start_done(self, instance: types_pb2.Instance, call: StartInstance,
                    result: CallResult, now: float) -> list[AgentCall]:
        if instance.state not in PLACED:
            return []
        if not isinstance(result, CallFailed):
            if result.report is not None:
                report = result.report
                self._lifecycle.adopt_quota(instance, report.quota, report.quota_version)
                self._lifecycle.adopt(instance, report.state, report.endpoint, report.message, now)
            return []
        if result.refusal is Refusal.NO_ROOM and instance.state == S.INSTANCE_STATE_STARTING:
            # The agent's budget is the truth and the ledger only a cache of it: go
            # elsewhere at once rather than count it against the function.
            self._lifecycle.unplace(instance, f"node {call.node} had no room: {result.message}", now)
            function = self.state.functions.get(instance.function)
            if function is None or not backoff.may_start(function.status, now):
                return []
            start = self._lifecycle.place(function.spec, instance,
                                          self._heartbeats.nodes.ready(), now)
            return [start] if start else []
        if result.refusal is Refusal.UNREACHABLE:
            self._lifecycle.avoid(instance.function, call.node, now)
        self._lifecycle.fail(instance, S.INSTANCE_STATE_FAILED,
                             f"node agent did not start it: {result.message}", now, counts=True)
        return []

    # ---- time passing ------------------------------------------------------------------

    def tick(self, now: float) -> Outcome:
        """Bring every function to its replica count (within its back-off), stop what
        belongs to no function, forget old terminal records and clear healed back-offs."""
        now = self._advance(now)
        calls: list[AgentCall] = []
        for instance in sorted(self.state.instances.values(), key=lambda i: i.id):
            if (instance.state not in TERMINAL | {S.INSTANCE_STATE_DRAINING}
                    and not self.state.belongs(instance)):
                calls += self._lifecycle.stop(instance, "function deleted", now)
        for name in sorted(self.state.functions):
            calls += self._reconcile_function(name, now)
        self._forget_terminal(now)
        self._heal(now)
        self._lifecycle.prune(now)
        return self._outcome(calls)

    def _reconcile_function(self, name: str, now: float) -> list[AgentCall]:
        function = self.state.functions[name]
        plan = plan_replicas(function.status.desired_replicas, self.state.instances_of(name))
        calls: list[AgentCall] = []
        for instance_id in plan.stop:
            calls += self._lifecycle.stop(self.state.instances[instance_id], "scaled in", now)
        hidden = is_profiling(name)
        if hidden and function.status.consecutive_failures:
            return calls  # a profiling instance that failed is the profiler's to report
        if not backoff.may_start(function.status, now):
            return calls  # recent failures: let the cause clear before trying again
        res = function.spec.resources
        # Never stamped before its deployment, even by a clock stepped back since.
        created = now_timestamp(max(now, seconds(function.status.created_at)))
        for _ in range(plan.start):
            instance = types_pb2.Instance(
                id=self._new_id(name), function=name, state=S.INSTANCE_STATE_PENDING,
                created_at=created, updated_at=now_timestamp(now),
                message="profiling" if function.status.awaiting_profile else "",
                quota=types_pb2.Quota(sm_request=res.sm_request, sm_limit=res.sm_limit,
                                      memory_limit_mib=res.memory_mib))
            self.state.add(instance)
        if function.status.awaiting_profile:
            return calls  # placed once the profile sizes it
        ready_nodes = self._heartbeats.nodes.ready()
        if hidden and GPU_MODEL_LABEL in function.spec.labels:
            model = function.spec.labels[GPU_MODEL_LABEL]
            ready_nodes = [n for n in ready_nodes
                           if any(g.model == model for g in self._gpus_of(n))]
        for instance in self.state.instances_of(name):
            if instance.state == S.INSTANCE_STATE_PENDING:
                if not instance.quota.sm_request:
                    # Created while the function waited for its profile: now it is sized.
                    instance.quota.CopyFrom(types_pb2.Quota(
                        sm_request=res.sm_request, sm_limit=res.sm_limit,
                        memory_limit_mib=res.memory_mib))
                start = self._lifecycle.place(function.spec, instance, ready_nodes, now)
                if start is not None:
                    calls.append(start)
        return calls

    def _forget_terminal(self, now: float) -> None:
        """Keep, per function, only the newest `kept_terminal` terminal records, each for
        at most `terminal_retention_s`; those of deleted deployments go at once."""
        kept: dict[str, int] = {}
        terminal = sorted((i for i in self.state.instances.values() if i.state in TERMINAL),
                          key=lambda i: (-i.updated_at.ToNanoseconds(), i.id))
        for instance in terminal:
            age = now - seconds(instance.updated_at)
            rank = kept.get(instance.function, 0)
            if (age > self.settings.terminal_retention_s or rank >= self.settings.kept_terminal
                    or not self.state.belongs(instance)):
                self._forget(instance.id)
            else:
                kept[instance.function] = rank + 1

    def _heal(self, now: float) -> None:
        for name, function in self.state.functions.items():
            if function.status.consecutive_failures <= 0:
                continue
            since = [self._lifecycle.ready_since[i.id] for i in self.state.instances_of(name)
                     if i.state == S.INSTANCE_STATE_READY and i.id in self._lifecycle.ready_since]
            if backoff.healed(function.status, since, now, self.settings):
                backoff.record_healthy(function.status)
                self.state.function_touched(name)

    # ---- reading -----------------------------------------------------------------------

    def function(self, name: str) -> types_pb2.Function:
        """A function with its current deployment's instances (a copy); the profiler's
        hidden ones are not functions (NotFound)."""
        _visible(name)
        return views.function(self.state, name)

    def functions(self) -> list[types_pb2.Function]:
        """Every user function (the profiler's hidden ones are `profiling_functions()`)."""
        return [self.function(name) for name in sorted(self.state.functions)
                if not is_profiling(name)]

    def spec(self, name: str) -> types_pb2.FunctionSpec:
        """What an invocation of `name` is served as: a function's spec, the profiler's
        hidden ones included (the request path is how the profiler loads them)."""
        stored = self.state.functions.get(name)
        if stored is None:
            raise NotFound(f"no function named {name!r}")
        return stored.spec

    def route(self, name: str, exclude: Iterable[str] = ()) -> tuple[str, str]:
        """The ready instance an invocation should go to, as (id, endpoint): the least
        loaded per `router`. Raises NotFound, FailedPrecondition (a training function
        serves no requests) or Unavailable (no ready instance, saying what there is)."""
        return views.route(self.state, self.router, name, exclude)

    def node_views(self) -> list[types_pb2.NodeView]:
        return views.node_views(self._heartbeats.nodes, self.ledger)

    def node_address(self, node_id: str, *, peer: bool = False) -> str | None:
        """Where to call a node's agent: the address it announces, or (`peer`, secure
        mode) its mutual-TLS listener when it announces one."""
        node = self._heartbeats.nodes.node(node_id)
        if node is None:
            return None
        return (node.peer_address or node.address) if peer else node.address

    def node_of(self, instance_id: str) -> str:
        """The node an instance is placed on ("" when none)."""
        instance = self.state.instances.get(instance_id)
        return instance.node if instance is not None else ""

    def _gpus_of(self, node_id: str) -> list[types_pb2.Gpu]:
        node = self._heartbeats.nodes.node(node_id)
        return list(node.gpus) if node is not None else []

    # ---- helpers -----------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def _forget(self, instance_id: str) -> None:
        self._heartbeats.forget(instance_id)
        self._lifecycle.forget(instance_id)

    def _outcome(self, calls: list[AgentCall],
                 scaling: tuple[events_pb2.ScalingDecision, ...] = ()) -> Outcome:
        functions, instances = self.state.take_changes()
        return Outcome(tuple(calls), scaling, functions, instances)


def _visible(name: str) -> None:
    """User operations never reach the profiler's hidden functions."""
    if is_profiling(name):
        raise NotFound(f"no function named {name!r}")
