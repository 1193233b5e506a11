"""Who is calling: the one naming scheme of Dilu's certificates, and the caller a request
is authorized as.

Every certificate the Dilu CA issues names exactly one identity, as its subject common name
and as a DNS subject-alternative name, so that a client verifies a server by identity
whatever address it dials (gRPC's target-name override, grpcurl's `-servername`):

| identity | who holds it | may serve | may call as |
|---|---|---|---|
| `dilu-scheduler` | the scheduler | yes | role `scheduler` |
| `dilu-scaler` | the scaler | yes | role `scaler` |
| `dilu-profiler` | the profiler | yes | role `profiler` |
| `dilu-node-agent.<node>` | the node agent of `<node>` | yes | role `node-agent` of `<node>` |
| `dilu-worker.<node>` | every worker of `<node>` | yes | nothing (server only) |
| `dilu-nats` | the NATS server | yes | nothing (server only) |
| `dilu-operator` | operators' tools (the CLI, `dilu up`) | no | role `operator` |
| `dilu-prometheus` | the metrics scraper | no | nothing over gRPC; `/metrics` |
| any other name (letters, digits, `_`, `-`) | a person or tool | no | its role binding |

Names starting with `dilu-` are reserved to the rows above: a certificate of another
`dilu-` name, or of a name the scheme does not allow, is no principal at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from services.common import limits

IDENTITY_PREFIX = "dilu-"
SERVICES = ("scheduler", "scaler", "profiler")
OPERATOR_IDENTITY = "dilu-operator"
SCHEDULER_IDENTITY = "dilu-scheduler"
PROMETHEUS_IDENTITY = "dilu-prometheus"
NATS_IDENTITY = "dilu-nats"
_NODE_IDENTITY = re.compile(r"^dilu-(node-agent|worker)\.([A-Za-z0-9][A-Za-z0-9_-]{0,79})$")


class Role(StrEnum):
    """What a caller is, for the permission table (`policy.py`)."""

    OPERATOR = "operator"
    DEPLOYER = "deployer"
    INVOKER = "invoker"
    SCHEDULER = "scheduler"
    SCALER = "scaler"
    PROFILER = "profiler"
    NODE_AGENT = "node-agent"
    WORKER = "worker"
    # Authenticated, but allowed nothing: a binding that was removed, the metrics scraper.
    NONE = "none"


PEOPLE_ROLES = (Role.OPERATOR, Role.DEPLOYER, Role.INVOKER)


def service_identity(service: str) -> str:
    """`scheduler` -> `dilu-scheduler`."""
    if service not in SERVICES:
        raise ValueError(f"{service!r} is not one of {', '.join(SERVICES)}")
    return IDENTITY_PREFIX + service


def node_agent_identity(node: str) -> str:
    return f"dilu-node-agent.{limits.check_id('node', node)}"


def worker_identity(node: str) -> str:
    return f"dilu-worker.{limits.check_id('node', node)}"


def is_person_name(name: str) -> bool:
    """A principal name people and tools may hold (token owners, client certificates)."""
    return bool(limits.SAFE_ID_PATTERN.match(name)) and not name.startswith(IDENTITY_PREFIX)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from, once authenticated: its principal, how it proved it
    (`token` or `certificate`), its role and the scope of that role."""

    principal: str
    role: Role
    via: str
    # Deployer: the namespace it manages; invoker: that of the functions it may invoke.
    namespace: str = ""
    # Invoker: the functions granted by name (empty: all of its namespace).
    functions: frozenset[str] = field(default_factory=frozenset)
    # Node agents and workers: their node.
    node: str = ""

    def describe(self) -> str:
        """For audit lines: never a token, only whose it is."""
        scope = f"/{self.namespace}" if self.namespace else ""
        node = f" node={self.node}" if self.node else ""
        return f"caller={self.principal} role={self.role.value}{scope} via={self.via}{node}"


def builtin_caller(identity: str) -> Caller | None:
    """The caller a certificate of one of Dilu's own identities is; None for other names."""
    if identity in (service_identity(s) for s in SERVICES):
        return Caller(identity, Role(identity.removeprefix(IDENTITY_PREFIX)), "certificate")
    if identity == OPERATOR_IDENTITY:
        return Caller(identity, Role.OPERATOR, "certificate")
    if identity in (PROMETHEUS_IDENTITY, NATS_IDENTITY):
        return Caller(identity, Role.NONE, "certificate")
    match = _NODE_IDENTITY.match(identity)
    if match is not None:
        role = Role.NODE_AGENT if match.group(1) == "node-agent" else Role.WORKER
        return Caller(identity, role, "certificate", node=match.group(2))
    return None


def reserved(identity: str) -> bool:
    """Whether the name belongs to the `dilu-` scheme (a certificate of such a name that
    is not a built-in identity is refused)."""
    return identity.startswith(IDENTITY_PREFIX)
