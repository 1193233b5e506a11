"""Node-level arbitration (pure): one `GpuArbiter` per GPU plus what spans a node's GPUs.

- **Hunger.** An instance that waited for credit (its gate's throttled counter grew since
  the last period) counts as hungry for `hunger_hold` afterwards, so what it was lent is not
  taken back between two bursts a few periods apart.
- **Gangs.** An instance on several GPUs runs at the pace of its most constrained GPU: its
  effective share is the smallest its GPUs' arbiters give it.
- **Draining.** A draining instance keeps its share (it still runs its queue) but is lent
  nothing more: it never counts as hungry.

The node agent calls it every period with its instances and who waited; the serving
simulator drives the same object on events (only the periods where an input changes, see
`services/simulator/serving/arbitration.py`). Time is in the caller's unit (the agent:
monotonic seconds; the simulator: integer ns), as long as `hunger_hold` is in the same one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.node_agent.arbiter import ArbiterSettings, Claim, GpuArbiter


@dataclass(frozen=True, slots=True)
class Member:
    """One instance as the node's arbitration sees it."""

    instance_id: str
    gpus: tuple[str, ...]
    inference: bool
    request: float
    limit: float
    draining: bool = False


_DEFAULT_SETTINGS = ArbiterSettings()


class NodeArbitration:
    def __init__(self, gpus: Iterable[str], hunger_hold: float,
                 settings: ArbiterSettings = _DEFAULT_SETTINGS) -> None:
        self.hunger_hold = hunger_hold
        self.arbiters = {uuid: GpuArbiter(settings) for uuid in gpus}
        self._hungry_until: dict[str, float] = {}
        self._last: dict[str, dict[str, float]] = {}  # GPU -> its arbiter's latest shares

    def waited(self, instance_id: str, now: float) -> None:
        """The instance waited for credit during the period that ends at `now`."""
        self._hungry_until[instance_id] = now + self.hunger_hold

    def hungry(self, member: Member, now: float) -> bool:
        return not member.draining and now < self._hungry_until.get(member.instance_id, now)

    def hungry_until(self, instance_id: str) -> float | None:
        return self._hungry_until.get(instance_id)

    def claims(self, uuid: str, members: Sequence[Member], now: float) -> list[Claim]:
        """What GPU `uuid`'s arbiter is asked to share this period."""
        return [Claim(m.instance_id, m.inference, m.request, m.limit, self.hungry(m, now))
                for m in members if uuid in m.gpus]

    def shares(self, now: float, members: Sequence[Member],
               gpus: Iterable[str] | None = None) -> dict[str, float]:
        """One period of arbitration on `gpus` (default: every GPU of the node); returns
        every member's effective share, gangs at the smallest of their GPUs' (the GPUs not
        arbitrated now keep their previous answer)."""
        for uuid in self.arbiters if gpus is None else gpus:
            self._last[uuid] = self.arbiters[uuid].shares(self.claims(uuid, members, now))
        present = {m.instance_id for m in members}
        for gone in [i for i in self._hungry_until if i not in present]:
            del self._hungry_until[gone]
        return {m.instance_id: min(self._last.get(uuid, {}).get(m.instance_id, m.request)
                                   for uuid in m.gpus)
                for m in members}
