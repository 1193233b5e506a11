"""The scheduler against a real nats-server and real node agents."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from dilu.v1 import node_agent_pb2, scheduler_pb2, types_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common import subjects
from services.common.bus import Bus
from tests.helpers import assert_eventually
from tests.integration.conftest import Cluster, inference_spec, torch_inference_spec

S = types_pb2


def _states(function: types_pb2.Function) -> dict[str, int]:
    return {i.id: i.state for i in function.status.instances}


def _live(function: types_pb2.Function) -> list[types_pb2.Instance]:
    live = {S.INSTANCE_STATE_PENDING, S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_READY}
    return [i for i in function.status.instances if i.state in live]


def _wait_for_nodes(cluster: Cluster, *node_ids: str) -> None:
    assert_eventually(lambda: all(
        cluster.nodes().get(n, S.NodeView()).state == S.NODE_STATE_READY for n in node_ids),
        message=f"nodes {node_ids} registered")


def test_deploy_places_instances_on_a_registered_node_and_the_agent_holds_them(cluster: Cluster):
    cluster.start_scheduler()
    agent = cluster.start_agent("n1", gpus=2)
    _wait_for_nodes(cluster, "n1")

    function = cluster.deploy(inference_spec("resnet", min_replicas=2))

    assert function.status.desired_replicas == 2
    instances = function.status.instances
    assert len(instances) == 2
    node = cluster.nodes()["n1"].node
    gpu_uuids = {g.uuid for g in node.gpus}
    for instance in instances:
        assert instance.state == S.INSTANCE_STATE_STARTING
        assert instance.node == "n1"
        assert set(instance.gpu_uuids) <= gpu_uuids
        assert instance.quota.sm_request == pytest.approx(0.3)
    held = cluster.agent_stub(agent).GetNodeStatus(node_agent_pb2.GetNodeStatusRequest()).node
    assert {r.instance_id for r in held.instances} == {i.id for i in instances}
    allocated = sum(a.sm_requested for a in cluster.nodes()["n1"].allocations)
    assert allocated == pytest.approx(0.6)


def test_instances_stay_pending_without_room_and_are_placed_when_a_node_joins(cluster: Cluster):
    cluster.start_scheduler()
    cluster.start_agent("n1", gpus=1)
    _wait_for_nodes(cluster, "n1")

    function = cluster.deploy(inference_spec("big", request=0.6, limit=0.6, min_replicas=2))
    states = sorted(_states(function).values())
    assert states == [S.INSTANCE_STATE_PENDING, S.INSTANCE_STATE_STARTING]
    pending = next(i for i in function.status.instances if i.state == S.INSTANCE_STATE_PENDING)
    assert "sm_request 0.6" in pending.message

    cluster.start_agent("n2", gpus=1)
    placed = assert_eventually(
        lambda: {i.node for i in cluster.function("big").status.instances} == {"n1", "n2"},
        message="pending instance placed on the new node")
    assert placed


def test_scale_out_and_in_change_the_replica_count_within_bounds(cluster: Cluster):
    cluster.start_scheduler()
    agent = cluster.start_agent("n1", gpus=2)
    _wait_for_nodes(cluster, "n1")
    cluster.deploy(inference_spec("svc", request=0.2, limit=0.3, min_replicas=1, max_replicas=3))

    out = cluster.sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function="svc", count=2)).function
    assert out.status.desired_replicas == 3
    assert len(_live(out)) == 3

    with pytest.raises(grpc.RpcError) as over:
        cluster.sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function="svc", count=1))
    assert over.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "replicas.max=3" in over.value.details()

    kept = {i.id for i in out.status.instances}
    back = cluster.sched.ScaleIn(scheduler_pb2.ScaleInRequest(function="svc", count=2)).function
    assert back.status.desired_replicas == 1
    assert len(_live(back)) == 1
    assert {i.id for i in _live(back)} <= kept

    with pytest.raises(grpc.RpcError) as under:
        cluster.sched.ScaleIn(scheduler_pb2.ScaleInRequest(function="svc"))
    assert under.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    stub = cluster.agent_stub(agent)
    assert_eventually(lambda: {r.instance_id for r in stub.GetNodeStatus(
        node_agent_pb2.GetNodeStatusRequest()).node.instances} == {i.id for i in _live(back)},
        message="the agent holds only the remaining instance")


def test_delete_stops_every_instance_and_frees_the_gpus(cluster: Cluster):
    cluster.start_scheduler()
    agent = cluster.start_agent("n1")
    _wait_for_nodes(cluster, "n1")
    cluster.deploy(inference_spec("gone", min_replicas=2))

    reply = cluster.sched.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name="gone"))

    assert reply.stopped_instances == 2
    with pytest.raises(grpc.RpcError) as missing:
        cluster.function("gone")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert all(a.sm_requested == 0 and not a.instance_ids
               for a in cluster.nodes()["n1"].allocations)
    held = cluster.agent_stub(agent).GetNodeStatus(node_agent_pb2.GetNodeStatusRequest()).node
    assert list(held.instances) == []


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: setattr(s, "name", ""), "function.name"),
    (lambda s: setattr(s, "name", "Bad_Name"), "function.name"),
    (lambda s: s.resources.__setattr__("sm_request", 0.9), "function.resources.sm_request"),
    (lambda s: s.resources.__setattr__("sm_request", 0.0), "function.resources.sm_request"),
    (lambda s: s.resources.__setattr__("sm_limit", 1.5), "function.resources.sm_limit"),
    (lambda s: s.resources.__setattr__("memory_mib", -1), "function.resources.memory_mib"),
    (lambda s: setattr(s, "kind", S.FUNCTION_KIND_UNSPECIFIED), "function.kind"),
    (lambda s: setattr(s, "kind", 42), "function.kind"),
    (lambda s: setattr(s, "model", "no-such-model"), "function.model"),
    (lambda s: s.slo.__setattr__("latency_ms", 0), "function.slo.latency_ms"),
    (lambda s: s.replicas.__setattr__("max", -2), "function.replicas.max"),
])
def test_bad_deploys_get_invalid_argument_naming_the_field_and_change_nothing(
        cluster: Cluster, mutate, field):
    cluster.start_scheduler()
    cluster.start_agent("n1")
    _wait_for_nodes(cluster, "n1")
    cluster.deploy(inference_spec("keep"))
    spec = inference_spec("other")
    mutate(spec)

    with pytest.raises(grpc.RpcError) as refused:
        cluster.deploy(spec)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(field + ":")
    status = rpc_status.from_call(refused.value)
    assert status is not None
    violation = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(violation)
    assert violation.field_violations[0].field == field
    listed = cluster.sched.ListFunctions(scheduler_pb2.ListFunctionsRequest()).functions
    assert [f.spec.name for f in listed] == ["keep"]


def test_duplicate_name_is_refused_and_the_first_function_is_kept(cluster: Cluster):
    cluster.start_scheduler()
    cluster.start_agent("n1")
    _wait_for_nodes(cluster, "n1")
    first = cluster.deploy(inference_spec("twice", request=0.2, limit=0.2))

    with pytest.raises(grpc.RpcError) as refused:
        cluster.deploy(inference_spec("twice", request=0.5, limit=0.5))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "function.name" in refused.value.details()
    kept = cluster.function("twice")
    assert kept.spec.resources.sm_request == pytest.approx(0.2)
    assert [i.id for i in kept.status.instances] == [i.id for i in first.status.instances]


def test_other_rpcs_name_bad_fields_and_unknown_functions(cluster: Cluster):
    cluster.start_scheduler()
    sched = cluster.sched
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    cases = [
        (lambda: sched.Deploy(scheduler_pb2.DeployRequest()), invalid, "function"),
        (lambda: sched.GetFunction(scheduler_pb2.GetFunctionRequest()), invalid, "name"),
        (lambda: sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function="x", count=-1)),
         invalid, "count"),
        (lambda: sched.Invoke(scheduler_pb2.InvokeRequest(function="")), invalid, "function"),
        (lambda: sched.GetFunction(scheduler_pb2.GetFunctionRequest(name="nope")), not_found, "nope"),
        (lambda: sched.DeleteFunction(scheduler_pb2.DeleteFunctionRequest(name="nope")),
         not_found, "nope"),
        (lambda: sched.Invoke(scheduler_pb2.InvokeRequest(function="nope")), not_found, "nope"),
    ]
    for call, code, word in cases:
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == code
        assert word in failed.value.details()


def test_a_worker_that_cannot_start_fails_and_invoke_says_why(cluster: Cluster):
    cluster.start_scheduler()
    cluster.start_agent("n1")
    _wait_for_nodes(cluster, "n1")
    # Only the node can find out that the weights file is not there: the worker refuses.
    spec = torch_inference_spec("cold")
    spec.weights_uri = str(cluster.tmp / "no-such-weights.pt")
    cluster.deploy(spec)

    failed_instance = assert_eventually(
        lambda: next((i for i in cluster.function("cold").status.instances
                      if i.state == S.INSTANCE_STATE_FAILED), None),
        timeout=30, message="the worker's start failure is reported")
    assert "weights_uri" in failed_instance.message
    with pytest.raises(grpc.RpcError) as failed:
        cluster.sched.Invoke(scheduler_pb2.InvokeRequest(function="cold", payload=b"{}"))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no ready instance" in failed.value.details()


def test_a_node_whose_heartbeat_stops_is_lost_and_its_instances_move(cluster: Cluster):
    cluster.start_scheduler()
    doomed = cluster.start_agent("n1", gpus=1)
    cluster.start_agent("n2", gpus=1)
    _wait_for_nodes(cluster, "n1", "n2")
    first = cluster.deploy(inference_spec("mover"))
    assert first.status.instances[0].node == "n1"  # first fit takes the first node

    doomed.kill()

    assert_eventually(lambda: cluster.nodes()["n1"].state == S.NODE_STATE_LOST, timeout=10,
                      message="n1 marked lost")
    moved = assert_eventually(lambda: [i for i in _live(cluster.function("mover"))
                                       if i.node == "n2"], timeout=10, message="replacement on n2")
    assert len(moved) == 1
    old = {i.id: i for i in cluster.function("mover").status.instances}[first.status.instances[0].id]
    assert old.state == S.INSTANCE_STATE_LOST
    assert "n1" in old.message
    assert all(not a.instance_ids for a in cluster.nodes()["n1"].allocations)


def test_a_restarted_scheduler_recovers_every_function_and_instance(cluster: Cluster):
    first = cluster.start_scheduler()
    agent = cluster.start_agent("n1", gpus=2)
    _wait_for_nodes(cluster, "n1")
    cluster.deploy(inference_spec("alpha", min_replicas=2))
    cluster.deploy(inference_spec("beta", request=0.1, limit=0.2))
    cluster.sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function="beta", count=1))
    # Every instance ready first: one still starting may legitimately become ready while
    # the scheduler restarts, and the comparison below is about recovery, not progress.
    assert_eventually(lambda: all(
        i.state == S.INSTANCE_STATE_READY
        for f in cluster.sched.ListFunctions(scheduler_pb2.ListFunctionsRequest()).functions
        for i in f.status.instances), message="every instance ready")
    before = {f.spec.name: f for f in cluster.sched.ListFunctions(
        scheduler_pb2.ListFunctionsRequest()).functions}
    allocations_before = {a.gpu_uuid: a.sm_requested for a in cluster.nodes()["n1"].allocations}

    first.kill()  # SIGKILL: no chance to flush anything
    cluster.start_scheduler()

    after = {f.spec.name: f for f in cluster.sched.ListFunctions(
        scheduler_pb2.ListFunctionsRequest()).functions}
    assert set(after) == {"alpha", "beta"}
    for name, function in before.items():
        assert after[name].spec == function.spec
        assert after[name].status.desired_replicas == function.status.desired_replicas
        assert _states(after[name]) == _states(function)
    _wait_for_nodes(cluster, "n1")
    allocations_after = {a.gpu_uuid: a.sm_requested for a in cluster.nodes()["n1"].allocations}
    assert allocations_after == pytest.approx(allocations_before)
    # Recovery must not start duplicates: the agent still holds exactly the same instances.
    held = cluster.agent_stub(agent).GetNodeStatus(node_agent_pb2.GetNodeStatusRequest()).node
    expected = {i.id for f in before.values() for i in f.status.instances}
    assert {r.instance_id for r in held.instances} == expected


def test_services_reconnect_after_a_nats_restart_and_nothing_is_lost(cluster: Cluster):
    cluster.start_scheduler()
    cluster.start_agent("n1", gpus=2)
    _wait_for_nodes(cluster, "n1")
    cluster.deploy(inference_spec("before"))
    instance_ids = set(_states(cluster.function("before")))

    cluster.nats.stop()
    with pytest.raises(grpc.RpcError) as down:
        cluster.deploy(inference_spec("during"))
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    # Stay down longer than the node timeout (1.5 s): an outage of the bus is not a
    # reason to declare nodes lost and move their instances.
    time.sleep(2.5)
    cluster.nats.start()  # same port, same JetStream store

    def deploy_after() -> types_pb2.Function:
        try:
            return cluster.deploy(inference_spec("after"))
        except grpc.RpcError as error:
            raise AssertionError(f"{error.code()}: {error.details()}") from error

    after = assert_eventually(deploy_after, timeout=20, message="deploy after NATS restart")
    assert after.status.instances[0].node == "n1"
    before = cluster.function("before")
    assert set(_states(before)) == instance_ids
    assert all(i.state in (S.INSTANCE_STATE_STARTING, S.INSTANCE_STATE_READY)
               for i in before.status.instances)
    assert cluster.nodes()["n1"].state == S.NODE_STATE_READY
    names = [f.spec.name for f in cluster.sched.ListFunctions(
        scheduler_pb2.ListFunctionsRequest()).functions]
    assert sorted(names) == ["after", "before"]


def test_a_restarted_scheduler_does_not_place_on_nodes_that_died_while_it_was_down(
        cluster: Cluster):
    first = cluster.start_scheduler()
    dead = cluster.start_agent("n1", gpus=1)
    cluster.start_agent("n2", gpus=1)
    _wait_for_nodes(cluster, "n1", "n2")
    first.kill()
    dead.kill()
    cluster.start_scheduler()

    cluster.deploy(inference_spec("fresh"))

    # Registry entries wait for a fresh heartbeat before they get placements: n2 sends one.
    assert_eventually(lambda: cluster.function("fresh").status.instances[0].node == "n2",
                      timeout=10, message="placed on the live node")
    assert_eventually(lambda: cluster.nodes()["n1"].state == S.NODE_STATE_LOST, timeout=10,
                      message="the dead node is declared lost")


def test_instances_an_agent_forgets_are_failed_and_replaced(cluster: Cluster):
    cluster.start_scheduler()
    agent = cluster.start_agent("n1", gpus=1)
    _wait_for_nodes(cluster, "n1")
    old = {i.id for i in cluster.deploy(inference_spec("amnesia", min_replicas=2)).status.instances}

    agent.kill()
    agent = cluster.start_agent("n1", gpus=1)  # same node, same GPUs, no memory of instances

    def replaced() -> set[str]:
        live = {i.id for i in _live(cluster.function("amnesia"))}
        return live if len(live) == 2 and not live & old else set()

    new = assert_eventually(replaced, timeout=15, message="forgotten instances replaced")
    held = cluster.agent_stub(agent).GetNodeStatus(node_agent_pb2.GetNodeStatusRequest()).node
    assert {r.instance_id for r in held.instances} == new
    states = {i.id: i.state for i in cluster.function("amnesia").status.instances}
    assert all(states[i] == S.INSTANCE_STATE_FAILED for i in old if i in states)


def test_a_node_that_comes_back_with_fewer_gpus_loses_the_instances_on_the_missing_one(
        cluster: Cluster):
    cluster.start_scheduler()
    agent = cluster.start_agent("n1", gpus=2)
    _wait_for_nodes(cluster, "n1")
    spec = inference_spec("wide", request=0.6, limit=0.6, min_replicas=2)
    gpus = {i.gpu_uuids[0] for i in cluster.deploy(spec).status.instances}
    assert len(gpus) == 2

    agent.kill()
    cluster.start_agent("n1", gpus=1)

    def shrunk() -> bool:
        node = cluster.nodes()["n1"]
        function = cluster.function("wide")
        return len(node.allocations) == 1 and len(_live(function)) == 2 and \
            sum(i.state == S.INSTANCE_STATE_PENDING for i in function.status.instances) == 1
    assert_eventually(shrunk, timeout=15, message="one replica left, one pending for room")


def test_scale_in_removes_exactly_the_named_instances(cluster: Cluster):
    cluster.start_scheduler()
    cluster.start_agent("n1")
    _wait_for_nodes(cluster, "n1")
    ids = sorted(i.id for i in cluster.deploy(
        inference_spec("pick", request=0.1, limit=0.1, min_replicas=1, max_replicas=3)
    ).status.instances)
    grown = cluster.sched.ScaleOut(scheduler_pb2.ScaleOutRequest(function="pick", count=2))
    ids = sorted(i.id for i in grown.function.status.instances)
    victim = ids[1]

    shrunk = cluster.sched.ScaleIn(scheduler_pb2.ScaleInRequest(
        function="pick", instance_ids=[victim])).function

    assert shrunk.status.desired_replicas == 2
    assert sorted(i.id for i in _live(shrunk)) == [ids[0], ids[2]]
    with pytest.raises(grpc.RpcError) as wrong:
        cluster.sched.ScaleIn(scheduler_pb2.ScaleInRequest(function="pick", instance_ids=["x"]))
    assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong.value.details().startswith("instance_ids:")


async def test_the_lingering_record_of_a_lost_node_does_not_take_its_gpus_back(cluster: Cluster):
    cluster.start_scheduler()
    cluster.start_agent("n1", gpus=1)
    await asyncio.to_thread(_wait_for_nodes, cluster, "n1")
    # What an agent restarted under a new node id leaves behind: the old record, with the
    # same GPUs, which stops changing and lingers until the bucket's TTL.
    bus = await Bus.connect(cluster.nats.url, "test-ghost")
    try:
        nodes = await bus.kv(subjects.NODES_BUCKET, types_pb2.Node, ttl_s=3600)
        ghost = await nodes.get("n1")
        assert ghost is not None
        ghost.id = "ghost"
        await nodes.put("ghost", ghost)
    finally:
        await bus.close()
    await asyncio.to_thread(assert_eventually,
                            lambda: cluster.nodes().get("ghost", S.NodeView()).state == S.NODE_STATE_LOST,
                            10, 0.1, "the ghost is lost")

    placed = await asyncio.to_thread(cluster.deploy, inference_spec("steady"))
    first = placed.status.instances[0].id
    await asyncio.to_thread(assert_eventually, lambda: [
        i for i in cluster.function("steady").status.instances
        if i.id == first and i.state == S.INSTANCE_STATE_READY], 15, 0.1, "ready on n1")
    await asyncio.sleep(2.0)  # ten reconcile passes, each of which sees both records
    instances = cluster.function("steady").status.instances
    assert [(i.id, i.node, i.state) for i in instances] == [(first, "n1", S.INSTANCE_STATE_READY)]
