"""Vertical scaling on a real worker: throughput of a saturated sim worker before and after
`SetQuota` cuts its share from 1.0 to 0.25, measured side by side in one run.

Starts a nats-server and one node agent (real processes), starts a bert-base instance
(max batch 4) through `StartInstance`, keeps it saturated with concurrent `Infer` calls
and counts served requests on the instance's stats page.

    .venv/bin/python bench/quota_gate.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen" / "python")]

from dilu.v1 import node_agent_pb2, node_agent_pb2_grpc, types_pb2, worker_pb2, worker_pb2_grpc  # noqa: E402

from services.cli.stack import NatsServer, ServiceLauncher  # noqa: E402
from services.node_agent.pages import StatsReader  # noqa: E402

SPEC = types_pb2.FunctionSpec(
    name="bench", kind=types_pb2.FUNCTION_KIND_INFERENCE, runtime=types_pb2.RUNTIME_SIM,
    model="bert-base", slo=types_pb2.Slo(latency_ms=10_000), max_batch=4,
    resources=types_pb2.Resources(sm_request=1.0, sm_limit=1.0, memory_mib=4096))


def quota(share: float) -> types_pb2.Quota:
    return types_pb2.Quota(sm_request=share, sm_limit=share, memory_limit_mib=4096)


async def saturate(endpoint: str, stop: asyncio.Event, concurrency: int = 16) -> None:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)

        async def client() -> None:
            while not stop.is_set():
                await stub.Infer(worker_pb2.InferRequest(), timeout=30)

        await asyncio.gather(*(client() for _ in range(concurrency)))


async def served_per_s(stats: StatsReader, seconds: float) -> tuple[float, float]:
    """Requests served per second, and the fraction of the GPU's time the worker's gate
    charged (requests complete in batches of 4, so the second figure is the finer one)."""
    before = stats.read()
    started = time.monotonic()
    await asyncio.sleep(seconds)
    after = stats.read()
    elapsed = time.monotonic() - started
    return (after.requests - before.requests) / elapsed, (after.busy_ns - before.busy_ns) / (elapsed * 1e9)


async def measure(agent_address: str, runtime_dir: Path, seconds: float) -> None:
    async with grpc.aio.insecure_channel(agent_address) as channel:
        agent = node_agent_pb2_grpc.NodeAgentServiceStub(channel)
        node = (await agent.GetNodeStatus(node_agent_pb2.GetNodeStatusRequest())).node
        await agent.StartInstance(node_agent_pb2.StartInstanceRequest(
            instance_id="bench-1", function=SPEC, gpu_uuids=[node.gpus[0].uuid], quota=quota(1.0)))
        endpoint = ""
        while not endpoint:
            await asyncio.sleep(0.1)
            node = (await agent.GetNodeStatus(node_agent_pb2.GetNodeStatusRequest())).node
            endpoint = next((i.endpoint for i in node.instances if i.instance_id == "bench-1"), "")
        stats = StatsReader(runtime_dir / "bench-node" / "bench-1.stats")
        stop = asyncio.Event()
        load = asyncio.create_task(saturate(endpoint, stop))
        await asyncio.sleep(1.0)  # warm up: queue full, arbiter settled
        full = await served_per_s(stats, seconds)
        changed = time.monotonic()
        await agent.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id="bench-1", quota=quota(0.25)))
        call_s = time.monotonic() - changed
        first_second = await served_per_s(stats, 1.0)
        steady = await served_per_s(stats, seconds)
        stop.set()
        await asyncio.gather(load, return_exceptions=True)
        await agent.StopInstance(node_agent_pb2.StopInstanceRequest(instance_id="bench-1"))
    print(f"saturated bert-base (max batch 4), {seconds:.0f} s windows")
    rows = [("share 1.00", full), ("share 0.25, first second after SetQuota", first_second),
            (f"share 0.25, the {seconds:.0f} s after that", steady)]
    for label, (rate, busy) in rows:
        print(f"  {label:<42} {rate:7.1f} req/s  ratio {rate / full[0]:.3f}   "
              f"GPU busy {busy:.3f}  ratio {busy / full[1]:.3f}")
    print("  target: ratio 0.25 ± 0.05 within one second")
    print(f"  SetQuota round trip: {call_s * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dilu-bench-") as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        agent = None
        try:
            launcher = ServiceLauncher(root, nats.url)
            agent = launcher.start("node-agent", "--node-id", "bench-node", "--gpu-backend", "sim",
                                   "--runtime-dir", str(root / "run"))
            asyncio.run(measure(agent.address, root / "run", args.seconds))
        finally:
            if agent is not None:
                agent.stop()
            nats.stop()


if __name__ == "__main__":
    main()
