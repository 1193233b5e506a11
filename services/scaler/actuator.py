"""Carrying out the co-scaling policy's actions (the live scaler's async edge).

Vertical (`SetInferenceQuota`, `SetTrainingQuota`) goes to the instance's node agent as
`SetQuota` with `source: "scaler"` and the policy's reason (the agent publishes the change
as a QUOTA_CHANGED instance event, which the scheduler records as the vertical
`ScalingDecision`); horizontal (`ScaleOut`, `ScaleIn`) goes to the scheduler with the same
source and reason (the scheduler records it). In secure mode the channels are mutual TLS
with the scaler's certificate (`dilu-scaler`), to the agents' and the scheduler's peer
ports, and each server must prove the identity expected of it (`dilu-node-agent.<node>`,
`dilu-scheduler`); the permission table allows that certificate these calls and no others
(`services.common.security.policy`). Only `UNAVAILABLE` is retried (tenacity,
exponential backoff, within one decision interval): any other refusal is final for this
decision and the policy sees the outcome at the next one. A refused vertical raise
(`RESOURCE_EXHAUSTED`: no room on the GPU) is reported back as `Refused`, so the next
context shows that GPU full and the policy considers horizontal scaling instead.

`SetMaxBatch` has no live RPC yet (a worker's maximum batch is fixed at start): it is
counted as skipped and logged once per instance.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
from dilu.v1 import node_agent_pb2, node_agent_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2
from opentelemetry import trace
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from services.common.channels import ChannelPool
from services.common.security.identity import SCHEDULER_IDENTITY, node_agent_identity
from services.common.tracing import trace_metadata
from services.scaler.coscale import (
    Action,
    ScaleIn,
    ScaleOut,
    SetInferenceQuota,
    SetMaxBatch,
    SetTrainingQuota,
)
from services.scaler.live_context import Applied, LiveQuota

log = logging.getLogger(__name__)
tracer = trace.get_tracer("dilu.scaler")
SOURCE = "scaler"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one action: `applied` (with the quota it now has, vertical),
    `refused` (RESOURCE_EXHAUSTED on a vertical change: its GPUs are full), `skipped`
    (nothing to call), or `failed` with the status."""

    action: Action
    result: str
    detail: str = ""
    applied: Applied | None = None
    gpus: tuple[str, ...] = ()


def _unavailable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


class Actuator:
    def __init__(self, channels: ChannelPool, scheduler_address: str, *,
                 timeout_s: float = 2.0, retry_for_s: float = 1.0,
                 batch_noted: set[str] | None = None) -> None:
        self._channels = channels
        self._scheduler_address = scheduler_address
        self._timeout_s = timeout_s
        self._retry_for_s = retry_for_s
        # instances whose unapplied max batch was logged (kept by the caller across decisions)
        self._batch_noted = set() if batch_noted is None else batch_noted

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
                retry=retry_if_exception(_unavailable), reraise=True,
                stop=stop_after_delay(self._retry_for_s),
                wait=wait_exponential(multiplier=0.05, max=0.4)):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover

    async def apply(self, action: Action, quotas: Mapping[str, LiveQuota],
                    addresses: Mapping[str, str], gpus: Mapping[str, tuple[str, ...]]) -> Outcome:
        """Carry out one action. `quotas`: each instance's live quota (for its node and
        memory limit); `addresses`: node → agent address (its peer port in secure mode);
        `gpus`: instance → its GPUs."""
        with tracer.start_as_current_span(f"scaler.apply {type(action).__name__}") as span:
            span.set_attribute("dilu.reason", action.reason)
            try:
                outcome = await self._apply(action, quotas, addresses, gpus)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                span.set_attribute("dilu.outcome", code.name)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED and isinstance(
                        action, SetInferenceQuota | SetTrainingQuota):
                    return Outcome(action, "refused", error.details() or "",
                                   gpus=gpus.get(action.instance_id, ()))
                log.warning("%s failed: %s %s", type(action).__name__, code.name, error.details())
                return Outcome(action, "failed", f"{code.name}: {error.details()}")
            span.set_attribute("dilu.outcome", outcome.result)
            return outcome

    async def _apply(self, action: Action, quotas: Mapping[str, LiveQuota],
                     addresses: Mapping[str, str], gpus: Mapping[str, tuple[str, ...]]) -> Outcome:
        if isinstance(action, SetInferenceQuota | SetTrainingQuota):
            live = quotas.get(action.instance_id)
            address = addresses.get(live.node) if live else None
            if live is None or address is None:
                return Outcome(action, "skipped", "instance not on a known node")
            stub = node_agent_pb2_grpc.NodeAgentServiceStub(
                self._channels.get(address, node_agent_identity(live.node)))
            request = node_agent_pb2.SetQuotaRequest(
                instance_id=action.instance_id,
                quota=types_pb2.Quota(sm_request=action.request, sm_limit=action.limit,
                                      memory_limit_mib=live.memory_mib),
                reason=action.reason, source=SOURCE)
            answer = await self._retrying(lambda: stub.SetQuota(
                request, timeout=self._timeout_s, metadata=trace_metadata()))
            return Outcome(action, "applied", applied=Applied(
                answer.quota.sm_request, answer.quota.sm_limit, answer.quota_version))
        if isinstance(action, SetMaxBatch):
            if action.instance_id not in self._batch_noted:
                self._batch_noted.add(action.instance_id)
                log.info("max batch %d for %s not applied: a worker's batch is fixed at start",
                         action.max_batch, action.instance_id)
            return Outcome(action, "skipped", "no live max-batch change")
        sched = scheduler_pb2_grpc.SchedulerServiceStub(
            self._channels.get(self._scheduler_address, SCHEDULER_IDENTITY))
        if isinstance(action, ScaleOut):
            out = scheduler_pb2.ScaleOutRequest(function=action.function, count=action.count,
                                                reason=action.reason, source=SOURCE)
            await self._retrying(lambda: sched.ScaleOut(out, timeout=self._timeout_s,
                                                        metadata=trace_metadata()))
            return Outcome(action, "applied")
        assert isinstance(action, ScaleIn)
        scale_in = scheduler_pb2.ScaleInRequest(function=action.function, count=1,
                                                instance_ids=[action.instance_id],
                                                reason=action.reason, source=SOURCE)
        await self._retrying(lambda: sched.ScaleIn(scale_in, timeout=self._timeout_s,
                                                   metadata=trace_metadata()))
        return Outcome(action, "applied")
