"""NATS subjects and KV bucket names of the design contract, in one place.

Every subject a node agent publishes names its node right after the kind, so that NATS
permissions can hold each agent to its own node (`services.common.security.nats_access`):

    dilu.telemetry.gpu.<node>.<gpu_uuid>    GpuTelemetry      node agents
    dilu.qos.<node>.<function>              QosReport         node agents
    dilu.events.instance.<node>.<function>  InstanceEvent     node agents
    dilu.events.scaling.<function>          ScalingDecision   the scheduler and the scaler only

A subscriber that trusts a message's node (the scheduler acting on instance events) takes
it from the subject (`node_of`), which the server vouches for, not from the payload.
"""

from __future__ import annotations

FUNCTIONS_BUCKET = "dilu-functions"
INSTANCES_BUCKET = "dilu-instances"
NODES_BUCKET = "dilu-nodes"
PROFILES_BUCKET = "dilu-profiles"
# Who may do what (tokens and role bindings; `services.common.security.access`).
ACCESS_BUCKET = "dilu-access"
# The scalers' HA lease (`services.scaler.lease`); written by the scaler only.
SCALER_LEASE_BUCKET = "dilu-scaler-lease"

# Scaling decisions are kept in a stream so the scaler recovers its history on restart.
SCALING_STREAM = "DILU_SCALING"
SCALING_STREAM_MAX_MSGS = 100_000

INSTANCE_EVENTS_ALL = "dilu.events.instance.>"
SCALING_EVENTS_ALL = "dilu.events.scaling.>"
QOS_ALL = "dilu.qos.>"
TELEMETRY_ALL = "dilu.telemetry.gpu.>"


def telemetry(node: str, gpu_uuid: str) -> str:
    return f"dilu.telemetry.gpu.{node}.{gpu_uuid}"


def qos(node: str, function: str) -> str:
    return f"dilu.qos.{node}.{function}"


def qos_of_function(function: str) -> str:
    """Every node's QoS reports of one function (a subscription)."""
    return f"dilu.qos.*.{function}"


def instance_events(node: str, function: str) -> str:
    return f"dilu.events.instance.{node}.{function}"


def instance_events_of_function(function: str) -> str:
    """Every node's instance events of one function (a subscription)."""
    return f"dilu.events.instance.*.{function}"


def scaling_events(function: str) -> str:
    return f"dilu.events.scaling.{function}"


# Tokens before the node in each node-scoped subject.
_NODE_TOKEN = {"dilu.telemetry.gpu.": 3, "dilu.qos.": 2, "dilu.events.instance.": 3}


def node_of(subject: str) -> str | None:
    """The node a node-scoped subject names (the publisher's, as far as NATS permissions
    hold), or None for any other subject."""
    for prefix, index in _NODE_TOKEN.items():
        if subject.startswith(prefix):
            tokens = subject.split(".")
            return tokens[index] if len(tokens) > index + 1 else None
    return None
