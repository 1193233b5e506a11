from __future__ import annotations

import pytest

from services.scheduler.placement import (
    Assignment,
    FirstFit,
    InstanceShape,
    Ledger,
    PlacementBounds,
    WorkloadKind,
    make_placement,
)


def shape(request: float = 0.3, limit: float = 0.5, memory: int = 4096, gpus: int = 1,
          function: str = "f", kind: WorkloadKind = WorkloadKind.INFERENCE) -> InstanceShape:
    return InstanceShape(function=function, kind=kind, sm_request=request, sm_limit=limit,
                         memory_mib=memory, gpus=gpus)


def ledger(nodes: int = 2, gpus: int = 2, memory: int = 40960) -> Ledger:
    book = Ledger()
    for n in range(nodes):
        book.set_node(f"n{n}", [(f"n{n}-g{g}", memory) for g in range(gpus)])
    return book


def test_first_fit_takes_the_first_gpu_that_admits():
    book = ledger()
    policy = FirstFit()
    first = policy.place(shape(request=0.6, limit=0.6), book.view())
    assert first == Assignment("n0", ("n0-g0",))
    book.commit("a", shape(request=0.6, limit=0.6), first)
    second = policy.place(shape(request=0.6, limit=0.6, function="g"), book.view())
    assert second == Assignment("n0", ("n0-g1",))


def test_limits_are_over_subscribed_only_up_to_the_bound():
    book = ledger(nodes=1, gpus=1)
    policy = FirstFit(PlacementBounds(max_limited=1.5))
    book.commit("a", shape(request=0.2, limit=1.0), policy.place(shape(request=0.2, limit=1.0), book.view()))
    assert policy.place(shape(request=0.2, limit=0.5), book.view()) is not None
    assert policy.place(shape(request=0.2, limit=0.6), book.view()) is None


def test_memory_is_never_over_subscribed():
    book = ledger(nodes=1, gpus=1, memory=10000)
    policy = FirstFit()
    book.commit("a", shape(request=0.1, limit=0.1, memory=6000), Assignment("n0", ("n0-g0",)))
    assert policy.place(shape(request=0.1, limit=0.1, memory=4001), book.view()) is None
    assert policy.place(shape(request=0.1, limit=0.1, memory=4000), book.view()) is not None


def test_a_gang_takes_one_node_whole_or_nothing():
    book = ledger(nodes=2, gpus=2)
    policy = FirstFit()
    book.commit("x", shape(request=0.9, limit=0.9), Assignment("n0", ("n0-g0",)))
    gang = policy.place(shape(request=0.5, limit=0.5, gpus=2), book.view())
    assert gang == Assignment("n1", ("n1-g0", "n1-g1"))
    assert policy.place(shape(request=0.5, limit=0.5, gpus=3), book.view()) is None


def test_release_returns_exactly_what_commit_took():
    book = ledger(nodes=1, gpus=1)
    s = shape(request=0.1, limit=0.3)
    for i in range(10):
        book.commit(str(i), s, Assignment("n0", ("n0-g0",)))
    for i in range(10):
        book.release(str(i))
    gpu = book.gpus()[0]
    assert (gpu.sm_requested, gpu.sm_limited, gpu.memory_allocated_mib, gpu.functions) == (0, 0, 0, ())


def test_removing_a_node_evicts_its_instances():
    book = ledger()
    book.commit("a", shape(), Assignment("n0", ("n0-g0",)))
    book.commit("b", shape(), Assignment("n1", ("n1-g0",)))
    assert book.remove_node("n0") == ["a"]
    assert not book.holds("a") and book.holds("b")
    assert {g.node for g in book.gpus()} == {"n1"}


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(ValueError, match="first-fit"):
        make_placement("magic")


def test_a_node_that_loses_a_gpu_evicts_what_was_on_it_and_never_offers_it_again():
    book = ledger(nodes=1, gpus=2)
    book.commit("a", shape(), Assignment("n0", ("n0-g0",)))
    book.commit("b", shape(), Assignment("n0", ("n0-g1",)))
    assert book.set_node("n0", [("n0-g1", 40960)]) == ["a"]
    assert [g.uuid for g in book.gpus()] == ["n0-g1"]
    assert book.holds("b") and not book.holds("a")
    assert FirstFit().place(shape(request=0.9, limit=0.9), book.view()) is None
