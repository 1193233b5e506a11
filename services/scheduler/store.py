"""The scheduler's durable state: functions and instances in JetStream KV, mirrored in
memory. Memory is authoritative: every change is marked and written by `flush()`, and
writes that fail while the bus is down stay marked and are retried (an outbox), so
nothing already accepted is lost to a NATS restart. Callers hold the scheduler's lock
around changes and flushes, so flushes never race."""

from __future__ import annotations

import logging

from dilu.v1 import types_pb2

from services.common.bus import ProtoKV
from services.common.errors import Unavailable

log = logging.getLogger(__name__)


class Store:
    def __init__(self, functions: ProtoKV[types_pb2.Function],
                 instances: ProtoKV[types_pb2.Instance]) -> None:
        self._functions_kv = functions
        self._instances_kv = instances
        self.functions: dict[str, types_pb2.Function] = {}
        self.instances: dict[str, types_pb2.Instance] = {}
        self._dirty_functions: set[str] = set()
        self._dirty_instances: set[str] = set()

    async def load(self) -> None:
        self.functions = {k: v for k, (_, v) in (await self._functions_kv.items()).items()}
        self.instances = {k: v for k, (_, v) in (await self._instances_kv.items()).items()}
        log.info("recovered %d functions and %d instances from the state store",
                 len(self.functions), len(self.instances))

    def instances_of(self, function: str) -> list[types_pb2.Instance]:
        return sorted((i for i in self.instances.values() if i.function == function),
                      key=lambda i: i.id)

    async def put_function_now(self, function: types_pb2.Function) -> None:
        """Persist a function before accepting the change; raises Unavailable and leaves
        memory as it was when the store cannot be reached."""
        name = function.spec.name
        try:
            await self._functions_kv.put(name, function)
        except Unavailable:
            # The put may still land after its timeout; make the store follow memory again.
            self._dirty_functions.add(name)
            raise
        self.functions[name] = function

    async def delete_function_now(self, name: str) -> None:
        try:
            await self._functions_kv.delete(name)
        except Unavailable:
            self._dirty_functions.add(name)
            raise
        self.functions.pop(name, None)

    def mark_instance(self, instance_id: str) -> None:
        """Note an instance changed (or was removed from `instances`); `flush()` writes it."""
        self._dirty_instances.add(instance_id)

    async def flush(self) -> bool:
        """Write every marked change; returns False while the store is unreachable."""
        try:
            for name in sorted(self._dirty_functions):
                function = self.functions.get(name)
                if function is None:
                    await self._functions_kv.delete(name)
                else:
                    await self._functions_kv.put(name, function)
                self._dirty_functions.discard(name)
            for iid in sorted(self._dirty_instances):
                instance = self.instances.get(iid)
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
