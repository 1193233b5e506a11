"""Node agents own their GPUs' budgets, with real processes: a raise that does not fit is
refused and changes nothing; one that fits flows into the scheduler's ledger, the
instance record in KV, GetFunction, `dilu status` and DILU_SCALING; a replacement keeps
it; a start racing a raise never over-fills a GPU; a restarted scheduler rebuilds its
books from the agents; a node's tighter bounds hold; every decision says who made it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import nats
import pytest
from dilu.events.v1 import events_pb2
from dilu.v1 import node_agent_pb2, scheduler_pb2, types_pb2
from grpc_status import rpc_status

from services.cli.main import main as dilu_main
from services.common import subjects
from services.node_agent.budget import room_refusal
from services.node_agent.pages import StatsReader
from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster, inference_spec

S = types_pb2
# The agents' default heartbeat interval: the longest a change may take to show anywhere
# (the QUOTA_CHANGED event usually brings it in milliseconds).
ONE_HEARTBEAT_S = 2.0


def _quota(request: float, limit: float, memory_mib: int = 4096) -> types_pb2.Quota:
    return types_pb2.Quota(sm_request=request, sm_limit=limit, memory_limit_mib=memory_mib)


def _triple(quota: types_pb2.Quota) -> tuple[float, float, int]:
    return (round(quota.sm_request, 6), round(quota.sm_limit, 6), quota.memory_limit_mib)


def _node_status(cluster: Cluster, agent) -> types_pb2.Node:  # type: ignore[no-untyped-def]
    return cluster.agent_stub(agent).GetNodeStatus(node_agent_pb2.GetNodeStatusRequest(),
                                                   timeout=10).node


def _agent_books(node: types_pb2.Node) -> dict[str, tuple[float, float, int]]:
    """Per GPU: what the agent's reports add up to (requests, limits, memory)."""
    books = {g.uuid: (0.0, 0.0, 0) for g in node.gpus}
    for report in node.instances:
        for uuid in report.gpu_uuids:
            r, lim, m = books[uuid]
            books[uuid] = (r + report.quota.sm_request, lim + report.quota.sm_limit,
                           m + report.quota.memory_limit_mib)
    return books


def _ledger(cluster: Cluster, node_id: str) -> dict[str, tuple[float, float, int]]:
    return {a.gpu_uuid: (a.sm_requested, a.sm_limited, a.memory_allocated_mib)
            for a in cluster.nodes()[node_id].allocations}


def _same(a: dict[str, tuple[float, float, int]], b: dict[str, tuple[float, float, int]]) -> bool:
    return a.keys() == b.keys() and all(
        abs(a[k][0] - b[k][0]) < 1e-6 and abs(a[k][1] - b[k][1]) < 1e-6 and a[k][2] == b[k][2]
        for k in a)


def _wait_ready_node(cluster: Cluster, *node_ids: str) -> None:
    assert_eventually(lambda: all(cluster.nodes().get(n, S.NodeView()).state == S.NODE_STATE_READY
                                  for n in node_ids), message=f"{node_ids} ready")


def _instance(cluster: Cluster, name: str) -> types_pb2.Instance:
    live = [i for i in cluster.function(name).status.instances
            if i.state in (S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_READY)]
    assert len(live) == 1, live
    return live[0]


