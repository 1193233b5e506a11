"""One live stack watched the way operators watch it: every service exports traces over
OTLP/gRPC to a receiver speaking OpenTelemetry's TraceService (what Jaeger's port 4317
speaks), and a real Prometheus server (Debian's package, `make prometheus`) scrapes every
service's /metrics. The stack deploys a function, serves requests and is scaled out by
hand once; the tests then read what the receiver and Prometheus got."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from dilu.v1 import scheduler_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from services.cli.stack import ManagedProcess, NatsServer, ServiceLauncher, free_port
from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster, inference_spec

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dilu.json"
FUNCTION = "observed"
INVOCATIONS = 30
SCRAPE_INTERVAL = "500ms"


# ---- an OTLP receiver ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(ReceivedSpan(
                        span.name, span.trace_id.hex(), span.span_id.hex(),
                        span.parent_span_id.hex(), span.kind,
                        {a.key: _value(a.value) for a in span.attributes}, resource))
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in list(self.spans) if s.name == name]


# ---- a Prometheus server ------------------------------------------------------------


def prometheus_binaries() -> tuple[str, str] | None:
    """prometheus and promtool: `make prometheus` unpacks them into the venv."""
    unpacked = Path(sys.executable).parent.parent / "prometheus" / "usr" / "bin"
    for where in (unpacked, None):
        found = [shutil.which(tool, path=str(where) if where else None)
                 for tool in ("prometheus", "promtool")]
        if found[0] and found[1]:
            return found[0], found[1]
    return None


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; raises AssertionError when Prometheus refuses the expression."""
        params = urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=5) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr!r}: {error.read().decode()}") from error
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_prometheus(binary: str, tmp: Path, targets: dict[str, str]) -> Prometheus:
    config = {"global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [address]}]}
                                 for job, address in targets.items()]}
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log_path = tmp / "logs" / "prometheus.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Prometheus(f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    assert_eventually(ready, timeout=30, message="prometheus ready")
    return server


# ---- the stack ----------------------------------------------------------------------


@dataclass
class Observed:
    cluster: Cluster
    receiver: TraceReceiver
    prometheus: Prometheus | None
    promtool: str | None
    services: dict[str, ManagedProcess] = field(default_factory=dict)
    deploy_trace: str = ""
    invoke_trace: str = ""
    invoke_parent: str = ""
    instance_id: str = ""


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observed")
    receiver = TraceReceiver()
    otlp = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, otlp)
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    nats = NatsServer(tmp / "nats").start()
    launcher = ServiceLauncher(tmp, nats.url, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s instead of 5 s
    })
    cluster = Cluster(tmp, nats, launcher)
    binaries = prometheus_binaries()
    stack = Observed(cluster, receiver, None, binaries[1] if binaries else None)
    try:
        stack.services["scheduler"] = cluster.start_scheduler()
        stack.services["node-agent"] = cluster.start_agent("n1")
        stack.services["profiler"] = cluster.start_profiler()
        stack.services["scaler"] = cluster.start_service("scaler")
        if binaries is not None:
            stack.prometheus = start_prometheus(
                binaries[0], tmp, {name: p.metrics_address for name, p in stack.services.items()})
        _exercise(stack)
        yield stack
    finally:
        cluster.close()
        if stack.prometheus is not None:
            stack.prometheus.stop()
        otlp.stop(0)
        for log in sorted((tmp / "logs").glob("*.log")):
            print(f"----- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def _exercise(stack: Observed) -> None:
    """One Deploy, requests (the first with a caller's trace context), a manual scale-out
    and one refused call, so every service has something to show."""
    cluster = stack.cluster
    assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
    cluster.deploy(inference_spec(FUNCTION, max_replicas=2))
    assert_eventually(lambda: cluster.function(FUNCTION).status.ready_replicas == 1,
                      timeout=30, message="worker ready")
    stack.instance_id = cluster.function(FUNCTION).status.instances[0].id
    deploys = assert_eventually(lambda: stack.receiver.named("/dilu.v1.SchedulerService/Deploy"),
                                message="Deploy span exported")
    stack.deploy_trace = deploys[0].trace_id
    stack.invoke_trace, stack.invoke_parent = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{stack.invoke_trace}-{stack.invoke_parent}-01"
    cluster.sched.Invoke(scheduler_pb2.InvokeRequest(function=FUNCTION), timeout=10,
                         metadata=(("traceparent", traceparent),))
    for _ in range(INVOCATIONS - 1):
        cluster.sched.Invoke(scheduler_pb2.InvokeRequest(function=FUNCTION), timeout=10)
    cluster.sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function=FUNCTION, count=1), timeout=10)
    with pytest.raises(grpc.RpcError):
        cluster.function("no-such-function")


