"""The scheduler's pure core: replica planning, placement calls and instance lifecycle,
with time as an argument and no I/O (the house model is `placement/`).

Protocol, in the shape of a decider: every input goes to one `SchedulerCore` method and
returns an `Outcome` — the agent calls to make (`StartInstance`, `StopInstance`,
`SetQuota`), the scaling decisions to publish, and which records changed. The caller
makes the calls and reports each result with `call_done`.

    inputs                                  methods
    Deploy / DeleteFunction / Scale*        deploy / delete / scale -> FunctionChange,
                                            then apply(change) -> Outcome
    a read of the node registry             observe_nodes(snapshot) (or nodes_unreadable())
    an instance event from an agent         instance_reported(node, report): a state, and
                                            the quota the agent applied (QUOTA_CHANGED)
    an agent call's result                  call_done(call, CallSucceeded | CallFailed)
    time passing (about once a second)      tick()
    a restart                               recover(functions, instances, snapshot)
    a quota change to ask an agent for      set_quota(instance_id, quota)

The node agents own their GPUs' budgets: the ledger is a cache of their books. Nodes are
placed on within the bounds they announce, every quota they report (events, heartbeats,
a SetQuota's answer; the newest `quota_version` wins) is adopted into the ledger and the
records, a restart rebuilds the books from their reports, and a start one refuses for
room (`Refusal.NO_ROOM`) is placed elsewhere at once.

Reading: `function(name)`, `functions()`, `route(name, exclude)` (where an invocation
goes), `node_views()`, `node_address(node)`; `state` (the records), `ledger`, `router`.

Modules: `core` (the facade), `intents` (RPC intents checked), `lifecycle` (one
instance's transitions), `heartbeats` (node liveness and level-triggered repair),
`backoff` (failure back-off per function), `records` (the records in memory), `views`
(what readers see), `calls` (the values crossing the boundary), `shapes` (spec to
placement shape), `settings`. Pure pieces it builds on stay where they were:
`services.scheduler.replicas` (how many to start, which to stop), `.nodes` (liveness),
`.routing` (least outstanding requests) and `.placement`.
"""

from __future__ import annotations

from services.scheduler.core.backoff import retry_delay_s
from services.scheduler.core.calls import (
    AgentCall,
    CallFailed,
    CallResult,
    CallSucceeded,
    FunctionChange,
    Outcome,
    Refusal,
    SetQuota,
    StartInstance,
    StopInstance,
)
from services.scheduler.core.core import SchedulerCore, random_instance_id
from services.scheduler.core.heartbeats import NodeSnapshot
from services.scheduler.core.records import HOLDING, LIVE, PLACED, TERMINAL, ClusterState
from services.scheduler.core.settings import SchedulerSettings
from services.scheduler.core.shapes import shape_of

__all__ = [
    "HOLDING",
    "LIVE",
    "PLACED",
    "TERMINAL",
    "AgentCall",
    "CallFailed",
    "CallResult",
    "CallSucceeded",
    "ClusterState",
    "FunctionChange",
    "NodeSnapshot",
    "Outcome",
    "Refusal",
    "SchedulerCore",
    "SchedulerSettings",
    "SetQuota",
    "StartInstance",
    "StopInstance",
    "random_instance_id",
    "retry_delay_s",
    "shape_of",
]