def _status_text(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> str:
    assert cluster.scheduler is not None
    capsys.readouterr()
    assert dilu_main(["--scheduler", cluster.scheduler.address, "status"]) == 0
    return capsys.readouterr().out


async def test_a_raise_is_admitted_by_the_agent_and_flows_through_the_whole_system(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]):
    cluster.start_scheduler()
    agent = cluster.start_agent("n1", 1)
    _wait_ready_node(cluster, "n1")
    cluster.deploy(inference_spec("a", request=0.3, limit=0.5))
    cluster.deploy(inference_spec("b", request=0.5, limit=0.5))
    a = _instance(cluster, "a")
    gpu = a.gpu_uuids[0]
    stub = cluster.agent_stub(agent)
    decisions: list[events_pb2.ScalingDecision] = []
    events: list[events_pb2.InstanceEvent] = []
    nc = await nats.connect(cluster.nats.url)

    async def on_decision(msg) -> None:  # type: ignore[no-untyped-def]
        decisions.append(events_pb2.ScalingDecision.FromString(msg.data))

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        events.append(events_pb2.InstanceEvent.FromString(msg.data))

    await nc.subscribe(subjects.scaling_events("a"), cb=on_decision)
    await nc.subscribe(subjects.instance_events_of_function("a"), cb=on_event)
    await nc.flush()
    records = await nc.jetstream().key_value(subjects.INSTANCES_BUCKET)
    try:
        # 0.6 beside b's 0.5 passes the GPU's 1.0: refused, naming the GPU and its headroom.
        with pytest.raises(grpc.RpcError) as refused:
            stub.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id=a.id,
                                                         quota=_quota(0.6, 0.6)), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert gpu in refused.value.details()
        status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
        assert status is not None
        refusal = room_refusal(status)
        assert refusal is not None and refusal.headroom.gpu_uuid == gpu
        assert refusal.bound == "sm_request" and refusal.headroom.sm_request == pytest.approx(0.5)
        node = _node_status(cluster, agent)
        (report,) = [r for r in node.instances if r.instance_id == a.id]
        assert _triple(report.quota) == (0.3, 0.5, 4096) and report.quota_version == 1
        assert _same(_ledger(cluster, "n1"), {gpu: (0.8, 1.0, 8192)})

        applied = stub.SetQuota(node_agent_pb2.SetQuotaRequest(
            instance_id=a.id, quota=_quota(0.45, 0.7, 6144), reason="p99 near the SLO",
            source="scaler"), timeout=10)
        assert _triple(applied.quota) == (0.45, 0.7, 6144) and applied.quota_version == 2
        changed_at = time.monotonic()

        async def everywhere() -> bool:
            entry = await records.get(a.id)
            assert entry.value is not None
            kv = types_pb2.Instance.FromString(entry.value)
            shown = _instance(cluster, "a")
            text = _status_text(cluster, capsys)
            return (_same(_ledger(cluster, "n1"), {gpu: (0.95, 1.2, 10240)})
                    and _triple(kv.quota) == (0.45, 0.7, 6144)
                    and _triple(shown.quota) == (0.45, 0.7, 6144)
                    and "0.45/0.70" in text and "6144" in text and "0.95/1" in text)

        deadline = changed_at + ONE_HEARTBEAT_S
        while not await everywhere():
            assert time.monotonic() < deadline, "the raise did not show everywhere in time"
            await asyncio.sleep(0.05)
        print(f"the raise showed everywhere {time.monotonic() - changed_at:.3f} s after "
              "SetQuota answered")
        while not decisions and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.05)  # recorded by the scheduler from the agent's event
    finally:
        await nc.close()
    (decision,) = decisions
    assert decision.kind == events_pb2.SCALING_KIND_VERTICAL_UP
    assert (decision.source, decision.reason, decision.node) == ("scaler", "p99 near the SLO", "n1")
    assert _triple(decision.quota_before) == (0.3, 0.5, 4096)
    assert _triple(decision.quota_after) == (0.45, 0.7, 6144)
    changes = [e for e in events if e.kind == events_pb2.INSTANCE_EVENT_KIND_QUOTA_CHANGED]
    assert len(changes) == 1 and changes[0].quota_version == 2

    # Its worker dies: the replacement starts at the raised quota.
    assert_eventually(lambda: _instance(cluster, "a").state == S.INSTANCE_STATE_READY,
                      timeout=20, message="a ready")
    pid = StatsReader(cluster.runtime_dir / "n1" / f"{a.id}.stats").read().pid
    os.kill(pid, signal.SIGKILL)

    def replaced() -> types_pb2.InstanceReport:
        reports = [r for r in _node_status(cluster, agent).instances
                   if r.function == "a" and r.instance_id != a.id]
        assert reports, "no replacement yet"
        return reports[0]

    replacement = assert_eventually(replaced, timeout=20, message="a replacement of a")
    assert _triple(replacement.quota) == (0.45, 0.7, 6144)
    assert _triple(_instance(cluster, "a").quota) == (0.45, 0.7, 6144)


