"""What a node publishes is bounded: a full node's heartbeat fits NATS's payload limit, and
the agent refuses the instance that would pass the bounds (issue 11: a very long function
name pushed a heartbeat past the limit and other instances were failed as collateral)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dilu.v1 import types_pb2

from services.common import limits
from services.common.errors import InvalidArgument, ResourceExhausted
from services.node_agent.agent import AgentSettings, NodeAgent
from services.node_agent.gpus import SimGpuBackend

S = types_pb2


def _agent(tmp_path: Path, gpus: int) -> NodeAgent:
    agent = NodeAgent("n" * limits.ID_MAX, SimGpuBackend("n", gpus), bus=None,  # type: ignore[arg-type]
                      nodes_kv=None, settings=AgentSettings(runtime_dir=tmp_path))  # type: ignore[arg-type]
    agent.address = "h" * (limits.ADDRESS_MAX - 6) + ":65535"
    return agent


_LONGEST_MESSAGE = limits.bounded_message("\u00e9" * 100_000)


def _widest_report(index: int, gpus: tuple[str, ...]) -> types_pb2.InstanceReport:
    """An instance report with every field at its longest."""
    return types_pb2.InstanceReport(
        instance_id=f"{index:0{limits.ID_MAX}d}", function="f" * limits.NAME_MAX,
        state=S.INSTANCE_STATE_FAILED, endpoint="e" * limits.ADDRESS_MAX,
        quota=types_pb2.Quota(sm_request=0.123456789, sm_limit=0.987654321,
                              effective_share=0.333333333, memory_limit_mib=limits.MEMORY_LIMIT_MIB.high),
        message=_LONGEST_MESSAGE, gpu_uuids=gpus, quota_version=2**64 - 1)


def _fill(agent: NodeAgent, count: int, gpus: list[str], slots: int | None = None) -> int:
    """`count` instances, one GPU each round robin, then (up to `slots` GPU places in all)
    more GPUs each for the first ones, never more than the per-GPU bound; returns the
    places used."""
    held: dict[str, Any] = agent._held  # type: ignore[assignment]
    per_gpu = dict.fromkeys(gpus, 0)
    assigned = []
    for i in range(count):
        gpu = gpus[i % len(gpus)]
        per_gpu[gpu] += 1
        assigned.append([gpu])
    extra = (slots or count) - count
    for mine in assigned:
        for gpu in gpus:
            if extra <= 0 or len(mine) >= limits.GPUS_PER_INSTANCE.high:
                break
            if gpu not in mine and per_gpu[gpu] < limits.MAX_INSTANCES_PER_GPU:
                mine.append(gpu)
                per_gpu[gpu] += 1
                extra -= 1
    for i, mine in enumerate(assigned):
        report = _widest_report(i, tuple(mine))
        held[report.instance_id] = SimpleNamespace(report=report, gpus=tuple(mine))
    return sum(per_gpu.values())


def test_a_full_node_heartbeat_fits_the_bus_payload_limit(tmp_path: Path):
    agent = _agent(tmp_path, gpus=16)
    uuids = [d.uuid for d in SimGpuBackend("n", 16).devices()]
    # As many instances as a node holds, on as many GPU places as its GPUs have.
    places = _fill(agent, limits.MAX_INSTANCES_PER_NODE, uuids,
                   slots=16 * limits.MAX_INSTANCES_PER_GPU)
    assert places == 16 * limits.MAX_INSTANCES_PER_GPU
    size = len(agent.status().SerializeToString())
    assert size <= limits.HEARTBEAT_BUDGET_BYTES < limits.NATS_DEFAULT_MAX_PAYLOAD
    assert size > 0.5 * limits.HEARTBEAT_BUDGET_BYTES  # the widest fields were really used


def test_messages_are_cut_to_their_bound_on_a_character_boundary():
    message = limits.bounded_message("\u00e9" * 1000)
    assert len(message.encode()) <= limits.MESSAGE_MAX_BYTES and message.endswith("...")
    assert limits.bounded_message("a\nb\x00c") == "a b c"


def test_the_agent_refuses_an_instance_beyond_the_per_gpu_bound(tmp_path: Path):
    agent = _agent(tmp_path, gpus=2)
    uuids = [d.uuid for d in SimGpuBackend("n", 2).devices()]
    _fill(agent, limits.MAX_INSTANCES_PER_GPU, [uuids[0]])
    with pytest.raises(ResourceExhausted, match="already runs 100 instances"):
        agent._check_room_for_one_more([uuids[0]])
    agent._check_room_for_one_more([uuids[1]])  # the other GPU still has room


def test_the_agent_refuses_an_instance_beyond_the_per_node_bound(tmp_path: Path):
    agent = _agent(tmp_path, gpus=16)
    uuids = [d.uuid for d in SimGpuBackend("n", 16).devices()]
    _fill(agent, limits.MAX_INSTANCES_PER_NODE, uuids)
    with pytest.raises(ResourceExhausted, match="1000 instances"):
        agent._check_room_for_one_more([uuids[0]])


async def test_a_very_long_function_name_never_reaches_the_heartbeat(tmp_path: Path):
    agent = _agent(tmp_path, gpus=1)
    uuid = SimGpuBackend("n", 1).devices()[0].uuid
    spec = types_pb2.FunctionSpec(
        name="f" * 100_000, kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM,
        model="resnet152", slo=types_pb2.Slo(latency_ms=100),
        resources=types_pb2.Resources(sm_request=0.3, memory_mib=4096))
    quota = types_pb2.Quota(sm_request=0.3, sm_limit=0.3, memory_limit_mib=4096)
    with pytest.raises(InvalidArgument) as refused:
        await agent.start_instance("i1", spec, [uuid], quota)
    assert refused.value.field == "function.name"
    assert agent.status().instances == []
