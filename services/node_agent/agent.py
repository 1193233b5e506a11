"""The node agent's shell: worker processes for its instances, their quotas (the per-GPU
arbiter writing control pages), heartbeats, lifecycle events, telemetry and QoS.

The agent owns its GPUs' budget (`NodeBudget`): `start_instance` and `set_quota` admit
against the node's placement bounds before their first `await`, so that on the event
loop each admission and its record are one step. Every applied quota change is published
(an instance event of kind QUOTA_CHANGED carrying the quota before and after, the caller's
reason and source, and the next heartbeat) with a version that orders it. The agent
publishes no scaling decision itself: only the scheduler and the scaler may, and the
scheduler records each QUOTA_CHANGED event as a vertical decision (events.proto).

`tune_instance` sets the knobs that are not part of an instance's budget — its worker's
largest batch (relayed to the worker: only the agent and the request path call workers)
and a cap on its effective share (an input of arbitration: the instance's request and
limit are taken at most at the cap, while its budget hold stays) — which is how the
profiler visits many (share, batch) points with one instance. The profiler's hidden
instances (`services.common.profiling`) publish no QoS: the scaler never sees them. In
secure mode the relay is mutual TLS with the agent's own certificate (`agent_tls`), to a
worker that must prove `dilu-worker.<node>`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from dilu.events.v1 import events_pb2
from dilu.v1 import node_agent_pb2, profiler_pb2, types_pb2, worker_pb2, worker_pb2_grpc
from opentelemetry import trace

from services.common import limits, subjects
from services.common.attribution import MANUAL
from services.common.bounds import AGENT_DEFAULT, PlacementBounds
from services.common.bus import Bus, ProtoKV
from services.common.channels import ChannelPool
from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PeerError,
    ResourceExhausted,
    Unavailable,
)
from services.common.loops import every
from services.common.profiling import is_profiling, key_id, profile_key
from services.common.security.identity import worker_identity
from services.common.security.tls import TlsFiles
from services.common.timestamps import now_timestamp
from services.common.tracing import trace_headers
from services.node_agent.arbitration import Member, NodeArbitration
from services.node_agent.budget import Hold, NodeBudget
from services.node_agent.gpus import GpuBackend
from services.node_agent.isolation import Isolation, WorkerIds
from services.node_agent.pages import MIB, Control, Stats, control_for
from services.node_agent.reporting import InstanceInfo, UsageSample, gpu_telemetry, qos_report
from services.node_agent.shim import preload_env
from services.node_agent.supervisor import WorkerFailed, WorkerProcess
from services.node_agent.worker.requirements import (
    checked_batch,
    largest_batch_within,
    memory_need_bytes,
)
from services.scheduler.validation import validate_spec

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("dilu.node_agent")
S = types_pb2
# Exit statuses of a worker that was asked to stop: drained, or signalled by us.
_REQUESTED_EXITS = (0, None, -signal.SIGTERM, -signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    runtime_dir: Path
    heartbeat_interval_s: float = 2.0
    arbiter_period_s: float = 0.01
    telemetry_interval_s: float = 0.5
    qos_window_s: float = 1.0
    drain_timeout_s: float = 10.0
    ready_timeout_s: float = 120.0
    # An instance that waited for credit counts as hungry this long afterwards, so what it
    # was lent is not taken back between two bursts a few periods apart.
    hunger_hold_s: float = 0.2
    # Preloaded into torch workers, where it replaces the Python gate (None: not used).
    cuda_shim: Path | None = None
    # What this node admits on each GPU (announced in its heartbeat).
    bounds: PlacementBounds = AGENT_DEFAULT
    # Where workers listen, and the host others dial them on (never a wildcard).
    worker_host: str = "127.0.0.1"
    worker_advertise_host: str = "127.0.0.1"
    # Each worker's log (in the runtime dir, often RAM) rotates at this size.
    worker_log_max_bytes: int = 1024 * 1024
    worker_log_backups: int = 2
    # Secure mode: what workers serve with (mutual TLS, identity dilu-worker.<node>).
    worker_tls: TlsFiles | None = None
    # Secure mode: the agent's own certificate, presented when it relays to its workers.
    agent_tls: TlsFiles | None = None
    # One unprivileged uid per worker from this range (None: workers run as the agent).
    worker_ids: WorkerIds | None = None
    # The interpreter workers run with ("": the agent's own); with per-worker uids it must
    # be one those uids may execute.
    worker_python: str = ""


@dataclass
class _Held:
    """One instance on this node and its worker."""

    report: types_pb2.InstanceReport
    spec: types_pb2.FunctionSpec
    gpus: tuple[str, ...]
    worker: WorkerProcess
    info: InstanceInfo
    written: Control | None = None  # what the control page holds now
    starting: asyncio.Task[None] | None = None
    stopping: asyncio.Task[None] | None = None
    last_throttled_ns: int = 0
    share_cap: float = 1.0  # the arbiter gives the instance at most this (TuneInstance)
    memory_bytes: int = 0  # the worker's footprint at its max batch, once a tune told it
    qos_from: tuple[Stats, float] | None = None  # reading and its monotonic time
    telemetry_from: Stats | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def _check_quota(quota: types_pb2.Quota, field_prefix: str, gpu_memory_mib: int) -> None:
    """Shares in their range, the memory limit at most what the instance's GPUs have (a
    quota no GPU could honour is out of range, not out of room)."""
    limits.check_number(f"{field_prefix}.sm_request", quota.sm_request, limits.SHARE)
    limits.check_number(f"{field_prefix}.sm_limit", quota.sm_limit, limits.SHARE)
    if quota.sm_limit < quota.sm_request:
        raise InvalidArgument(f"{field_prefix}.sm_limit",
                              f"must be in [sm_request, 1], got {quota.sm_limit}")
    # The budget counts memory: an instance without a limit could take any amount.
    limits.check_int(f"{field_prefix}.memory_limit_mib", quota.memory_limit_mib,
                     limits.MEMORY_LIMIT_MIB)
    if quota.memory_limit_mib > gpu_memory_mib:
        raise InvalidArgument(f"{field_prefix}.memory_limit_mib",
                              f"{quota.memory_limit_mib} MiB is more than the GPU has "
                              f"({gpu_memory_mib} MiB)")


# Logs of failed workers kept in the runtime dir (often RAM-backed) across agent restarts.
_KEPT_LOGS = 100


def _prune_logs(runtime_dir: Path) -> None:
    logs = sorted(runtime_dir.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[_KEPT_LOGS:]:
        for path in [old, *runtime_dir.glob(f"{old.name}.*")]:  # with its rotated files
            path.unlink(missing_ok=True)


class NodeAgent:
    def __init__(self, node_id: str, gpus: GpuBackend, bus: Bus,
                 nodes_kv: ProtoKV[types_pb2.Node], settings: AgentSettings,
                 profiles_kv: ProtoKV[profiler_pb2.Profile] | None = None,
                 clock: Clock = SYSTEM_CLOCK,
                 on_qos: Callable[[events_pb2.QosReport], None] | None = None) -> None:
        self.node_id = node_id
        self.address = ""  # set once the gRPC port is bound, before start()
        self.peer_address = ""  # secure mode: the mutual-TLS listener's, likewise
        self._gpus = gpus
        self._devices = {d.uuid: d for d in gpus.devices()}
        self._bus = bus
        self._nodes_kv = nodes_kv
        self._profiles_kv = profiles_kv
        self._settings = settings
        self._clock = clock
        # Sees every QoS report before it is published (the Prometheus exporter).
        self._on_qos = on_qos
        self._held: dict[str, _Held] = {}
        self._budget = NodeBudget(node_id, {d.uuid: d.memory_total_mib for d in self._devices.values()},
                                  settings.bounds)
        self._arbitration = NodeArbitration(self._devices, settings.hunger_hold_s)
        self._gpu_use: dict[str, tuple[float, int]] = {}  # uuid -> (utilization, memory MiB)
        self._loops: list[asyncio.Task[None]] = []
        self._telemetry_at = 0.0
        # Who may open the pages (raises IsolationError when per-worker uids cannot be had).
        self._isolation = Isolation(settings.worker_ids)
        self._worker_tls = settings.worker_tls
        self._workers = ChannelPool(settings.agent_tls)  # to relay TuneInstance

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        runtime_dir = self._settings.runtime_dir
        self._isolation.prepare(runtime_dir.parent, runtime_dir)
        if self._worker_tls is not None:
            self._worker_tls = self._isolation.worker_tls(self._worker_tls, runtime_dir)
        # Workers of an earlier run died with it (they exit with their agent); their pages
        # would only mislead.
        for stale in runtime_dir.glob("*.*"):
            if stale.suffix in {".ctl", ".stats", ".spec"}:
                stale.unlink(missing_ok=True)
        _prune_logs(runtime_dir)
        await self.heartbeat()
        periodic = [(self._settings.heartbeat_interval_s, self.heartbeat, "heartbeat"),
                    (self._settings.arbiter_period_s, self._arbitrate, "arbiter"),
                    (self._settings.telemetry_interval_s, self._publish_telemetry, "telemetry"),
                    (self._settings.qos_window_s, self._publish_qos, "qos")]
        self._loops = [asyncio.create_task(every(interval, action, clock=self._clock, name=name),
                                           name=name) for interval, action, name in periodic]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # The scheduler replaces these instances once this node's heartbeats stop; a short
        # drain lets requests already inside them finish.
        await asyncio.gather(*(self.stop_instance(i, drain_timeout_s=2.0,
                                                  why="node agent shutting down")
                               for i in list(self._held)), return_exceptions=True)
        await self._workers.close()
        self._gpus.close()

    # ---- status and heartbeat --------------------------------------------------------

    def status(self) -> types_pb2.Node:
        node = types_pb2.Node(id=self.node_id, address=self.address, gpu_backend=self._gpus.name,
                              heartbeat_at=now_timestamp(self._clock.time()),
                              peer_address=self.peer_address)
        for device in self._devices.values():
            utilization, memory = self._gpu_use.get(device.uuid, (0.0, 0))
            node.gpus.add(uuid=device.uuid, index=device.index, model=device.model,
                          memory_total_mib=device.memory_total_mib, memory_used_mib=memory,
                          utilization=utilization)
        node.instances.extend(held.report for held in self._held.values())
        node.bounds.CopyFrom(self._settings.bounds.to_proto())
        return node

    @property
    def budget(self) -> NodeBudget:
        """What each instance holds on each GPU (read only: the agent changes it)."""
        return self._budget

    async def heartbeat(self) -> None:
        await self._nodes_kv.put(self.node_id, self.status())

    # ---- instances -------------------------------------------------------------------

    def _gpus_of(self, gpu_uuids: list[str], wanted: int) -> list[str]:
        """`gpu_uuids` checked: GPUs of this node, no repeats, as many as the spec asks."""
        if len(gpu_uuids) != wanted:
            raise InvalidArgument("gpu_uuids", f"must name {wanted} GPU(s) (function.resources."
                                               f"gpus_per_instance), got {len(gpu_uuids)}")
        for i, uuid in enumerate(gpu_uuids):
            limits.check_text(f"gpu_uuids[{i}]", uuid, limits.GPU_UUID_MAX, required=True)
        unknown = [u for u in gpu_uuids if u not in self._devices]
        if unknown:
            raise InvalidArgument("gpu_uuids", f"not GPUs of node {self.node_id}: {unknown}")
        if len(set(gpu_uuids)) != len(gpu_uuids):
            raise InvalidArgument("gpu_uuids", "must not name a GPU twice")
        return gpu_uuids

    def _check_room_for_one_more(self, gpu_uuids: list[str]) -> None:
        """Bound what this node runs, so that its heartbeat (one report per instance) always
        fits the bus's payload limit: the minimum share bounds the instances per GPU."""
        if len(self._held) >= limits.MAX_INSTANCES_PER_NODE:
            raise ResourceExhausted(f"node {self.node_id} already runs "
                                    f"{limits.MAX_INSTANCES_PER_NODE} instances, its maximum")
        for uuid in gpu_uuids:
            count = sum(1 for held in self._held.values() if uuid in held.gpus)
            if count >= limits.MAX_INSTANCES_PER_GPU:
                raise ResourceExhausted(f"GPU {uuid} already runs {count} instances, the most "
                                        f"one GPU can give a share of at least {limits.SHARE.low}")

    async def start_instance(self, instance_id: str, spec: types_pb2.FunctionSpec,
                             gpu_uuids: list[str], quota: types_pb2.Quota) -> types_pb2.InstanceReport:
        # The id names the instance's files, bus subjects and keys: checked before any use.
        limits.check_id("instance_id", instance_id)
        spec = validate_spec(spec, "function")
        gpu_uuids = self._gpus_of(gpu_uuids, spec.resources.gpus_per_instance)
        _check_quota(quota, "quota", min(self._devices[u].memory_total_mib for u in gpu_uuids))
        existing = self._held.get(instance_id)
        if existing is not None:
            return existing.report
        need = memory_need_bytes(spec, checked_batch(spec))
        if need > quota.memory_limit_mib * MIB:
            raise InvalidArgument("quota.memory_limit_mib",
                                  f"{spec.model} needs {-(-need // MIB)} MiB per GPU, more than "
                                  f"{quota.memory_limit_mib} MiB")
        self._check_room_for_one_more(gpu_uuids)
        # Admitted and recorded before the first await: nothing can take the room between.
        self._budget.start(instance_id, gpu_uuids, Hold.of(quota))
        report = types_pb2.InstanceReport(
            instance_id=instance_id, function=spec.name, state=S.INSTANCE_STATE_STARTING,
            quota=quota, message="starting worker", gpu_uuids=gpu_uuids, quota_version=1)
        report.quota.effective_share = quota.sm_request
        control = control_for(quota.sm_request, quota.sm_request, quota.sm_limit,
                              quota.memory_limit_mib * MIB)
        try:
            worker = WorkerProcess(instance_id, spec, self._settings.runtime_dir, control,
                                   self._worker_env(gpu_uuids, spec),
                                   user=self._isolation.user_for(instance_id),
                                   isolation=self._isolation,
                                   python=self._settings.worker_python)
        except BaseException:
            self._budget.release(instance_id)
            self._isolation.release(instance_id)
            raise
        held = _Held(report, spec, tuple(gpu_uuids), worker, InstanceInfo(
            instance_id, spec.name, spec.slo.latency_ms, spec.kind == S.FUNCTION_KIND_TRAINING),
            written=control)
        self._held[instance_id] = held
        await self._arbitrate()
        # Shielded: a caller that gives up (deadline, disconnect) must not leave a record
        # without a process; the start completes and a later stop finds a whole instance.
        held.starting = asyncio.create_task(self._spawn(held), name=f"start {instance_id}")
        await asyncio.shield(held.starting)
        return report

    async def _with_profiled_batch(self, spec: types_pb2.FunctionSpec,
                                   gpu_uuids: tuple[str, ...],
                                   memory_limit_mib: int) -> types_pb2.FunctionSpec:
        """A spec without max_batch takes the best batch size of its profile on these
        GPUs' model (the profile's key: `services.common.profiling`), when one is stored
        and ready — the largest batch up to it that fits the memory quota; otherwise the
        worker's runtime picks one."""
        if (spec.HasField("max_batch") or self._profiles_kv is None
                or spec.kind == S.FUNCTION_KIND_TRAINING or is_profiling(spec.name)):
            return spec
        key = profile_key(spec, self._devices[gpu_uuids[0]].model)
        try:
            profile = await asyncio.wait_for(self._profiles_kv.get(key_id(key)), 1.0)
        except Exception as error:  # the profile is optional: any failure falls back
            log.warning("no profile for %s (%r); the worker picks its batch size", spec.name, error)
            return spec
        if (profile is None or profile.state != profiler_pb2.PROFILE_STATE_READY
                or profile.best_batch_size <= 0):
            return spec
        profiled = types_pb2.FunctionSpec()
        profiled.CopyFrom(spec)
        profiled.max_batch = largest_batch_within(spec, memory_limit_mib * MIB,
                                                  profile.best_batch_size)
        if profiled.max_batch < profile.best_batch_size:
            log.info("%s: the profile's best batch %d needs more than the %d MiB quota; "
                     "batches of at most %d", spec.name, profile.best_batch_size,
                     memory_limit_mib, profiled.max_batch)
        return profiled

    async def _spawn(self, held: _Held) -> None:
        # The profile lookup happens here, with the record already held, so a stop that
        # arrives meanwhile waits for this start instead of missing it.
        profiled = await self._with_profiled_batch(held.spec, held.gpus,
                                                   held.report.quota.memory_limit_mib)
        if profiled is not held.spec:
            held.spec = profiled
            held.worker.write_spec(profiled)
        try:
            await held.worker.spawn()
        except OSError as error:
            self._held.pop(held.report.instance_id, None)
            self._budget.release(held.report.instance_id)
            self._isolation.release(held.report.instance_id)
            held.worker.remove_files(keep_log=True)
            raise Unavailable(f"cannot start a worker process: {error}") from error
        held.tasks.append(asyncio.create_task(self._watch(held),
                                              name=f"watch {held.report.instance_id}"))
        await self._publish(held.report, events_pb2.INSTANCE_EVENT_KIND_STARTING)

    def _worker_env(self, gpu_uuids: list[str], spec: types_pb2.FunctionSpec) -> dict[str, str]:
        # CUDA accepts GPU UUIDs here; simulated GPUs have no CUDA device behind them.
        visible = ",".join(gpu_uuids) if self._gpus.name == "nvml" else ""
        env = {"CUDA_VISIBLE_DEVICES": visible, "DILU_GPU_UUIDS": ",".join(gpu_uuids),
               # The worker's start-up span joins the trace of the StartInstance that made it.
               "DILU_TRACEPARENT": trace_headers().get("traceparent", ""),
               "DILU_WORKER_HOST": self._settings.worker_host,
               "DILU_WORKER_ADVERTISE_HOST": self._settings.worker_advertise_host,
               "DILU_LOG_MAX_BYTES": str(self._settings.worker_log_max_bytes),
               "DILU_LOG_BACKUPS": str(self._settings.worker_log_backups),
               "DILU_NODE_ID": self.node_id}
        if self._worker_tls is not None:
            env.update(self._worker_tls.as_environment())
        if self._settings.cuda_shim is not None and spec.runtime == types_pb2.RUNTIME_TORCH:
            env.update(preload_env(self._settings.cuda_shim))
        return env

    async def _watch(self, held: _Held) -> None:
        """Readiness, then the worker's exit: an exit nobody asked for is a failure."""
        try:
            try:
                endpoint = await held.worker.ready(self._settings.ready_timeout_s)
            except WorkerFailed as error:
                held.worker.kill()
                await self._failed(held, str(error))
                return
            if held.stopping is None:
                held.report.state = S.INSTANCE_STATE_READY
                held.report.endpoint = endpoint
                held.report.message = "serving" if endpoint else "training"
                await self._publish(held.report, events_pb2.INSTANCE_EVENT_KIND_READY)
                await self._heartbeat_soon()
            code = await held.worker.wait()
            if held.stopping is None:
                await self._failed(held, held.worker.exit_reason(code))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("watching instance %s failed", held.report.instance_id)
            held.worker.kill()
            await self._failed(held, f"the node agent lost track of its worker: {error}")

    async def _failed(self, held: _Held, reason: str) -> None:
        if self._held.get(held.report.instance_id) is not held or held.stopping is not None:
            return
        log.warning("instance %s failed: %s (log: %s)", held.report.instance_id, reason,
                    held.worker.log_path)
        self._held.pop(held.report.instance_id)
        self._budget.release(held.report.instance_id)
        self._isolation.release(held.report.instance_id)
        held.worker.remove_files(keep_log=True)
        _prune_logs(self._settings.runtime_dir)
        held.report.state = S.INSTANCE_STATE_FAILED
        held.report.message = limits.bounded_message(reason)  # heartbeats and events stay small
        await self._publish(held.report, events_pb2.INSTANCE_EVENT_KIND_FAILED)
        await self._heartbeat_soon()

    async def stop_instance(self, instance_id: str, drain_timeout_s: float | None = None,
                            why: str = "stopped on request") -> None:
        held = self._held.get(instance_id)
        if held is None:
            return
        if held.stopping is None:
            drain_s = drain_timeout_s or self._settings.drain_timeout_s
            held.stopping = asyncio.create_task(self._stop(held, drain_s, why),
                                                name=f"stop {instance_id}")
        await asyncio.shield(held.stopping)

    async def _stop(self, held: _Held, drain_s: float, why: str) -> None:
        if held.starting is not None:
            # Let a start in progress finish, so the stop reaches a process and the
            # events keep their order (starting, then stopped).
            await asyncio.gather(held.starting, return_exceptions=True)
        if self._held.get(held.report.instance_id) is not held:
            return  # its start failed and was reported
        held.report.state = S.INSTANCE_STATE_DRAINING
        held.report.message = "draining"
        code = await held.worker.stop(drain_s)
        for task in held.tasks:
            task.cancel()
        self._held.pop(held.report.instance_id, None)
        self._budget.release(held.report.instance_id)
        self._isolation.release(held.report.instance_id)
        # Exits we caused are clean; anything else during the drain deserves its log.
        held.worker.remove_files(keep_log=code not in _REQUESTED_EXITS)
        held.report.state = S.INSTANCE_STATE_STOPPED
        await self._publish(held.report, events_pb2.INSTANCE_EVENT_KIND_STOPPED, why)
        await self._arbitrate()

    async def set_quota(self, instance_id: str, quota: types_pb2.Quota, *, reason: str = "",
                        source: str = MANUAL) -> tuple[types_pb2.Quota, int]:
        """Apply a new request, limit and memory limit; returns the quota as applied and
        its version. Refuses (changing nothing) an unknown or stopping instance
        (NotFound), bad values (InvalidArgument), a memory limit below what the instance
        uses (FailedPrecondition) and what its GPUs have no room for (`NoRoom`)."""
        limits.check_id("instance_id", instance_id)
        held = self._held.get(instance_id)
        if held is None or held.stopping is not None:
            raise NotFound(f"no running instance {instance_id!r} on node {self.node_id}")
        _check_quota(quota, "quota", min(self._devices[u].memory_total_mib for u in held.gpus))
        in_use = held.worker.stats.read().most_on_one_gpu()  # the limit is per GPU
        if quota.memory_limit_mib * MIB < in_use:
            raise FailedPrecondition(
                f"quota.memory_limit_mib: the instance already uses {in_use // MIB} MiB "
                f"of a GPU, more than {quota.memory_limit_mib} MiB")
        before = types_pb2.Quota()
        before.CopyFrom(held.report.quota)
        if Hold.of(quota) != Hold.of(before):
            # Admitted and applied before the first await (see the module docstring).
            self._budget.resize(instance_id, Hold.of(quota))
            held.report.quota.sm_request = quota.sm_request
            held.report.quota.sm_limit = quota.sm_limit
            held.report.quota.memory_limit_mib = quota.memory_limit_mib
            held.report.quota_version += 1
            # The control page carries the new request and limit before SetQuota answers:
            # its own span, in the caller's trace (the scaler's decision → RPC → here).
            with _tracer.start_as_current_span("node_agent.control_page_write") as span:
                span.set_attribute("dilu.instance_id", instance_id)
                await self._arbitrate()
            await self._publish(held.report, events_pb2.INSTANCE_EVENT_KIND_QUOTA_CHANGED,
                                f"quota changed by {source}" + (f": {reason}" if reason else ""),
                                change=(before, reason, source))
            await self._heartbeat_soon()
        applied = types_pb2.Quota()
        applied.CopyFrom(held.report.quota)
        return applied, held.report.quota_version

    async def tune_instance(self, instance_id: str, max_batch: int | None,
                            share_cap: float | None) -> node_agent_pb2.TuneInstanceResponse:
        """Set the knobs outside the budget (module docstring) and read the worker's
        counters. NotFound for an instance not running here; FailedPrecondition for a
        batch on a training instance, or one whose memory need exceeds the quota (the
        worker's answer)."""
        limits.check_id("instance_id", instance_id)
        if max_batch is not None:
            limits.check_int("max_batch", max_batch, limits.BATCH)
        if share_cap is not None:
            limits.check_number("share_cap", share_cap, limits.SHARE)
        held = self._held.get(instance_id)
        if held is None or held.stopping is not None:
            raise NotFound(f"no running instance {instance_id!r} on node {self.node_id}")
        if max_batch is not None:
            if held.info.training:
                raise FailedPrecondition(f"max_batch: {instance_id} is a training instance "
                                         "(its step batch is the runtime option `batch`)")
            if held.report.state != S.INSTANCE_STATE_READY or not held.report.endpoint:
                raise FailedPrecondition(f"max_batch: {instance_id} is not serving yet")
            stub = worker_pb2_grpc.WorkerServiceStub(self._workers.get(
                held.report.endpoint, worker_identity(self.node_id)))
            try:
                answer = await stub.SetMaxBatch(worker_pb2.SetMaxBatchRequest(max_batch=max_batch),
                                                timeout=5.0)
            except grpc.aio.AioRpcError as error:
                raise PeerError(error.code(), f"worker of {instance_id}: {error.details()}") from error
            held.spec.max_batch = answer.max_batch
            held.memory_bytes = answer.memory_bytes
        if share_cap is not None and share_cap != held.share_cap:
            held.share_cap = share_cap
            await self._arbitrate()  # takes effect now, not at the next period
        stats = held.worker.stats.read()
        return node_agent_pb2.TuneInstanceResponse(
            max_batch=held.spec.max_batch, share_cap=held.share_cap,
            effective_share=held.report.quota.effective_share,
            memory_bytes=held.memory_bytes or stats.memory_used_bytes, requests=stats.requests,
            iterations=stats.iterations, last_log_line=held.worker.log_tail())

    # ---- the arbiter -----------------------------------------------------------------

    async def _arbitrate(self) -> None:
        """Every period: the node's arbitration (`arbitration.py`) turns requests, limits
        and who waited for credit into effective shares; changed pages are rewritten at once."""
        now = self._clock.monotonic()
        members = []
        for instance_id, held in self._held.items():
            throttled = held.worker.stats.throttled_ns()
            if throttled > held.last_throttled_ns:
                self._arbitration.waited(instance_id, now)
            held.last_throttled_ns = throttled
            members.append(Member(instance_id, held.gpus, not held.info.training,
                                  min(held.report.quota.sm_request, held.share_cap),
                                  min(held.report.quota.sm_limit, held.share_cap),
                                  draining=held.stopping is not None))
        shares = self._arbitration.shares(now, members)
        for instance_id, share in shares.items():
            held = self._held[instance_id]
            quota = held.report.quota
            quota.effective_share = share
            wanted = control_for(share, quota.sm_request, quota.sm_limit,
                                 quota.memory_limit_mib * MIB)
            if wanted != held.written:
                held.worker.control.write(wanted)
                held.written = wanted

    # ---- telemetry and QoS -----------------------------------------------------------

    def stats_readings(self) -> dict[str, Stats]:
        """Each instance's stats page as it reads now (its counters run from the worker's
        start): what the Prometheus exporter counts requests from."""
        return self._read_stats(list(self._held.values()))

    def _read_stats(self, held: list[_Held]) -> dict[str, Stats]:
        readings = {}
        for one in held:
            # ValueError: its page was closed by a stop or failure in the meantime.
            with contextlib.suppress(ValueError):
                readings[one.report.instance_id] = one.worker.stats.read()
        return readings

    async def _publish_telemetry(self) -> None:
        # NVML calls block; they must not stall the arbiter's 10 ms loop.
        measured = {s.uuid: s for s in await asyncio.to_thread(self._gpus.sample)}
        held = list(self._held.values())
        # The window is timed where the counters are read, after the (variable) NVML call.
        now_s = self._clock.monotonic()
        readings = self._read_stats(held)
        interval = now_s - self._telemetry_at if self._telemetry_at else (
            self._settings.telemetry_interval_s)
        self._telemetry_at = now_s
        now = self._clock.time()
        for uuid, device in self._devices.items():
            usages = [UsageSample(h.info, h.report.quota.effective_share,
                                  h.telemetry_from or readings[h.report.instance_id],
                                  readings[h.report.instance_id])
                      for h in held if uuid in h.gpus and h.report.instance_id in readings]
            sample = measured.get(uuid)
            message = gpu_telemetry(
                self.node_id, uuid, device.memory_total_mib, usages, interval, now,
                sample.utilization if sample else None, sample.memory_used_mib if sample else None)
            self._gpu_use[uuid] = (message.utilization, message.memory_used_mib)
            await self._bus.publish(subjects.telemetry(self.node_id, uuid), message)
        for one in held:
            one.telemetry_from = readings.get(one.report.instance_id, one.telemetry_from)

    async def _publish_qos(self) -> None:
        now_s = self._clock.monotonic()
        now = self._clock.time()
        # The profiler's hidden instances publish none: the scaler must never see them.
        held = [h for h in self._held.values() if h.report.state == S.INSTANCE_STATE_READY
                and not is_profiling(h.info.function)]
        readings = self._read_stats(held)
        for one in held:
            after = readings.get(one.report.instance_id)
            if after is None:
                continue
            previous, one.qos_from = one.qos_from, (after, now_s)
            if previous is not None:
                before, started = previous
                report = qos_report(one.info, self.node_id, before, after, now_s - started, now)
                if self._on_qos is not None:
                    self._on_qos(report)
                await self._bus.publish(subjects.qos(self.node_id, one.info.function), report)

    # ---- events ----------------------------------------------------------------------

    async def _heartbeat_soon(self) -> None:
        """Announce a state change now rather than at the next heartbeat."""
        with contextlib.suppress(Unavailable):
            await self.heartbeat()

    async def _publish(self, report: types_pb2.InstanceReport, kind: int, message: str = "",
                       change: tuple[types_pb2.Quota, str, str] | None = None) -> None:
        """An instance event; `change` (the quota before, reason, source) for QUOTA_CHANGED."""
        event = events_pb2.InstanceEvent(
            function=report.function, instance_id=report.instance_id, node=self.node_id,
            kind=kind, endpoint=report.endpoint, message=message or report.message,  # type: ignore[arg-type]
            at=now_timestamp(self._clock.time()), quota=report.quota,
            quota_version=report.quota_version)
        if change is not None:
            before, reason, source = change
            event.quota_before.CopyFrom(before)
            event.reason, event.source = reason, source
        try:
            await self._bus.publish(subjects.instance_events(self.node_id, report.function), event)
        except Unavailable as error:
            # The scheduler also learns it from the next heartbeat that reaches it.
            log.warning("instance event not delivered: %s", error)
