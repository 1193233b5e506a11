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


class NodeTracker:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._nodes: dict[str, _Seen] = {}

    def observe(self, node: types_pb2.Node, revision: int, now: float) -> None:
        seen = self._nodes.get(node.id)
        if seen is None or seen.revision != revision:
            self._nodes[node.id] = _Seen(node=node, revision=revision, seen_at=now,
                                         lost=seen.lost if seen else False)

    def pardon(self, now: float) -> None:
        """Restart every node's clock: called when the scheduler could not see heartbeats
        (bus outage), because their absence then says nothing about the nodes."""
        for seen in self._nodes.values():
            seen.seen_at = max(seen.seen_at, now)

    def sweep(self, now: float) -> tuple[list[str], list[str]]:
        """Update states; returns (nodes that came up or back, nodes just lost)."""
        up, lost = [], []
        for node_id, seen in sorted(self._nodes.items()):
            stale = now - seen.seen_at > self.timeout_s
            if stale and not seen.lost:
                seen.lost = True
                lost.append(node_id)
            elif not stale and seen.lost:
                seen.lost = False
                up.append(node_id)
        return up, lost

    def ready(self) -> list[str]:
        return sorted(n for n, s in self._nodes.items() if not s.lost)

    def is_ready(self, node_id: str) -> bool:
        seen = self._nodes.get(node_id)
        return seen is not None and not seen.lost

    def node(self, node_id: str) -> types_pb2.Node | None:
        seen = self._nodes.get(node_id)
        return seen.node if seen else None

    def all(self) -> list[tuple[types_pb2.Node, bool]]:
        """Every node ever seen since start, with whether it is lost."""
        return [(s.node, s.lost) for _, s in sorted(self._nodes.items())]
