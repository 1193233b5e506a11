"""NATS subjects and KV bucket names of the design contract, in one place."""

from __future__ import annotations

FUNCTIONS_BUCKET = "dilu-functions"
INSTANCES_BUCKET = "dilu-instances"
NODES_BUCKET = "dilu-nodes"
PROFILES_BUCKET = "dilu-profiles"

# Scaling decisions are kept in a stream so the scaler recovers its history on restart.
SCALING_STREAM = "DILU_SCALING"
SCALING_STREAM_MAX_MSGS = 100_000

INSTANCE_EVENTS_ALL = "dilu.events.instance.>"
SCALING_EVENTS_ALL = "dilu.events.scaling.>"
QOS_ALL = "dilu.qos.>"
TELEMETRY_ALL = "dilu.telemetry.gpu.>"


def telemetry(node: str, gpu_uuid: str) -> str:
    return f"dilu.telemetry.gpu.{node}.{gpu_uuid}"


def qos(function: str) -> str:
    return f"dilu.qos.{function}"


def instance_events(function: str) -> str:
    return f"dilu.events.instance.{function}"


def scaling_events(function: str) -> str:
    return f"dilu.events.scaling.{function}"
