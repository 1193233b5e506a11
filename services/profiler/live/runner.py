"""The live instance a profiling session measures: the profiler's hidden instance on the
stack, behind the session's `ProbedInstance` interface.

- **Knobs** go to the instance's node agent (`NodeAgentService.TuneInstance`): a cap on its
  effective share and its worker's largest batch. The instance holds a whole GPU (request =
  limit = 1.0) the whole time, so nothing else is placed beside it while it is measured.
- **Load** goes through the scheduler's request path (`SchedulerService.Invoke` on the hidden
  function's name), the path every user request takes. Why not to the worker directly: the
  latencies measured are then end to end, the trip through the scheduler included (about
  4 ms on this machine), which is what the SLO is judged on when the function serves — a
  profile measured beside that path would size every function a little too small; and
  only the agent and the request path ever call a worker (the profiler needs no route to
  the node's network, which in a cluster may be a pod network it cannot reach).
- **Latency** is measured at the client, from the moment each request was due (open loop: a
  late send counts against the point, not for it).
- **Training throughput** is counted by the worker (its stats page, read through
  `TuneInstance`), from one step boundary to another.

A worker that exits while measured raises `InstanceFailed` (CRASHED, with the agent's
message: its exit status and last log line); one that stops answering raises it with HUNG.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from dilu.v1 import (
    node_agent_pb2,
    node_agent_pb2_grpc,
    profiler_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)

from services.profiler.live.protocol import Protocol

__all__ = ["InstanceFailed", "LiveInstance"]

S = types_pb2

# A lone request that takes this many SLOs (and at least `_HANG_FLOOR_S`) means the
# function stopped answering.
_HANG_SLOS = 20
_HANG_FLOOR_S = 5.0
# A training job that makes no step in this long has hung.
_TRAINING_HANG_S = 60.0
_POLL_S = 0.01
# How long the scheduler may take to learn that a worker exited.
_GONE_WAIT_S = 5.0


class InstanceFailed(Exception):
    """The profiled function crashed or hung; `failure` is a `ProfileFailure`."""

    def __init__(self, failure: int, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message


@dataclass
class LiveInstance:
    """One running hidden instance: `name` (its function), `instance_id` on the agent at
    `agent`; requests go through `scheduler`."""

    scheduler: scheduler_pb2_grpc.SchedulerServiceStub
    agent: node_agent_pb2_grpc.NodeAgentServiceStub
    name: str
    instance_id: str
    slo_s: float
    training: bool = False
    _max_batch: int = 0
    _share: float = 1.0

    def clock(self) -> float:
        return time.monotonic()

    async def _tune(self, **knobs: float | int) -> node_agent_pb2.TuneInstanceResponse:
        try:
            return await self.agent.TuneInstance(node_agent_pb2.TuneInstanceRequest(
                instance_id=self.instance_id, **knobs), timeout=10.0)  # type: ignore[arg-type]
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise await self._gone() from error
            raise

    async def _gone(self) -> InstanceFailed:
        """Why the instance is no longer there, from the scheduler's record (which learns
        of a worker's exit a moment after its requests start failing)."""
        deadline = time.monotonic() + _GONE_WAIT_S
        while True:
            reply = await self.scheduler.ListProfiling(scheduler_pb2.ListProfilingRequest(), timeout=10)
            instance = next((i for f in reply.functions if f.spec.name == self.name
                             for i in f.status.instances if i.id == self.instance_id), None)
            if instance is not None and instance.state in (S.INSTANCE_STATE_FAILED,
                                                           S.INSTANCE_STATE_LOST):
                return InstanceFailed(profiler_pb2.PROFILE_FAILURE_CRASHED,
                                      f"the function crashed while profiled: {instance.message}")
            if instance is None or time.monotonic() > deadline:
                return InstanceFailed(profiler_pb2.PROFILE_FAILURE_CRASHED,
                                      "the function's instance went away while profiled")
            await asyncio.sleep(0.1)

    async def configure(self, share: float, max_batch: int) -> int:
        knobs: dict[str, float | int] = {}
        if share != self._share:
            knobs["share_cap"] = share
        if not self.training and max_batch != self._max_batch:
            knobs["max_batch"] = max_batch
        answer = await self._tune(**knobs)
        self._share, self._max_batch = share, max_batch
        return answer.memory_bytes

    async def _invoke(self, timeout_s: float) -> None:
        await self.scheduler.Invoke(scheduler_pb2.InvokeRequest(function=self.name, payload=b"{}",
                                                                content_type="application/json"),
                                    timeout=timeout_s)

    async def _failed_request(self, error: grpc.aio.AioRpcError) -> InstanceFailed | None:
        """A request's error that means the instance is gone (None: a slow answer)."""
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return None
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return await self._gone()
        return InstanceFailed(profiler_pb2.PROFILE_FAILURE_CRASHED,
                              f"the function failed a request while profiled: "
                              f"{error.code().name}: {error.details()}")

    async def lone(self, batch: int, idle_s: float) -> list[float]:
        await asyncio.sleep(idle_s)
        hang_s = max(_HANG_SLOS * self.slo_s, _HANG_FLOOR_S)
        started = time.monotonic()

        async def one() -> float:
            await self._invoke(hang_s)
            return time.monotonic() - started

        results = await asyncio.gather(*(one() for _ in range(batch)), return_exceptions=True)
        latencies = []
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                failed = await self._failed_request(result)
                if failed is not None:
                    raise failed
                raise InstanceFailed(profiler_pb2.PROFILE_FAILURE_HUNG,
                                     f"the function stopped answering while profiled: a lone "
                                     f"request had no answer within {hang_s:.0f} s "
                                     f"(its last log line: {await self._last_log_line()})")
            if isinstance(result, BaseException):
                raise result
            latencies.append(result)
        return latencies

    async def _last_log_line(self) -> str:
        with contextlib.suppress(grpc.aio.AioRpcError, InstanceFailed):
            return (await self._tune()).last_log_line or "(empty)"
        return "(unknown)"

    async def trial(self, arrivals_s: Sequence[float], counted_from: int, slo_s: float,
                    allowed: int) -> tuple[list[float], float, bool]:
        timeout_s = max(10 * slo_s, 1.0)
        started = time.monotonic() + 0.01
        latencies: dict[int, float] = {}
        misses = 0
        over = asyncio.Event()
        failure: list[InstanceFailed] = []
        last = started

        async def one(index: int, due_s: float) -> None:
            nonlocal misses, last
            delay = started + due_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self._invoke(timeout_s)
                latency = time.monotonic() - started - due_s
            except grpc.aio.AioRpcError as error:
                failed = await self._failed_request(error)
                if failed is not None:
                    failure.append(failed)
                    over.set()
                    return
                latency = timeout_s
            last = max(last, time.monotonic())
            if index >= counted_from:
                latencies[index] = latency
                if latency > slo_s:
                    misses += 1
                    if misses > allowed:
                        over.set()

        tasks = [asyncio.create_task(one(i, t)) for i, t in enumerate(arrivals_s)]
        everything: asyncio.Future[object] = asyncio.ensure_future(
            asyncio.gather(*tasks, return_exceptions=True))
        stopper: asyncio.Future[object] = asyncio.ensure_future(over.wait())
        await asyncio.wait([everything, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopped = over.is_set()
        stopper.cancel()
        if stopped:
            for task in tasks:
                task.cancel()  # cancelled calls are dropped by the scheduler and the worker
            last = time.monotonic()
        await asyncio.gather(everything, return_exceptions=True)
        if failure:
            raise failure[0]
        return [latencies[i] for i in sorted(latencies)], last - started, stopped

    async def training_rate(self, protocol: Protocol) -> float:
        async def boundary(after: int) -> tuple[int, float]:
            """Wait for the step counter to pass `after`; the count and when it did."""
            deadline = time.monotonic() + _TRAINING_HANG_S
            while True:
                count = (await self._tune()).iterations
                if count > after:
                    return count, time.monotonic()
                if time.monotonic() > deadline:
                    raise InstanceFailed(profiler_pb2.PROFILE_FAILURE_HUNG,
                                         f"the training job made no step in {_TRAINING_HANG_S:.0f} s "
                                         f"(its last log line: {await self._last_log_line()})")
                await asyncio.sleep(_POLL_S)

        count = (await self._tune()).iterations
        for _ in range(protocol.training_warmup_steps):
            count, _ = await boundary(count)
        first, began = await boundary(count)
        count, now = first, began
        while count - first < protocol.training_steps or now - began < protocol.training_min_s:
            count, now = await boundary(count)
        return (count - first) / (now - began)
