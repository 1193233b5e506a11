"""Who may call which RPC, and on which functions: one table, pure decisions.

| RPC | operator | deployer | invoker | services |
|---|---|---|---|---|
| SchedulerService.Deploy | yes | into its namespace | - | profiler |
| .DeleteFunction | yes | its namespace's | - | profiler |
| .GetFunction | yes | its namespace's | granted | profiler |
| .ListFunctions | yes | its namespace's (filtered) | granted (filtered) | scaler, profiler |
| .ScaleOut, .ScaleIn | yes | its namespace's | - | scaler |
| .Invoke | yes | its namespace's | granted | profiler |
| .ListNodes | yes | - | - | scaler, profiler |
| .StartProfiling, .StopProfiling, .ListProfiling | yes | - | - | profiler |
| NodeAgentService.StartInstance, .StopInstance | yes | - | - | scheduler |
| .SetQuota | yes | - | - | scheduler, scaler, profiler |
| .GetNodeStatus | yes | - | - | scheduler, profiler |
| .TuneInstance | yes | - | - | profiler |
| ProfilerService.ProfileFunction | yes | its namespace's | - | - |
| .GetProfile | yes | any key (see below) | - | - |
| ScalerService.* | yes | - | - | - |
| WorkerService.Infer | - | - | - | scheduler, profiler, the node agent of the worker's node |
| WorkerService.SetMaxBatch, others | - | - | - | the node agent of the worker's node |
| grpc.health.v1.Health.* | anyone, unauthenticated too (probes) |
| server reflection | any authenticated caller |

The scaler's rows are exactly what the acting scaler calls (`services.scaler.acting`):
the scheduler's `ListFunctions`, `ListNodes`, `ScaleOut` and `ScaleIn`, and the agents'
`SetQuota`; nothing else, so a stolen scaler certificate can resize and scale but not
deploy, delete, invoke, start or stop instances.

The profiler's rows are what its live runs call (`services.profiler.profiler`): the
scheduler's profiling RPCs (hidden instances no deployer sees), `ListNodes` and `Invoke` on
its hidden function, and the agents' `TuneInstance` (relayed to the worker as
`WorkerService.SetMaxBatch`, which only the agent of the worker's node may call).
`GetProfile` names a model configuration (`ProfileKey`), which no namespace owns: any
deployer may read a profile by its key, and the answer to a deployer or invoker leaves out
the `function` label (the name of whichever function asked first, perhaps another
namespace's). The scheduler asks for profiles by writing WANTED records in the profiles
bucket, not through the profiler's RPCs.

A node agent may call no node agent (its own included); workers and the metrics scraper
may call nothing. An RPC missing from the table is the operator's alone (and a test fails
until it has a row). A function's namespace is its spec's `namespace` ("default" when
empty); Deploy places an empty one in the deployer's own namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.security.identity import Caller, Role

DEFAULT_NAMESPACE = "default"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."
WORKER_PREFIX = "/dilu.v1.WorkerService/"

O, D, I = Role.OPERATOR, Role.DEPLOYER, Role.INVOKER  # noqa: E741
SCHED, SCALE, PROF, AGENT = Role.SCHEDULER, Role.SCALER, Role.PROFILER, Role.NODE_AGENT


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call an RPC, and what it acts on: `function` names the function a request
    acts on, `spec_namespace` the namespace a request's spec asks for, `listing` marks an
    RPC whose answer the servicer filters (`visible`)."""

    roles: frozenset[Role]
    function: Callable[[Any], str] | None = None
    spec_namespace: Callable[[Any], str] | None = None
    listing: bool = False


def _rule(*roles: Role, **what: Any) -> Rule:
    return Rule(frozenset(roles), **what)


def _spec_namespace(request: Any) -> str:
    return str(request.function.namespace)


RULES: dict[str, Rule] = {
    "/dilu.v1.SchedulerService/Deploy": _rule(O, D, PROF, spec_namespace=_spec_namespace),
    "/dilu.v1.SchedulerService/DeleteFunction": _rule(O, D, PROF, function=lambda r: r.name),
    "/dilu.v1.SchedulerService/GetFunction": _rule(O, D, I, PROF, function=lambda r: r.name),
    "/dilu.v1.SchedulerService/ListFunctions": _rule(O, D, I, SCALE, PROF, listing=True),
    "/dilu.v1.SchedulerService/ScaleOut": _rule(O, D, SCALE, function=lambda r: r.function),
    "/dilu.v1.SchedulerService/ScaleIn": _rule(O, D, SCALE, function=lambda r: r.function),
    "/dilu.v1.SchedulerService/Invoke": _rule(O, D, I, PROF, function=lambda r: r.function),
    "/dilu.v1.SchedulerService/ListNodes": _rule(O, SCALE, PROF),
    "/dilu.v1.SchedulerService/StartProfiling": _rule(O, PROF),
    "/dilu.v1.SchedulerService/StopProfiling": _rule(O, PROF),
    "/dilu.v1.SchedulerService/ListProfiling": _rule(O, PROF),
    "/dilu.v1.NodeAgentService/StartInstance": _rule(O, SCHED),
    "/dilu.v1.NodeAgentService/StopInstance": _rule(O, SCHED),
    "/dilu.v1.NodeAgentService/SetQuota": _rule(O, SCHED, SCALE, PROF),
    "/dilu.v1.NodeAgentService/GetNodeStatus": _rule(O, SCHED, PROF),
    "/dilu.v1.NodeAgentService/TuneInstance": _rule(O, PROF),
    "/dilu.v1.ProfilerService/ProfileFunction": _rule(O, D, spec_namespace=_spec_namespace),
    # Keyed by a model configuration (`key`), no function's: not scoped to a namespace.
    "/dilu.v1.ProfilerService/GetProfile": _rule(O, D),
    "/dilu.v1.ScalerService/GetStatus": _rule(O),
    "/dilu.v1.ScalerService/SetPolicy": _rule(O),
    "/dilu.v1.ScalerService/ListDecisions": _rule(O),
    "/dilu.v1.WorkerService/Infer": _rule(SCHED, PROF, AGENT),
    "/dilu.v1.WorkerService/SetMaxBatch": _rule(AGENT),  # relays TuneInstance
}
# Every other WorkerService RPC (knobs the agent relays to its workers): the agent only.
_WORKER_DEFAULT = _rule(AGENT)
_OPERATOR_ONLY = _rule(O)


