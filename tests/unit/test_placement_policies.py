"""Behaviour of every placement policy: admission, scoring, splitting, anti-affinity, and
the ledger and view they work on."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.placement import (
    DEFAULT_POLICY,
    POLICIES,
    Assignment,
    Complementary,
    InstanceShape,
    Ledger,
    PlacementBounds,
    WorkloadKind,
    make_placement,
)
from services.scheduler.placement.types import SHARD_OVERHEAD_MIB

INFERENCE, LLM, TRAINING = WorkloadKind.INFERENCE, WorkloadKind.LLM_INFERENCE, WorkloadKind.TRAINING
ALL = sorted(POLICIES)


def shape(request: float = 0.3, limit: float = 0.5, memory: int = 4096, gpus: int = 1,
          function: str = "f", kind: WorkloadKind = INFERENCE, max_shards: int = 1) -> InstanceShape:
    return InstanceShape(function=function, kind=kind, sm_request=request, sm_limit=limit,
                         memory_mib=memory, gpus=gpus, max_shards=max_shards)


def ledger(nodes: int = 2, gpus: int = 2, memory: int = 40960) -> Ledger:
    book = Ledger()
    for n in range(nodes):
        book.set_node(f"n{n}", [(f"n{n}-g{g}", memory) for g in range(gpus)])
    return book


def put(book: Ledger, instance_id: str, s: InstanceShape, *uuids: str) -> None:
    book.commit(instance_id, s, Assignment(book.gpu(uuids[0]).node, uuids))


def one(book: Ledger, uuid: str, request: float, limit: float, memory: int = 0,
        function: str = "other", kind: WorkloadKind = INFERENCE) -> None:
    """Commit a filler instance of the given size on one GPU."""
    put(book, f"{function}@{uuid}#{len(book.instances_on(uuid))}",
        shape(request=request, limit=limit, memory=memory, function=function, kind=kind), uuid)


def place_llm(book: Ledger, max_shards: int = 2) -> tuple[InstanceShape, Assignment | None]:
    """A 24 GiB model (too big beside 26 GB of training) placed by the default policy."""
    llm = shape(request=0.6, limit=0.8, memory=24576, function="llm", kind=LLM, max_shards=max_shards)
    return llm, make_placement("complementary").place(llm, book.view())


# ---- names and bounds --------------------------------------------------------------------


def test_make_placement_knows_all_six_policies_and_the_default():
    assert set(POLICIES) == {"complementary", "dilu-paper", "infless-l", "infless-r",
                             "exclusive", "first-fit"}
    assert DEFAULT_POLICY == "complementary"
    for name in POLICIES:
        policy = make_placement(name)
        assert policy.name == name
        assert isinstance(policy.bounds, PlacementBounds)
    custom = PlacementBounds(max_requested=0.8, max_limited=1.2)
    assert make_placement("dilu-paper", custom).bounds == custom
    assert make_placement("complementary", custom).bounds == custom
    assert make_placement("infless-l", custom).bounds == PlacementBounds(1.0, 1.0)
    assert make_placement("infless-r").bounds.max_limited == math.inf


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_requested": 1.01}, "max_requested"),
    ({"max_requested": 0.0}, "max_requested"),
    ({"max_requested": -0.5}, "max_requested"),
    ({"max_requested": float("nan")}, "max_requested"),
    ({"max_requested": 0.8, "max_limited": 0.7}, "max_limited"),
    ({"max_limited": 0.99}, "max_limited"),
])
def test_placement_bounds_reject_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PlacementBounds(**kwargs)


def test_placement_bounds_accept_the_edges():
    assert PlacementBounds(1.0, 1.0).max_limited == 1.0
    assert PlacementBounds(0.01, 0.01).max_requested == 0.01


# ---- sharding ----------------------------------------------------------------------------


def test_sharded_splits_memory_evenly_plus_overhead_and_rounds_sm_up():
    llm = shape(request=0.35, limit=0.7, memory=24577, kind=LLM, max_shards=4)
    two = llm.sharded(2)
    assert (two.sm_request, two.sm_limit, two.memory_mib, two.gpus, two.max_shards) == (
        0.18, 0.35, 12289 + SHARD_OVERHEAD_MIB, 2, 1)
    assert (two.function, two.kind) == (llm.function, llm.kind)
    three = llm.sharded(3)
    assert (three.sm_request, three.sm_limit, three.memory_mib, three.gpus) == (
        0.12, 0.24, 8193 + SHARD_OVERHEAD_MIB, 3)
    # Exact splits are not rounded up a hundredth by float error.
    assert shape(request=0.3, limit=0.6, max_shards=2).sharded(2).sm_request == 0.15


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.5), st.integers(0, 200_000), st.integers(2, 8))
def test_sharded_never_asks_for_less_than_the_whole(request, limit, memory, shards):
    stage = shape(request=request, limit=limit, memory=memory, max_shards=8).sharded(shards)
    assert stage.gpus == shards and stage.max_shards == 1
    assert stage.memory_mib == math.ceil(memory / shards) + SHARD_OVERHEAD_MIB
    assert stage.memory_mib * shards >= memory + shards * SHARD_OVERHEAD_MIB
    for whole, part in ((request, stage.sm_request), (limit, stage.sm_limit)):
        assert abs(part * 100 - round(part * 100)) < 1e-9      # a hundredth of a GPU
        assert part >= whole / shards - 1e-8                   # rounded up...
        assert part < whole / shards + 0.01                    # ...by less than a step


def test_sharded_refuses_too_many_shards_one_shard_and_multi_gpu_shapes():
    llm = shape(kind=LLM, max_shards=2)
    with pytest.raises(ValueError):
        llm.sharded(3)
    with pytest.raises(ValueError):
        llm.sharded(1)
    with pytest.raises(ValueError):
        shape(max_shards=1).sharded(2)
    with pytest.raises(ValueError):
        shape(gpus=2, max_shards=4).sharded(2)


# ---- admission rules of each baseline ----------------------------------------------------


def test_exclusive_takes_only_empty_gpus_and_gangs_take_empty_gpus_of_one_node():
    book = ledger(nodes=2, gpus=2)
    policy = make_placement("exclusive")
    one(book, "n0-g0", 0.05, 0.05, 1024)
    tiny = shape(request=0.05, limit=0.05, memory=512)
    assert policy.place(tiny, book.view()) == Assignment("n0", ("n0-g1",))
    assert policy.place(shape(gpus=2), book.view()) == Assignment("n1", ("n1-g0", "n1-g1"))
    one(book, "n0-g1", 0.05, 0.05)
    assert policy.place(shape(gpus=2), book.view()) == Assignment("n1", ("n1-g0", "n1-g1"))
    one(book, "n1-g0", 0.05, 0.05)
    assert policy.place(shape(gpus=2), book.view()) is None
    assert policy.place(tiny, book.view()) == Assignment("n1", ("n1-g1",))
    one(book, "n1-g1", 0.05, 0.05)
    assert policy.place(tiny, book.view()) is None


def test_exclusive_refuses_more_memory_than_the_gpu_has():
    book = ledger(nodes=1, gpus=1, memory=10000)
    policy = make_placement("exclusive")
    assert policy.place(shape(memory=10001), book.view()) is None
    assert policy.place(shape(memory=10000), book.view()) == Assignment("n0", ("n0-g0",))


def test_infless_l_refuses_when_limits_pass_one_even_though_requests_fit():
    book = ledger(nodes=1, gpus=1)
    one(book, "n0-g0", 0.2, 0.8)
    probe = shape(request=0.1, limit=0.3)
    assert make_placement("infless-l").place(probe, book.view()) is None
    assert make_placement("dilu-paper").place(probe, book.view()) is not None
    assert make_placement("infless-l").place(shape(request=0.1, limit=0.2), book.view()) is not None


def test_infless_r_admits_limits_beyond_one_and_a_half_but_never_requests_beyond_one():
    book = ledger(nodes=1, gpus=1)
    one(book, "n0-g0", 0.2, 1.4)
    policy = make_placement("infless-r")
    assert policy.place(shape(request=0.2, limit=0.9), book.view()) is not None   # limits 2.3
    assert make_placement("dilu-paper").place(shape(request=0.2, limit=0.9), book.view()) is None
    one(book, "n0-g0", 0.7, 0.7)
    assert policy.place(shape(request=0.1, limit=1.0), book.view()) is not None   # requests 1.0
    assert policy.place(shape(request=0.11, limit=0.11), book.view()) is None     # requests 1.01


@pytest.mark.parametrize("name", ["dilu-paper", "complementary"])
def test_dilu_policies_honour_requests_limits_and_memory(name):
    book = ledger(nodes=1, gpus=1, memory=10000)
    one(book, "n0-g0", 0.7, 1.2, 6000)

    def admits(request: float, limit: float, memory: int) -> bool:
        got = make_placement(name).place(shape(request=request, limit=limit, memory=memory),
                                          book.view())
        assert got in (None, Assignment("n0", ("n0-g0",)))
        return got is not None

    assert admits(0.3, 0.3, 4000)          # requests 1.0, limits 1.5, memory full
    assert not admits(0.31, 0.31, 100)     # requests 1.01
    assert not admits(0.1, 0.31, 100)      # limits 1.51
    assert not admits(0.1, 0.1, 4001)      # memory over
    assert admits(0.1, 0.3, 100)


# ---- best fit ----------------------------------------------------------------------------


def test_infless_l_picks_the_fullest_admitting_gpu_by_limits():
    book = ledger(nodes=1, gpus=3)
    one(book, "n0-g0", 0.1, 0.2)
    one(book, "n0-g1", 0.1, 0.5)
    one(book, "n0-g2", 0.1, 0.7)            # fullest, but 0.7 + 0.4 > 1
    probe = shape(request=0.1, limit=0.4)
    assert make_placement("first-fit").place(probe, book.view()) == Assignment("n0", ("n0-g0",))
    assert make_placement("infless-l").place(probe, book.view()) == Assignment("n0", ("n0-g1",))


def test_infless_r_picks_the_fullest_admitting_gpu_by_requests():
    book = ledger(nodes=1, gpus=3)
    one(book, "n0-g0", 0.2, 1.4)            # fullest by limits, emptiest by requests
    one(book, "n0-g1", 0.6, 0.6)
    one(book, "n0-g2", 0.9, 0.9)            # fullest by requests, but 0.9 + 0.2 > 1
    probe = shape(request=0.2, limit=0.2)
    first_fit = POLICIES["first-fit"](make_placement("infless-r").bounds)
    assert first_fit.place(probe, book.view()) == Assignment("n0", ("n0-g0",))
    assert make_placement("infless-r").place(probe, book.view()) == Assignment("n0", ("n0-g1",))


def test_dilu_paper_picks_the_fullest_admitting_gpu():
    book = ledger(nodes=1, gpus=3)
    one(book, "n0-g0", 0.1, 0.1, 2048)
    one(book, "n0-g1", 0.5, 0.5, 20480)
    one(book, "n0-g2", 0.95, 0.95, 30720)   # fullest, but refuses the request
    probe = shape(request=0.2, limit=0.2, memory=1024)
    assert make_placement("first-fit").place(probe, book.view()) == Assignment("n0", ("n0-g0",))
    assert make_placement("dilu-paper").place(probe, book.view()) == Assignment("n0", ("n0-g1",))


@pytest.mark.parametrize(("memory_b", "winner"), [
    # A is fuller by 0.3 of SM (0.6 · 0.3 = 0.18); B is fuller in memory by Δ (0.4 · Δ).
    (0.45, "n0-g0"),   # Δ = 0.35: 0.14 < 0.18, SM decides (equal weights would pick B)
    (0.65, "n0-g1"),   # Δ = 0.55: 0.22 > 0.18, memory decides (SM alone would pick A)
])
def test_dilu_paper_weighs_sm_at_0_6_and_memory_at_0_4(memory_b, winner):
    book = ledger(nodes=1, gpus=2, memory=100_000)
    one(book, "n0-g0", 0.5, 0.5, 10_000)
    one(book, "n0-g1", 0.2, 0.2, int(memory_b * 100_000))
    probe = shape(request=0.1, limit=0.1, memory=1000)
    assert make_placement("dilu-paper").place(probe, book.view()) == Assignment("n0", (winner,))


# ---- complementary -----------------------------------------------------------------------


def test_complementary_does_not_open_an_idle_gpu_when_a_busy_one_admits():
    book = ledger(nodes=2, gpus=2)
    one(book, "n1-g1", 0.5, 0.5, 8192, function="busy")
    probe = shape(request=0.2, limit=0.4, memory=4096)
    assert make_placement("complementary").place(probe, book.view()) == Assignment("n1", ("n1-g1",))
    one(book, "n1-g1", 0.5, 1.0, function="hog")           # now full: it must open one
    got = make_placement("complementary").place(probe, book.view())
    assert got is not None and got.gpu_uuids != ("n1-g1",)


def test_complementary_puts_inference_beside_training_rather_than_beside_inference():
    book = ledger(nodes=2, gpus=2)
    one(book, "n0-g0", 0.3, 0.6, 8192, function="infer", kind=INFERENCE)
    one(book, "n0-g1", 0.3, 0.6, 8192, function="train", kind=TRAINING)
    probe = shape(request=0.3, limit=0.6, memory=8192)      # SLO limits would reach 1.2
    assert make_placement("first-fit").place(probe, book.view()) == Assignment("n0", ("n0-g0",))
    assert make_placement("complementary").place(probe, book.view()) == Assignment("n0", ("n0-g1",))


def _training_node() -> Ledger:
    """n0: a 2-GPU training gang leaving 14960 MiB on each GPU; n1: idle."""
    book = ledger(nodes=2, gpus=2)
    put(book, "train", shape(request=0.5, limit=0.8, memory=26000, gpus=2, function="train",
                             kind=TRAINING), "n0-g0", "n0-g1")
    return book


def test_complementary_splits_a_large_model_beside_training():
    book = _training_node()
    llm = shape(request=0.6, limit=0.8, memory=24576, function="llm", kind=LLM, max_shards=2)
    stage = llm.sharded(2)
    assert stage.memory_mib <= 40960 - 26000 < llm.memory_mib   # a stage fits, the whole does not
    got = make_placement("complementary").place(llm, book.view())
    assert got == Assignment("n0", ("n0-g0", "n0-g1"), per_gpu=stage)
    book.commit("llm", llm, got)
    for uuid in ("n0-g0", "n0-g1"):
        gpu = book.gpu(uuid)
        assert gpu.memory_allocated_mib == 26000 + stage.memory_mib
        assert gpu.sm_requested == pytest.approx(0.5 + stage.sm_request)
        assert gpu.sm_limited == pytest.approx(0.8 + stage.sm_limit)
        assert gpu.functions == ("train", "llm")
    assert all(g.memory_allocated_mib == 0 for g in book.gpus(["n1"]))
    book.release("llm")
    assert [book.gpu(u).memory_allocated_mib for u in ("n0-g0", "n0-g1")] == [26000, 26000]


def test_complementary_keeps_an_unsplittable_model_whole_and_opens_a_gpu():
    book = _training_node()
    _, got = place_llm(book, max_shards=1)
    assert got is not None and got.per_gpu is None
    assert got.node == "n1" and len(got.gpu_uuids) == 1


def test_complementary_keeps_a_large_model_whole_when_it_fits_on_a_busy_gpu_without_training():
    book = ledger(nodes=2, gpus=2)
    one(book, "n0-g0", 0.2, 0.4, 8192, function="a")
    one(book, "n0-g1", 0.2, 0.4, 8192, function="b")
    _, got = place_llm(book)
    assert got is not None and got.per_gpu is None
    assert got.node == "n0" and len(got.gpu_uuids) == 1


def test_complementary_does_not_split_when_the_split_would_open_a_gpu_too():
    book = ledger(nodes=2, gpus=2)
    one(book, "n0-g0", 0.2, 0.4, 20000, function="a")     # room for a stage, not the whole
    _, got = place_llm(book)
    assert got is not None and got.per_gpu is None and len(got.gpu_uuids) == 1
    assert got.gpu_uuids != ("n0-g0",)


def test_complementary_splits_onto_busy_gpus_rather_than_open_one():
    book = ledger(nodes=2, gpus=2)
    one(book, "n0-g0", 0.2, 0.4, 20000, function="a")
    one(book, "n0-g1", 0.2, 0.4, 20000, function="b")
    llm, got = place_llm(book)
    assert got == Assignment("n0", ("n0-g0", "n0-g1"), per_gpu=llm.sharded(2))


@pytest.mark.parametrize(("reserve", "split"), [(0.2, True), (0.3, False)])
def test_complementary_stops_splitting_to_save_gpus_when_few_are_idle(reserve, split):
    book = ledger(nodes=1, gpus=4)                     # one idle GPU of four: 25 % idle
    put(book, "train", shape(request=0.5, limit=0.8, memory=26000, gpus=2, function="train",
                             kind=TRAINING), "n0-g0", "n0-g1")
    one(book, "n0-g2", 0.2, 0.4, 20000, function="a")  # no room for the whole model
    llm = shape(request=0.6, limit=0.8, memory=24576, function="llm", kind=LLM, max_shards=2)
    got = Complementary(split_reserve=reserve).place(llm, book.view())
    if split:
        assert got == Assignment("n0", ("n0-g0", "n0-g1"), per_gpu=llm.sharded(2))
    else:
        assert got == Assignment("n0", ("n0-g3",))


def test_complementary_splits_a_model_no_gpu_can_hold_whole_even_when_the_cluster_is_full():
    book = ledger(nodes=1, gpus=2)
    one(book, "n0-g0", 0.2, 0.4, 8192, function="a")
    one(book, "n0-g1", 0.2, 0.4, 8192, function="b")   # nothing idle
    big = shape(request=0.6, limit=0.8, memory=50000, function="big", kind=LLM, max_shards=2)
    got = make_placement("complementary").place(big, book.view())
    assert got == Assignment("n0", ("n0-g0", "n0-g1"), per_gpu=big.sharded(2))


def test_complementary_prefers_stages_away_from_a_replica_to_the_whole_model_beside_it():
    book = ledger(nodes=1, gpus=5)                     # two GPUs of five idle: roomy
    put(book, "llm-1", shape(request=0.3, limit=0.4, memory=12000, function="llm", kind=LLM), "n0-g0")
    one(book, "n0-g1", 0.2, 0.4, 20000, function="a")
    one(book, "n0-g2", 0.2, 0.4, 20000, function="b")  # room for stages, not the whole
    _, got = place_llm(book)
    assert got == Assignment("n0", ("n0-g1", "n0-g2"), per_gpu=got.per_gpu)
    assert got.per_gpu is not None


# ---- anti-affinity -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["complementary", "dilu-paper"])
def test_replicas_spread_over_nodes_then_gpus_and_share_only_when_nothing_else_admits(name):
    book = ledger(nodes=2, gpus=2)
    replica = shape(request=0.2, limit=0.2, memory=2048, function="f")
    put(book, "f1", shape(request=0.4, limit=0.4, memory=8192, function="f"), "n0-g0")
    one(book, "n0-g1", 0.1, 0.1, 1024, function="h")
    # A best fit alone would stay on busy n0; the replica goes to the other node.
    got = make_placement(name).place(replica, book.view())
    assert got is not None and got.node == "n1"

    put(book, "f2", shape(request=0.4, limit=0.4, memory=8192, function="f"), "n1-g0")
    one(book, "n1-g1", 1.0, 1.0, function="hog")
    # Every node holds f now: a GPU of n0 without f beats the fuller GPUs with f.
    assert make_placement(name).place(replica, book.view()) == Assignment("n0", ("n0-g1",))

    one(book, "n0-g1", 0.9, 0.9, function="hog")
    # Nothing without f admits: share a GPU with f.
    got = make_placement(name).place(replica, book.view())
    assert got is not None and got.gpu_uuids[0] in ("n0-g0", "n1-g0")


# ---- the ledger and the view -------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_policies_choose_only_gpus_of_the_nodes_given_to_the_view(name):
    book = ledger(nodes=3, gpus=2)
    one(book, "n0-g0", 0.1, 0.1, 1024)
    one(book, "n2-g1", 0.2, 0.2, 1024)
    view = book.view(nodes=["n1", "n2"])
    assert view.eligible.tolist() == [False, False, True, True, True, True]
    assert book.view().eligible.all()
    policy = make_placement(name)
    for s in (shape(), shape(gpus=2), shape(request=0.05, limit=0.05, memory=10)):
        got = policy.place(s, view)
        assert got is None or got.node in ("n1", "n2")
    assert policy.place(shape(), book.view(nodes=["n2"])) in (
        None, Assignment("n2", ("n2-g0",)), Assignment("n2", ("n2-g1",)))
    assert policy.place(shape(), book.view(nodes=[])) is None
    assert policy.place(shape(), book.view(nodes=["nowhere"])) is None


@pytest.mark.parametrize("name", ALL)
def test_an_idle_ready_node_is_used_when_an_idle_node_before_it_is_down(name):
    # Regression: complementary scored only the first idle node of each kind, even when
    # that node was not eligible, and then refused.
    book = ledger(nodes=3, gpus=2)
    for ready in (["n1"], ["n2"], ["n1", "n2"]):
        got = make_placement(name).place(shape(), book.view(nodes=ready))
        assert got is not None and got.node in ready
        gang = make_placement(name).place(shape(gpus=2), book.view(nodes=ready))
        assert gang is not None and gang.node in ready
    one(book, "n2-g0", 0.1, 0.1)
    got = make_placement(name).place(shape(request=0.95, limit=0.95), book.view(nodes=["n1", "n2"]))
    assert got is not None and got.node in ("n1", "n2")


@pytest.mark.parametrize("name", ALL)
def test_a_node_without_gpus_does_not_break_the_view(name):
    book = ledger(nodes=2, gpus=2)
    book.set_node("n0a", [])            # sorts between n0 and n1
    book.set_node("zz", [])
    view = book.view()
    assert view.size == 4 and list(view.node_names) == ["n0", "n1"]
    assert view.per_node(np.ones(4)).tolist() == [2, 2]
    policy = make_placement(name)
    assert policy.place(shape(gpus=2), view) is not None
    assert policy.place(shape(), book.view(nodes=["n0a", "zz"])) is None
    assert book.gpus(["n0a"]) == []
    assert book.remove_node("n0a") == [] and book.view().size == 4


def test_removing_and_re_adding_a_node():
    book = ledger(nodes=2, gpus=2)
    put(book, "a", shape(), "n0-g0")
    put(book, "gang", shape(gpus=2, function="g"), "n0-g0", "n0-g1")
    put(book, "b", shape(function="b"), "n1-g1")
    assert book.remove_node("n0") == ["a", "gang"]
    assert [g.uuid for g in book.gpus()] == ["n1-g0", "n1-g1"]
    assert make_placement("first-fit").place(shape(gpus=2), book.view(nodes=["n0"])) is None
    book.set_node("n0", [("n0-g0", 40960), ("n0-g1", 40960)])
    assert [g.uuid for g in book.gpus()] == ["n0-g0", "n0-g1", "n1-g0", "n1-g1"]
    assert all(g.memory_allocated_mib == 0 and g.functions == () for g in book.gpus(["n0"]))
    assert book.instances_on("n0-g0") == []
    assert make_placement("first-fit").place(shape(gpus=2), book.view()) == Assignment(
        "n0", ("n0-g0", "n0-g1"))
    # The same ids may be committed again, and the replicas of "f" start from zero.
    put(book, "a", shape(), "n0-g1")
    view = book.view()
    assert view.replicas("f").tolist() == [0, 1, 0, 0]
    assert view.replicas("b").tolist() == [0, 0, 0, 1]
    assert book.gpu("n1-g1").functions == ("b",)


def test_redeclaring_a_node_keeps_what_is_on_the_gpus_that_remain():
    book = ledger(nodes=1, gpus=2)
    put(book, "a", shape(request=0.4, limit=0.6, memory=8192), "n0-g0")
    put(book, "gang", shape(request=0.1, limit=0.1, memory=1024, gpus=2, function="g"),
        "n0-g0", "n0-g1")
    assert book.set_node("n0", [("n0-g0", 40960), ("n0-g1", 40960), ("n0-g2", 40960)]) == []
    gpu = book.gpu("n0-g0")
    assert (gpu.sm_requested, gpu.memory_allocated_mib, gpu.functions) == (
        pytest.approx(0.5), 9216, ("f", "g"))
    assert book.instances_on("n0-g1") == ["gang"] and book.instances_on("n0-g2") == []
    assert book.set_node("n0", [("n0-g0", 40960), ("n0-g2", 40960)]) == ["gang"]
    assert book.gpu("n0-g0").functions == ("f",) and book.holds("a")
    assert book.view().replicas("g").tolist() == [0, 0]


def test_a_gpu_moved_between_nodes_is_listed_under_its_new_node_only():
    book = ledger(nodes=2, gpus=2)
    book.set_node("n1", [("n1-g0", 40960), ("n1-g1", 40960), ("n0-g1", 40960)])
    assert [(g.node, g.uuid) for g in book.gpus()] == [
        ("n0", "n0-g0"), ("n1", "n0-g1"), ("n1", "n1-g0"), ("n1", "n1-g1")]
    view = book.view()
    assert view.per_node(np.ones(view.size)).tolist() == [1, 3]
    assert make_placement("first-fit").place(shape(gpus=2), view) == Assignment(
        "n1", ("n0-g1", "n1-g0"))
    assert make_placement("first-fit").place(shape(gpus=2), book.view(nodes=["n0"])) is None
    assert book.remove_node("n0") == []
    assert [g.uuid for g in book.gpus()] == ["n0-g1", "n1-g0", "n1-g1"]


def test_removing_the_node_a_gpu_moved_to_leaves_no_instance_on_a_missing_gpu():
    book = Ledger()
    book.set_node("n0", [("g", 40960), ("h", 40960)])
    put(book, "a", shape(function="f"), "g")
    book.set_node("n1", [("g", 40960)])          # "g" moves to n1, with "a" on it
    book.remove_node("n1")
    assert not book.holds("a")
    assert make_placement("first-fit").place(shape(function="f"), book.view()) is not None
    book.set_node("n1", [("g", 40960)])
    book.release("a")
    assert all(g.functions == () for g in book.gpus())


def test_rows_of_no_gpus_is_empty():
    rows, _starts, runs = ledger().view().rows_of(np.zeros(0, dtype=np.int64))
    assert rows.size == 0 and runs.size == 0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=6), st.data())
def test_rows_of_and_per_node_match_a_plain_computation(counts, data):
    book = Ledger()
    for n, count in enumerate(counts):
        book.set_node(f"n{n}", [(f"n{n}-g{g}", 40960) for g in range(count)])
    view = book.view()
    node_of = [int(v) for v in view.node_of]
    assert view.size == sum(counts)
    values = np.array(data.draw(st.lists(st.integers(-5, 5), min_size=view.size,
                                         max_size=view.size)), dtype=np.int64)
    expected = {}
    for i, value in enumerate(values.tolist()):
        expected[node_of[i]] = expected.get(node_of[i], 0) + value
    assert view.per_node(values).tolist() == [expected[n] for n in range(len(view.node_names))]
    assert list(view.node_names) == [f"n{n}" for n, c in enumerate(counts) if c]
    if view.size == 0:
        return
    gpus = data.draw(st.lists(st.integers(0, view.size - 1), min_size=1, max_size=8))
    rows, starts, runs = view.rows_of(np.array(gpus, dtype=np.int64))
    touched = sorted({node_of[g] for g in gpus})
    want_rows = [i for i in range(view.size) if node_of[i] in touched]
    assert rows.tolist() == want_rows
    assert starts.tolist() == [want_rows.index(next(i for i in want_rows if node_of[i] == n))
                               for n in touched]
    assert runs.tolist() == [touched.index(node_of[g]) for g in gpus]


# ---- properties of every policy ----------------------------------------------------------

KINDS = [INFERENCE, INFERENCE, TRAINING, LLM]


@st.composite
def random_shape(draw) -> InstanceShape:
    kind = draw(st.sampled_from(KINDS))
    request = draw(st.floats(0.01, 1.0))
    limit = request + draw(st.floats(0.0, 0.5))
    gpus = draw(st.sampled_from([1, 1, 2, 4]))
    shards = 2 if kind is LLM and gpus == 1 and draw(st.booleans()) else 1
    memory = draw(st.integers(0, 45000))
    function = "llm" if kind is LLM else draw(st.sampled_from(["a", "b", "c"]))
    return shape(request=request, limit=limit, memory=memory, gpus=gpus, function=function,
                 kind=kind, max_shards=shards)


NODE_SETS = [None, None, None, ("n0", "n1"), ("n2",), ("n1",)]
operations = st.lists(st.one_of(
    st.tuples(st.just("start"), random_shape(), st.sampled_from(NODE_SETS)),
    st.tuples(st.just("delete"), st.integers(0, 1000), st.none()),
), max_size=30)


def _tier(book: Ledger, function: str, uuid: str) -> int:
    gpu = book.gpu(uuid)
    if function in gpu.functions:
        return 2
    return int(any(function in g.functions for g in book.gpus([gpu.node])))


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=35, deadline=None)
@given(ops=operations)
def test_every_policy_keeps_its_bounds_and_releases_everything(name, ops):
    policy = make_placement(name)
    bounds = policy.bounds
    book = ledger(nodes=3, gpus=4)
    live: list[str] = []
    charged: dict[str, list[InstanceShape]] = {g.uuid: [] for g in book.gpus()}
    placed: dict[str, tuple[InstanceShape, Assignment]] = {}
    for n, (op, arg, nodes) in enumerate(ops):
        if op == "delete":
            if live:
                instance_id = live.pop(arg % len(live))
                book.release(instance_id)
                s, a = placed.pop(instance_id)
                for uuid in a.gpu_uuids:
                    charged[uuid].remove(a.per_gpu or s)
        else:
            s = arg
            before = book.gpus()
            view = book.view(nodes)
            got = policy.place(s, view)
            if got is None:
                assert book.gpus() == before            # refused: nothing changed
            else:
                uuids = got.gpu_uuids
                assert len(set(uuids)) == len(uuids)
                assert {book.gpu(u).node for u in uuids} == {got.node}
                assert nodes is None or got.node in nodes
                if got.per_gpu is None:
                    assert len(uuids) == s.gpus
                else:
                    k = got.per_gpu.gpus
                    assert name == "complementary" and s.gpus == 1 and 1 < k <= s.max_shards
                    assert got.per_gpu == s.sharded(k) and len(uuids) == k
                if name == "exclusive":
                    assert all(book.gpu(u).functions == () for u in uuids)
                if s.gpus == 1 and got.per_gpu is None and (name != "complementary"
                                                            or s.max_shards == 1):
                    # Anti-affinity: nothing that admits had a lower replica tier.
                    if name == "exclusive":
                        admits = view.eligible & (view.instances == 0) & (
                            s.memory_mib <= view.memory_total)
                    else:
                        admits = view.admits(s, bounds)
                    best = min(_tier(book, s.function, view.uuids[i]) for i in np.flatnonzero(admits))
                    assert _tier(book, s.function, uuids[0]) == best
                book.commit(str(n), s, got)
                live.append(str(n))
                placed[str(n)] = (s, got)
                for uuid in uuids:
                    charged[uuid].append(got.per_gpu or s)
        for gpu in book.gpus():
            on = charged[gpu.uuid]
            assert gpu.sm_requested <= bounds.max_requested + 1e-6
            assert gpu.sm_limited <= bounds.max_limited + 1e-6
            assert gpu.memory_allocated_mib <= gpu.memory_total_mib
            assert gpu.memory_allocated_mib == sum(c.memory_mib for c in on)
            assert gpu.sm_requested == pytest.approx(sum(c.sm_request for c in on))
            assert gpu.sm_limited == pytest.approx(sum(c.sm_limit for c in on))
            assert Counter(gpu.functions) == Counter(c.function for c in on)
            if name == "exclusive":
                assert len(gpu.functions) <= 1
    for instance_id in list(live):
        book.release(instance_id)
    assert all((g.sm_requested, g.sm_limited, g.memory_allocated_mib, g.functions) == (0, 0, 0, ())
               for g in book.gpus())
    view = book.view()
    assert not view.instances.any() and not view.training.any() and not view.slo_limited.any()
    assert all(not view.replicas(f).any() for f in ("a", "b", "c", "llm"))
    assert all(book.instances_on(g.uuid) == [] for g in book.gpus())
