"""The node agent's core shell: the instances it holds, its heartbeat and lifecycle events.

This agent registers its GPUs and records instances honestly; it does not run worker
processes yet (that is the node-agent/worker issue), so its instances stay STARTING and
say so in their message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from dilu.events.v1 import events_pb2
from dilu.v1 import types_pb2

from services.common import subjects
from services.common.bus import Bus, ProtoKV
from services.common.errors import InvalidArgument, NotFound, Unavailable, Unimplemented
from services.common.timestamps import now_timestamp
from services.node_agent.gpus import GpuBackend

log = logging.getLogger(__name__)

NO_WORKERS_YET = "recorded; this node agent does not run worker processes yet"


class NodeAgent:
    def __init__(self, node_id: str, gpus: GpuBackend, bus: Bus,
                 nodes_kv: ProtoKV[types_pb2.Node], heartbeat_interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.address = ""  # set once the gRPC port is bound, before start()
        self._gpus = gpus
        self._bus = bus
        self._nodes_kv = nodes_kv
        self._interval_s = heartbeat_interval_s
        self._clock = clock
        self._instances: dict[str, tuple[types_pb2.InstanceReport, tuple[str, ...]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.heartbeat()
        self._task = asyncio.create_task(self._heartbeat_forever(), name="heartbeat")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def status(self) -> types_pb2.Node:
        node = types_pb2.Node(id=self.node_id, address=self.address,
                              gpu_backend=self._gpus.name,
                              heartbeat_at=now_timestamp(self._clock()))
        for device in self._gpus.devices():
            used = sum(r.quota.memory_limit_mib for r, gpus in self._instances.values()
                       if device.uuid in gpus)
            node.gpus.add(uuid=device.uuid, index=device.index, model=device.model,
                          memory_total_mib=device.memory_total_mib, memory_used_mib=used)
        node.instances.extend(r for r, _ in self._instances.values())
        return node

    async def heartbeat(self) -> None:
        await self._nodes_kv.put(self.node_id, self.status())

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.heartbeat()
            except Unavailable as error:
                log.warning("heartbeat not delivered: %s", error)
            except Exception:
                log.exception("heartbeat failed")

    async def start_instance(self, instance_id: str, spec: types_pb2.FunctionSpec,
                             gpu_uuids: list[str], quota: types_pb2.Quota) -> types_pb2.InstanceReport:
        if not instance_id:
            raise InvalidArgument("instance_id", "must not be empty")
        if not spec.name:
            raise InvalidArgument("function.name", "must not be empty")
        known = {d.uuid for d in self._gpus.devices()}
        if not gpu_uuids:
            raise InvalidArgument("gpu_uuids", "must name at least one GPU")
        unknown = [u for u in gpu_uuids if u not in known]
        if unknown:
            raise InvalidArgument("gpu_uuids", f"not GPUs of node {self.node_id}: {unknown}")
        existing = self._instances.get(instance_id)
        if existing is not None:
            return existing[0]
        report = types_pb2.InstanceReport(
            instance_id=instance_id, function=spec.name, state=types_pb2.INSTANCE_STATE_STARTING,
            quota=quota, message=NO_WORKERS_YET)
        self._instances[instance_id] = (report, tuple(gpu_uuids))
        await self._publish(report, events_pb2.INSTANCE_EVENT_KIND_STARTING)
        return report

    async def stop_instance(self, instance_id: str) -> None:
        held = self._instances.pop(instance_id, None)
        if held is not None:
            await self._publish(held[0], events_pb2.INSTANCE_EVENT_KIND_STOPPED, "stopped on request")

    def set_quota(self, instance_id: str, quota: types_pb2.Quota) -> types_pb2.Quota:
        if instance_id not in self._instances:
            raise NotFound(f"no instance {instance_id!r} on node {self.node_id}")
        raise Unimplemented("quota enforcement needs the worker data path (control page and "
                            "quota gate), which this node agent does not have yet")

    async def _publish(self, report: types_pb2.InstanceReport, kind: int, message: str = "") -> None:
        event = events_pb2.InstanceEvent(
            function=report.function, instance_id=report.instance_id, node=self.node_id,
            kind=kind, endpoint=report.endpoint, message=message or report.message,  # type: ignore[arg-type]
            at=now_timestamp(self._clock()))
        await self._bus.publish(subjects.instance_events(report.function), event)
