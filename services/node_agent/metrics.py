"""The node agent's Prometheus figures, for its GPUs and for every worker it runs (workers
have no scrape target of their own).

At scrape time the collector reads the agent's `status()` — each GPU's utilisation and
memory from the last telemetry sample, each instance's state, request, limit and the
effective share the arbiter gave it last period — and its instances' stats pages, whose
counters of requests served and SLO violations run from each worker's start: exact
counters for Prometheus's `rate()` and for SLO attainment over any range
(`1 - violations / requests`). The agent also hands it every QoS report it publishes
(`record_qos`), whose last window becomes the per-window gauges (rps, p99, attainment).

`agent_families` is pure (a Node, page readings and the last QoS reports in, metric
families out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from dilu.events.v1 import events_pb2
from dilu.v1 import types_pb2
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.node_agent.pages import MIB, Stats

INSTANCE_STATES = {value: name.removeprefix("INSTANCE_STATE_").lower()
                   for name, value in types_pb2.InstanceState.items() if value}
_INSTANCE = ["node", "function", "instance"]


def agent_families(node: types_pb2.Node, readings: dict[str, Stats],
                   qos: dict[str, events_pb2.QosReport]) -> list[Metric]:
    gpu_labels = ["node", "gpu", "gpu_index", "model"]
    utilization = GaugeMetricFamily("dilu_gpu_utilization",
                                    "Fraction of the last telemetry sample a GPU was busy",
                                    labels=gpu_labels)
    used = GaugeMetricFamily("dilu_gpu_memory_used_bytes", "GPU memory in use", labels=gpu_labels)
    total = GaugeMetricFamily("dilu_gpu_memory_total_bytes", "GPU memory", labels=gpu_labels)
    for gpu in node.gpus:
        labels = [node.id, gpu.uuid, str(gpu.index), gpu.model]
        utilization.add_metric(labels, gpu.utilization)
        used.add_metric(labels, gpu.memory_used_mib * MIB)
        total.add_metric(labels, gpu.memory_total_mib * MIB)

    states = GaugeMetricFamily("dilu_node_instances", "Instances on this node, by state",
                               labels=["node", "state"])
    request = GaugeMetricFamily("dilu_instance_sm_request",
                                "Guaranteed SM share of an instance (fraction of a GPU)",
                                labels=_INSTANCE)
    limit = GaugeMetricFamily("dilu_instance_sm_limit",
                              "Ceiling SM share of an instance (fraction of a GPU)", labels=_INSTANCE)
    effective = GaugeMetricFamily("dilu_instance_effective_share",
                                  "SM share the node's arbiter gives an instance now",
                                  labels=_INSTANCE)
    memory_limit = GaugeMetricFamily("dilu_instance_memory_limit_bytes",
                                     "GPU memory quota of an instance per GPU (0: none)",
                                     labels=_INSTANCE)
    counted = Counter(INSTANCE_STATES.get(i.state, "unspecified") for i in node.instances)
    for state in INSTANCE_STATES.values():
        states.add_metric([node.id, state], counted[state])
    for instance in node.instances:
        labels = [node.id, instance.function, instance.instance_id]
        request.add_metric(labels, instance.quota.sm_request)
        limit.add_metric(labels, instance.quota.sm_limit)
        effective.add_metric(labels, instance.quota.effective_share)
        memory_limit.add_metric(labels, instance.quota.memory_limit_mib * MIB)
    return [utilization, used, total, states, request, limit, effective, memory_limit,
            *_qos_families(node, readings, qos)]


def _qos_families(node: types_pb2.Node, readings: dict[str, Stats],
                  qos: dict[str, events_pb2.QosReport]) -> list[Metric]:
    requests = CounterMetricFamily("dilu_instance_requests",
                                   "Requests an instance served", labels=_INSTANCE)
    violations = CounterMetricFamily("dilu_instance_slo_violations",
                                     "Requests an instance served slower than its SLO",
                                     labels=_INSTANCE)
    rps = GaugeMetricFamily("dilu_instance_requests_per_second",
                            "Requests served per second over the last QoS window", labels=_INSTANCE)
    p99 = GaugeMetricFamily("dilu_instance_latency_p99_seconds",
                            "99th percentile latency inside the worker over the last QoS window",
                            labels=_INSTANCE)
    attainment = GaugeMetricFamily(
        "dilu_instance_slo_attainment",
        "Fraction of the last QoS window's requests served within the SLO (absent when idle)",
        labels=_INSTANCE)
    slo = GaugeMetricFamily("dilu_instance_slo_latency_seconds",
                            "The latency SLO an instance is held to (0: none)", labels=_INSTANCE)
    queue = GaugeMetricFamily("dilu_instance_queue_length",
                              "Requests queued in the worker at the end of the last QoS window",
                              labels=_INSTANCE)
    iterations = GaugeMetricFamily("dilu_instance_training_iterations_per_second",
                                   "Training iterations per second over the last QoS window",
                                   labels=_INSTANCE)
    for instance in node.instances:
        labels = [node.id, instance.function, instance.instance_id]
        reading = readings.get(instance.instance_id)
        if reading is not None:
            requests.add_metric(labels, reading.requests)
            violations.add_metric(labels, reading.violations)
        latest = qos.get(instance.instance_id)
        if latest is None:
            continue
        rps.add_metric(labels, latest.rps)
        p99.add_metric(labels, latest.p99_ms / 1000)
        if latest.requests:
            attainment.add_metric(labels, 1 - latest.violations / latest.requests)
        slo.add_metric(labels, latest.slo_ms / 1000)
        queue.add_metric(labels, latest.queue_length)
        iterations.add_metric(labels, latest.iterations_per_s)
    return [requests, violations, rps, p99, attainment, slo, queue, iterations]


class NodeAgentCollector(Collector):
    """Reads the agent's status and stats pages whenever Prometheus scrapes, and keeps the
    last QoS report of each instance."""

    def __init__(self, status: Callable[[], types_pb2.Node],
                 readings: Callable[[], dict[str, Stats]] = dict) -> None:
        self._status = status
        self._readings = readings
        self._qos: dict[str, events_pb2.QosReport] = {}

    def record_qos(self, report: events_pb2.QosReport) -> None:
        """Called by the agent with every QoS report it publishes."""
        self._qos[report.instance_id] = report

    def collect(self) -> Iterator[Metric]:
        node = self._status()
        present = {i.instance_id for i in node.instances}
        for gone in self._qos.keys() - present:  # stopped instances' series end with them
            del self._qos[gone]
        yield from agent_families(node, self._readings(), self._qos)
