"""What the nodes' heartbeats say: which nodes are up, which GPUs they have and the bounds
their agents admit against, and the state and quota of the instances they run,
reconciled level-triggered against the records.

Liveness is judged by when a node's registry entry last changed on the scheduler's own
clock (`NodeTracker`), and only while the entries can be read: after a spell of not
reading them every node is pardoned, since their silence then says nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dilu.v1 import types_pb2

from services.common.bounds import announced
from services.scheduler.core.calls import AgentCall
from services.scheduler.core.lifecycle import Lifecycle
from services.scheduler.core.records import HOLDING, PLACED, TERMINAL, ClusterState, seconds
from services.scheduler.core.settings import SchedulerSettings
from services.scheduler.nodes import NodeTracker
from services.scheduler.placement import Ledger

log = logging.getLogger(__name__)
S = types_pb2

# Heartbeats in a row that must omit a placed instance before it counts as gone: the
# first may have been written before the agent handled StartInstance.
MISSING_HEARTBEATS = 2

# Node id -> (the entry's revision in the registry, the node as its agent announced it).
NodeSnapshot = Mapping[str, tuple[int, types_pb2.Node]]


def genuine(snapshot: NodeSnapshot) -> NodeSnapshot:
    """The entries whose node is the one their key names. In secure mode each agent may
    write only its own key (NATS permissions), so a node under another key would be one
    agent speaking for another: ignored, not believed."""
    kept = {key: entry for key, entry in snapshot.items() if entry[1].id == key}
    for key in snapshot.keys() - kept.keys():
        log.warning("ignoring the registry entry %r: it announces node %r", key[:80],
                    snapshot[key][1].id[:80])
    return kept


class Heartbeats:
    def __init__(self, state: ClusterState, ledger: Ledger, lifecycle: Lifecycle,
                 settings: SchedulerSettings) -> None:
        self._state = state
        self._ledger = ledger
        self._lifecycle = lifecycle
        self._settings = settings
        self.nodes = NodeTracker(settings.node_timeout_s)
        self._missing: dict[str, tuple[int, int]] = {}  # instance -> (heartbeats, revision)
        # True while heartbeats could not be read: node liveness is not judged then.
        self._blind = False

    def unreadable(self) -> None:
        self._blind = True

    def declare(self, snapshot: NodeSnapshot, now: float, *, trusted: bool) -> None:
        """Note each node's entry, GPUs and bounds. `trusted=False` for entries found at
        start-up, which get no placements until they change (their agent may have died
        since)."""
        for revision, node in snapshot.values():
            self.nodes.observe(node, revision, now, trusted=trusted)
            if self.nodes.state(node.id) == S.NODE_STATE_LOST:
                # A lost node's record lingers for the bucket's TTL, and the agent that
                # replaced it may declare the same GPUs: a lost node declares none.
                evicted = self._ledger.remove_node(node.id)
            else:
                evicted = self._ledger.set_node(node.id, [(g.uuid, g.memory_total_mib)
                                                          for g in node.gpus], announced(node))
            for instance_id in evicted:
                instance = self._state.instances.get(instance_id)
                if instance is not None:
                    self._lifecycle.fail(instance, S.INSTANCE_STATE_FAILED,
                                         f"its GPU is no longer on node {node.id}", now,
                                         counts=False)

    def observe(self, snapshot: NodeSnapshot, now: float) -> list[AgentCall]:
        """A fresh read of every node's entry: liveness, GPUs, then instance states."""
        self.declare(snapshot, now, trusted=True)
        if self._blind:
            self.nodes.pardon(now)
            self._blind = False
        _, lost = self.nodes.sweep(now)
        for node_id in lost:
            self._node_lost(node_id, now)
        calls: list[AgentCall] = []
        for node_id in self.nodes.ready():
            calls += self._sync_node(node_id, now)
        return calls

    def _node_lost(self, node_id: str, now: float) -> None:
        log.warning("node %s lost: no heartbeat for %.1f s", node_id, self._settings.node_timeout_s)
        for instance in self._state.on_node(node_id, HOLDING):
            if instance.state == S.INSTANCE_STATE_DRAINING:
                self._lifecycle.stopped(instance, f"node {node_id} stopped heartbeating while "
                                        "it drained", now)
            else:
                self._lifecycle.fail(instance, S.INSTANCE_STATE_LOST,
                                     f"node {node_id} stopped heartbeating", now, counts=False)

    def _sync_node(self, node_id: str, now: float) -> list[AgentCall]:
        """Level-triggered repair: adopt states the agent reports, fail what it has
        forgotten, finish or repeat stops, stop what it runs unwanted."""
        node = self.nodes.node(node_id)
        assert node is not None
        revision = self.nodes.revision(node_id)
        reported = {r.instance_id: r for r in node.instances}
        calls: list[AgentCall] = []
        for instance in self._state.on_node(node_id, HOLDING):
            report = reported.get(instance.id)
            if instance.state == S.INSTANCE_STATE_DRAINING:
                if report is None:
                    self._lifecycle.stopped(instance, instance.message or "stopped", now)
                    continue
                # It holds its share until it has stopped, at what its agent says.
                self._lifecycle.adopt_quota(instance, report.quota, report.quota_version)
                if self._lifecycle.stop_due(instance.id, now):
                    calls.append(self._lifecycle.stop_call(node_id, instance.id))
            elif report is not None:
                self._missing.pop(instance.id, None)
                # The quota first: a replacement starts at what the instance last had.
                self._lifecycle.adopt_quota(instance, report.quota, report.quota_version)
                self._lifecycle.adopt(instance, report.state, report.endpoint, report.message, now)
                if instance.state in PLACED:
                    self._lifecycle.adopt_share(instance, report.quota.effective_share)
            else:
                self._note_missing(instance, node_id, revision, now)
        for instance_id in reported:
            known = self._state.instances.get(instance_id)
            unwanted = known is None or known.state in TERMINAL or known.node != node_id
            if unwanted and self._lifecycle.stop_due(instance_id, now):
                calls.append(self._lifecycle.stop_call(node_id, instance_id))
        return calls

    def adopt_quotas(self, snapshot: NodeSnapshot) -> None:
        """Adopt the quota every node reports for each instance it holds: after a
        restart the books are rebuilt from the agents' reports, not only from records
        that may predate a change made while the scheduler was down."""
        for _, node in snapshot.values():
            for report in node.instances:
                instance = self._state.instances.get(report.instance_id)
                if instance is not None and instance.node == node.id and instance.state in HOLDING:
                    self._lifecycle.adopt_quota(instance, report.quota, report.quota_version)

    def _note_missing(self, instance: types_pb2.Instance, node_id: str, revision: int,
                      now: float) -> None:
        count, seen_revision = self._missing.get(instance.id, (0, 0))
        if revision != seen_revision:
            count += 1
        self._missing[instance.id] = (count, revision)
        age = now - seconds(instance.updated_at)
        if count >= MISSING_HEARTBEATS and age > self._settings.agent_grace_s:
            self._missing.pop(instance.id, None)
            self._lifecycle.fail(instance, S.INSTANCE_STATE_FAILED,
                                 f"node agent {node_id} no longer runs it", now, counts=False)

    def forget(self, instance_id: str) -> None:
        self._missing.pop(instance_id, None)
