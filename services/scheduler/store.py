"""The scheduler's durable state: functions and instances in JetStream KV, mirrored in
memory. Writes that fail while the bus is down are kept and retried (an outbox), so
nothing already accepted is lost to a NATS restart."""

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
        self._pending_functions: set[str] = set()
        self._pending_instances: set[str] = set()

    async def load(self) -> None:
        self.functions = {k: v for k, (_, v) in (await self._functions_kv.items()).items()}
        self.instances = {k: v for k, (_, v) in (await self._instances_kv.items()).items()}
        log.info("recovered %d functions and %d instances from the state store",
                 len(self.functions), len(self.instances))

    def instances_of(self, function: str) -> list[types_pb2.Instance]:
        return sorted((i for i in self.instances.values() if i.function == function),
                      key=lambda i: i.id)

    async def put_function_now(self, function: types_pb2.Function) -> None:
        """Persist before accepting: raises Unavailable and changes nothing on failure."""
        await self._functions_kv.put(function.spec.name, function)
        self.functions[function.spec.name] = function

    async def save_function(self, name: str) -> None:
        self._pending_functions.add(name)
        await self.flush()

    async def save_instance(self, instance_id: str) -> None:
        self._pending_instances.add(instance_id)
        await self.flush()

    async def flush(self) -> bool:
        """Write every pending change; returns False while the store is unreachable."""
        try:
            for name in sorted(self._pending_functions):
                function = self.functions.get(name)
                if function is None:
                    await self._functions_kv.delete(name)
                else:
                    await self._functions_kv.put(name, function)
                self._pending_functions.discard(name)
            for iid in sorted(self._pending_instances):
                instance = self.instances.get(iid)
                if instance is None:
                    await self._instances_kv.delete(iid)
                else:
                    await self._instances_kv.put(iid, instance)
                self._pending_instances.discard(iid)
        except Unavailable as error:
            log.warning("state store unreachable, %d writes kept for retry: %s",
                        len(self._pending_functions) + len(self._pending_instances), error)
            return False
        return True

    async def delete_function_now(self, name: str) -> None:
        await self._functions_kv.delete(name)
        self.functions.pop(name, None)
        self._pending_functions.discard(name)
