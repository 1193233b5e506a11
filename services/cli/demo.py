"""`dilu demo` (the README's `make run`): a throw-away local stack on two simulated A100s,
two inference functions and a training job from examples/, the reference `bursty`
request-rate trace replayed through the scheduler's Invoke, a live table built from the
QoS and telemetry on the bus, and a summary. Runs unattended and exits 0 when every
inference function served requests.

The load is the serving simulator's `demo` scenario (services/simulator/scenarios/
demo.yaml): the same traces, scales and seed, and the very same request times, drawn by
the simulator's arrival generator, so that `bench/demo_agreement.py` compares the live
stack and the simulator on identical requests.

Co-scaling is on (the scaler runs the `coscale` policy; `StackOptions.scaler_policy`
"static" turns it off): every scaling decision published on the bus while the trace plays
is printed as it happens (vertical ↑/↓ with the old → new request/limit and the reason,
scale out/in with replicas before → after), and the summary adds the scaler's actions,
the GPU-seconds (each GPU counted while it holds an instance) and the reserved
share-seconds (the requests of every instance, summed over its GPUs), both sampled from
the scheduler's node records twice a second as the serving simulator counts them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import nats
from dilu.events.v1 import events_pb2
from dilu.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2
from nats.aio.msg import Msg

from services.cli.credentials import (
    ClientCredentials,
    StackCredentials,
    connect_operator,
    operator_client,
)
from services.cli.scrape import CounterIncrease, rate_table, scrape
from services.cli.specs import load_spec
from services.cli.tables import status_report
from services.cli.up import StackOptions, running_stack
from services.common.security.identity import service_identity
from services.common.security.tls import TlsFiles
from services.simulator.serving.arrivals import arrivals_by_function
from services.simulator.serving.cli import scenario_path
from services.simulator.serving.scenario import Scenario, load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_SPECS = ("resnet152.yaml", "bert-base.yaml", "training.yaml")


def demo_load(duration_s: float) -> Scenario:
    """The `demo` scenario's load, its trace squeezed into `duration_s`: resnet152 at 10 and
    bert-base at 2 requests per second per unit of the bursty trace (mean ~5.7, peak ~14),
    enough to push both past their guaranteed shares during bursts on a 2-core machine."""
    scenario = load_scenario(scenario_path("demo"))
    functions = tuple(replace(f, trace_span_s=duration_s) for f in scenario.functions)
    return replace(scenario, duration_s=duration_s, functions=functions)


@dataclass
class Outcomes:
    slo_ms: float
    sent: int = 0
    served: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # What the trip through the scheduler adds: client latency minus the worker's own.
    overheads_ms: list[float] = field(default_factory=list)

    def within_slo(self) -> int:
        return sum(1 for latency in self.latencies_ms if latency <= self.slo_ms)


@dataclass
class BusWatch:
    """Latest QoS per instance and every GPU sample, straight from the bus."""

    qos: dict[str, events_pb2.QosReport] = field(default_factory=dict)
    gpus: dict[str, events_pb2.GpuTelemetry] = field(default_factory=dict)
    utilization: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    iterations: list[float] = field(default_factory=list)
    decisions: list[events_pb2.ScalingDecision] = field(default_factory=list)
    print_decisions: bool = True

    async def on_qos(self, msg: Msg) -> None:
        report = events_pb2.QosReport.FromString(msg.data)
        self.qos[report.instance_id] = report
        if report.iterations_per_s:
            self.iterations.append(report.iterations_per_s)

    async def on_decision(self, msg: Msg) -> None:
        decision = events_pb2.ScalingDecision.FromString(msg.data)
        self.decisions.append(decision)
        if self.print_decisions:
            print(decision_line(decision), flush=True)

    def actions(self, source: str = "scaler") -> tuple[int, int]:
        """(vertical, horizontal) decisions `source` made while the trace played."""
        mine = [d for d in self.decisions if d.source == source]
        vertical = sum(1 for d in mine if d.kind in (events_pb2.SCALING_KIND_VERTICAL_UP,
                                                     events_pb2.SCALING_KIND_VERTICAL_DOWN))
        return vertical, len(mine) - vertical

    async def on_telemetry(self, msg: Msg) -> None:
        sample = events_pb2.GpuTelemetry.FromString(msg.data)
        self.gpus[sample.gpu_uuid] = sample
        self.utilization[sample.gpu_uuid].append(sample.utilization)


def decision_line(d: events_pb2.ScalingDecision) -> str:
    """One decision as the live output prints it."""
    who = f"[{d.source or 'manual'}]"
    if d.kind in (events_pb2.SCALING_KIND_VERTICAL_UP, events_pb2.SCALING_KIND_VERTICAL_DOWN):
        arrow = "↑" if d.kind == events_pb2.SCALING_KIND_VERTICAL_UP else "↓"
        before, after = d.quota_before, d.quota_after
        return (f"  {who} {arrow} {d.instance_id}: {before.sm_request:.2f}/{before.sm_limit:.2f}"
                f" → {after.sm_request:.2f}/{after.sm_limit:.2f}  {_short(d.reason)}")
    verb = "scale out" if d.kind == events_pb2.SCALING_KIND_HORIZONTAL_OUT else "scale in"
    return (f"  {who} {verb} {d.function}: {d.replicas_before} → {d.replicas_after}  "
            f"{_short(d.reason)}")


def _short(reason: str, width: int = 110) -> str:
    return reason if len(reason) <= width else reason[:width - 1] + "…"


@dataclass
class UsageMeter:
    """GPU-seconds and reserved share-seconds, integrated from the scheduler's node records
    (each agent's last heartbeat: its instances, their GPUs and live requests)."""

    gpu_s: float = 0.0
    reserved_share_s: float = 0.0
    _last: float | None = None

    def sample(self, nodes: list[types_pb2.NodeView], now: float) -> None:
        held: set[str] = set()
        reserved = 0.0
        for view in nodes:
            for report in view.node.instances:
                if report.state in (types_pb2.INSTANCE_STATE_STOPPED, types_pb2.INSTANCE_STATE_FAILED):
                    continue
                held.update(report.gpu_uuids)
                reserved += report.quota.sm_request * len(report.gpu_uuids)
        if self._last is not None:
            self.gpu_s += len(held) * (now - self._last)
            self.reserved_share_s += reserved * (now - self._last)
        self._last = now


async def _meter(stub: scheduler_pb2_grpc.SchedulerServiceStub, meter: UsageMeter,
                 every_s: float = 0.5) -> None:
    while True:
        nodes = (await stub.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=5)).nodes
        meter.sample(list(nodes), time.monotonic())
        await asyncio.sleep(every_s)


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


