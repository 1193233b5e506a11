"""A tiny world for driving `SchedulerCore` without processes: node agents as records
that answer agent calls and heartbeat, and time as a number. What a simulator does, in
miniature."""

from __future__ import annotations

from dataclasses import dataclass, field

from dilu.v1 import types_pb2

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


@dataclass
class FakeAgent:
    """One node agent: its GPUs and the instances it runs, as it would report them."""

    node_id: str
    gpus: int = 2
    revision: int = 0
    running: dict[str, types_pb2.InstanceReport] = field(default_factory=dict)
    # What the next StartInstance answers instead of starting (a status code's meaning).
    refuse: Refusal | None = None
    alive: bool = True

    def node(self) -> types_pb2.Node:
        node = types_pb2.Node(id=self.node_id, address=f"{self.node_id}:1")
        for g in range(self.gpus):
            node.gpus.add(uuid=f"{self.node_id}-g{g}", index=g, memory_total_mib=40960)
        node.instances.extend(self.running.values())
        return node

    def answer(self, call: AgentCall) -> CallResult:
        if isinstance(call, StartInstance):
            if self.refuse is not None:
                return CallFailed(self.refuse, f"{self.refuse.name}: refused by the test")
            report = types_pb2.InstanceReport(
                instance_id=call.instance_id, function=call.spec.name,
                state=S.INSTANCE_STATE_STARTING, quota=call.quota, message="starting worker")
            self.running[call.instance_id] = report
            return CallSucceeded(report=report)
        if isinstance(call, StopInstance):
            self.running.pop(call.instance_id, None)
            return CallSucceeded()
        assert isinstance(call, SetQuota)
        self.running[call.instance_id].quota.CopyFrom(call.quota)
        return CallSucceeded(quota=call.quota)


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
            del agent.running[instance_id]
        return self.run(self.core.instance_reported(agent.node_id, report, self.now))

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
