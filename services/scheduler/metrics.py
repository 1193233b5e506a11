"""The scheduler's Prometheus figures, read from its state at scrape time (nothing is
counted on the hot path): functions, replicas, instances by state, nodes by state and what
placement committed on each GPU.

`scheduler_families` is pure (protos in, metric families out); `SchedulerCollector` is
the adapter the registry calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from dilu.v1 import types_pb2
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.node_agent.pages import MIB

# Every state appears for every function (zeros included) so graphs have no gaps.
INSTANCE_STATES = {value: name.removeprefix("INSTANCE_STATE_").lower()
                   for name, value in types_pb2.InstanceState.items() if value}
NODE_STATES = {value: name.removeprefix("NODE_STATE_").lower()
               for name, value in types_pb2.NodeState.items() if value}
FUNCTION_STATES = {value: name.removeprefix("FUNCTION_STATE_").lower().replace("_", "-")
                   for name, value in types_pb2.FunctionState.items() if value}
FUNCTION_KINDS = {value: name.removeprefix("FUNCTION_KIND_").lower().replace("_", "-")
                  for name, value in types_pb2.FunctionKind.items() if value}


def scheduler_families(functions: Iterable[types_pb2.Function],
                       nodes: Iterable[types_pb2.NodeView]) -> list[Metric]:
    by_kind = GaugeMetricFamily("dilu_functions", "Deployed functions, by kind", labels=["kind"])
    desired = GaugeMetricFamily("dilu_function_desired_replicas",
                                "Instances the scheduler keeps for a function", labels=["function"])
    ready = GaugeMetricFamily("dilu_function_ready_replicas",
                              "Instances of a function that serve", labels=["function"])
    slo = GaugeMetricFamily("dilu_function_slo_latency_seconds",
                            "A function's latency SLO (0: none)", labels=["function"])
    instances = GaugeMetricFamily("dilu_instances", "Instances the scheduler tracks, by state",
                                  labels=["function", "state"])
    health = GaugeMetricFamily("dilu_function_state",
                               "1 for the state a function is in (ok, backing-off, degraded)",
                               labels=["function", "state"])
    failures = GaugeMetricFamily("dilu_function_consecutive_failures",
                                 "Instance failures of a function in a row", labels=["function"])
    kinds: Counter[str] = Counter({kind: 0 for kind in FUNCTION_KINDS.values()})
    for function in functions:
        name = function.spec.name
        kinds[FUNCTION_KINDS.get(function.spec.kind, "unspecified")] += 1
        desired.add_metric([name], function.status.desired_replicas)
        ready.add_metric([name], function.status.ready_replicas)
        slo.add_metric([name], function.spec.slo.latency_ms / 1000)
        for value, state in FUNCTION_STATES.items():
            health.add_metric([name, state], 1 if function.status.state == value else 0)
        failures.add_metric([name], function.status.consecutive_failures)
        states = Counter(INSTANCE_STATES.get(i.state, "unspecified")
                         for i in function.status.instances)
        for state in INSTANCE_STATES.values():
            instances.add_metric([name, state], states[state])
    for kind, count in sorted(kinds.items()):
        by_kind.add_metric([kind], count)

    node_states = GaugeMetricFamily("dilu_nodes", "GPU nodes, by state", labels=["state"])
    requested = GaugeMetricFamily("dilu_gpu_sm_requested",
                                  "Sum of the SM requests placed on a GPU (at most 1)",
                                  labels=["node", "gpu"])
    limited = GaugeMetricFamily("dilu_gpu_sm_limited",
                                "Sum of the SM limits placed on a GPU (may exceed 1)",
                                labels=["node", "gpu"])
    memory = GaugeMetricFamily("dilu_gpu_memory_allocated_bytes",
                               "GPU memory placement has committed on a GPU", labels=["node", "gpu"])
    counts: Counter[str] = Counter({state: 0 for state in NODE_STATES.values()})
    for view in nodes:
        counts[NODE_STATES.get(view.state, "unspecified")] += 1
        for allocation in view.allocations:
            labels = [view.node.id, allocation.gpu_uuid]
            requested.add_metric(labels, allocation.sm_requested)
            limited.add_metric(labels, allocation.sm_limited)
            memory.add_metric(labels, allocation.memory_allocated_mib * MIB)
    for state, count in sorted(counts.items()):
        node_states.add_metric([state], count)
    return [by_kind, desired, ready, slo, instances, health, failures, node_states, requested,
            limited, memory]


class SchedulerCollector(Collector):
    """Reads the scheduler through its public queries whenever Prometheus scrapes."""

    def __init__(self, functions: Callable[[], list[types_pb2.Function]],
                 nodes: Callable[[], list[types_pb2.NodeView]]) -> None:
        self._functions = functions
        self._nodes = nodes

    def collect(self) -> Iterator[Metric]:
        yield from scheduler_families(self._functions(), self._nodes())
