"""Node liveness from heartbeats, judged on the scheduler's own clock.

Agents re-put their KV entry every heartbeat; the scheduler notes the local time at which
each entry's revision last changed, so clock skew between machines does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass

from dilu.v1 import types_pb2


@dataclass(slots=True)
class _Seen:
    node: types_pb2.Node
    revision: int
    seen_at: float
    lost: bool = False
    # False for entries found in the registry at start-up until they change: an entry
    # written by an agent that has since died must not attract placements.
    confirmed: bool = True


class NodeTracker:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._nodes: dict[str, _Seen] = {}

    def observe(self, node: types_pb2.Node, revision: int, now: float, *,
                trusted: bool = True) -> None:
        seen = self._nodes.get(node.id)
        if seen is None:
            self._nodes[node.id] = _Seen(node=node, revision=revision, seen_at=now,
                                         confirmed=trusted)
        elif seen.revision != revision:
            seen.node, seen.revision, seen.seen_at, seen.confirmed = node, revision, now, True

    def pardon(self, now: float) -> None:
        """Restart every node's clock: called when the scheduler could not see heartbeats
        (bus outage), because their absence then says nothing about the nodes."""
        for seen in self._nodes.values():
            seen.seen_at = max(seen.seen_at, now)

    def sweep(self, now: float) -> tuple[list[str], list[str]]:
        """Update states; returns (nodes that came back, nodes just lost)."""
        back, lost = [], []
        for node_id, seen in sorted(self._nodes.items()):
            stale = now - seen.seen_at > self.timeout_s
            if stale and not seen.lost:
                seen.lost = True
                lost.append(node_id)
            elif not stale and seen.lost:
                seen.lost = False
                back.append(node_id)
        return back, lost

    def ready(self) -> list[str]:
        return sorted(n for n, s in self._nodes.items() if not s.lost and s.confirmed)

    def state(self, node_id: str) -> types_pb2.NodeState.ValueType:
        seen = self._nodes.get(node_id)
        if seen is None or seen.lost:
            return types_pb2.NODE_STATE_LOST
        return types_pb2.NODE_STATE_READY if seen.confirmed else types_pb2.NODE_STATE_UNCONFIRMED

    def revision(self, node_id: str) -> int:
        seen = self._nodes.get(node_id)
        return seen.revision if seen else 0

    def node(self, node_id: str) -> types_pb2.Node | None:
        seen = self._nodes.get(node_id)
        return seen.node if seen else None

    def all(self) -> list[types_pb2.Node]:
        """Every node seen since start, lost ones included."""
        return [s.node for _, s in sorted(self._nodes.items())]