async def _drive(stub: scheduler_pb2_grpc.SchedulerServiceStub, function: str,
                 outcomes: Outcomes, times_ns: list[int]) -> None:
    """Open-loop arrivals at the given times (from the start); every request is a task, so
    a slow answer never holds back the next arrival."""
    started = time.monotonic()
    calls: set[asyncio.Task[None]] = set()

    async def call() -> None:
        sent = time.monotonic()
        try:
            answer = await stub.Invoke(scheduler_pb2.InvokeRequest(function=function),
                                       timeout=max(1.0, 10 * outcomes.slo_ms / 1000))
        except grpc.aio.AioRpcError:
            outcomes.failed += 1
            return
        latency_ms = (time.monotonic() - sent) * 1000
        outcomes.served += 1
        outcomes.latencies_ms.append(latency_ms)
        outcomes.overheads_ms.append(latency_ms - answer.worker_latency_ms)

    for at_ns in times_ns:
        delay = started + at_ns / 1e9 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        outcomes.sent += 1
        task = asyncio.create_task(call())
        calls.add(task)
        task.add_done_callback(calls.discard)
    await asyncio.gather(*calls)


def _live_table(elapsed_s: float, functions: list[types_pb2.Function], gpu_names: dict[str, str],
                watch: BusWatch, outcomes: dict[str, Outcomes], load: Scenario) -> str:
    offered = ", ".join(f"{f.name} {f.rate_at(elapsed_s):.0f} req/s" for f in load.functions)
    lines = [f"t={elapsed_s:4.0f}s  offered: {offered}",
             f"  {'FUNCTION':<17}{'INSTANCE':<26}{'GPU':<12}{'SHARE':>6} {'REQ/LIMIT':>10}"
             f"{'RPS':>7}{'P99 MS':>8}{'SLO MS':>8}"]
    for function in functions:
        for instance in function.status.instances:
            if instance.state != types_pb2.INSTANCE_STATE_READY:
                continue
            gpu = ",".join(gpu_names.get(u, u[:8]) for u in instance.gpu_uuids)
            share = next((i.effective_share for t in watch.gpus.values() for i in t.instances
                          if i.instance_id == instance.id), instance.quota.effective_share)
            qos = watch.qos.get(instance.id)
            limits = f"{instance.quota.sm_request:.2f}/{instance.quota.sm_limit:.2f}"
            if function.spec.kind == types_pb2.FUNCTION_KIND_TRAINING:
                rate = f"{qos.iterations_per_s:.1f} it/s" if qos else "-"
                lines.append(f"  {function.spec.name:<17}{instance.id:<26}{gpu:<12}{share:6.2f} "
                             f"{limits:>10}{rate:>15}")
                continue
            rps = f"{qos.rps:.0f}" if qos else "-"
            p99 = f"{qos.p99_ms:.0f}" if qos and qos.requests else "-"
            mark = "" if not qos or not qos.requests else (
                " ok" if qos.p99_ms <= function.spec.slo.latency_ms else " MISS")
            lines.append(f"  {function.spec.name:<17}{instance.id:<26}{gpu:<12}{share:6.2f} "
                         f"{limits:>10}{rps:>7}{p99:>8}{function.spec.slo.latency_ms:>8.0f}{mark}")
    use = "  ".join(f"{gpu_names.get(u, u[:8])} {t.utilization:4.0%}" for u, t in sorted(
        watch.gpus.items(), key=lambda item: gpu_names.get(item[0], item[0])))
    served = sum(o.served for o in outcomes.values())
    lines.append(f"  GPU use: {use}   served so far: {served}")
    return "\n".join(lines)


