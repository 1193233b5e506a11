"""The node agent's budget: what each instance holds on each of this node's GPUs, and the
admission of every start and quota change against the node's placement bounds.

The agent is the authority for its GPUs (the scheduler's ledger is a cache of this): on
every GPU, the SM requests of its instances add up to at most `max_requested`, their SM
limits to at most `max_limited`, and their memory limits to at most the GPU's memory.
`start` and `resize` check and record in one step, with no I/O and no waiting, so an
asyncio shell that calls them without awaiting in between admits atomically: of a start
and a raise racing for the same room, exactly one gets it. What does not fit raises
`NoRoom`, naming the GPU and its headroom, and changes nothing. A change that raises
nothing (a lowering) always fits, even on a GPU already beyond bounds.

Pure: no clock, no I/O. The agent's shell and the simulators use it alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dilu.v1 import types_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from services.common.bounds import EPS, PlacementBounds
from services.common.errors import ResourceExhausted

# The ErrorInfo of a refusal for room (see NodeAgentService in node_agent.proto).
ERROR_DOMAIN = "dilu"
NO_ROOM_REASON = "NO_ROOM_ON_GPU"


@dataclass(frozen=True, slots=True)
class Hold:
    """What one instance holds on each of its GPUs."""

    sm_request: float
    sm_limit: float
    memory_mib: int

    @classmethod
    def of(cls, quota: types_pb2.Quota) -> Hold:
        return cls(quota.sm_request, quota.sm_limit, quota.memory_limit_mib)


@dataclass(frozen=True, slots=True)
class Headroom:
    """Room on one GPU under its bounds (never below 0). In a refusal: the most the asking
    instance may hold there — the room left beside the other instances on the GPU."""

    gpu_uuid: str
    sm_request: float
    sm_limit: float
    memory_mib: int

    def __str__(self) -> str:
        return (f"sm_request {self.sm_request:.3g}, sm_limit {self.sm_limit:.3g}, "
                f"memory {self.memory_mib} MiB")


class NoRoom(ResourceExhausted):
    """A start or quota change that does not fit a GPU's bounds (RESOURCE_EXHAUSTED).

    `bound` names what ran out: "sm_request", "sm_limit" or "memory_mib".
    """

    def __init__(self, node: str, instance_id: str, headroom: Headroom, bound: str,
                 wanted: Hold, bounds: PlacementBounds) -> None:
        asked = {"sm_request": f"{wanted.sm_request:g}", "sm_limit": f"{wanted.sm_limit:g}",
                 "memory_mib": f"{wanted.memory_mib} MiB"}[bound]
        super().__init__(
            f"no room for {instance_id} on GPU {headroom.gpu_uuid} of node {node}: it asks "
            f"{bound} {asked}, the GPU has room for {headroom} (bounds: requests ≤ "
            f"{bounds.max_requested:g}, limits ≤ {bounds.max_limited:g}, memory never "
            "over-subscribed)")
        self.node = node
        self.instance_id = instance_id
        self.headroom = headroom
        self.bound = bound
        self.wanted = wanted
        self.bounds = bounds

    def details(self) -> list[Message]:
        """An ErrorInfo a program can read (reason NO_ROOM_ON_GPU, the GPU, what ran out
        and the headroom as metadata) and a QuotaFailure naming the GPU."""
        room = self.headroom
        info = error_details_pb2.ErrorInfo(reason=NO_ROOM_REASON, domain=ERROR_DOMAIN, metadata={
            "node": self.node, "gpu_uuid": room.gpu_uuid, "bound": self.bound,
            # Shortest round-trip forms: asking for exactly the headroom must fit.
            "headroom_sm_request": repr(room.sm_request),
            "headroom_sm_limit": repr(room.sm_limit),
            "headroom_memory_mib": str(room.memory_mib),
            "max_requested": repr(self.bounds.max_requested),
            "max_limited": repr(self.bounds.max_limited),
        })
        failure = error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=f"gpu:{room.gpu_uuid}",
                                                     description=self.message)])
        return [info, failure]


@dataclass(frozen=True, slots=True)
class _Placed:
    gpus: tuple[str, ...]
    hold: Hold


class NodeBudget:
    """The budget of one node's GPUs (`gpus`: uuid -> memory MiB) under `bounds`."""

    def __init__(self, node: str, gpus: Mapping[str, int], bounds: PlacementBounds) -> None:
        self.node = node
        self.bounds = bounds
        self._memory = dict(gpus)
        self._placed: dict[str, _Placed] = {}

    # ---- changing --------------------------------------------------------------------

    def start(self, instance_id: str, gpu_uuids: Iterable[str], hold: Hold) -> None:
        """Admit a new instance holding `hold` on each of `gpu_uuids`, or raise `NoRoom`.
        Starting a known id again is a no-op (the agent's StartInstance is idempotent);
        an unknown GPU is a `KeyError` (the shell checks GPUs first)."""
        if instance_id in self._placed:
            return
        gpus = tuple(gpu_uuids)
        for uuid in gpus:
            if uuid not in self._memory:
                raise KeyError(f"GPU {uuid} is not on node {self.node}")
            self._check(instance_id, uuid, Hold(0.0, 0.0, 0), hold)
        self._placed[instance_id] = _Placed(gpus, hold)

    def resize(self, instance_id: str, hold: Hold) -> Hold:
        """Admit a new hold for a placed instance, or raise `NoRoom`; returns the old one.
        An unknown id is a `KeyError`."""
        placed = self._placed[instance_id]
        for uuid in placed.gpus:
            self._check(instance_id, uuid, placed.hold, hold)
        self._placed[instance_id] = _Placed(placed.gpus, hold)
        return placed.hold

    def release(self, instance_id: str) -> None:
        """Free what an instance held; releasing an unknown id does nothing."""
        self._placed.pop(instance_id, None)

    # ---- reading ---------------------------------------------------------------------

    def hold_of(self, instance_id: str) -> Hold | None:
        placed = self._placed.get(instance_id)
        return placed.hold if placed else None

    def gpus_of(self, instance_id: str) -> tuple[str, ...]:
        placed = self._placed.get(instance_id)
        return placed.gpus if placed else ()

    def instances_on(self, uuid: str) -> list[str]:
        return sorted(i for i, placed in self._placed.items() if uuid in placed.gpus)

    def used(self, uuid: str, *, besides: str = "") -> Hold:
        """The totals on one GPU (without instance `besides`), summed afresh so that
        float error never accumulates and matches the scheduler's ledger."""
        holds = [p.hold for i, p in self._placed.items() if uuid in p.gpus and i != besides]
        return Hold(sum(h.sm_request for h in holds), sum(h.sm_limit for h in holds),
                    sum(h.memory_mib for h in holds))

    def headroom(self, uuid: str, *, besides: str = "") -> Headroom:
        """Room left on one GPU, counting every instance but `besides`."""
        used = self.used(uuid, besides=besides)
        return Headroom(uuid, max(0.0, self.bounds.max_requested - used.sm_request),
                        max(0.0, self.bounds.max_limited - used.sm_limit),
                        max(0, self._memory[uuid] - used.memory_mib))

    def within_bounds(self, uuid: str) -> bool:
        used = self.used(uuid)
        return (used.sm_request <= self.bounds.max_requested + EPS
                and used.sm_limit <= self.bounds.max_limited + EPS
                and used.memory_mib <= self._memory[uuid])

    # ---- admission -------------------------------------------------------------------

    def _check(self, instance_id: str, uuid: str, before: Hold, after: Hold) -> None:
        """Raise NoRoom when replacing `before` by `after` on the GPU passes a bound that
        the change raises; a quantity that does not grow is never the reason."""
        others = self.used(uuid, besides=instance_id)
        checks = (
            ("sm_request", after.sm_request > before.sm_request,
             others.sm_request + after.sm_request <= self.bounds.max_requested + EPS),
            ("sm_limit", after.sm_limit > before.sm_limit,
             others.sm_limit + after.sm_limit <= self.bounds.max_limited + EPS),
            ("memory_mib", after.memory_mib > before.memory_mib,
             others.memory_mib + after.memory_mib <= self._memory[uuid]),
        )
        for bound, grows, fits in checks:
            if grows and not fits:
                raise NoRoom(self.node, instance_id, self.headroom(uuid, besides=instance_id),
                             bound, after, self.bounds)


