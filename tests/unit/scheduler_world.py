"""A tiny world for driving `SchedulerCore` without processes: node agents as records
that answer agent calls and heartbeat — admitting starts and quota changes with the
agent's own `NodeBudget` — and time as a number. What a simulator does, in miniature."""

from __future__ import annotations

from dataclasses import dataclass, field

from dilu.v1 import types_pb2

from services.common.bounds import AGENT_DEFAULT, PlacementBounds
from services.node_agent.budget import Hold, NodeBudget, NoRoom
from services.scheduler.core import (
    AgentCall,
    CallFailed,
    CallResult,
    CallSucceeded,
    Outcome,
    Refusal,
    SchedulerCore,
    SchedulerSettings,
    SetQuota,
    StartInstance,
    StopInstance,
)
from services.scheduler.placement import make_placement

S = types_pb2


def inference_spec(name: str, *, request: float = 0.3, limit: float = 0.5, memory_mib: int = 4096,
                   min_replicas: int = 1, max_replicas: int = 4,
                   kind: int = S.FUNCTION_KIND_INFERENCE) -> types_pb2.FunctionSpec:
    """A spec as validation leaves it (every default filled), so the core sees what the
    shell hands it."""
    return types_pb2.FunctionSpec(
        name=name, kind=kind, runtime=S.RUNTIME_SIM, model="resnet152",  # type: ignore[arg-type]
        slo=types_pb2.Slo(latency_ms=100, percentile=99),
        resources=types_pb2.Resources(sm_request=request, sm_limit=limit, memory_mib=memory_mib,
                                      gpus_per_instance=1),
        replicas=types_pb2.Replicas(min=min_replicas, max=max_replicas))


GPU_MEMORY_MIB = 40960


@dataclass
class FakeAgent:
    """One node agent: its GPUs, the bounds it announces and the instances it runs, as it
    would report them; starts and quota changes are admitted by the agent's own budget."""

    node_id: str
    gpus: int = 2
    revision: int = 0
    running: dict[str, types_pb2.InstanceReport] = field(default_factory=dict)
    # What the next StartInstance answers instead of starting (a status code's meaning).
    refuse: Refusal | None = None
    alive: bool = True
    bounds: PlacementBounds = AGENT_DEFAULT
    # Whether the heartbeat announces the bounds (an agent from before did not).
    announces: bool = True
    gpu_model: str = "NVIDIA A100-SXM4-40GB"
    budget: NodeBudget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = NodeBudget(self.node_id, {self.gpu(g): GPU_MEMORY_MIB
                                                for g in range(self.gpus)}, self.bounds)

    def gpu(self, index: int) -> str:
        return f"{self.node_id}-g{index}"

    def node(self) -> types_pb2.Node:
        node = types_pb2.Node(id=self.node_id, address=f"{self.node_id}:1")
        for g in range(self.gpus):
            node.gpus.add(uuid=self.gpu(g), index=g, memory_total_mib=GPU_MEMORY_MIB,
                          model=self.gpu_model)
        node.instances.extend(self.running.values())
        if self.announces:
            node.bounds.CopyFrom(self.bounds.to_proto())
        return node

    def answer(self, call: AgentCall) -> CallResult:
        if isinstance(call, StartInstance):
            if self.refuse is not None:
                return CallFailed(self.refuse, f"{self.refuse.name}: refused by the test")
            if call.instance_id in self.running:
                return CallSucceeded(report=self.running[call.instance_id])
            try:
                self.budget.start(call.instance_id, call.gpu_uuids, Hold.of(call.quota))
            except NoRoom as refused:
                return CallFailed(Refusal.NO_ROOM, f"RESOURCE_EXHAUSTED: {refused.message}")
            report = types_pb2.InstanceReport(
                instance_id=call.instance_id, function=call.spec.name,
                state=S.INSTANCE_STATE_STARTING, quota=call.quota, message="starting worker",
                gpu_uuids=call.gpu_uuids, quota_version=1)
            self.running[call.instance_id] = report
            return CallSucceeded(report=report)
        if isinstance(call, StopInstance):
            self.forget(call.instance_id)
            return CallSucceeded()
        assert isinstance(call, SetQuota)
        try:
            report = self.resize(call.instance_id, call.quota)
        except NoRoom as refused:
            return CallFailed(Refusal.NO_ROOM, f"RESOURCE_EXHAUSTED: {refused.message}")
        return CallSucceeded(quota=report.quota, quota_version=report.quota_version)

    def resize(self, instance_id: str, quota: types_pb2.Quota) -> types_pb2.InstanceReport:
        """SetQuota as the agent applies it (raises NoRoom); returns the instance's report,
        which is what its QUOTA_CHANGED event carries."""
        self.budget.resize(instance_id, Hold.of(quota))
        report = self.running[instance_id]
        report.quota.sm_request = quota.sm_request
        report.quota.sm_limit = quota.sm_limit
        report.quota.memory_limit_mib = quota.memory_limit_mib
        report.quota_version += 1
        return report

    def forget(self, instance_id: str) -> None:
        self.running.pop(instance_id, None)
        self.budget.release(instance_id)


