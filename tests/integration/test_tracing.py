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


def _start_traced(cluster: Cluster) -> None:
    """A scheduler and agent n1 exporting spans to spans-scheduler.jsonl and
    spans-node.jsonl (workers inherit the agent's environment, so theirs land there too)."""
    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-scheduler.jsonl")
    cluster.start_scheduler()
    cluster.launcher.env["DILU_TRACE_FILE"] = str(cluster.tmp / "spans-node.jsonl")
    cluster.start_agent("n1")


def _first_spans(cluster: Cluster, scheduler_span: str, node_span: str) -> tuple[dict, dict]:
    """The first span named `scheduler_span` in the scheduler's file and `node_span` in the
    node's, once both have been exported."""
    def both() -> tuple[dict, dict]:
        ours = [s for s in _spans(cluster.tmp / "spans-scheduler.jsonl") if s["name"] == scheduler_span]
        theirs = [s for s in _spans(cluster.tmp / "spans-node.jsonl") if s["name"] == node_span]
        assert ours and theirs
        return ours[0], theirs[0]

    return assert_eventually(both, message="spans exported")


async def test_a_deploy_is_one_trace_across_scheduler_agent_and_bus(cluster: Cluster):
    _start_traced(cluster)
    nc = await nats.connect(cluster.nats.url)
    headers: list[dict[str, str]] = []

    async def keep(msg) -> None:  # type: ignore[no-untyped-def]
        headers.append(dict(msg.headers or {}))

    await nc.subscribe("dilu.events.instance.n1.traced", cb=keep)
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

    deploy, start = _first_spans(cluster, "/dilu.v1.SchedulerService/Deploy",
                                 "/dilu.v1.NodeAgentService/StartInstance")
    trace_id = deploy["context"]["trace_id"]
    assert start["context"]["trace_id"] == trace_id
    assert start["parent_id"] is not None
    assert headers, "no instance event with headers"
    traceparent = headers[0]["traceparent"]
    assert traceparent.split("-")[1] == trace_id.removeprefix("0x")


def test_an_invoke_is_one_trace_from_the_scheduler_into_the_worker_process(cluster: Cluster):
    _start_traced(cluster)
    assert_eventually(lambda: cluster.nodes().get("n1"))
    cluster.deploy(inference_spec("traced"))
    assert_eventually(lambda: cluster.function("traced").status.ready_replicas == 1,
                      timeout=20, message="worker ready")
    cluster.sched.Invoke(scheduler_pb2.InvokeRequest(function="traced"), timeout=10)

    invoke, infer = _first_spans(cluster, "/dilu.v1.SchedulerService/Invoke",
                                 "/dilu.v1.WorkerService/Infer")
    assert infer["context"]["trace_id"] == invoke["context"]["trace_id"]
    assert infer["resource"]["attributes"]["service.name"] == "dilu-worker"
