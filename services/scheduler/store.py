"""The scheduler's durable state: functions and instances in JetStream KV.

The records live in memory (`ClusterState`, owned by the core), which is authoritative.
A change of a function's spec or replica count is written before it is accepted
(`put_function_now`, `delete_function_now`); every other change is marked and written by
`flush()`, and writes that fail while the bus is down stay marked and are retried (an
outbox), so nothing already accepted is lost to a NATS restart. Callers hold the
scheduler's lock around changes and flushes, so flushes never race."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from dilu.v1 import types_pb2

from services.common.bus import ProtoKV
from services.common.errors import Unavailable
from services.scheduler.core import ClusterState

log = logging.getLogger(__name__)


class Store:
    def __init__(self, functions: ProtoKV[types_pb2.Function],
                 instances: ProtoKV[types_pb2.Instance]) -> None:
        self._functions_kv = functions
        self._instances_kv = instances
        self._dirty_functions: set[str] = set()
        self._dirty_instances: set[str] = set()

    async def load(self) -> tuple[list[types_pb2.Function], list[types_pb2.Instance]]:
        functions = [v for _, v in (await self._functions_kv.items()).values()]
        instances = [v for _, v in (await self._instances_kv.items()).values()]
        log.info("recovered %d functions and %d instances from the state store",
                 len(functions), len(instances))
        return functions, instances

    async def put_function_now(self, function: types_pb2.Function) -> None:
        """Persist a function before accepting the change; raises Unavailable when the
        store cannot be reached (the caller then leaves memory as it was)."""
        name = function.spec.name
        try:
            await self._functions_kv.put(name, function)
        except Unavailable:
            # The put may still land after its timeout; make the store follow memory again.
            self._dirty_functions.add(name)
            raise

    async def delete_function_now(self, name: str) -> None:
        try:
            await self._functions_kv.delete(name)
        except Unavailable:
            self._dirty_functions.add(name)
            raise

    def mark(self, functions: Iterable[str] = (), instances: Iterable[str] = ()) -> None:
        """Note records that changed (or disappeared); `flush()` writes them."""
        self._dirty_functions.update(functions)
        self._dirty_instances.update(instances)

    async def flush(self, state: ClusterState) -> bool:
        """Write every marked record as `state` holds it now (absent: deleted); returns
        False while the store is unreachable."""
        try:
            for name in sorted(self._dirty_functions):
                function = state.functions.get(name)
                if function is None:
                    await self._functions_kv.delete(name)
                else:
                    await self._functions_kv.put(name, function)
                self._dirty_functions.discard(name)
            for iid in sorted(self._dirty_instances):
                instance = state.instances.get(iid)
                if instance is None:
                    await self._instances_kv.delete(iid)
                else:
                    await self._instances_kv.put(iid, instance)
                self._dirty_instances.discard(iid)
        except Unavailable as error:
            log.warning("state store unreachable, %d writes kept for retry: %s",
                        len(self._dirty_functions) + len(self._dirty_instances), error)
            return False
        return True