def test_a_start_racing_a_raise_on_the_same_gpu_never_over_fills_it(cluster: Cluster):
    cluster.start_scheduler()
    agents = {"n1": cluster.start_agent("n1", 1), "n2": cluster.start_agent("n2", 1)}
    _wait_ready_node(cluster, "n1", "n2")
    cluster.deploy(inference_spec("a", request=0.3, limit=0.3))
    a = _instance(cluster, "a")
    home, spare = a.node, ("n2" if a.node == "n1" else "n1")
    home_stub = cluster.agent_stub(agents[home])
    assert cluster.scheduler is not None
    log = cluster.scheduler.log_path
    outcomes = {"raise refused": 0, "start refused, re-placed": 0, "placed around the raise": 0}

    def start(name: str, delay_s: float) -> types_pb2.Instance:
        time.sleep(delay_s)
        cluster.deploy(inference_spec(name, request=0.3, limit=0.3, min_replicas=1,
                                      max_replicas=1))
        return _instance(cluster, name)

    def raise_a(delay_s: float) -> bool:
        time.sleep(delay_s)
        try:
            home_stub.SetQuota(node_agent_pb2.SetQuotaRequest(
                instance_id=a.id, quota=_quota(0.9, 0.9), source="test"), timeout=10)
            return True
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            return False

    def books_agree() -> bool:
        return all(_same(_ledger(cluster, n), _agent_books(_node_status(cluster, agent)))
                   for n, agent in agents.items())

    # When the raise is sent relative to the start, walked toward the window in which it
    # lands between the scheduler's placement and the StartInstance's arrival.
    offset_s = 0.0
    with ThreadPoolExecutor(2) as pool:
        for i in range(30):
            # The scheduler sees room for b{i} beside a (0.3 + 0.3), which a raise of a to
            # 0.9 takes; the agent lets exactly one of the two have it.
            placed = pool.submit(start, f"b{i}", max(0.0, -offset_s))
            raised = pool.submit(raise_a, max(0.0, offset_s)).result()
            b = placed.result()
            for agent in agents.values():
                for used in _agent_books(_node_status(cluster, agent)).values():
                    assert used[0] <= 1.0 + 1e-9 and used[1] <= 1.5 + 1e-9, used
            # A raise that won leaves no room on home: b went (or was moved) to the spare.
            assert (b.node == spare) == raised, (i, raised, b.node)
            refused = f"StartInstance b{i}-" in log.read_text(errors="replace")
            if not raised:
                outcomes["raise refused"] += 1
                offset_s -= 0.002  # the start was first: raise earlier
            elif refused:
                outcomes["start refused, re-placed"] += 1
            else:
                outcomes["placed around the raise"] += 1
                offset_s += 0.002  # the scheduler knew of the raise already: raise later
            assert_eventually(books_agree, timeout=5, message="ledger equals the agents' books")
            cluster.sched.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name=f"b{i}"),
                                         timeout=30)
            if raised:
                home_stub.SetQuota(node_agent_pb2.SetQuotaRequest(
                    instance_id=a.id, quota=_quota(0.3, 0.3), source="test"), timeout=10)
            assert_eventually(lambda: _same(_ledger(cluster, home),
                                            {a.gpu_uuids[0]: (0.3, 0.3, 4096)}),
                              timeout=10, message="back to a alone at 0.3")
    print(f"race outcomes: {outcomes}")
    assert outcomes["start refused, re-placed"] >= 1, outcomes


