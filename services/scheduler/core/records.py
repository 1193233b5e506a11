"""The scheduler's records in memory: functions and instances as dilu.v1 messages.

Memory is authoritative while the scheduler runs; the shell persists what changed (the
core reports it in every `Outcome`). An instance belongs to the current deployment of its
function when it was created at or after the function was: after a delete and a
re-deploy under the same name, records left by the old deployment (still draining, or
kept failures) are never shown as, or counted with, the new one's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

from dilu.v1 import types_pb2

from services.common.timestamps import now_timestamp
from services.scheduler.replicas import LIVE_STATES

S = types_pb2
StateValue: TypeAlias = types_pb2.InstanceState.ValueType

# Instances that count toward the replica count.
LIVE = LIVE_STATES
# Placed on a node and not stopping.
PLACED = frozenset({S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_READY})
# Holding GPU resources in the ledger.
HOLDING = PLACED | {S.INSTANCE_STATE_DRAINING}
# Gone; kept a while so users can see why.
TERMINAL = frozenset({S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_LOST, S.INSTANCE_STATE_STOPPED})


def seconds(stamp: object) -> float:
    """A protobuf Timestamp as epoch seconds."""
    return stamp.ToNanoseconds() / 1e9  # type: ignore[attr-defined]


def state_name(state: StateValue) -> str:
    return S.InstanceState.Name(state).removeprefix("INSTANCE_STATE_").lower()


class ClusterState:
    """Functions by name and instances by id, with an index by function and the names
    and ids changed since the last `take_changes()`."""

    def __init__(self) -> None:
        self.functions: dict[str, types_pb2.Function] = {}
        self.instances: dict[str, types_pb2.Instance] = {}
        self._of_function: dict[str, set[str]] = {}
        self._changed_functions: set[str] = set()
        self._changed_instances: set[str] = set()

    def load(self, functions: Iterable[types_pb2.Function],
             instances: Iterable[types_pb2.Instance]) -> None:
        for function in functions:
            self.functions[function.spec.name] = function
        for instance in instances:
            self.add(instance, changed=False)

    # ---- reading ---------------------------------------------------------------------

    def belongs(self, instance: types_pb2.Instance) -> bool:
        """Whether the instance is one of its function's current deployment."""
        function = self.functions.get(instance.function)
        return function is not None and (
            instance.created_at.ToNanoseconds() >= function.status.created_at.ToNanoseconds())

    def all_of(self, name: str) -> list[types_pb2.Instance]:
        """Every record under a function name, old deployments included, by id."""
        return [self.instances[i] for i in sorted(self._of_function.get(name, ()))]

    def instances_of(self, name: str) -> list[types_pb2.Instance]:
        """The current deployment's instances, by id."""
        return [i for i in self.all_of(name) if self.belongs(i)]

    def on_node(self, node_id: str, states: frozenset[int]) -> list[types_pb2.Instance]:
        return sorted((i for i in self.instances.values()
                       if i.node == node_id and i.state in states), key=lambda i: i.id)

    # ---- changing --------------------------------------------------------------------

    def add(self, instance: types_pb2.Instance, *, changed: bool = True) -> None:
        self.instances[instance.id] = instance
        self._of_function.setdefault(instance.function, set()).add(instance.id)
        if changed:
            self._changed_instances.add(instance.id)

    def forget(self, instance_id: str) -> None:
        instance = self.instances.pop(instance_id, None)
        if instance is None:
            return
        ids = self._of_function.get(instance.function)
        if ids is not None:
            ids.discard(instance_id)
            if not ids:
                del self._of_function[instance.function]
        self._changed_instances.add(instance_id)

    def set_state(self, instance: types_pb2.Instance, state: StateValue, message: str,
                  now: float) -> None:
        instance.state = state
        instance.message = message
        instance.updated_at.CopyFrom(now_timestamp(now))
        self._changed_instances.add(instance.id)

    def touched(self, instance_id: str) -> None:
        """An instance record changed in place."""
        self._changed_instances.add(instance_id)

    def put_function(self, function: types_pb2.Function) -> None:
        self.functions[function.spec.name] = function
        self._changed_functions.add(function.spec.name)

    def drop_function(self, name: str) -> None:
        self.functions.pop(name, None)
        self._changed_functions.add(name)

    def function_touched(self, name: str) -> None:
        """A function's status changed in place."""
        self._changed_functions.add(name)

    def take_changes(self) -> tuple[frozenset[str], frozenset[str]]:
        """(function names, instance ids) changed since the last call."""
        changes = frozenset(self._changed_functions), frozenset(self._changed_instances)
        self._changed_functions.clear()
        self._changed_instances.clear()
        return changes
