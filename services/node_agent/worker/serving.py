"""An inference worker's WorkerService: requests queue, a batcher forms adaptive batches,
the engine runs them through the quota gate, and every latency lands in the stats page."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from dilu.v1 import worker_pb2, worker_pb2_grpc

from services.common import limits
from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.limits import check_invoke_body
from services.node_agent.pages import StatsWriter
from services.node_agent.worker.batching import BatchQueue
from services.node_agent.worker.engines import InferenceEngine
from services.node_agent.worker.gate import QuotaGate
from services.node_agent.worker.spans import Arrival, next_batch_id, record_batch

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    sample: Any
    # The request's trace and Unix arrival time, for its queued and batch spans.
    arrival: Arrival = field(default_factory=lambda: Arrival(queued_ns=time.time_ns()))
    done: asyncio.Future[tuple[bytes, int, float]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class InferenceWorker(worker_pb2_grpc.WorkerServiceServicer):
    """The batching loop is a thin shell: every decision (when to run, how many) is the
    pure `BatchQueue`'s, which the serving simulator runs too."""

    def __init__(self, engine: InferenceEngine, gate: QuotaGate, stats: StatsWriter,
                 slo_ms: float, max_batch: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self._engine = engine
        self._gate = gate
        self._stats = stats
        self._slo_ms = slo_ms
        self._clock = clock
        self.max_batch = max_batch or engine.default_max_batch
        self._queue: BatchQueue[_Pending] = BatchQueue(slo_ms / 1000, self.max_batch,
                                                       engine.estimate_s, clock.monotonic())
        self._arrived = asyncio.Event()

    async def Infer(self, request: worker_pb2.InferRequest,
                    context: grpc.aio.ServicerContext) -> worker_pb2.InferResponse:
        check_invoke_body(request.payload, request.content_type)
        try:
            sample = self._engine.decode(request.payload, request.content_type)
        except RecursionError:  # JSON nested beyond what any model input needs
            raise InvalidArgument("payload", "is nested too deeply") from None
        pending = _Pending(sample)
        self._queue.push(pending, self._clock.monotonic())
        self._stats.add("accepted", 1)
        self._stats.set_queue_length(len(self._queue))
        self._arrived.set()
        payload, batch_size, latency_ms = await pending.done
        return worker_pb2.InferResponse(payload=payload, content_type=self._engine.content_type,
                                        latency_ms=latency_ms, batch_size=batch_size)

    async def SetMaxBatch(self, request: worker_pb2.SetMaxBatchRequest,
                          context: grpc.aio.ServicerContext) -> worker_pb2.SetMaxBatchResponse:
        """The largest batch from the next batch on (the node agent relays
        TuneInstance); refused when the model would not fit the memory quota at it."""
        batch = int(limits.check_int("max_batch", request.max_batch, limits.BATCH))
        need = self._engine.memory_at(batch)
        quota = self._gate.control().memory_limit_bytes
        if quota and need > quota:
            raise FailedPrecondition(f"max_batch {batch}: the model needs {-(-need // (1 << 20))} "
                                     f"MiB at that batch, more than the quota of {quota >> 20} MiB")
        self.max_batch = self._queue.max_batch = batch
        if self._gate.enforcing:  # under the CUDA shim the memory counters are the shim's
            self._stats.set("memory_used_bytes", need)
            self._stats.set("memory_peak_bytes", max(need, self._stats.read().memory_peak_bytes))
        log.debug("max batch set to %d (%d MiB)", batch, need >> 20)
        return worker_pb2.SetMaxBatchResponse(max_batch=batch, memory_bytes=need)

    async def run(self) -> None:
        """The batcher: runs until cancelled; what is queued when it is cancelled fails."""
        try:
            while True:
                try:
                    await self._next_batch_ready()
                    await self._run_batch()
                except Exception as error:
                    # A bug here must not leave requests waiting forever: what is queued
                    # fails with the error, and the batcher carries on with new requests.
                    log.exception("batcher step failed; failing %d queued requests", len(self._queue))
                    for _, pending in self._queue.clear():
                        if not pending.done.done():
                            pending.done.set_exception(error)
                    self._stats.set_queue_length(0)
                    await asyncio.sleep(0.01)
        finally:
            for _, pending in self._queue.clear():
                if not pending.done.done():
                    pending.done.set_exception(RuntimeError("worker stopped"))

    async def _next_batch_ready(self) -> None:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        while True:
            wait = self._queue.wait_s(self._clock.monotonic(), self._gate.control().share)
            if wait <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                return

    async def _run_batch(self) -> None:
        batch = self._queue.take(self._clock.monotonic(), self._gate.control().share)
        self._stats.set_queue_length(len(self._queue))
        # Callers that gave up are skipped.
        live = [(arrived, p) for arrived, p in batch if not p.done.done()]
        if not live:
            return
        batch_id, started_ns = next_batch_id(), time.time_ns()
        try:
            outputs = await self._engine.run([p.sample for _, p in live])
            finished = self._clock.monotonic()
            ended_ns = time.time_ns()
            self._stats.add("batches", 1)
            for (arrived, pending), output in zip(live, outputs, strict=True):
                latency_ms = (finished - arrived) * 1000
                self._stats.record_latency(latency_ms, self._slo_ms)
                if not pending.done.done():
                    pending.done.set_result((output, len(live), latency_ms))
            # After the answers: their callers resume only once this step yields anyway.
            record_batch([p.arrival for _, p in live], batch_id, len(live), started_ns, ended_ns)
        except Exception as error:
            # One failing batch fails its callers, not the worker.
            log.exception("batch of %d failed", len(live))
            record_batch([p.arrival for _, p in live], batch_id, len(live), started_ns,
                         time.time_ns(), error)
            for _, pending in live:
                if not pending.done.done():
                    pending.done.set_exception(error)
