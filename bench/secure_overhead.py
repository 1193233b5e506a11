"""What secure mode costs `Invoke`: latency (p50, p99) and throughput with TLS and
authentication off and on, side by side in one run, at saturation and at half of it.

Starts two local stacks on free ports, one insecure and one secure (`dilu up --secure`:
TLS on every hop, the bearer token checked on every call, mutual TLS from the scheduler to
its workers), and deploys the same function on each: sim resnet152, two replicas on the two
simulated A100s, batches of up to 32 (the table's ~990 requests/s per GPU), so that the
request path — client, scheduler, workers, all on this machine's CPUs — is what saturates,
not the simulated GPUs. Phases alternate off, on, on, off (so that drift of a shared
machine falls on both alike) and each mode's figures are the mean of its two:

- saturation: `--concurrency` requests in flight, closed loop, for `--seconds`;
- half: an open loop at half the lower of the two saturated throughputs, the same rate
  for both modes.

The client is one asyncio process; its own TLS and token cost is part of what is measured.

    .venv/bin/python bench/secure_overhead.py [--seconds 10] [--concurrency 64] [--json FILE]

Target: throughput at saturation with TLS and authentication at least 90 % of without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen" / "python")]

from dilu.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2  # noqa: E402

from services.cli.credentials import ClientCredentials, operator_client  # noqa: E402
from services.cli.up import RunningStack, StackOptions, running_stack  # noqa: E402
from services.common.config import DEFAULT_METRICS_PORTS, DEFAULT_PEER_PORTS  # noqa: E402
from services.common.security.identity import SCHEDULER_IDENTITY  # noqa: E402

SPEC = types_pb2.FunctionSpec(
    name="bench", kind=types_pb2.FUNCTION_KIND_INFERENCE, runtime=types_pb2.RUNTIME_SIM,
    model="resnet152", slo=types_pb2.Slo(latency_ms=100), max_batch=32,
    resources=types_pb2.Resources(sm_request=1.0, sm_limit=1.0, memory_mib=20_000),
    replicas=types_pb2.Replicas(min=2, max=2))
TARGET_RATIO = 0.90


@dataclass
class Phase:
    mode: str  # "off" or "on"
    load: str  # "saturation" or "half"
    offered_rps: float
    served_rps: float
    p50_ms: float
    p99_ms: float
    failed: int


def _stack(state_dir: Path, secure: bool) -> StackOptions:
    return StackOptions(state_dir=state_dir, nats_port=0, scheduler_port=0, node_agent_port=0,
                        profiler_port=0, scaler_port=0, secure=secure,
                        metrics_ports=dict.fromkeys(DEFAULT_METRICS_PORTS, -1),
                        peer_ports=dict.fromkeys(DEFAULT_PEER_PORTS, 0))


def _client(stack: RunningStack) -> ClientCredentials:
    return operator_client(stack.credentials) if stack.credentials is not None else ClientCredentials()


async def _deploy(stack: RunningStack) -> None:
    async with _client(stack).aio_channel(stack.services["scheduler"].address,
                                          SCHEDULER_IDENTITY) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        deadline = time.monotonic() + 30
        while not (await stub.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=5)).nodes:
            if time.monotonic() > deadline:
                raise RuntimeError("no node registered")
            await asyncio.sleep(0.2)
        await stub.Deploy(scheduler_pb2.DeployRequest(function=SPEC), timeout=30)
        while (await stub.GetFunction(scheduler_pb2.GetFunctionRequest(name="bench"),
                                      timeout=5)).function.status.ready_replicas < 2:
            if time.monotonic() > deadline + 60:
                raise RuntimeError("bench not ready")
            await asyncio.sleep(0.2)


def _quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def _phase(stack: RunningStack, mode: str, seconds: float, concurrency: int,
                 rate: float | None) -> Phase:
    """Closed loop with `concurrency` in flight (rate None), or an open loop at `rate`."""
    latencies: list[float] = []
    failed = 0
    async with _client(stack).aio_channel(stack.services["scheduler"].address,
                                          SCHEDULER_IDENTITY) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        request = scheduler_pb2.InvokeRequest(function="bench")
        for _ in range(20):  # warm: connections, TLS sessions, the workers' first batches
            await stub.Invoke(request, timeout=30)
        started = time.monotonic()
        until = started + seconds

        async def one() -> None:
            nonlocal failed
            sent = time.perf_counter()
            try:
                await stub.Invoke(request, timeout=30)
            except grpc.aio.AioRpcError:
                failed += 1
                return
            latencies.append((time.perf_counter() - sent) * 1000)

        if rate is None:
            async def loop() -> None:
                while time.monotonic() < until:
                    await one()

            await asyncio.gather(*(loop() for _ in range(concurrency)))
        else:
            calls = set()
            sent = 0
            while (now := time.monotonic()) < until:
                due = started + sent / rate
                if due > now:
                    await asyncio.sleep(due - now)
                task = asyncio.ensure_future(one())
                calls.add(task)
                task.add_done_callback(calls.discard)
                sent += 1
            await asyncio.gather(*calls)
        elapsed = time.monotonic() - started
    return Phase(mode, "saturation" if rate is None else "half", rate or 0.0,
                 len(latencies) / elapsed, _quantile(latencies, 0.5), _quantile(latencies, 0.99),
                 failed)


def _mean(phases: list[Phase]) -> Phase:
    first = phases[0]
    return Phase(first.mode, first.load, first.offered_rps,
                 statistics.fmean(p.served_rps for p in phases),
                 statistics.fmean(p.p50_ms for p in phases),
                 statistics.fmean(p.p99_ms for p in phases), sum(p.failed for p in phases))


async def _measure(stacks: dict[str, RunningStack], seconds: float, concurrency: int) -> list[Phase]:
    for stack in stacks.values():
        await _deploy(stack)
    order = ("off", "on", "on", "off")
    saturated = [await _phase(stacks[m], m, seconds, concurrency, None) for m in order]
    sat = {m: _mean([p for p in saturated if p.mode == m]) for m in ("off", "on")}
    rate = 0.5 * min(p.served_rps for p in sat.values())
    half = [await _phase(stacks[m], m, seconds, concurrency, rate) for m in order]
    halves = {m: _mean([p for p in half if p.mode == m]) for m in ("off", "on")}
    return [sat["off"], sat["on"], halves["off"], halves["on"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="requests in flight at saturation")
    parser.add_argument("--json", help="write the figures here as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dilu-secure-bench-") as tmp, ExitStack() as stacks:
        running = {mode: stacks.enter_context(running_stack(_stack(Path(tmp) / mode, mode == "on")))
                   for mode in ("off", "on")}
        results = asyncio.run(_measure(running, args.seconds, args.concurrency))
    print(f"Invoke through the scheduler to two sim resnet152 workers (batches up to 32), "
          f"{args.seconds:g} s per phase, phases off/on/on/off, means of two")
    print(f"{'TLS+AUTH':<9}{'LOAD':<12}{'OFFERED RPS':>12}{'SERVED RPS':>12}{'P50 MS':>9}"
          f"{'P99 MS':>9}{'FAILED':>8}")
    for phase in results:
        offered = f"{phase.offered_rps:.0f}" if phase.offered_rps else "closed"
        print(f"{phase.mode:<9}{phase.load:<12}{offered:>12}{phase.served_rps:>12.1f}"
              f"{phase.p50_ms:>9.2f}{phase.p99_ms:>9.2f}{phase.failed:>8}")
    ratio = results[1].served_rps / results[0].served_rps
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"throughput at saturation with TLS and authentication: {ratio:.1%} of without "
          f"(target >= {TARGET_RATIO:.0%}: {verdict}); {100 * (1 - ratio):.1f} % lower")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seconds_per_phase": args.seconds, "concurrency": args.concurrency,
            "phases": [asdict(p) for p in results],
            "saturation_throughput_ratio": ratio, "target_ratio": TARGET_RATIO,
            "target_met": ratio >= TARGET_RATIO}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