class World:
    """A core, its agents and the time. Calls the core returns are answered at once
    unless `hold_calls` is set (then they wait in `held`)."""

    def __init__(self, *agents: FakeAgent, settings: SchedulerSettings | None = None,
                 policy: str = "first-fit") -> None:
        self.now = 1000.0
        self.agents = {a.node_id: a for a in agents}
        self.settings = settings or SchedulerSettings()
        self._ids = 0
        self.core = SchedulerCore(make_placement(policy), self.settings, new_id=self.new_id)
        self.hold_calls = False
        self.held: list[AgentCall] = []
        self.made: list[AgentCall] = []
        self.heartbeat()

    def new_id(self, function: str) -> str:
        self._ids += 1
        return f"{function}-{self._ids}"

    # ---- inputs ----------------------------------------------------------------------

    def run(self, outcome: Outcome) -> Outcome:
        """Make the outcome's calls (and those their results lead to)."""
        pending = list(outcome.calls)
        while pending:
            call = pending.pop(0)
            self.made.append(call)
            if self.hold_calls:
                self.held.append(call)
                continue
            agent = self.agents[call.node]
            result = agent.answer(call) if agent.alive else CallFailed(
                Refusal.UNREACHABLE, "UNAVAILABLE: connection refused")
            pending += self.core.call_done(call, result, self.now).calls
        return outcome

    def deploy(self, spec: types_pb2.FunctionSpec) -> Outcome:
        return self.run(self.core.apply(self.core.deploy(spec, self.now), self.now))

    def delete(self, name: str) -> Outcome:
        return self.run(self.core.apply(self.core.delete(name, self.now), self.now))

    def scale(self, name: str, delta: int, instance_ids: tuple[str, ...] = ()) -> Outcome:
        change = self.core.scale(name, delta, self.now, reason="test", source="manual",
                                 instance_ids=instance_ids)
        return self.run(self.core.apply(change, self.now))

    def heartbeat(self) -> Outcome:
        """Every live agent re-puts its entry; the scheduler reads the registry."""
        snapshot = {}
        for agent in self.agents.values():
            if agent.alive:
                agent.revision += 1
            snapshot[agent.node_id] = (agent.revision, agent.node())
        return self.run(self.core.observe_nodes(snapshot, self.now))

    def tick(self) -> Outcome:
        return self.run(self.core.tick(self.now))

    def pass_(self, seconds: float = 1.0) -> None:
        """One reconcile pass `seconds` after the last: heartbeats, then a tick."""
        self.now += seconds
        self.heartbeat()
        self.tick()

    def report(self, instance_id: str, state: int, message: str = "",
               endpoint: str = "") -> Outcome:
        """The agent holding the instance publishes an event (and updates its record)."""
        agent = next(a for a in self.agents.values() if instance_id in a.running)
        report = agent.running[instance_id]
        report.state = state  # type: ignore[assignment]
        report.message = message or report.message
        report.endpoint = endpoint
        if state in (S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_STOPPED):
            agent.forget(instance_id)
        return self.run(self.core.instance_reported(agent.node_id, report, self.now))

    def raise_quota(self, instance_id: str, quota: types_pb2.Quota, *,
                    publish: bool = True) -> types_pb2.InstanceReport:
        """A SetQuota straight to the instance's agent (as the scaler makes it); its
        QUOTA_CHANGED event reaches the core when `publish` (else only heartbeats tell)."""
        agent = next(a for a in self.agents.values() if instance_id in a.running)
        report = agent.resize(instance_id, quota)
        if publish:
            event = types_pb2.InstanceReport()
            event.CopyFrom(report)
            event.state = S.INSTANCE_STATE_UNSPECIFIED  # a quota change is no transition
            self.run(self.core.instance_reported(agent.node_id, event, self.now))
        return report

    def ready_all(self) -> None:
        for agent in self.agents.values():
            for iid, report in list(agent.running.items()):
                if report.state == S.INSTANCE_STATE_STARTING:
                    self.report(iid, S.INSTANCE_STATE_READY, "serving", f"{iid}:9")

    # ---- reading ---------------------------------------------------------------------

    def instances(self, name: str) -> list[types_pb2.Instance]:
        return list(self.core.function(name).status.instances)

    def states(self, name: str) -> dict[str, int]:
        return {i.id: i.state for i in self.instances(name)}

    def live(self, name: str) -> list[types_pb2.Instance]:
        live = {S.INSTANCE_STATE_PENDING, S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_READY}
        return [i for i in self.instances(name) if i.state in live]

    def status(self, name: str) -> types_pb2.FunctionStatus:
        return self.core.function(name).status