def test_a_restarted_scheduler_places_nothing_onto_room_raises_took(cluster: Cluster):
    scheduler = cluster.start_scheduler()
    agent = cluster.start_agent("n1", 1)
    _wait_ready_node(cluster, "n1")
    cluster.deploy(inference_spec("a", request=0.3, limit=0.3))
    a = _instance(cluster, "a")
    stub = cluster.agent_stub(agent)
    stub.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id=a.id, quota=_quota(0.5, 0.5)),
                  timeout=10)
    assert_eventually(lambda: _triple(_instance(cluster, "a").quota)[0] == 0.5,
                      message="first raise adopted")
    scheduler.kill()
    # Raised again while no scheduler listens: its stored record is now stale.
    stub.SetQuota(node_agent_pb2.SetQuotaRequest(instance_id=a.id, quota=_quota(0.85, 0.85)),
                  timeout=10)

    restarted = cluster.start_scheduler()
    assert _same(_ledger(cluster, "n1"), {a.gpu_uuids[0]: (0.85, 0.85, 4096)})
    _wait_ready_node(cluster, "n1")
    cluster.deploy(inference_spec("c", request=0.3, limit=0.3))

    (c,) = cluster.function("c").status.instances
    assert c.state == S.INSTANCE_STATE_PENDING and "no ready node" in c.message
    assert _triple(_instance(cluster, "a").quota) == (0.85, 0.85, 4096)
    assert "failed: no room" not in restarted.log_path.read_text(errors="replace")
    assert [r.instance_id for r in _node_status(cluster, agent).instances] == [a.id]


def test_a_node_announcing_tighter_bounds_gets_no_placement_beyond_them(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]):
    cluster.start_scheduler()
    tight = cluster.start_agent("n1", 2, "--max-requested", "0.5", "--max-limited", "0.7")
    _wait_ready_node(cluster, "n1")
    bounds = cluster.nodes()["n1"].node.bounds
    assert (bounds.max_requested, bounds.max_limited) == (0.5, 0.7)

    cluster.deploy(inference_spec("f", request=0.3, limit=0.3, min_replicas=3, max_replicas=4))

    states = sorted(i.state for i in cluster.function("f").status.instances)
    assert states.count(S.INSTANCE_STATE_PENDING) == 1  # one per GPU: 0.6 > 0.5
    for used in _agent_books(_node_status(cluster, tight)).values():
        assert used[0] <= 0.5 and used[1] <= 0.7
    assert cluster.scheduler is not None
    assert "failed: no room" not in cluster.scheduler.log_path.read_text(errors="replace")
    assert "0.30/0.5" in _status_text(cluster, capsys)

    # `dilu quota` asks the node agent, which holds the instance to its node's bounds.
    placed = next(i for i in cluster.function("f").status.instances
                  if i.state != S.INSTANCE_STATE_PENDING)
    address = cluster.scheduler.address
    assert dilu_main(["--scheduler", address, "quota", placed.id, "--request", "0.6"]) == 1
    assert "RESOURCE_EXHAUSTED" in capsys.readouterr().err
    assert dilu_main(["--scheduler", address, "quota", placed.id, "--request", "0.45"]) == 0
    assert "request 0.45, limit 0.45" in capsys.readouterr().out
    assert_eventually(lambda: "0.45/0.45" in _status_text(cluster, capsys),
                      timeout=ONE_HEARTBEAT_S, message="dilu status shows the live quota")


async def test_every_horizontal_decision_carries_who_made_it(
        one_node: Cluster, capsys: pytest.CaptureFixture[str]):
    one_node.deploy(inference_spec("h", max_replicas=3))
    sched = one_node.sched
    with pytest.raises(grpc.RpcError) as bad:
        sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function="h", source="Not A Token!"),
                       timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details().startswith("source:")
    sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function="h", reason="slo", source="scaler"),
                   timeout=30)
    sched.ScaleIn(scheduler_pb2.ScaleInRequest(function="h"), timeout=30)
    assert one_node.scheduler is not None
    assert dilu_main(["--scheduler", one_node.scheduler.address, "scale", "h", "--out", "1"]) == 0

    nc = await nats.connect(one_node.nats.url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subjects.scaling_events("h"), ordered_consumer=True)
        kept = [events_pb2.ScalingDecision.FromString((await sub.next_msg(timeout=5)).data)
                for _ in range(3)]
    finally:
        await nc.close()
    assert [(d.kind, d.source) for d in kept] == [
        (events_pb2.SCALING_KIND_HORIZONTAL_OUT, "scaler"),
        (events_pb2.SCALING_KIND_HORIZONTAL_IN, "manual"),
        (events_pb2.SCALING_KIND_HORIZONTAL_OUT, "cli"),
    ]
    assert kept[0].reason == "slo"
