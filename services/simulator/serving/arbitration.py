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
        self._reported: dict[str, int] = {}      # the latest period it was seen waiting
        self._hungry: dict[str, bool] = {}       # as of its GPUs' last evaluation
        self._check: dict[str, int] = {}         # when its hunger may change next
        self._evaluated: dict[str, int] = {}     # GPU -> its last evaluated period
        self._dirty: set[str] = set()            # GPUs whose members or quotas changed
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
        self._dirty.update(instance.gpus)
        self._want(self._after(now_ns))

    def detach(self, instance: Any, now_ns: int) -> None:
        for table in (self.members, self.instances, self.shares, self._reported, self._hungry,
                      self._check):
            table.pop(instance.id, None)  # type: ignore[attr-defined]
        instance.arbitration = None
        self._dirty.update(instance.gpus)
        self._want(self._after(now_ns))

    def poke(self, instance: Any, now_ns: int) -> None:
        """An instance's pacing changed (a new batch or step, a resumed one): its next
        wait for credit may come before its hunger is next checked."""
        if self.ticked or instance.id not in self.members or self._hungry.get(instance.id):
            return  # a hungry member is checked again at the end of its hold anyway
        upcoming = instance.next_wait_end(now_ns - 1)
        if upcoming is not None:
            tick = max(ceil_tick(upcoming, self.period_ns), self._after(now_ns))
            if tick < self._check.get(instance.id, tick + 1):
                self._check[instance.id] = tick
                self._want(tick)

    def start(self, now_ns: int) -> None:
        self._want(self._after(now_ns))

    # ---- evaluation ------------------------------------------------------------------

    def _after(self, now_ns: int) -> int:
        """The first period boundary strictly after `now_ns`."""
        return ceil_tick(now_ns + 1, self.period_ns)

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
        core, period = self.core, self.period_ns
        members = list(self.members.values())
        affected = set(self._dirty)
        self._dirty.clear()
        for member in members:
            instance_id = member.instance_id
            if not self.ticked and self._check.get(instance_id, tick + 1) > tick:
                continue
            latest = self.instances[instance_id].last_wait_end(tick)
            if latest is not None:
                seen = ceil_tick(latest, period)
                if seen > self._reported.get(instance_id, -1):
                    self._reported[instance_id] = seen
                    core.waited(instance_id, seen)
            hungry = core.hungry(member, tick)
            if hungry != self._hungry.get(instance_id, False):
                affected.update(member.gpus)
            self._hungry[instance_id] = hungry
            self._check[instance_id] = self._next_check(member, hungry, tick)
        for uuid, arbiter in core.arbiters.items():
            if self.ticked or arbiter.restoring():
                affected.add(uuid)
        if affected:
            for uuid in affected:
                last = self._evaluated.get(uuid)
                if last is not None:
                    core.arbiters[uuid].skip((tick - last) // period - 1)
                self._evaluated[uuid] = tick
            shares = core.shares(tick, members, affected)
            changed = {i: s for i, s in shares.items() if self.shares.get(i) != s}
            self.shares.update(shares)
            if changed and self._on_shares is not None:
                self._on_shares(tick, changed)
            for instance_id, share in changed.items():
                self.instances[instance_id].set_share(tick, share)
        self._plan(tick)

    def _next_check(self, member: Member, hungry: bool, tick: int) -> int:
        if self.ticked:
            return tick + self.period_ns
        if hungry:
            until = self.core.hungry_until(member.instance_id)
            assert until is not None
            return ceil_tick(int(until), self.period_ns)
        if member.draining:
            return 1 << 62  # never hungry again
        upcoming = self.instances[member.instance_id].next_wait_end(tick)
        return 1 << 62 if upcoming is None else max(ceil_tick(upcoming, self.period_ns),
                                                    tick + self.period_ns)

    def _plan(self, tick: int) -> None:
        if self.ticked:
            self._want(tick + self.period_ns)
            return
        due = min(self._check.values(), default=1 << 62)
        if any(arbiter.restoring() for arbiter in self.core.arbiters.values()):
            due = min(due, tick + self.period_ns)
        if due < 1 << 62:
            self._want(due)
