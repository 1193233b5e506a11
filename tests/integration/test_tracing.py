"""One trace follows a Deploy from the scheduler into the node agent and onto the bus."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
from dilu.v1 import scheduler_pb2

from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster, inference_spec


def _spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_a_deploy_is_one_trace_across_scheduler_agent_and_bus(cluster: Cluster):
    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-scheduler.jsonl")
    cluster.start_scheduler()
    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-agent.jsonl")
    cluster.start_agent("n1")
    nc = await nats.connect(cluster.nats.url)
    headers: list[dict[str, str]] = []

    async def keep(msg) -> None:  # type: ignore[no-untyped-def]
        headers.append(dict(msg.headers or {}))

    await nc.subscribe("dilu.events.instance.traced", cb=keep)
    await nc.flush()
    try:
        await asyncio.to_thread(assert_eventually, lambda: cluster.nodes().get("n1"))
        await asyncio.to_thread(cluster.deploy, inference_spec("traced"))
        for _ in range(50):
            if headers:
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()

    def deploy_and_start() -> tuple[dict, dict]:
        deploys = [s for s in _spans(cluster.tmp / "spans-scheduler.jsonl")
                   if s["name"] == "/dilu.v1.SchedulerService/Deploy"]
        starts = [s for s in _spans(cluster.tmp / "spans-agent.jsonl")
                  if s["name"] == "/dilu.v1.NodeAgentService/StartInstance"]
        assert deploys and starts
        return deploys[0], starts[0]

    deploy, start = assert_eventually(deploy_and_start, message="spans exported")
    trace_id = deploy["context"]["trace_id"]
    assert start["context"]["trace_id"] == trace_id
    assert start["parent_id"] is not None
    assert headers, "no instance event with headers"
    traceparent = headers[0]["traceparent"]
    assert traceparent.split("-")[1] == trace_id.removeprefix("0x")


def test_an_invoke_is_one_trace_from_the_scheduler_into_the_worker_process(cluster: Cluster):
    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-scheduler.jsonl")
    cluster.start_scheduler()
    # Workers inherit the agent's environment, so their spans land in the agent's file.
    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-node.jsonl")
    cluster.start_agent("n1")
    assert_eventually(lambda: cluster.nodes().get("n1"))
    cluster.deploy(inference_spec("traced"))
    assert_eventually(lambda: cluster.function("traced").status.ready_replicas == 1,
                      timeout=20, message="worker ready")
    cluster.sched.Invoke(scheduler_pb2.InvokeRequest(function="traced"), timeout=10)

    def invoke_and_infer() -> tuple[dict, dict]:
        invokes = [s for s in _spans(cluster.tmp / "spans-scheduler.jsonl")
                   if s["name"] == "/dilu.v1.SchedulerService/Invoke"]
        infers = [s for s in _spans(cluster.tmp / "spans-node.jsonl")
                  if s["name"] == "/dilu.v1.WorkerService/Infer"]
        assert invokes and infers
        return invokes[0], infers[0]

    invoke, infer = assert_eventually(invoke_and_infer, message="spans exported")
    assert infer["context"]["trace_id"] == invoke["context"]["trace_id"]
    assert infer["resource"]["attributes"]["service.name"] == "dilu-worker"
