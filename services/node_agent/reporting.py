"""QoS reports and GPU telemetry built from two readings of instances' stats pages (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from dilu.events.v1 import events_pb2

from services.common.timestamps import now_timestamp
from services.node_agent.pages import MIB, Stats, percentile_ms


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    instance_id: str
    function: str
    slo_ms: float
    training: bool


def qos_report(info: InstanceInfo, node: str, before: Stats, after: Stats, window_s: float,
               now_s: float) -> events_pb2.QosReport:
    """One instance's window: requests, rate, percentiles of this window only, violations."""
    window = [b - a for a, b in zip(before.histogram, after.histogram, strict=True)]
    requests = after.requests - before.requests
    report = events_pb2.QosReport(
        function=info.function, instance_id=info.instance_id, node=node,
        window_end=now_timestamp(now_s), window_s=window_s, requests=requests,
        rps=requests / window_s if window_s > 0 else 0.0,
        p50_ms=percentile_ms(window, 50), p95_ms=percentile_ms(window, 95),
        p99_ms=percentile_ms(window, 99), queue_length=after.queue_length, slo_ms=info.slo_ms,
        violations=after.violations - before.violations)
    if info.training and window_s > 0:
        report.iterations_per_s = (after.iterations - before.iterations) / window_s
    return report


@dataclass(frozen=True, slots=True)
class UsageSample:
    info: InstanceInfo
    effective_share: float
    before: Stats
    after: Stats


def gpu_telemetry(node: str, gpu_uuid: str, memory_total_mib: int, usages: list[UsageSample],
                  interval_s: float, now_s: float, measured_utilization: float | None,
                  measured_memory_mib: int | None) -> events_pb2.GpuTelemetry:
    """A GPU's sample. Without measurements (simulated GPUs) its use is the GPU time its
    instances' gates charged, which is what the simulated device did."""
    message = events_pb2.GpuTelemetry(node=node, gpu_uuid=gpu_uuid, at=now_timestamp(now_s),
                                      interval_s=interval_s, memory_total_mib=memory_total_mib)
    busy_total = 0
    memory_total = 0
    for usage in usages:
        busy = max(0, usage.after.busy_ns - usage.before.busy_ns)
        memory = usage.after.memory_on(gpu_uuid) // MIB
        busy_total += busy
        memory_total += memory
        message.instances.add(instance_id=usage.info.instance_id, function=usage.info.function,
                              effective_share=usage.effective_share, busy_ns=busy,
                              memory_used_mib=memory)
    simulated = busy_total / (interval_s * 1e9) if interval_s > 0 else 0.0
    message.utilization = min(1.0, simulated if measured_utilization is None else measured_utilization)
    message.memory_used_mib = memory_total if measured_memory_mib is None else measured_memory_mib
    return message
