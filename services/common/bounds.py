"""The placement bounds of a GPU: one definition for the node agent, which admits against
them (it owns its GPUs' budget), and for the scheduler's placement, which places against
the bounds each node announces. Both compare with the same tolerance, so what the
scheduler finds room for the agent admits too.

On one GPU: the SM requests of its instances add up to at most `max_requested` (requests
are guaranteed), their SM limits to at most `max_limited` (limits may be over-subscribed,
since not every instance bursts at once), and their memory to at most the GPU's memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dilu.v1 import types_pb2

# So that shares adding up to exactly 1.0 in decimal still fit in binary.
EPS = 1e-9


@dataclass(frozen=True, slots=True)
class PlacementBounds:
    """Over-subscription bounds per GPU. Requests are guaranteed, so never above 1;
    limits may be over-subscribed (`math.inf`: not bounded at all)."""

    max_requested: float = 1.0
    max_limited: float = 1.5

    def __post_init__(self) -> None:
        if not 0 < self.max_requested <= 1:
            raise ValueError(f"max_requested must be in (0, 1]: requests are guaranteed, "
                             f"got {self.max_requested}")
        if math.isnan(self.max_limited) or not self.max_limited >= self.max_requested:
            raise ValueError(f"max_limited must be at least max_requested "
                             f"({self.max_requested}), got {self.max_limited}")

    def tighter(self, other: PlacementBounds) -> PlacementBounds:
        """Each bound at the stricter of the two."""
        return PlacementBounds(min(self.max_requested, other.max_requested),
                               min(self.max_limited, other.max_limited))

    def to_proto(self) -> types_pb2.PlacementBounds:
        return types_pb2.PlacementBounds(max_requested=self.max_requested,
                                         max_limited=self.max_limited)


# What a node agent admits unless configured otherwise (the Dilu paper's bounds).
AGENT_DEFAULT = PlacementBounds()
# No bound beyond requests ≤ 1: the rule of a placement policy that leaves the
# over-subscription of limits to what each node announces.
REQUESTS_ONLY = PlacementBounds(1.0, math.inf)


def announced(node: types_pb2.Node) -> PlacementBounds:
    """The bounds a node announces in its heartbeat; an agent that announces none (from
    before bounds were announced) admits against the defaults. Announced values that are
    not valid bounds fall back to the defaults too, so one bad heartbeat cannot widen
    what the scheduler places."""
    if not node.HasField("bounds"):
        return AGENT_DEFAULT
    try:
        return PlacementBounds(node.bounds.max_requested, node.bounds.max_limited)
    except ValueError:
        return AGENT_DEFAULT
