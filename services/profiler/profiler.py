"""The profiler's shell: takes WANTED profiles from the store, measures each on a hidden
instance, stores the result, and always removes the instance.

A run: the scheduler starts the hidden function `profiling-<id>` (`StartProfiling`: a whole
free GPU of the key's model, memory for the largest batch of the grid that fits it); while
no GPU is free the run waits and its record says why. Once the instance serves, a
`session` measures it (`LiveInstance`: knobs through its node agent, load through the
scheduler) and derives the sizing; then the instance is stopped (`StopProfiling`, also
when the run fails or the profiler stops) and the profile stored READY, or FAILED with the
reason: an SLO no share meets (the fastest latency measured), a function that crashed or
hung (its log line). A failed function is not retried: the scheduler never restarts a
profiling instance whose worker failed, and the record stays FAILED until someone asks
again with `refresh`.

One profiler per cluster, one run at a time (measurements on one machine's CPUs disturb
each other). When a profiler starts it cleans up after its predecessor: runs left RUNNING
go back to WANTED (`ProfileStore.requeue`) and every hidden function still there is
stopped; each pass it also stops hidden functions that are no run of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field

import grpc
from dilu.v1 import (
    node_agent_pb2_grpc,
    profiler_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)

from services.common.channels import ChannelPool, peer_address
from services.common.errors import DiluError
from services.common.profiling import profiling_name
from services.common.security.identity import SCHEDULER_IDENTITY, node_agent_identity
from services.common.security.tls import TlsFiles
from services.node_agent.worker.requirements import MIB, memory_need_bytes, training_batch
from services.profiler.live.protocol import Protocol
from services.profiler.live.runner import InstanceFailed, LiveInstance
from services.profiler.live.session import (
    InferenceProfile,
    PointResult,
    TrainingProfile,
    profile_inference,
    profile_training,
)
from services.profiler.metrics import ProfilingMetrics
from services.profiler.search import DEFAULT_GRID, DEFAULT_TRAINING_SHARES, Grid, InfeasibleSlo
from services.profiler.store import ProfileStore

log = logging.getLogger(__name__)
P = profiler_pb2
S = types_pb2


@dataclass(frozen=True, slots=True)
class ProfilerSettings:
    poll_s: float = 0.5
    grid: Grid = DEFAULT_GRID
    training_shares: tuple[float, ...] = DEFAULT_TRAINING_SHARES
    protocol: Protocol = field(default_factory=Protocol)
    # Hidden functions that are no run of ours are looked for this often.
    sweep_s: float = 5.0


class RunFailed(Exception):
    """A run ended without a profile (the record says why); counted as failed."""


def owner_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{int(time.time())}"


def hidden_spec(key: profiler_pb2.ProfileKey, name: str, grid: Grid,
                gpu_memory_mib: int) -> tuple[types_pb2.FunctionSpec, Grid]:
    """The hidden function of a key, with memory for the largest grid batch that fits the
    GPU, and the grid cut to the batches that fit (InvalidArgument-like ValueError: none)."""
    spec = S.FunctionSpec(name=name, kind=key.kind, runtime=key.runtime, model=key.model,
                          replicas=S.Replicas(min=1, max=1))
    spec.runtime_options.update(key.runtime_options)
    if key.kind != S.FUNCTION_KIND_TRAINING:
        spec.slo.latency_ms = key.slo_latency_ms
        spec.slo.percentile = key.slo_percentile
    batches = tuple(b for b in grid.batches
                    if -(-memory_need_bytes(spec, b) // MIB) <= gpu_memory_mib)
    if not batches:
        raise ValueError(f"{key.model} needs {-(-memory_need_bytes(spec, grid.batches[0]) // MIB)} "
                         f"MiB even at batch {grid.batches[0]}, more than a GPU of "
                         f"{gpu_memory_mib} MiB")
    need = -(-memory_need_bytes(spec, batches[-1]) // MIB)
    spec.resources.memory_mib = min(gpu_memory_mib, need)
    return spec, Grid(grid.shares, batches)


class Profiler:
    """Runs the profiles of `store`, one at a time, against the scheduler at
    `scheduler_address` (`start()` begins, `close()` ends and removes its instance)."""

    def __init__(self, store: ProfileStore, scheduler_address: str,
                 metrics: ProfilingMetrics | None = None,
                 settings: ProfilerSettings | None = None, tls: TlsFiles | None = None) -> None:
        self.store = store
        self.owner = owner_id()
        self._settings = settings or ProfilerSettings()
        self._metrics = metrics
        # Secure mode (`tls`: the profiler's certificate): mutual TLS to the scheduler's and
        # the agents' peer ports, each of which must prove its identity.
        self._channels = ChannelPool(tls)
        self._scheduler = scheduler_pb2_grpc.SchedulerServiceStub(
            self._channels.get(scheduler_address, SCHEDULER_IDENTITY))
        self._task: asyncio.Task[None] | None = None
        self._current: str | None = None  # the hidden function of the run in progress
        self._recovered = False
        self._notes: set[asyncio.Task[None]] = set()

    @property
    def scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return self._scheduler

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="profiling")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._channels.close()

    # ---- the loop --------------------------------------------------------------------

    async def _loop(self) -> None:
        swept = 0.0
        while True:
            try:
                if not self._recovered:
                    await self._recover()
                if time.monotonic() - swept >= self._settings.sweep_s:
                    await self._sweep()
                    swept = time.monotonic()
                for record in await self.store.open_runs():
                    if record.state != P.PROFILE_STATE_WANTED:
                        continue
                    claimed = await self.store.claim(record.key_id, self.owner)
                    if claimed is not None:
                        await self._run(claimed)
                        break
            except asyncio.CancelledError:
                raise
            except (DiluError, grpc.aio.AioRpcError) as error:
                log.warning("profiling pass failed, retrying: %s", error)
            except Exception:
                log.exception("profiling pass failed, retrying")
            await asyncio.sleep(self._settings.poll_s)

    async def _recover(self) -> None:
        """Take over from a predecessor: its runs back to WANTED, its instances stopped."""
        for record in await self.store.requeue(self.owner):
            log.info("profile %s left running by a stopped profiler: %s", record.key_id,
                     P.ProfileState.Name(record.state))
        await self._sweep()
        self._recovered = True

    async def _sweep(self) -> None:
        """Stop every hidden function that is not the run in progress."""
        listed = await self._scheduler.ListProfiling(scheduler_pb2.ListProfilingRequest(), timeout=10)
        for function in listed.functions:
            if function.spec.name != self._current:
                log.info("stopping %s: no run of this profiler", function.spec.name)
                await self._scheduler.StopProfiling(
                    scheduler_pb2.StopProfilingRequest(name=function.spec.name), timeout=30)

    # ---- one run ---------------------------------------------------------------------

    async def _run(self, record: profiler_pb2.Profile) -> None:
        started = time.monotonic()
        name = profiling_name(record.key_id)
        self._current = name
        log.info("profiling %s (key %s) as %s", record.function, record.key_id, name)
        try:
            if self._metrics is not None:
                with self._metrics.run():
                    result = await self._measure(record, name)
            else:
                result = await self._measure(record, name)
        except RunFailed:
            return
        except (DiluError, grpc.aio.AioRpcError) as error:
            detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else error.message
            log.warning("profile %s interrupted: %s", record.key_id, detail)
            await self.store.release(record.key_id, self.owner, f"interrupted: {detail}")
            return
        finally:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await asyncio.shield(self._stop(name))
            self._current = None
        result.seconds = time.monotonic() - started
        await self.store.finish(result, self.owner)
        log.info("profile %s ready in %.0f s: request %.2f, limit %.2f, batch %d, %d MiB",
                 record.key_id, result.seconds, result.sm_request, result.sm_limit,
                 result.best_batch_size, result.memory_mib)

    async def _stop(self, name: str) -> None:
        await self._scheduler.StopProfiling(scheduler_pb2.StopProfilingRequest(name=name), timeout=30)

    async def _fail(self, record: profiler_pb2.Profile, failure: int, message: str,
                    fastest_ms: float = 0.0) -> RunFailed:
        failed = P.Profile()
        failed.CopyFrom(record)
        failed.state = P.PROFILE_STATE_FAILED
        failed.failure = failure  # type: ignore[assignment]
        failed.message = message
        failed.fastest_latency_ms = fastest_ms
        await self.store.finish(failed, self.owner)
        log.warning("profile %s failed: %s", record.key_id, message)
        return RunFailed(message)

    def _note(self, record: profiler_pb2.Profile, message: str) -> None:
        task = asyncio.ensure_future(self.store.note(record.key_id, self.owner, message))
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    async def _measure(self, record: profiler_pb2.Profile, name: str) -> profiler_pb2.Profile:
        key = record.key
        gpu_memory = await self._gpu_memory(key.gpu_model)
        if gpu_memory is None:
            raise await self._fail(record, P.PROFILE_FAILURE_INVALID,
                                   f"no registered node has a GPU of model {key.gpu_model!r}")
        try:
            spec, grid = hidden_spec(key, name, self._settings.grid, gpu_memory)
        except ValueError as error:
            raise await self._fail(record, P.PROFILE_FAILURE_INVALID, str(error)) from None
        try:
            await self._scheduler.StartProfiling(
                scheduler_pb2.StartProfilingRequest(function=spec, gpu_model=key.gpu_model), timeout=30)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise await self._fail(record, P.PROFILE_FAILURE_INVALID, error.details() or "") from None
            raise
        instance, address = await self._ready(record, name)
        live = LiveInstance(self._scheduler,
                            node_agent_pb2_grpc.NodeAgentServiceStub(
                                self._channels.get(address, node_agent_identity(instance.node))),
                            name, instance.id, key.slo_latency_ms / 1000,
                            training=key.kind == S.FUNCTION_KIND_TRAINING)
        try:
            if key.kind == S.FUNCTION_KIND_TRAINING:
                self._note(record, "measuring steps per second by share")
                trained = await profile_training(live, training_batch(spec),
                                                 shares=self._settings.training_shares,
                                                 protocol=self._settings.protocol)
                return training_proto(record, trained)
            counted = [0]

            def progress(point: PointResult) -> None:
                counted[0] += 1
                self._note(record, f"measured {counted[0]} point(s); last: share "
                           f"{point.share:.2f}, batch {point.batch}: "
                           f"{point.measurement.throughput_rps:.1f} requests/s")

            measured = await profile_inference(
                live, key.slo_latency_ms / 1000, target=(key.slo_percentile or 99.0) / 100,
                grid=grid, protocol=self._settings.protocol,
                design_rate_rps=key.design_rate_rps or None, on_point=progress)
            return inference_proto(record, measured, grid)
        except InfeasibleSlo as error:
            raise await self._fail(record, P.PROFILE_FAILURE_INFEASIBLE_SLO, error.message,
                                   error.fastest_latency_s * 1e3) from None
        except InstanceFailed as error:
            raise await self._fail(record, error.failure, error.message) from None

    async def _gpu_memory(self, gpu_model: str) -> int | None:
        nodes = (await self._scheduler.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=10)).nodes
        sizes = [g.memory_total_mib for view in nodes for g in view.node.gpus
                 if view.state == S.NODE_STATE_READY and (g.model == gpu_model or not gpu_model)]
        return min(sizes) if sizes else None

    async def _ready(self, record: profiler_pb2.Profile,
                     name: str) -> tuple[types_pb2.Instance, str]:
        """Wait for the hidden instance to serve; its record and its agent's address (its
        peer address in secure mode)."""
        while True:
            listed = await self._scheduler.ListProfiling(scheduler_pb2.ListProfilingRequest(), timeout=10)
            function = next((f for f in listed.functions if f.spec.name == name), None)
            if function is None:
                raise DiluError(f"the scheduler no longer has {name}")
            for instance in function.status.instances:
                if instance.state == S.INSTANCE_STATE_READY:
                    nodes = (await self._scheduler.ListNodes(scheduler_pb2.ListNodesRequest(),
                                                             timeout=10)).nodes
                    address = next((peer_address(v.node) if self._channels.secure
                                    else v.node.address
                                    for v in nodes if v.node.id == instance.node), "")
                    if address:
                        self._note(record, f"measuring on {instance.node}")
                        return instance, address
                if instance.state in (S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_LOST):
                    raise InstanceFailed(P.PROFILE_FAILURE_CRASHED,
                                         f"the function did not start to be profiled: {instance.message}")
                if instance.state == S.INSTANCE_STATE_PENDING:
                    self._note(record, f"waiting for a whole free GPU: {instance.message}")
                elif instance.state == S.INSTANCE_STATE_STARTING:
                    self._note(record, f"starting its instance on {instance.node}")
            await asyncio.sleep(self._settings.poll_s)


def _point(point: PointResult, slo_s: float, chosen: bool) -> profiler_pb2.ProfilePoint:
    m = point.measurement
    return P.ProfilePoint(batch_size=point.batch, sm_share=point.share, latency_ms=m.latency_s * 1e3,
                          throughput_rps=m.throughput_rps,
                          meets_slo=m.latency_s <= slo_s and m.throughput_rps > 0,
                          memory_mib=m.memory_mib, trials=len(point.trials), seconds=point.seconds,
                          chosen=chosen)


def inference_proto(record: profiler_pb2.Profile, measured: InferenceProfile,
                    grid: Grid) -> profiler_pb2.Profile:
    profile = P.Profile()
    profile.CopyFrom(record)
    choice = measured.choice
    profile.state = P.PROFILE_STATE_READY
    profile.sm_request = measured.request
    profile.sm_limit = measured.limit
    profile.best_batch_size = measured.best_batch
    del profile.points[:]
    profile.points.extend(_point(p, measured.slo_s, (p.share, p.batch) == (choice.share, choice.batch))
                          for p in measured.points)
    profile.measured = len(measured.points)
    profile.pruned = grid.size - len(measured.points)
    profile.memory_mib = measured.memory_mib
    profile.design_rate_rps = measured.design_rate_rps
    profile.capacity_at_limit_rps = measured.capacity_at_limit_rps
    profile.chosen_share = choice.share
    profile.chosen_capacity_rps = choice.measurement.throughput_rps
    profile.fastest_latency_ms = min(p.measurement.latency_s for p in measured.points) * 1e3
    profile.message = (f"ready: batch {measured.best_batch}, request {measured.request:.2f}, "
                       f"limit {measured.limit:.2f}, {measured.memory_mib} MiB")
    del profile.notes[:]
    profile.notes.extend(measured.notes)
    return profile


def training_proto(record: profiler_pb2.Profile, measured: TrainingProfile) -> profiler_pb2.Profile:
    profile = P.Profile()
    profile.CopyFrom(record)
    choice = measured.choice
    profile.state = P.PROFILE_STATE_READY
    profile.sm_request = profile.sm_limit = measured.share
    profile.best_batch_size = measured.batch
    del profile.points[:]
    for probe in choice.probes:
        profile.points.add(batch_size=probe.batch, sm_share=probe.share,
                           latency_ms=probe.measurement.latency_s * 1e3,
                           throughput_rps=probe.measurement.throughput_rps, meets_slo=True,
                           memory_mib=probe.measurement.memory_mib, chosen=probe.share == choice.share)
    profile.measured = len(choice.probes)
    profile.memory_mib = measured.memory_mib
    profile.chosen_share = choice.share
    profile.chosen_capacity_rps = choice.measurement.throughput_rps
    profile.message = (f"ready: share {measured.share:.2f} keeps {choice.kept:.1%} of a whole "
                       f"GPU's {choice.full_gpu.throughput_rps:.2f} steps/s; {measured.memory_mib} MiB")
    return profile
