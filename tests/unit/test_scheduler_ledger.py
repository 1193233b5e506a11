"""The ledger records quota changes (`resize`) and refuses a changed commit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.placement import Assignment, GpuSlot, InstanceShape, Ledger, WorkloadKind


def shape(request: float = 0.3, limit: float = 0.5, memory: int = 4096, gpus: int = 1,
          function: str = "f", kind: WorkloadKind = WorkloadKind.INFERENCE) -> InstanceShape:
    return InstanceShape(function=function, kind=kind, sm_request=request, sm_limit=limit,
                         memory_mib=memory, gpus=gpus)


def two_gpus() -> Ledger:
    book = Ledger()
    book.set_node("n0", [("g0", 40960), ("g1", 40960)])
    return book


def test_committing_a_known_id_with_another_shape_is_refused():
    book = two_gpus()
    book.commit("a", shape(), Assignment("n0", ("g0",)))
    book.commit("a", shape(), Assignment("n0", ("g0",)))  # the same again: nothing changes
    with pytest.raises(ValueError, match="resize or release"):
        book.commit("a", shape(request=0.4), Assignment("n0", ("g0",)))
    with pytest.raises(ValueError):
        book.commit("a", shape(), Assignment("n0", ("g1",)))
    slot = book.gpu("g0")
    assert slot is not None and slot.sm_requested == pytest.approx(0.3)


def test_resize_changes_what_the_instance_holds_on_each_of_its_gpus():
    book = two_gpus()
    book.commit("gang", shape(request=0.2, limit=0.4, memory=1000, gpus=2,
                              kind=WorkloadKind.TRAINING), Assignment("n0", ("g0", "g1")))
    before = book.resize("gang", shape(request=0.5, limit=0.9, memory=3000, gpus=2,
                                       kind=WorkloadKind.TRAINING))
    assert before.sm_request == 0.2
    for uuid in ("g0", "g1"):
        slot = book.gpu(uuid)
        assert slot is not None
        assert (slot.sm_requested, slot.sm_limited, slot.memory_allocated_mib) == (0.5, 0.9, 3000)
    shape_now = book.shape_of("gang")
    assert shape_now is not None and shape_now.memory_mib == 3000
    book.release("gang")
    assert book.gpu("g0") == GpuSlot(node="n0", uuid="g0", memory_total_mib=40960)


def test_resize_records_what_passes_the_bounds_because_the_agent_admits_not_the_ledger():
    book = two_gpus()
    book.commit("a", shape(request=0.5, limit=0.5), Assignment("n0", ("g0",)))
    book.commit("b", shape(request=0.5, limit=0.5, function="g"), Assignment("n0", ("g0",)))
    book.resize("a", shape(request=0.9, limit=1.0))
    slot = book.gpu("g0")
    assert slot is not None and slot.sm_requested == pytest.approx(1.4)


def test_resize_refuses_unknown_ids_and_another_function_kind_or_gpu_count():
    book = two_gpus()
    with pytest.raises(KeyError):
        book.resize("nope", shape())
    book.commit("a", shape(), Assignment("n0", ("g0",)))
    for other in (shape(function="g"), shape(kind=WorkloadKind.TRAINING), shape(gpus=2)):
        with pytest.raises(ValueError):
            book.resize("a", other)


COLUMNS = ("requested", "limited", "slo_limited", "memory_used", "instances", "training")
_KINDS = st.sampled_from(list(WorkloadKind))
_SHARE = st.integers(1, 100).map(lambda n: n / 100)
_OPS = st.lists(st.tuples(
    st.sampled_from(["commit", "resize", "release"]), st.integers(0, 5),  # instance
    st.integers(0, 3), st.integers(1, 2),  # first GPU, GPU count
    _SHARE, _SHARE, st.integers(0, 20000), _KINDS), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_resizes_keep_every_column_equal_to_a_recomputation(ops):
    uuids = ["g0", "g1", "g2", "g3"]
    book = Ledger()
    book.set_node("n0", [(u, 40960) for u in uuids])
    book.view()  # columns built: from here on every change updates them in place
    placed: dict[str, tuple[InstanceShape, Assignment]] = {}
    for op, n, first, count, request, extra, memory, kind in ops:
        iid = f"i{n}"
        gpus = tuple(uuids[(first + k) % 4] for k in range(count))
        new = shape(request=request, limit=min(1.0, request + extra), memory=memory,
                    gpus=count, function=f"f{n}", kind=kind)
        if op == "commit" and iid not in placed:
            book.commit(iid, new, Assignment("n0", gpus))
            placed[iid] = (new, Assignment("n0", gpus))
        elif op == "resize" and iid in placed:
            old, where = placed[iid]
            new = shape(request=request, limit=min(1.0, request + extra), memory=memory,
                        gpus=old.gpus, function=old.function, kind=old.kind)
            book.resize(iid, new)
            placed[iid] = (new, where)
        elif op == "release" and iid in placed:
            book.release(iid)
            del placed[iid]
    fresh = Ledger()
    fresh.set_node("n0", [(u, 40960) for u in uuids])
    for iid, (s, where) in placed.items():
        fresh.commit(iid, s, where)
    live, recomputed = book.view(), fresh.view()
    for column in COLUMNS:
        assert np.allclose(getattr(live, column), getattr(recomputed, column), atol=1e-12), column
