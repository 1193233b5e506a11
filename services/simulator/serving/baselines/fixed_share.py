"""Arbitration without lending: every instance runs at exactly its fixed share.

The systems that reserve what they cap at (request = limit: INFless, KServe with fractional
GPUs, HAS-GPU's FaST-GShare quotas, a whole GPU under Knative) lend nothing: an idle
neighbour's share stays idle. Each instance's share is its limit — for inference sized with
request = limit that is its request; a training job runs at its limit, which these systems'
placement reserves (`infless-l` counts limits against one GPU; `exclusive` gives it whole
GPUs). A new member or a quota change is written at the next arbiter period (10 ms), as the
node agent does; nothing else ever changes a share, so nothing else is evaluated.

The driver implements the per-node protocol of `services.simulator.serving.arbitration`
(`attach`, `update`, `detach`, `poke`, `start`); with `ticked=True` it evaluates every
period instead, which gives the same shares at the same moments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.simulator.serving.arbitration import PERIOD_NS, ceil_tick


def fixed_share(instance: Any) -> float:
    """The share an instance holds when nothing is lent: its limit."""
    return float(instance.limit)


class FixedShareDriver:
    """One per node: writes each member's fixed share at the first period after it joins
    or changes quota."""

    def __init__(self, schedule: Callable[..., None], node: str, gpus: list[str], *,
                 ticked: bool = False, period_ns: int = PERIOD_NS,
                 on_shares: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self._schedule = schedule
        self.node = node
        self.gpus = tuple(gpus)
        self.ticked = ticked
        self.period_ns = period_ns
        self.instances: dict[str, Any] = {}
        self.shares: dict[str, float] = {}
        self._changed: set[str] = set()
        self._due: int | None = None
        self._on_shares = on_shares
        self.evaluations = 0

    def attach(self, instance: Any, now_ns: int) -> None:
        self.instances[instance.id] = instance
        instance.arbitration = self
        self.update(instance, now_ns)

    def update(self, instance: Any, now_ns: int, draining: bool = False) -> None:
        self._changed.add(instance.id)
        self._want(self._after(now_ns))

    def detach(self, instance: Any, now_ns: int) -> None:
        self.instances.pop(instance.id, None)
        self.shares.pop(instance.id, None)
        self._changed.discard(instance.id)
        instance.arbitration = None

    def poke(self, instance: Any, now_ns: int) -> None:
        """Pacing does not matter to a fixed share."""

    def start(self, now_ns: int) -> None:
        self._want(self._after(now_ns))

    def _after(self, now_ns: int) -> int:
        return ceil_tick(now_ns + 1, self.period_ns)

    def _want(self, tick: int) -> None:
        if self._due is not None and self._due <= tick:
            return
        self._due = tick
        self._schedule(tick, self._evaluate, first=True)

    def _evaluate(self, tick: int) -> None:
        if self._due != tick:
            return  # superseded by an earlier evaluation
        self._due = None
        self.evaluations += 1
        changed: dict[str, float] = {}
        for instance_id in sorted(self._changed):
            instance = self.instances.get(instance_id)
            if instance is None:
                continue
            share = fixed_share(instance)
            if self.shares.get(instance_id) != share:
                self.shares[instance_id] = share
                changed[instance_id] = share
        self._changed.clear()
        if changed and self._on_shares is not None:
            self._on_shares(tick, changed)
        for instance_id, share in changed.items():
            self.instances[instance_id].set_share(tick, share)
        if self.ticked:
            self._want(tick + self.period_ns)
