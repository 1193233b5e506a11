"""Node arbitration in the simulator: the node agent's `NodeArbitration` (hunger, gangs,
draining, one `GpuArbiter` per GPU), evaluated only at the periods where an input changes.

The agent evaluates every 10 ms. Between two periods where nothing changes — the same
members and quotas, the same instances hungry — the arbiter's answer is the same, except
for training's throttle, which keeps moving: under pressure it shrinks (and training's share
does not depend on it then, since the hungry inference took all the spare), otherwise it is
restored step by step. So a node is evaluated at:

- the first period after a member joins, leaves, drains or changes its quota;
- an instance's first observed wait for credit when it is not hungry (its gate's first
  sleep end, seen at the next period boundary), and the end of its hunger hold (where new
  waits seen since extend it, the hold is checked again at its new end);
- every period while training's throttle is being restored on a GPU with training.

Skipped periods are caught up exactly (`GpuArbiter.skip`). With `ticked=True` it evaluates
every period instead, as the agent does: `tests/unit/test_serving_arbitration.py` checks
that both give the same shares at the same moments.

Hunger is the agent's: an instance whose gate slept during the period ending at `T` (a
sleep ended in `(T - 10 ms, T]`) waited; it stays hungry until `hunger_hold` after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.node_agent.arbitration import Member, NodeArbitration

PERIOD_NS = 10_000_000
HUNGER_HOLD_NS = 200_000_000


def ceil_tick(t_ns: int, period_ns: int = PERIOD_NS) -> int:
    return -(-t_ns // period_ns) * period_ns


class NodeArbitrationDriver:
    """One per node of the simulated cluster."""

    def __init__(self, schedule: Callable[..., None], node: str, gpus: list[str], *,
                 ticked: bool = False, period_ns: int = PERIOD_NS,
                 hunger_hold_ns: int = HUNGER_HOLD_NS,
                 on_shares: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self._schedule = schedule
        self.node = node
        self.core = NodeArbitration(gpus, hunger_hold=hunger_hold_ns)
        self.period_ns = period_ns
        self.ticked = ticked
        self.members: dict[str, Member] = {}
        self.instances: dict[str, Any] = {}
        self.shares: dict[str, float] = {}
        self._reported: dict[str, int] = {}
        self._last_tick: int | None = None
        self._last_members: list[Member] = []
        self._due: int | None = None
        self._version = 0
        self._on_shares = on_shares  # observer (tests, traces)
        self.evaluations = 0

    # ---- membership ------------------------------------------------------------------

    def attach(self, instance: Any, now_ns: int) -> None:
        self.instances[instance.id] = instance
        instance.arbitration = self
        self.update(instance, now_ns)

    def update(self, instance: Any, now_ns: int, draining: bool = False) -> None:
        """A member joined or changed quota or began draining: seen at the next period."""
        self.members[instance.id] = Member(instance.id, instance.gpus, not instance.training,
                                           instance.request, instance.limit, draining)
        self._want(self._after(now_ns))

    def detach(self, instance: Any, now_ns: int) -> None:
        self.members.pop(instance.id, None)
        self.instances.pop(instance.id, None)
        self.shares.pop(instance.id, None)
        self._reported.pop(instance.id, None)
        instance.arbitration = None
        self._want(self._after(now_ns))

    def poke(self, instance: Any, now_ns: int) -> None:
        """An instance's pacing changed (a new batch or step, a resumed one): its next
        wait for credit may come sooner than the node's next evaluation."""
        if self.ticked or instance.id not in self.members:
            return
        member = self.members[instance.id]
        if self._last_tick is not None and self.core.hungry(member, self._last_tick):
            return  # checked again at the end of its hold anyway
        upcoming = instance.next_wait_end(now_ns - 1)
        if upcoming is not None:
            self._want(max(ceil_tick(upcoming, self.period_ns), self._after(now_ns)))

    def start(self, now_ns: int) -> None:
        """Begin (ticked mode: the first period)."""
        self._want(self._after(now_ns))

    # ---- evaluation ------------------------------------------------------------------

    def _after(self, now_ns: int) -> int:
        """The first period boundary strictly after `now_ns` not yet evaluated."""
        tick = ceil_tick(now_ns + 1, self.period_ns)
        if self._last_tick is not None and tick <= self._last_tick:
            tick = self._last_tick + self.period_ns
        return tick

    def _want(self, tick: int) -> None:
        if self._due is not None and self._due <= tick:
            return
        self._due = tick
        self._version += 1
        self._schedule(tick, self._evaluate, self._version, first=True)

    def _evaluate(self, tick: int, version: int) -> None:
        if version != self._version:
            return
        self._due = None
        self.evaluations += 1
        period = self.period_ns
        members = list(self.members.values())
        if self._last_tick is not None:
            skipped = (tick - self._last_tick) // period - 1
            if skipped > 0:
                for uuid, arbiter in self.core.arbiters.items():
                    arbiter.skip(self.core.claims(uuid, self._last_members, self._last_tick),
                                 skipped)
        for member in members:
            latest = self.instances[member.instance_id].last_wait_end(tick)
            if latest is None:
                continue
            seen = ceil_tick(latest, period)
            if seen > self._reported.get(member.instance_id, -1):
                self._reported[member.instance_id] = seen
                self.core.waited(member.instance_id, seen)
        shares = self.core.shares(tick, members)
        self._last_tick = tick
        self._last_members = members
        changed = {i: s for i, s in shares.items() if self.shares.get(i) != s}
        self.shares.update(shares)
        if changed and self._on_shares is not None:
            self._on_shares(tick, changed)
        for instance_id, share in changed.items():
            self.instances[instance_id].set_share(tick, share)
        self._plan_next(tick, members)

    def _plan_next(self, tick: int, members: list[Member]) -> None:
        period = self.period_ns
        if self.ticked:
            self._want(tick + period)
            return
        due: list[int] = []
        for uuid, arbiter in self.core.arbiters.items():
            if arbiter.moving(self.core.claims(uuid, members, tick)):
                due.append(tick + period)
                break
        for member in members:
            if self.core.hungry(member, tick):
                until = self.core.hungry_until(member.instance_id)
                assert until is not None
                due.append(ceil_tick(int(until), period))
            elif not member.draining:
                upcoming = self.instances[member.instance_id].next_wait_end(tick)
                if upcoming is not None:
                    due.append(max(ceil_tick(upcoming, period), tick + period))
        if due:
            self._want(min(due))
