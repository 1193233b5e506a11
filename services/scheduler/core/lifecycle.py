"""Instance lifecycle: the transitions of one instance record and what they imply for
the ledger, the router and the function's back-off.

    pending --place--> starting --agent: ready--> ready
       ^                  |  \\                      |
       |     refused: no room \\-- failed/lost <----+   (worker exit, node lost, ...)
       +------------------+                         |
                    starting/ready --stop--> draining --confirmed--> stopped

Placed and draining instances hold their GPU share in the ledger; it is released when
the instance fails, is lost, or its stop is confirmed, never earlier.

Quotas are the node agents': an instance holds in the ledger the request, limit and
memory its agent last reported (`adopt_quota`, ordered by the agent's quota version),
and an instance placed to replace one that failed or was lost starts at the quota its
predecessor last had.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dilu.v1 import types_pb2

from services.common.timestamps import now_timestamp
from services.scheduler.core import backoff
from services.scheduler.core.calls import StartInstance, StopInstance
from services.scheduler.core.records import (
    LIVE,
    PLACED,
    ClusterState,
    StateValue,
    seconds,
    state_name,
)
from services.scheduler.core.settings import SchedulerSettings
from services.scheduler.core.shapes import held_shape, quota_shape
from services.scheduler.placement import Ledger, Placement
from services.scheduler.routing import LeastOutstanding

log = logging.getLogger(__name__)
S = types_pb2


class Lifecycle:
    def __init__(self, state: ClusterState, ledger: Ledger, placement: Placement,
                 router: LeastOutstanding, settings: SchedulerSettings,
                 new_id: Callable[[str], str]) -> None:
        self._state = state
        self._ledger = ledger
        self._placement = placement
        self._router = router
        self._settings = settings
        self._new_id = new_id
        # The newest quota version adopted per instance (the agents number their changes).
        self._quota_versions: dict[str, int] = {}
        # When each ready instance became ready (for the back-off's "stayed ready").
        self.ready_since: dict[str, float] = {}
        self._stop_sent: dict[str, float] = {}  # instance -> when StopInstance was last sent
        # (function, node) -> until when the node gets no placement of the function.
        self._avoid: dict[tuple[str, str], float] = {}

    # ---- placing ---------------------------------------------------------------------

    def place(self, spec: types_pb2.FunctionSpec, instance: types_pb2.Instance,
              ready_nodes: list[str], now: float) -> StartInstance | None:
        """Place a pending instance at its own quota (a replacement's may differ from the
        spec's), or note why it stays pending."""
        shape = held_shape(spec, instance)
        nodes = [n for n in ready_nodes if self._avoid.get((spec.name, n), -1.0) <= now]
        assignment = self._placement.place(shape, self._ledger.view(nodes))
        if assignment is None:
            reason = (f"no ready node has {shape.gpus} GPU(s) with room for sm_request "
                      f"{shape.sm_request:g}, sm_limit {shape.sm_limit:g} and "
                      f"{shape.memory_mib} MiB")
            if len(nodes) < len(ready_nodes):
                reason += f" (avoiding {len(ready_nodes) - len(nodes)} node(s) that failed a start)"
            if instance.message != reason:
                self._state.set_state(instance, S.INSTANCE_STATE_PENDING, reason, now)
            return None
        self._ledger.commit(instance.id, shape, assignment)
        self._quota_versions.pop(instance.id, None)  # a new start: its agent counts from 1
        instance.node = assignment.node
        del instance.gpu_uuids[:]
        instance.gpu_uuids.extend(assignment.gpu_uuids)
        instance.quota.effective_share = shape.sm_request
        self._state.set_state(instance, S.INSTANCE_STATE_STARTING, f"placed on {assignment.node}",
                              now)
        quota = types_pb2.Quota()
        quota.CopyFrom(instance.quota)
        return StartInstance(assignment.node, instance.id, spec, assignment.gpu_uuids, quota)

    def unplace(self, instance: types_pb2.Instance, why: str, now: float) -> None:
        """Back to pending (its start was refused for room): free what it held and keep
        the function off that node for a while."""
        self.avoid(instance.function, instance.node, now)
        self._ledger.release(instance.id)
        instance.node = ""
        del instance.gpu_uuids[:]
        instance.endpoint = ""
        self._state.set_state(instance, S.INSTANCE_STATE_PENDING, why, now)

    def avoid(self, function: str, node: str, now: float) -> None:
        self._avoid[(function, node)] = now + self._settings.avoid_node_s
        for key in [k for k, until in self._avoid.items() if until <= now]:
            del self._avoid[key]

    # ---- stopping --------------------------------------------------------------------

    def stop(self, instance: types_pb2.Instance, why: str, now: float) -> list[StopInstance]:
        """Begin stopping an instance. A placed one drains and keeps its GPU share until
        its agent confirms the stop; an unplaced one is simply forgotten."""
        self._router.forget(instance.id)
        self.ready_since.pop(instance.id, None)
        if instance.state in PLACED and instance.node:
            self._state.set_state(instance, S.INSTANCE_STATE_DRAINING, why, now)
            self._stop_sent[instance.id] = now
            return [self.stop_call(instance.node, instance.id)]
        self._state.forget(instance.id)
        return []

    def stop_call(self, node: str, instance_id: str) -> StopInstance:
        return StopInstance(node, instance_id, self._settings.drain_timeout_s)

    def stopped(self, instance: types_pb2.Instance, why: str, now: float) -> None:
        self._ledger.release(instance.id)
        self._stop_sent.pop(instance.id, None)
        self._state.set_state(instance, S.INSTANCE_STATE_STOPPED, why, now)

    def stop_due(self, instance_id: str, now: float) -> bool:
        """Repeat a StopInstance at most once per drain and agent timeout while it is
        not confirmed."""
        repeat_after = self._settings.drain_timeout_s + self._settings.agent_timeout_s
        if now - self._stop_sent.get(instance_id, -1e18) < repeat_after:
            return False
        self._stop_sent[instance_id] = now
        return True

    # ---- failing and adopting --------------------------------------------------------

    def fail(self, instance: types_pb2.Instance, state: StateValue, why: str, now: float, *,
             counts: bool) -> None:
        """The instance failed or was lost. `counts`: whether it was the function's own
        failure (a refused start, a worker that exited unasked), which backs it off."""
        self._ledger.release(instance.id)
        self._router.forget(instance.id)
        self.ready_since.pop(instance.id, None)
        was_live = instance.state in LIVE
        self._state.set_state(instance, state, why, now)
        log.warning("instance %s %s: %s", instance.id, state_name(state), why)
        function = self._state.functions.get(instance.function)
        if function is None or not self._state.belongs(instance):
            return
        if counts:
            backoff.record_failure(function.status, why, now, self._settings)
            self._state.function_touched(instance.function)
        if was_live:
            self._replace_resized(function, instance, now)

    def _replace_resized(self, function: types_pb2.Function, gone: types_pb2.Instance,
                         now: float) -> None:
        """Add the pending replacement of an instance whose quota was changed since it was
        placed, at that quota, when the function wants one; the reconcile pass places it
        (and replaces instances at the spec's quota itself)."""
        res = function.spec.resources
        quota = gone.quota
        if (quota.sm_request, quota.sm_limit, quota.memory_limit_mib) == (
                res.sm_request, res.sm_limit, res.memory_mib):
            return
        live = sum(1 for i in self._state.instances_of(function.spec.name) if i.state in LIVE)
        if live >= function.status.desired_replicas:
            return
        created = now_timestamp(max(now, seconds(function.status.created_at)))
        replacement = types_pb2.Instance(
            id=self._new_id(function.spec.name), function=function.spec.name,
            state=S.INSTANCE_STATE_PENDING, created_at=created, updated_at=now_timestamp(now),
            message=f"replaces {gone.id} at its quota",
            quota=types_pb2.Quota(sm_request=quota.sm_request, sm_limit=quota.sm_limit,
                                  memory_limit_mib=quota.memory_limit_mib))
        self._state.add(replacement)

    def adopt(self, instance: types_pb2.Instance, state: StateValue, endpoint: str,
              message: str, now: float) -> None:
        """Apply a state an agent reported for a placed instance."""
        if state == S.INSTANCE_STATE_READY and (
                instance.state != S.INSTANCE_STATE_READY or instance.endpoint != endpoint):
            instance.endpoint = endpoint
            self.ready_since.setdefault(instance.id, now)
            self._state.set_state(instance, S.INSTANCE_STATE_READY, message or "serving", now)
        elif state in (S.INSTANCE_STATE_FAILED, S.INSTANCE_STATE_STOPPED):
            self.fail(instance, S.INSTANCE_STATE_FAILED, message or "worker exited", now,
                      counts=True)
        elif state == instance.state and message and message != instance.message:
            self._state.set_state(instance, state, message, now)  # the agent knows best why

    def adopt_quota(self, instance: types_pb2.Instance, quota: types_pb2.Quota,
                    version: int) -> None:
        """The request, limit and memory an agent applied to an instance that holds its
        share, into its record and the ledger. Reports carry the agent's quota version:
        one no newer than the last adopted is ignored (an event may overtake a heartbeat
        written before it); version 0 (unknown) is adopted as it comes."""
        if version and version <= self._quota_versions.get(instance.id, 0):
            return
        if version:
            self._quota_versions[instance.id] = version
        if not quota.sm_request or not quota.memory_limit_mib:
            return  # not a quota (an agent from before quotas were reported in full)
        held = self._ledger.shape_of(instance.id)
        mine = instance.quota
        if (mine.sm_request, mine.sm_limit, mine.memory_limit_mib) != (
                quota.sm_request, quota.sm_limit, quota.memory_limit_mib):
            mine.sm_request = quota.sm_request
            mine.sm_limit = quota.sm_limit
            mine.memory_limit_mib = quota.memory_limit_mib
            self._state.touched(instance.id)
        if held is not None:
            wanted = quota_shape(held, quota)
            if wanted != held:
                self._ledger.resize(instance.id, wanted)

    def adopt_share(self, instance: types_pb2.Instance, effective_share: float) -> None:
        """The node's arbiter owns the effective share; the scheduler shows the latest one
        (as of the last report) and never plans with it: placement uses requests."""
        if effective_share and abs(effective_share - instance.quota.effective_share) > 1e-6:
            instance.quota.effective_share = effective_share
            self._state.touched(instance.id)

    def prune(self, now: float) -> None:
        """Drop stop timestamps of ids no record has any more (stops of instances an
        agent ran unknown to the scheduler) once they could no longer be repeated."""
        repeat_after = self._settings.drain_timeout_s + self._settings.agent_timeout_s
        for instance_id, sent in list(self._stop_sent.items()):
            if instance_id not in self._state.instances and now - sent > 2 * repeat_after:
                del self._stop_sent[instance_id]

    def forget(self, instance_id: str) -> None:
        """Drop a record and everything kept about it."""
        self._stop_sent.pop(instance_id, None)
        self._quota_versions.pop(instance_id, None)
        self.ready_since.pop(instance_id, None)
        self._router.forget(instance_id)
        self._state.forget(instance_id)