def _summary(outcomes: dict[str, Outcomes], watch: BusWatch, gpu_names: dict[str, str],
             meter: UsageMeter | None = None) -> str:
    lines = [f"  {'FUNCTION':<12}{'SENT':>7}{'SERVED':>8}{'FAILED':>8}{'WITHIN SLO':>12}"
             f"{'P99 MS':>9}{'SLO MS':>8}"]
    total_sent = total_within = 0
    for name, result in outcomes.items():
        p99 = (statistics.quantiles(result.latencies_ms, n=100)[98]
               if len(result.latencies_ms) >= 2 else float("nan"))
        attainment = result.within_slo() / result.sent if result.sent else 0.0
        total_sent += result.sent
        total_within += result.within_slo()
        lines.append(f"  {name:<12}{result.sent:>7}{result.served:>8}{result.failed:>8}"
                     f"{attainment:>12.1%}{p99:>9.0f}{result.slo_ms:>8.0f}")
    overall = total_within / total_sent if total_sent else 0.0
    lines.append(f"  requests served: {sum(o.served for o in outcomes.values())} of {total_sent}; "
                 f"SLO attainment {overall:.1%} (end-to-end latency at the client, through the "
                 "scheduler)")
    for uuid, samples in sorted(watch.utilization.items(), key=lambda i: gpu_names.get(i[0], i[0])):
        lines.append(f"  mean GPU utilisation {gpu_names.get(uuid, uuid)}: "
                     f"{statistics.fmean(samples):.0%} over {len(samples)} samples")
    all_samples = [u for samples in watch.utilization.values() for u in samples]
    if all_samples:
        lines.append(f"  mean GPU utilisation, all GPUs: {statistics.fmean(all_samples):.0%}")
    if watch.iterations:
        lines.append(f"  training: {statistics.fmean(watch.iterations):.1f} iterations/s on average")
    overheads = [o for result in outcomes.values() for o in result.overheads_ms]
    if len(overheads) >= 2:
        cuts = statistics.quantiles(overheads, n=10)
        lines.append(f"  through the scheduler (client latency - worker latency): median "
                     f"{statistics.median(overheads):.1f} ms, p90 {cuts[8]:.1f} ms")
    vertical, horizontal = watch.actions()
    lines.append(f"  co-scaling actions: {vertical} vertical, {horizontal} horizontal")
    if meter is not None:
        lines.append(f"  GPU-seconds {meter.gpu_s:.0f}, reserved share-seconds "
                     f"{meter.reserved_share_s:.0f}")
    return "\n".join(lines)


