"""The acting scaler: once per `interval_s`, the co-scaling policy over the live cluster.

Each decision reads the scheduler's records (`ListFunctions`, `ListNodes`) and what the
bus said (`BusView`), builds the policy's `Context` (`live_context.build_context`), calls
the pure `decide`, and carries the actions out in the order given (`Actuator`): lowering
before raising, so every raise finds the room it was sized for.

Rules of the shell:
- only in mode `coscale`, and only while this scaler holds the HA lease (`lease.py`);
- the first decision after a start or a takeover is quiet: it seeds the policy's memory
  (rates, instances known) and its actions are dropped, so a restarted scaler never acts
  on one window;
- a refused vertical raise marks the instance's GPUs full for `refused_for_s`, so the
  policy scales out instead of asking again;
- `SetPolicy` takes effect at the next decision; a change of mode to `static` stops
  acting at once and a change back starts quiet again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from dilu.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace

from services.common.channels import ChannelPool, peer_address
from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import Unavailable
from services.common.security.identity import SCHEDULER_IDENTITY
from services.scaler.actuator import Actuator, Outcome
from services.scaler.coscale import (
    Action,
    Context,
    CoscaleSettings,
    CoscaleState,
    ScaleOut,
    SetInferenceQuota,
    SetTrainingQuota,
    decide,
)
from services.scaler.facts import FactsCache
from services.scaler.live_context import Applied, BusView, build_context, live_quotas

log = logging.getLogger(__name__)
tracer = trace.get_tracer("dilu.scaler")
COSCALE, STATIC = "coscale", "static"


@dataclass
class Counters:
    decisions: int = 0
    applied: int = 0
    refused: int = 0
    failed: int = 0
    skipped: int = 0
    quiet_dropped: int = 0


@dataclass
class ActingScaler:
    channels: ChannelPool
    scheduler_address: str
    bus: BusView = field(default_factory=BusView)
    settings: CoscaleSettings = field(default_factory=CoscaleSettings)
    mode: str = COSCALE
    clock: Clock = SYSTEM_CLOCK
    refused_for_s: float = 10.0
    facts: FactsCache = field(default_factory=FactsCache)
    # Held by the lease keeper; a single scaler without HA holds it from the start.
    holder: bool = True
    state: CoscaleState = field(default_factory=CoscaleState)
    applied: dict[str, Applied] = field(default_factory=dict)
    refused: dict[str, float] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    last_context: Context | None = None
    last_nodes: list[types_pb2.NodeView] = field(default_factory=list)
    _quiet: bool = True
    _batch_noted: set[str] = field(default_factory=set)
    # function → the trace of the latest QoS report seen (a decision links to them all)
    triggers: dict[str, trace.SpanContext] = field(default_factory=dict)

    def on_qos_trace(self, function: str) -> None:
        """Remember the trace the current QoS report arrived in (call from its handler)."""
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            self.triggers[function] = context

    @property
    def active(self) -> bool:
        return self.mode == COSCALE and self.holder and bool(self.scheduler_address)

    def set_mode(self, mode: str) -> None:
        if mode != self.mode:
            self.mode = mode
            self.restart_quiet()

    def restart_quiet(self) -> None:
        """The next decision seeds memory only (after a start, a takeover, a mode change)."""
        self._quiet = True
        self.state = CoscaleState()

    def set_holder(self, holder: bool) -> None:
        if holder and not self.holder:
            self.restart_quiet()
        self.holder = holder

    async def tick(self) -> list[Outcome]:
        """One decision (nothing unless active)."""
        if not self.active:
            return []
        sched = scheduler_pb2_grpc.SchedulerServiceStub(
            self.channels.get(self.scheduler_address, SCHEDULER_IDENTITY))
        try:
            functions = (await sched.ListFunctions(scheduler_pb2.ListFunctionsRequest(),
                                                   timeout=2.0)).functions
            nodes = list((await sched.ListNodes(scheduler_pb2.ListNodesRequest(),
                                                timeout=2.0)).nodes)
        except Exception as error:  # the scheduler is away: the next decision retries
            raise Unavailable(f"the scheduler's records: {error}") from error
        now = self.clock.time()
        facts = self.facts.lookup([f.spec for f in functions])
        self.refused = {g: until for g, until in self.refused.items() if until > now}
        context = build_context(now, functions, nodes, self.bus, facts, self.applied, self.refused)
        self.last_context, self.last_nodes = context, nodes
        self._forget_gone(functions)
        # One trace per decision: QoS reports → decide → each action's RPC → the agent →
        # its control-page write (the reports are linked: many feed one decision).
        links = [trace.Link(c) for c in self.triggers.values()]
        with tracer.start_as_current_span("scaler.decide", context=otel_context.Context(),
                                          links=links) as span:
            actions, self.state = decide(context, self.state, now, self.settings)
            self.counters.decisions += 1
            span.set_attribute("dilu.actions", len(actions))
            if self._quiet:
                self._quiet = False
                self.counters.quiet_dropped += len(actions)
                if actions:
                    log.info("first window after a start: %d actions not taken", len(actions))
                return []
            return await self._carry_out(actions, nodes, now)

    async def _carry_out(self, actions: Iterable[Action], nodes: list[types_pb2.NodeView],
                         decided_at: float) -> list[Outcome]:
        actuator = Actuator(self.channels, self.scheduler_address,
                            retry_for_s=max(0.2, self.settings.interval_s * 0.8),
                            batch_noted=self._batch_noted)
        quotas = live_quotas(nodes, self.applied)
        # Secure mode: each agent's mutual-TLS listener, where the scaler's certificate is
        # what the agent authorizes (its public port wants a token).
        addresses = {v.node.id: peer_address(v.node) if self.channels.secure else v.node.address
                     for v in nodes}
        gpus = {r.instance_id: tuple(r.gpu_uuids) for v in nodes for r in v.node.instances}
        outcomes = []
        for action in actions:
            started = time.perf_counter()
            outcome = await actuator.apply(action, quotas, addresses, gpus)
            outcomes.append(outcome)
            target = action.function if isinstance(action, ScaleOut) else action.instance_id
            log.log(logging.DEBUG if outcome.result == "skipped" else logging.INFO,
                    "%s %s: %s (%.1f ms) %s", type(action).__name__, target, outcome.result,
                    (time.perf_counter() - started) * 1000, action.reason)
            if outcome.result == "applied" and isinstance(action, SetInferenceQuota
                                                          | SetTrainingQuota):
                # The decision's own time beside the quota it set: what the vertical
                # reaction (decision → control page) is measured from.
                log.info("vertical %s %.4f/%.4f decided_at=%.6f", action.instance_id,
                         action.request, action.limit, decided_at)
            if outcome.result == "applied":
                self.counters.applied += 1
                if outcome.applied is not None and not isinstance(action, ScaleOut):
                    self.applied[action.instance_id] = outcome.applied
            elif outcome.result == "refused":
                self.counters.refused += 1
                for gpu in outcome.gpus:
                    self.refused[gpu] = self.clock.time() + self.refused_for_s
            elif outcome.result == "failed":
                self.counters.failed += 1
            else:
                self.counters.skipped += 1
        return outcomes

    def _forget_gone(self, functions: Iterable[types_pb2.Function]) -> None:
        live = {i.id for f in functions for i in f.status.instances}
        for iid in [i for i in self.applied if i not in live]:
            del self.applied[iid]
        self.bus.forget(live)
