"""Prometheus figures of every service, in process: the endpoint, the RPC interceptor and
each service's families built from its state."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from dilu.events.v1 import events_pb2
from dilu.v1 import scaler_pb2, scaler_pb2_grpc, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from services.common.errors import NotFound
from services.common.grpc_server import GrpcServer
from services.common.metrics import REGISTRY, MetricsServer
from services.node_agent.metrics import NodeAgentCollector
from services.node_agent.pages import Stats
from services.profiler.metrics import ProfilingMetrics
from services.scaler.metrics import ReplayCursor, ScalingMetrics
from services.scaler.observer import QosObserver
from services.scaler.service import ScalerServicer
from services.scheduler.metrics import SchedulerCollector

S = types_pb2
MIB = 1 << 20


async def _get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# ---- the endpoint -------------------------------------------------------------------


async def test_the_endpoint_serves_the_registry_on_a_free_port():
    registry = CollectorRegistry()
    Counter("dilu_test_things", "things", registry=registry).inc(3)
    server = MetricsServer("127.0.0.1", 0, registry)
    address = await server.start()
    try:
        assert server.port and address == f"127.0.0.1:{server.port}"
        answer = await _get(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"text/plain" in head
        samples = {s.name: s.value for f in text_string_to_metric_families(body.decode())
                   for s in f.samples}
        assert samples["dilu_test_things_total"] == 3
        missing = await _get(server.port, b"GET /nothing HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404")
        refused = await _get(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 405")
    finally:
        await server.stop()


async def test_the_endpoint_speaks_openmetrics_to_who_asks():
    registry = CollectorRegistry()
    Counter("dilu_test_things", "things", registry=registry).inc()
    server = MetricsServer("127.0.0.1", 0, registry)
    await server.start()
    try:
        answer = await _get(server.port, b"GET /metrics HTTP/1.1\r\n"
                            b"Accept: application/openmetrics-text; version=1.0.0\r\n\r\n")
        assert b"application/openmetrics-text" in answer
        assert answer.rstrip().endswith(b"# EOF")
    finally:
        await server.stop()


async def test_port_minus_one_serves_nothing():
    server = MetricsServer("127.0.0.1", -1)
    assert await server.start() == ""
    assert not server.enabled and server.port == 0
    await server.stop()


# ---- RPCs ---------------------------------------------------------------------------


class _Scaler(ScalerServicer):
    async def ListDecisions(self, request, context):  # type: ignore[no-untyped-def]
        if request.function == "missing":
            raise NotFound("no such function")
        return await super().ListDecisions(request, context)


async def test_every_rpc_is_counted_and_timed_by_method_and_final_code():
    server = GrpcServer("127.0.0.1", 0)
    server.add(scaler_pb2_grpc.add_ScalerServiceServicer_to_server, _Scaler(QosObserver()),
               "dilu.v1.ScalerService")
    await server.start()
    labels = {"grpc_service": "dilu.v1.ScalerService", "grpc_method": "ListDecisions"}

    def count(code: str) -> float:
        return _value(REGISTRY, "dilu_grpc_server_handled_total", grpc_code=code, **labels) or 0.0

    before = {code: count(code) for code in ("OK", "NOT_FOUND", "INVALID_ARGUMENT")}
    timed_before = _value(REGISTRY, "dilu_grpc_server_handling_seconds_count",
                          grpc_code="OK", **labels) or 0.0
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = scaler_pb2_grpc.ScalerServiceStub(channel)
            await stub.ListDecisions(scaler_pb2.ListDecisionsRequest())
            await stub.ListDecisions(scaler_pb2.ListDecisionsRequest(function="f"))
            for request in (scaler_pb2.ListDecisionsRequest(function="missing"),
                            scaler_pb2.ListDecisionsRequest(limit=-1)):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.ListDecisions(request)
    finally:
        await server.stop(0.5)
    assert count("OK") - before["OK"] == 2
    assert count("NOT_FOUND") - before["NOT_FOUND"] == 1
    assert count("INVALID_ARGUMENT") - before["INVALID_ARGUMENT"] == 1
    timed = _value(REGISTRY, "dilu_grpc_server_handling_seconds_count", grpc_code="OK", **labels)
    assert timed is not None and timed - timed_before == 2


# ---- the scheduler ------------------------------------------------------------------


def _function(name: str, kind: int, states: list[int], slo_ms: float = 100) -> types_pb2.Function:
    function = S.Function(spec=S.FunctionSpec(name=name, kind=kind, slo=S.Slo(latency_ms=slo_ms)))  # type: ignore[arg-type]
    function.status.desired_replicas = len(states)
    function.status.state = S.FUNCTION_STATE_OK
    function.status.ready_replicas = states.count(S.INSTANCE_STATE_READY)
    for i, state in enumerate(states):
        function.status.instances.add(id=f"{name}-{i}", function=name, state=state)  # type: ignore[arg-type]
    return function


def test_the_scheduler_exports_functions_instances_nodes_and_allocations():
    functions = [
        _function("bert", S.FUNCTION_KIND_INFERENCE,
                  [S.INSTANCE_STATE_READY, S.INSTANCE_STATE_READY, S.INSTANCE_STATE_PENDING]),
        _function("train", S.FUNCTION_KIND_TRAINING, [S.INSTANCE_STATE_STARTING], slo_ms=0),
    ]
    view = S.NodeView(node=S.Node(id="n1"), state=S.NODE_STATE_READY)
    view.allocations.add(gpu_uuid="GPU-1", sm_requested=0.5, sm_limited=1.25,
                         memory_allocated_mib=2048)
    nodes = [view, S.NodeView(node=S.Node(id="n2"), state=S.NODE_STATE_LOST)]
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(lambda: functions, lambda: nodes))

    assert _value(registry, "dilu_functions", kind="inference") == 1
    assert _value(registry, "dilu_functions", kind="training") == 1
    assert _value(registry, "dilu_functions", kind="llm-inference") == 0
    assert _value(registry, "dilu_instances", function="bert", state="ready") == 2
    assert _value(registry, "dilu_instances", function="bert", state="pending") == 1
    assert _value(registry, "dilu_instances", function="bert", state="failed") == 0
    assert _value(registry, "dilu_function_desired_replicas", function="bert") == 3
    assert _value(registry, "dilu_function_ready_replicas", function="bert") == 2
    assert _value(registry, "dilu_function_slo_latency_seconds", function="bert") == 0.1
    assert _value(registry, "dilu_function_state", function="bert", state="ok") == 1
    assert _value(registry, "dilu_function_state", function="bert", state="degraded") == 0
    assert _value(registry, "dilu_function_consecutive_failures", function="bert") == 0
    assert _value(registry, "dilu_nodes", state="ready") == 1
    assert _value(registry, "dilu_nodes", state="lost") == 1
    assert _value(registry, "dilu_nodes", state="unconfirmed") == 0
    assert _value(registry, "dilu_gpu_sm_requested", node="n1", gpu="GPU-1") == 0.5
    assert _value(registry, "dilu_gpu_sm_limited", node="n1", gpu="GPU-1") == 1.25
    assert _value(registry, "dilu_gpu_memory_allocated_bytes", node="n1", gpu="GPU-1") == 2048 * MIB


def test_scheduler_series_follow_its_state_at_each_scrape():
    functions = [_function("bert", S.FUNCTION_KIND_INFERENCE, [S.INSTANCE_STATE_READY])]
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(lambda: functions, list))
    assert _value(registry, "dilu_instances", function="bert", state="ready") == 1
    functions.clear()
    assert _value(registry, "dilu_instances", function="bert", state="ready") is None
    assert _value(registry, "dilu_functions", kind="inference") == 0


# ---- the node agent -----------------------------------------------------------------


def _node(*instances: tuple[str, str, int, float]) -> types_pb2.Node:
    node = S.Node(id="n1")
    node.gpus.add(uuid="GPU-1", index=0, model="A100", memory_total_mib=40960,
                  memory_used_mib=5000, utilization=0.75)
    for instance_id, function, state, share in instances:
        node.instances.add(instance_id=instance_id, function=function, state=state,  # type: ignore[arg-type]
                           quota=S.Quota(sm_request=0.2, sm_limit=0.6, effective_share=share,
                                         memory_limit_mib=4096))
    return node


def _page(requests: int, violations: int) -> Stats:
    return Stats(busy_ns=0, launches=0, throttled_ns=0, memory_used_bytes=0, memory_peak_bytes=0,
                 requests=requests, violations=violations, iterations=0, batches=0,
                 queue_length=0, pid=1, histogram=(0,) * 128)


def _qos(instance_id: str, requests: int, violations: int, p99_ms: float = 40.0) -> events_pb2.QosReport:
    return events_pb2.QosReport(function="bert", instance_id=instance_id, requests=requests,
                                rps=requests / 1.0, p99_ms=p99_ms, slo_ms=100,
                                violations=violations, queue_length=3, window_s=1.0)


def test_the_agent_exports_gpus_and_each_instances_quota_and_share():
    node = _node(("bert-1", "bert", S.INSTANCE_STATE_READY, 0.45),
                 ("bert-2", "bert", S.INSTANCE_STATE_STARTING, 0.2))
    registry = CollectorRegistry()
    registry.register(NodeAgentCollector(lambda: node))
    gpu = {"node": "n1", "gpu": "GPU-1", "gpu_index": "0", "model": "A100"}
    assert _value(registry, "dilu_gpu_utilization", **gpu) == 0.75
    assert _value(registry, "dilu_gpu_memory_used_bytes", **gpu) == 5000 * MIB
    assert _value(registry, "dilu_gpu_memory_total_bytes", **gpu) == 40960 * MIB
    one = {"node": "n1", "function": "bert", "instance": "bert-1"}
    assert _value(registry, "dilu_instance_sm_request", **one) == 0.2
    assert _value(registry, "dilu_instance_sm_limit", **one) == 0.6
    assert _value(registry, "dilu_instance_effective_share", **one) == 0.45
    assert _value(registry, "dilu_instance_memory_limit_bytes", **one) == 4096 * MIB
    assert _value(registry, "dilu_node_instances", node="n1", state="ready") == 1
    assert _value(registry, "dilu_node_instances", node="n1", state="starting") == 1
    assert _value(registry, "dilu_node_instances", node="n1", state="failed") == 0
    # No QoS report yet: no QoS series rather than made-up zeros.
    assert _value(registry, "dilu_instance_requests_total", **one) is None


def test_counters_come_from_the_stats_pages_and_gauges_from_the_last_qos_window():
    node = _node(("bert-1", "bert", S.INSTANCE_STATE_READY, 0.45))
    pages = {"bert-1": _page(requests=30, violations=5)}
    collector = NodeAgentCollector(lambda: node, lambda: pages)
    registry = CollectorRegistry()
    registry.register(collector)
    one = {"node": "n1", "function": "bert", "instance": "bert-1"}
    # Counted from the page even before the first QoS window closed.
    assert _value(registry, "dilu_instance_requests_total", **one) == 30
    assert _value(registry, "dilu_instance_slo_violations_total", **one) == 5
    assert _value(registry, "dilu_instance_requests_per_second", **one) is None
    collector.record_qos(_qos("bert-1", requests=10, violations=0, p99_ms=30))
    collector.record_qos(_qos("bert-1", requests=20, violations=5, p99_ms=120))
    assert _value(registry, "dilu_instance_requests_per_second", **one) == 20
    assert _value(registry, "dilu_instance_latency_p99_seconds", **one) == pytest.approx(0.12)
    assert _value(registry, "dilu_instance_slo_attainment", **one) == 0.75
    assert _value(registry, "dilu_instance_slo_latency_seconds", **one) == 0.1
    assert _value(registry, "dilu_instance_queue_length", **one) == 3
    collector.record_qos(_qos("bert-1", requests=0, violations=0))
    # An idle window has no attainment to report (0 of 0 is not 100 %).
    assert _value(registry, "dilu_instance_slo_attainment", **one) is None
    pages["bert-1"] = _page(requests=31, violations=5)
    assert _value(registry, "dilu_instance_requests_total", **one) == 31


def test_an_instance_that_left_the_node_takes_its_series_with_it():
    node = _node(("bert-1", "bert", S.INSTANCE_STATE_READY, 0.45))
    pages = {"bert-1": _page(requests=10, violations=0)}
    collector = NodeAgentCollector(lambda: node, lambda: pages)
    registry = CollectorRegistry()
    registry.register(collector)
    collector.record_qos(_qos("bert-1", requests=10, violations=0))
    one = {"node": "n1", "function": "bert", "instance": "bert-1"}
    assert _value(registry, "dilu_instance_requests_total", **one) == 10
    del node.instances[:]
    pages.clear()
    assert _value(registry, "dilu_instance_requests_total", **one) is None
    assert _value(registry, "dilu_instance_requests_per_second", **one) is None
    assert _value(registry, "dilu_instance_effective_share", **one) is None


# ---- the scaler and the profiler ----------------------------------------------------


def _decision(function: str, kind: int, source: str, at_s: int) -> events_pb2.ScalingDecision:
    return events_pb2.ScalingDecision(function=function, kind=kind, source=source,  # type: ignore[arg-type]
                                      at=Timestamp(seconds=at_s))


def test_scaling_actions_are_counted_by_kind_and_source_but_history_is_not():
    registry = CollectorRegistry()
    metrics = ScalingMetrics(registry)
    cursor = ReplayCursor(history=2)
    out, scale_in = events_pb2.SCALING_KIND_HORIZONTAL_OUT, events_pb2.SCALING_KIND_HORIZONTAL_IN
    for decision in (_decision("bert", out, "manual", 100), _decision("bert", out, "manual", 200),
                     _decision("bert", out, "manual", 300), _decision("bert", scale_in, "scaler", 400)):
        metrics.record(decision, replayed=cursor.next_is_replayed())
    manual = {"function": "bert", "kind": "horizontal-out", "source": "manual"}
    assert _value(registry, "dilu_scaling_actions_total", **manual) == 1
    assert _value(registry, "dilu_scaling_actions_total", function="bert", kind="horizontal-in",
                  source="scaler") == 1
    assert _value(registry, "dilu_scaling_last_action_timestamp_seconds", **manual) == 300
    # A late replayed decision never moves the timestamp back.
    metrics.record(_decision("bert", out, "manual", 150), replayed=True)
    assert _value(registry, "dilu_scaling_last_action_timestamp_seconds", **manual) == 300


def test_profiling_runs_are_zero_until_a_run_and_then_counted_by_outcome():
    registry = CollectorRegistry()
    metrics = ProfilingMetrics(registry)
    assert _value(registry, "dilu_profiling_runs_total", outcome="ok") == 0
    assert _value(registry, "dilu_profiling_runs_total", outcome="failed") == 0
    assert _value(registry, "dilu_profiling_duration_seconds_count") == 0
    with metrics.run():
        pass
    with pytest.raises(RuntimeError), metrics.run():
        raise RuntimeError("search failed")
    assert _value(registry, "dilu_profiling_runs_total", outcome="ok") == 1
    assert _value(registry, "dilu_profiling_runs_total", outcome="failed") == 1
    assert _value(registry, "dilu_profiling_duration_seconds_count") == 2