@dataclass(frozen=True, slots=True)
class RoomRefusal:
    """A refusal for room as a caller reads it back from the status's ErrorInfo."""

    node: str
    bound: str  # "sm_request", "sm_limit" or "memory_mib": what ran out
    headroom: Headroom  # the most the instance may hold on that GPU
    bounds: PlacementBounds


def room_refusal(status: status_pb2.Status) -> RoomRefusal | None:
    """The GPU and headroom of a RESOURCE_EXHAUSTED answer from a node agent, or None when
    the status carries no such detail. With grpc: `room_refusal(rpc_status.from_call(e))`
    (grpc_status) on the `grpc.RpcError` of a refused StartInstance or SetQuota."""
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        if not packed.Is(info.DESCRIPTOR) or not packed.Unpack(info):
            continue
        if (info.domain, info.reason) != (ERROR_DOMAIN, NO_ROOM_REASON):
            continue
        meta = info.metadata
        try:
            return RoomRefusal(
                node=meta["node"], bound=meta["bound"],
                headroom=Headroom(meta["gpu_uuid"], float(meta["headroom_sm_request"]),
                                  float(meta["headroom_sm_limit"]),
                                  int(meta["headroom_memory_mib"])),
                bounds=PlacementBounds(float(meta["max_requested"]), float(meta["max_limited"])))
        except (KeyError, ValueError):
            return None
    return None