def rule_for(method: str) -> Rule:
    if method in RULES:
        return RULES[method]
    return _WORKER_DEFAULT if method.startswith(WORKER_PREFIX) else _OPERATOR_ONLY


@dataclass(frozen=True, slots=True)
class Verdict:
    """`allowed`, or why not; `function` set when the decision waits for the namespace of
    that function (`decide_namespace`); `resource` says what was asked for (audit)."""

    allowed: bool
    reason: str = ""
    function: str = ""
    resource: str = field(default="")


ALLOWED = Verdict(True)


def effective_namespace(requested: str, caller: Caller | None) -> str:
    """The namespace a deployed spec ends up in: as written, else the deployer's own,
    else "default"."""
    if requested:
        return requested
    if caller is not None and caller.role == Role.DEPLOYER and caller.namespace:
        return caller.namespace
    return DEFAULT_NAMESPACE


def stored_namespace(namespace: str) -> str:
    """A stored spec's namespace ("" in records from before namespaces: "default")."""
    return namespace or DEFAULT_NAMESPACE


def may_call(caller: Caller, method: str, *, local_node: str = "") -> Verdict:
    """Whether `caller` may call the RPC at all, whatever it asks for. `local_node`: the
    node of the server (workers), against which a node agent's identity is checked."""
    if method.startswith(HEALTH_PREFIX):
        return ALLOWED
    if caller.role == Role.NONE:
        return Verdict(False, f"{caller.principal} has no role (its binding was removed, or "
                              "it never had one)")
    if method.startswith(REFLECTION_PREFIX):
        return ALLOWED
    if caller.role not in rule_for(method).roles:
        return Verdict(False, f"role {caller.role.value} may not call {method}")
    if caller.role == Role.NODE_AGENT and method.startswith(WORKER_PREFIX) and (
            caller.node != local_node):
        return Verdict(False, f"the node agent of {caller.node} may not call the workers "
                              f"of node {local_node or '?'}")
    return ALLOWED


def decide(caller: Caller, method: str, request: Any, *, local_node: str = "") -> Verdict:
    """Whether `caller` may make this call: `may_call`, then for deployers and invokers
    the function or namespace the request names. A verdict with `function` set waits for
    that function's namespace (`decide_namespace`)."""
    verdict = may_call(caller, method, local_node=local_node)
    if not verdict.allowed or caller.role not in (Role.DEPLOYER, Role.INVOKER):
        return verdict
    rule = rule_for(method)
    if rule.listing:
        return ALLOWED
    if rule.spec_namespace is not None:
        namespace = effective_namespace(rule.spec_namespace(request), caller)
        return _in_scope(caller, "", namespace, f"namespace={namespace}")
    if rule.function is not None:
        name = str(rule.function(request))
        return Verdict(False, function=name, resource=f"function={name}")
    return ALLOWED


def decide_namespace(caller: Caller, function: str, namespace: str | None) -> Verdict:
    """The second step of `decide` for a deployer or invoker acting on `function`, whose
    namespace is `namespace` (None: no such function, which the RPC itself reports: the
    caller learns nothing it could not learn from a Deploy of that name)."""
    if namespace is None:
        return Verdict(True, resource=f"function={function}")
    return _in_scope(caller, function, stored_namespace(namespace),
                     f"function={function} namespace={stored_namespace(namespace)}")


def _in_scope(caller: Caller, function: str, namespace: str, resource: str) -> Verdict:
    if visible(caller, function, namespace):
        return Verdict(True, resource=resource)
    if caller.role == Role.INVOKER:
        return Verdict(False, f"{caller.principal} is not granted {function or namespace}",
                       resource=resource)
    return Verdict(False, f"{caller.principal} manages namespace {caller.namespace or '-'}, "
                          f"not {namespace}", resource=resource)


def visible(caller: Caller | None, function: str, namespace: str) -> bool:
    """Whether the caller may see (and, within its role, act on) a function: what the
    servicers filter listings with. No caller (insecure mode) sees everything."""
    if caller is None or caller.role not in (Role.DEPLOYER, Role.INVOKER):
        return True
    namespace = stored_namespace(namespace)
    if caller.role == Role.INVOKER and caller.functions:
        return function in caller.functions
    return namespace == caller.namespace
