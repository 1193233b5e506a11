"""Property: whatever the interleaving of starts, stops, resizes, worker failures,
heartbeats and ticks, no GPU ever holds more than its node's bounds, and once the
messages in flight have arrived the scheduler core's ledger (and its records) equal the
node agents' books.

The core and the agents' `NodeBudget`s are the production objects; only delivery is
simulated. Agent calls travel in two legs (to the agent, which acts at once, and its
answer back to the core), both in any order, as concurrent gRPC calls do; instance events
arrive in the order they were published, heartbeats in the order they were read, and
either may arrive before, between or after the calls' legs. Each round draws a few
actions, interleaves everything they cause, then lets it all arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dilu.v1 import types_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.bounds import REQUESTS_ONLY, PlacementBounds
from services.common.errors import FailedPrecondition
from services.node_agent.budget import NoRoom
from services.scheduler.core import (
    HOLDING,
    AgentCall,
    CallResult,
    Outcome,
    SchedulerCore,
    SchedulerSettings,
    StartInstance,
)
from services.scheduler.core.heartbeats import NodeSnapshot
from services.scheduler.placement import make_placement
from tests.unit.scheduler_world import FakeAgent, inference_spec

S = types_pb2
FUNCTIONS = ("a", "b")
# Few GPUs, so that starts and raises compete for the same room.
BOUNDS = {"n1": PlacementBounds(1.0, 1.5), "n2": PlacementBounds(0.6, 0.8),
          "n3": PlacementBounds(1.0, 1.0)}
GPUS = {"n1": 1, "n2": 1, "n3": 1}


@dataclass
class Wire:
    """What is in flight between the core and the agents."""

    to_agents: list[AgentCall] = field(default_factory=list)
    to_core: list[tuple[AgentCall, CallResult]] = field(default_factory=list)
    events: list[tuple[str, types_pb2.InstanceReport]] = field(default_factory=list)
    reads: list[NodeSnapshot] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.to_agents or self.to_core or self.events or self.reads)


class Cluster:
    def __init__(self) -> None:
        self.now = 1000.0
        self.agents = {n: FakeAgent(n, gpus=GPUS[n], bounds=b) for n, b in BOUNDS.items()}
        self._ids = 0
        self.core = SchedulerCore(make_placement("complementary", REQUESTS_ONLY),
                                  SchedulerSettings(), new_id=self._new_id)
        self.wire = Wire()
        self._deliver(self.core.observe_nodes(self.snapshot(), self.now))
        for name in FUNCTIONS:
            spec = inference_spec(name, request=0.3, limit=0.4, min_replicas=2, max_replicas=8)
            self._deliver(self.core.apply(self.core.deploy(spec, self.now), self.now))

    def _new_id(self, function: str) -> str:
        self._ids += 1
        return f"{function}-{self._ids}"

    def snapshot(self) -> dict[str, tuple[int, types_pb2.Node]]:
        snap = {}
        for agent in self.agents.values():
            agent.revision += 1
            node = types_pb2.Node()
            node.CopyFrom(agent.node())  # as read now, whatever happens to the agent later
            snap[agent.node_id] = (agent.revision, node)
        return snap

    def _deliver(self, outcome: Outcome) -> None:
        self.wire.to_agents += outcome.calls

    # ---- actions -------------------------------------------------------------------------

    def act(self, action: tuple[str, int, float, float, int, int]) -> None:
        kind, pick, request, limit, memory, _ = action
        name = FUNCTIONS[pick % len(FUNCTIONS)]
        if kind in ("out", "in"):
            try:
                change = self.core.scale(name, 1 if kind == "out" else -1, self.now,
                                         reason="property", source="scaler")
            except FailedPrecondition:
                return
            self._deliver(self.core.apply(change, self.now))
        elif kind in ("resize", "crash"):
            running = sorted(((i, a) for a in self.agents.values() for i in a.running),
                             key=lambda pair: pair[0])
            # Half the time, one that shares a GPU with a start still on its way: the race.
            contested = {u for c in self.wire.to_agents if isinstance(c, StartInstance)
                         for u in c.gpu_uuids}
            racing = [(i, a) for i, a in running if set(a.budget.gpus_of(i)) & contested]
            if racing and pick % 2:
                running = racing
            if not running:
                return
            instance_id, agent = running[pick % len(running)]
            if kind == "crash":
                report = types_pb2.InstanceReport()
                report.CopyFrom(agent.running[instance_id])
                report.state = S.INSTANCE_STATE_FAILED
                agent.forget(instance_id)
                self.wire.events.append((agent.node_id, report))
                return
            wanted = types_pb2.Quota(sm_request=request, sm_limit=max(request, limit),
                                     memory_limit_mib=memory)
            try:
                report = agent.resize(instance_id, wanted)
            except NoRoom:
                return  # refused: nothing changed, nothing published
            event = types_pb2.InstanceReport()
            event.CopyFrom(report)
            event.state = S.INSTANCE_STATE_UNSPECIFIED
            self.wire.events.append((agent.node_id, event))
        elif kind == "read":
            self.wire.reads.append(self.snapshot())
        elif kind == "tick":
            self.now += request * 5
            self._deliver(self.core.tick(self.now))

    def deliver_one(self, which: int) -> None:
        """One message arrives: `which` picks the kind and, for calls, which one."""
        queues = [q for q in ("to_agents", "to_core", "events", "reads")
                  if getattr(self.wire, q)]
        queue = queues[which % len(queues)]
        if queue == "to_agents":
            call = self.wire.to_agents.pop(which % len(self.wire.to_agents))
            self.wire.to_core.append((call, self.agents[call.node].answer(call)))
        elif queue == "to_core":
            call, result = self.wire.to_core.pop(which % len(self.wire.to_core))
            self._deliver(self.core.call_done(call, result, self.now))
        elif queue == "events":
            node, report = self.wire.events.pop(0)
            self._deliver(self.core.instance_reported(node, report, self.now))
        else:
            self._deliver(self.core.observe_nodes(self.wire.reads.pop(0), self.now))

    def settle(self, order: list[int]) -> None:
        """Let everything in flight arrive (in the drawn order, then in turn), then read
        the registry and tick until nothing more is asked."""
        for which in order:
            if self.wire.empty():
                break
            self.deliver_one(which)
            check_bounds(self)
        for _ in range(20):
            while not self.wire.empty():
                self.deliver_one(0)
                check_bounds(self)
            self._deliver(self.core.observe_nodes(self.snapshot(), self.now))
            self._deliver(self.core.tick(self.now))
            if self.wire.empty():
                return
        raise AssertionError(f"still talking after 20 rounds: {self.wire}")


def check_bounds(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        for g in range(agent.gpus):
            assert agent.budget.within_bounds(agent.gpu(g)), (agent.node_id, g)


def check_books(cluster: Cluster) -> None:
    core = cluster.core
    for agent in cluster.agents.values():
        for g in range(agent.gpus):
            uuid = agent.gpu(g)
            slot = core.ledger.gpu(uuid)
            assert slot is not None
            used = agent.budget.used(uuid)
            assert core.ledger.instances_on(uuid) == agent.budget.instances_on(uuid), uuid
            assert abs(slot.sm_requested - used.sm_request) < 1e-9, uuid
            assert abs(slot.sm_limited - used.sm_limit) < 1e-9, uuid
            assert slot.memory_allocated_mib == used.memory_mib, uuid
        for instance_id, report in agent.running.items():
            record = core.state.instances[instance_id]
            assert record.state in HOLDING and record.node == agent.node_id
            assert (record.quota.sm_request, record.quota.sm_limit,
                    record.quota.memory_limit_mib) == (
                report.quota.sm_request, report.quota.sm_limit, report.quota.memory_limit_mib)


# (what, which function or instance, request, limit, memory, messages delivered after it)
_ACTION = st.tuples(
    st.sampled_from(["out", "out", "out", "in", "resize", "resize", "resize", "crash", "read",
                     "tick"]),
    st.integers(0, 50),
    st.sampled_from([0.1, 0.2, 0.3, 0.45, 0.6, 0.8]),
    st.sampled_from([0.2, 0.5, 0.9, 1.0]),
    st.sampled_from([2048, 4096, 16384, 30000]),
    st.sampled_from([0, 0, 0, 1, 2, 3]),
)
_ROUND = st.tuples(st.lists(_ACTION, min_size=2, max_size=6),
                   st.lists(st.integers(0, 1000), min_size=15, max_size=15))


@settings(max_examples=150, deadline=None)
@given(st.lists(_ROUND, min_size=3, max_size=8))
def test_no_gpu_exceeds_its_bounds_and_the_ledger_equals_the_agents_books(rounds):
    cluster = Cluster()
    cluster.settle([])
    check_books(cluster)
    for actions, order in rounds:
        for n, action in enumerate(actions):
            cluster.act(action)
            check_bounds(cluster)
            # Some of what is in flight arrives between this action and the next.
            for which in order[3 * n:3 * n + action[-1]]:
                if not cluster.wire.empty():
                    cluster.deliver_one(which)
                    check_bounds(cluster)
        cluster.settle(order)
        check_books(cluster)
