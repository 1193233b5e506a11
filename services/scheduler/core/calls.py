"""What the core asks of node agents, how the answers come back, and what each core
call returns. Plain values: the shell turns calls into gRPC, a simulator into events."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from dilu.events.v1 import events_pb2
from dilu.v1 import types_pb2


@dataclass(frozen=True, slots=True)
class StartInstance:
    """Start a worker for `instance_id` on `node`'s GPUs at `quota`."""

    node: str
    instance_id: str
    spec: types_pb2.FunctionSpec
    gpu_uuids: tuple[str, ...]
    quota: types_pb2.Quota


@dataclass(frozen=True, slots=True)
class StopInstance:
    """Drain and stop an instance; its GPU share stays held until the stop is confirmed
    (by this call's success, an event or a heartbeat that no longer reports it)."""

    node: str
    instance_id: str
    drain_timeout_s: float


@dataclass(frozen=True, slots=True)
class SetQuota:
    """Change a running instance's request, limit and memory limit. The agent admits it
    against its GPUs' budget; the core records the new quota only once it succeeds."""

    node: str
    instance_id: str
    quota: types_pb2.Quota


AgentCall = StartInstance | StopInstance | SetQuota


class Refusal(Enum):
    """Why an agent call did not succeed, in the terms the core decides on."""

    # The agent's own admission found no room (RESOURCE_EXHAUSTED): try another node.
    NO_ROOM = "no room"
    # No answer (UNAVAILABLE, DEADLINE_EXCEEDED): it may or may not have happened.
    UNREACHABLE = "unreachable"
    # Any other refusal: the agent judged the request itself.
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class CallSucceeded:
    """`report`: the agent's record of a started instance; `quota`: the quota a SetQuota
    applied, and `quota_version` its version (0: unknown). Either may be None for calls
    that answer nothing."""

    report: types_pb2.InstanceReport | None = None
    quota: types_pb2.Quota | None = None
    quota_version: int = 0


@dataclass(frozen=True, slots=True)
class CallFailed:
    refusal: Refusal
    message: str


CallResult = CallSucceeded | CallFailed


@dataclass(frozen=True, slots=True)
class Outcome:
    """What should happen after one input to the core.

    `calls`: agent calls to make, in any order (each result goes back through
    `SchedulerCore.call_done`). `scaling`: decisions to publish. `functions` and
    `instances`: names and ids whose records changed (or disappeared) in
    `SchedulerCore.state`, for a shell that persists them.
    """

    calls: tuple[AgentCall, ...] = ()
    scaling: tuple[events_pb2.ScalingDecision, ...] = ()
    functions: frozenset[str] = field(default_factory=frozenset)
    instances: frozenset[str] = field(default_factory=frozenset)

    def starts(self) -> list[StartInstance]:
        return [c for c in self.calls if isinstance(c, StartInstance)]

    def stops(self) -> list[StopInstance]:
        return [c for c in self.calls if isinstance(c, StopInstance)]


@dataclass(frozen=True, slots=True)
class FunctionChange:
    """A change to a function record, decided but not applied: the shell makes `record`
    durable (None: deleted) and then hands the change to `SchedulerCore.apply`. Nothing
    in the core changes until then, so a change the store refuses leaves no trace."""

    name: str
    record: types_pb2.Function | None
    # ScaleIn by id: the instances to stop.
    stop: tuple[str, ...] = ()
    reason: str = ""
    scaling: events_pb2.ScalingDecision | None = None