# ---- traces -------------------------------------------------------------------------


def _check_tree(spans: list[ReceivedSpan], root_parent: str = "") -> ReceivedSpan:
    """One root whose parent is `root_parent` (a caller outside the trace, or none), and
    every other span's parent a span of the same trace. Returns the root."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id not in ids]
    assert len(roots) == 1, [(s.name, s.service, s.parent_span_id) for s in roots]
    assert roots[0].parent_span_id == root_parent
    assert len(ids) == len(spans), "span ids repeat"
    return roots[0]


def _child(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str) -> ReceivedSpan:
    children = [s for s in spans if s.parent_span_id == parent.span_id and s.name == name]
    assert len(children) == 1, (name, [(s.name, s.parent_span_id) for s in spans])
    return children[0]


def _check_resource(span: ReceivedSpan, service: str) -> None:
    resource = span.resource
    assert resource["service.name"] == service
    assert resource["service.namespace"] == "dilu"
    assert resource["service.version"]
    assert resource["telemetry.sdk.language"] == "python"
    assert resource["host.name"]
    assert resource["service.instance.id"] == f"{resource['host.name']}/{resource['process.pid']}"


def test_a_deploy_is_one_trace_from_the_scheduler_through_the_agent_into_the_worker(
        observed: Observed):
    def whole() -> list[ReceivedSpan]:
        spans = observed.receiver.trace(observed.deploy_trace)
        assert {s.name for s in spans} >= {
            "/dilu.v1.SchedulerService/Deploy", "/dilu.v1.NodeAgentService/StartInstance",
            "worker.startup", f"receive dilu.events.instance.n1.{FUNCTION}"}
        return spans

    spans = assert_eventually(whole, message="the Deploy trace is complete")
    deploy = _check_tree(spans)
    assert deploy.name == "/dilu.v1.SchedulerService/Deploy"
    start = _child(spans, deploy, "/dilu.v1.NodeAgentService/StartInstance")
    startup = _child(spans, start, "worker.startup")
    # The agent's instance events (starting, ready) reach the scheduler within the trace.
    events = [s for s in spans if s.name == f"receive dilu.events.instance.n1.{FUNCTION}"]
    assert events and all(e.parent_span_id == start.span_id for e in events)

    assert {s.service for s in spans} == {"dilu-scheduler", "dilu-node-agent", "dilu-worker"}
    _check_resource(deploy, "dilu-scheduler")
    _check_resource(start, "dilu-node-agent")
    _check_resource(startup, "dilu-worker")
    assert start.resource["dilu.node.id"] == "n1"
    assert startup.resource["dilu.instance.id"] == observed.instance_id
    assert startup.resource["dilu.function"] == FUNCTION
    # Three processes, three identities.
    assert len({s.resource["process.pid"] for s in (deploy, start, startup)}) == 3
    assert observed.services["scheduler"].pid == deploy.resource["process.pid"]
    assert observed.services["node-agent"].pid == start.resource["process.pid"]


def test_an_invoke_is_one_trace_from_the_caller_into_the_workers_queue_and_batch(
        observed: Observed):
    def whole() -> list[ReceivedSpan]:
        spans = observed.receiver.trace(observed.invoke_trace)
        assert {s.name for s in spans} >= {
            "/dilu.v1.SchedulerService/Invoke", "/dilu.v1.WorkerService/Infer",
            "worker.queued", "worker.batch"}
        return spans

    spans = assert_eventually(whole, message="the Invoke trace is complete")
    invoke = _check_tree(spans, root_parent=observed.invoke_parent)
    assert invoke.name == "/dilu.v1.SchedulerService/Invoke"
    assert invoke.kind == 2  # SPAN_KIND_SERVER
    infer = _child(spans, invoke, "/dilu.v1.WorkerService/Infer")
    queued = _child(spans, infer, "worker.queued")
    batch = _child(spans, infer, "worker.batch")
    assert batch.attributes["dilu.batch.size"] >= 1
    assert batch.attributes["dilu.batch.id"] >= 1
    assert len(spans) == 4, [s.name for s in spans]
    assert {s.service for s in spans} == {"dilu-scheduler", "dilu-worker"}
    _check_resource(invoke, "dilu-scheduler")
    for span in (infer, queued, batch):
        _check_resource(span, "dilu-worker")
        assert span.resource["dilu.instance.id"] == observed.instance_id


# ---- metrics ------------------------------------------------------------------------

# A metric each service alone exports, and what its value must satisfy.
PER_SERVICE = {
    "scheduler": (f'dilu_instances{{function="{FUNCTION}",state="ready"}}', lambda v: v >= 1),
    "node-agent": (f'sum(dilu_instance_requests_total{{function="{FUNCTION}"}})',
                   lambda v: v == INVOCATIONS),
    "profiler": ('sum(dilu_profiling_runs_total)', lambda v: v == 0),
    "scaler": (f'dilu_scaling_actions_total{{function="{FUNCTION}",kind="horizontal-out",'
               f'source="manual"}}', lambda v: v == 1),
}


def _needs_prometheus(observed: Observed) -> Prometheus:
    if observed.prometheus is None:
        pytest.skip("no prometheus binary: run `make prometheus` (CI does)")
    return observed.prometheus


def test_prometheus_scrapes_every_service_and_reads_its_own_metric(observed: Observed):
    prometheus = _needs_prometheus(observed)
    for job, (expr, check) in PER_SERVICE.items():
        def scraped(job: str = job, expr: str = expr, check: Any = check) -> bool:
            up = prometheus.query(f'up{{job="{job}"}}')
            assert up and up[0]["value"][1] == "1", (job, up)
            result = prometheus.query(expr)
            assert result, f"{job}: {expr} has no series yet"
            value = float(result[0]["value"][1])
            assert check(value), f"{job}: {expr} = {value}"
            return True

        assert_eventually(scraped, timeout=15, message=f"{job} scraped")
    # The RPC figures of one service, by method and code, through Prometheus too.
    handled = prometheus.query('sum by (grpc_method, grpc_code) '
                               '(dilu_grpc_server_handled_total{job="scheduler"})')
    by_method = {(r["metric"]["grpc_method"], r["metric"]["grpc_code"]): float(r["value"][1])
                 for r in handled}
    assert by_method[("Invoke", "OK")] == INVOCATIONS
    assert by_method[("GetFunction", "NOT_FOUND")] == 1


# Panels that show nothing in this stack, and why.
EMPTY_HERE = {"Training iterations per second": "no training job runs here"}


def _grafana_to_promql(expr: str) -> str:
    for variable, value in (("$__rate_interval", "5s"), ("$__interval", "5s"),
                            ("$__range", "1m"), ("$function", ".*"), ("$node", ".*")):
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


def test_every_dashboard_query_is_valid_promql_with_data(observed: Observed):
    prometheus = _needs_prometheus(observed)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(panel["title"], target["expr"]) for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    queries += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    queries += [(v["name"], re.sub(r"label_values\((\w+), \w+\)", r"\1", v["query"]["query"]))
                for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for title, expr in queries:
        def answered(title: str = title, expr: str = expr) -> bool:
            result = prometheus.query(_grafana_to_promql(expr))
            assert result or title in EMPTY_HERE, f"{title}: {expr} returned nothing"
            return True

        assert_eventually(answered, timeout=10, message=title)


def test_every_service_exposition_passes_promtool(observed: Observed):
    if observed.promtool is None:
        pytest.skip("no promtool: run `make prometheus` (CI does)")
    for name, process in observed.services.items():
        with urllib.request.urlopen(f"http://{process.metrics_address}/metrics", timeout=5) as r:
            exposition = r.read()
        lint = subprocess.run([observed.promtool, "check", "metrics"], input=exposition,
                              capture_output=True, env={**os.environ, "NO_COLOR": "1"})
        assert lint.returncode == 0, f"{name}: {lint.stdout.decode()}{lint.stderr.decode()}"