# The node agent's counter of served requests, per instance (see services/node_agent/metrics.py).
REQUESTS_METRIC = "dilu_instance_requests_total"


async def _count_requests(metrics: dict[str, str], counted: CounterIncrease,
                          tls: TlsFiles | None = None) -> None:
    """One scrape of the node agent's /metrics into `counted` (`tls`: over HTTPS with that
    certificate). Scraped at every table, so an instance scaled in keeps what it served
    until then."""
    url = metrics.get("node-agent")
    if url:
        counted.observe(await asyncio.to_thread(scrape, url, 5.0, tls))


@dataclass
class DemoResult:
    """What a demo run measured (`bench/demo_agreement.py` compares it with the simulator)."""

    code: int
    outcomes: dict[str, Outcomes] = field(default_factory=dict)
    watch: BusWatch = field(default_factory=BusWatch)
    gpu_names: dict[str, str] = field(default_factory=dict)
    meter: UsageMeter = field(default_factory=UsageMeter)


async def _run(stack_endpoints: dict[str, str], duration_s: float, table_every_s: float,
               metrics: dict[str, str] | None = None,
               credentials: StackCredentials | None = None) -> DemoResult:
    metrics = metrics or {}
    # Secure mode: the operator's token over TLS, its certificate for NATS and /metrics.
    client = operator_client(credentials) if credentials is not None else ClientCredentials()
    async with client.aio_channel(stack_endpoints["scheduler"],
                                  service_identity("scheduler")) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        await _wait_for_node(stub)
        specs = {}
        for spec_file in DEMO_SPECS:
            spec = load_spec(EXAMPLES / spec_file)
            await stub.Deploy(scheduler_pb2.DeployRequest(function=spec), timeout=30)
            specs[spec.name] = spec
            print(f"deployed {spec.name} from examples/{spec_file}")
        await stub.ScaleOut(scheduler_pb2.ScaleOutRequest(
            function="resnet152", count=1, reason="demo: a second replica"), timeout=30)
        await _wait_for_ready(stub, specs)

        _step("a bad spec is refused, naming the field")
        bad = load_spec(EXAMPLES / "bert-base.yaml")
        bad.name, bad.resources.sm_request = "bert-bad", 0.9
        try:
            await stub.Deploy(scheduler_pb2.DeployRequest(function=bad), timeout=30)
            print("unexpected: the bad spec was accepted")
            return DemoResult(1)
        except grpc.aio.AioRpcError as error:
            print(f"{error.code().name}: {error.details()}")

        _step("placed and serving")
        nodes = (await stub.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=10)).nodes
        functions = (await stub.ListFunctions(scheduler_pb2.ListFunctionsRequest(), timeout=10)).functions
        print(status_report(functions, nodes))
        gpu_names = {g.uuid: f"{v.node.id}/gpu{g.index}" for v in nodes for g in v.node.gpus}

        _step(f"replaying the bursty trace for {duration_s:.0f} s (858 s of trace, compressed)")
        watch = BusWatch()
        if credentials is not None:
            bus = await connect_operator(stack_endpoints["nats"], credentials.operator)
        else:
            bus = await nats.connect(stack_endpoints["nats"])
        await bus.subscribe("dilu.qos.>", cb=watch.on_qos)
        await bus.subscribe("dilu.telemetry.gpu.>", cb=watch.on_telemetry)
        await bus.subscribe("dilu.events.scaling.>", cb=watch.on_decision)
        meter = UsageMeter()
        metering = asyncio.create_task(_meter(stub, meter))
        load = demo_load(duration_s)
        arrivals = arrivals_by_function(load)
        outcomes = {f.name: Outcomes(specs[f.name].slo.latency_ms) for f in load.functions}
        tls = credentials.operator if credentials is not None else None
        counted = CounterIncrease(REQUESTS_METRIC)
        await _count_requests(metrics, counted, tls)
        started = time.monotonic()
        drivers = asyncio.gather(*(_drive(stub, name, outcomes[name], arrivals[name].tolist())
                                   for name in outcomes))
        while not drivers.done():
            await asyncio.wait([drivers], timeout=table_every_s)
            if drivers.done():
                break
            functions = (await stub.ListFunctions(scheduler_pb2.ListFunctionsRequest(),
                                                  timeout=10)).functions
            print(_live_table(time.monotonic() - started, list(functions), gpu_names, watch,
                              outcomes, load), flush=True)
            await _count_requests(metrics, counted, tls)
        await drivers
        metering.cancel()
        await bus.close()

        _step("summary")
        print(_summary(outcomes, watch, gpu_names, meter))
        if metrics.get("node-agent"):
            # The agent counts a request in the QoS window it finished in: wait for the
            # windows that hold the last ones to close before reading the counters.
            await asyncio.sleep(2.5)
            await _count_requests(metrics, counted, tls)
            table, _ = rate_table({n: o.sent for n, o in outcomes.items()}, {},
                                  counted.by_label(), duration_s)
            _step(f"request rates averaged over the demo: offered vs {metrics['node-agent']}")
            print(table)
        code = 0 if all(o.served for o in outcomes.values()) else 1
        return DemoResult(code, outcomes, watch, gpu_names, meter)


