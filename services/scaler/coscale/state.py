"""What the co-scaling policy remembers between decisions (immutable: `decide` returns a
new one). Nothing here is needed for correctness after a restart beyond a few windows of
laziness: a fresh state only waits its hysteresis again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FunctionMemory:
    rates: tuple[tuple[float, float], ...] = ()   # (window end s, offered req/s), oldest first
    last_request_s: float | None = None           # the end of the last window with a request
    # Instances asked for and not yet seen: how many, and since when.
    asked: int = 0
    asked_s: float = 0.0
    known: frozenset[str] = frozenset()           # the instances seen at the last decision
    # Consecutive decisions whose predicted need exceeded what the instances can carry.
    over: int = 0
    last_scale_out_s: float = -1e18
    last_scale_in_s: float = -1e18
    # The predictions of the last `scale_down_after_s` (s, req/s) and the rate the
    # quotas are sized for (None before the first decision).
    predicted: tuple[tuple[float, float], ...] = ()
    sized_rps: float | None = None


@dataclass(frozen=True, slots=True)
class InstanceMemory:
    # What the policy holds it at (request, busy share, limit: raised at once, lowered
    # lazily; empty before the first decision), and since when it is known.
    held: tuple[float, ...] = ()
    since_s: float | None = None
    granted_busy: float = 0.0     # the busy share its GPU gave it at the last decision


@dataclass(frozen=True, slots=True)
class CoscaleState:
    functions: Mapping[str, FunctionMemory] = field(default_factory=dict)
    instances: Mapping[str, InstanceMemory] = field(default_factory=dict)