def replay_demo(options: StackOptions, duration_s: float = 60.0,
                table_every_s: float = 5.0) -> DemoResult:
    with running_stack(options) as stack:
        _step("local stack")
        metrics = stack.metrics_endpoints()
        for name, address in stack.endpoints().items():
            print(f"  {name:<11} {address:<22} {metrics.get(name, '')}".rstrip())
        print("  (curl any metrics URL while the demo runs to see its Prometheus figures)")
        if stack.credentials is not None:
            print("  secure: TLS and authentication everywhere; the demo calls as the operator "
                  f"(credentials in {stack.credentials.directory})")
        result = asyncio.run(_run(stack.endpoints(), duration_s, table_every_s, metrics,
                                  stack.credentials))
        _step("done: stopping the stack")
    return result


def run_demo(options: StackOptions, duration_s: float = 60.0, table_every_s: float = 5.0) -> int:
    return replay_demo(options, duration_s, table_every_s).code


async def _wait_for_node(stub: scheduler_pb2_grpc.SchedulerServiceStub, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await stub.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=5)).nodes:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("no node agent registered with the scheduler")


async def _wait_for_ready(stub: scheduler_pb2_grpc.SchedulerServiceStub,
                          specs: dict[str, types_pb2.FunctionSpec], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        functions = (await stub.ListFunctions(scheduler_pb2.ListFunctionsRequest(), timeout=10)).functions
        if all(f.status.ready_replicas >= f.status.desired_replicas for f in functions
               if f.spec.name in specs):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the demo's functions did not become ready; see the logs in the state dir")
